"""Held-out results of the default model (issues 6, 13): one table per task, rows per language.

Columns: BM25, the base model (dense, with its prompts), and the M3 model's Dense, Sparse,
Multi-vec, Dense+Sparse (hybrid, weights 1/0.3/0) and All (hybrid, weights 1/0.3/1).
Tasks: XQuAD test articles same-language (nDCG@10), XQuAD test cross-lingual X -> en
(nDCG@10), Tatoeba test pairs (bitext-mining accuracy, mean of both directions; the 11
XQuAD languages with every test pair, ``--tatoeba-extra`` languages with the first
``--extra-pairs`` test pairs), the mini corpus (all 6 languages in one corpus, hybrid: the
share of questions whose first result is the right topic / the same-language passage), and
the mean scores of the positives (XQuAD same language). With ``--ablation`` the same M3
columns for a second model (e.g. trained without self-KD). All numbers come from
m3lab.evaluation; this script only arranges them.

    python scripts/evaluate_default.py --model data/models/m3lab-e5-small \
        --ablation runs/m3lab-e5-small-no-selfkd/final --out data/models/m3lab-e5-small/results
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from m3lab import M3Model
from m3lab._io import atomic_file, write_json
from m3lab.retrieval.bm25 import BM25Index, standard_analyzer
from m3lab.data import MINI_LANGUAGES, XQUAD_LANGUAGES, BitextDataset, load_mini, load_tatoeba, load_xquad
from m3lab.evaluation import (DEFAULT_TATOEBA, evaluate_bitext, evaluate_retrieval, positive_scores,
                              ranking_changes, top1_rates)
from m3lab.retrieval import CorpusIndex

M3_COLUMNS = ("Dense", "Sparse", "Multi-vec", "Dense+Sparse", "All")
ALL = (1.0, 0.3, 1.0)
TASKS = ("xquad", "xquad-cross", "tatoeba", "tatoeba-extra", "mini", "scale")
#: 30 Tatoeba languages beyond XQuAD's, spread over families and scripts
EXTRA_TATOEBA = ("fra", "ita", "por", "nld", "pol", "ces", "ukr", "bul", "heb", "pes", "jpn", "kor", "ind", "swe",
                 "dan", "fin", "hun", "est", "lit", "srp", "hrv", "slk", "cat", "eus", "kat", "urd", "ben", "tam",
                 "mar", "tgl")
DENSE_SPARSE = (1.0, 0.3, 0.0)


def m3_retrieval(model: M3Model, dataset, index: CorpusIndex | None = None) -> tuple[dict[str, float], list[dict]]:
    index = index or CorpusIndex.build(model, dataset.corpus, show_progress=False)
    rows = evaluate_retrieval(index, dataset, ["dense", "sparse", "colbert", "hybrid"], weights=ALL, show_progress=False)
    rows += [dict(r, mode="dense+sparse") for r in
             evaluate_retrieval(index, dataset, ["hybrid"], weights=DENSE_SPARSE, show_progress=False)]
    names = {"dense": "Dense", "sparse": "Sparse", "colbert": "Multi-vec", "dense+sparse": "Dense+Sparse", "hybrid": "All"}
    return {names[r["mode"]]: r["ndcg@10"] for r in rows}, rows


def xquad_table(models: dict[str, M3Model], base: M3Model, languages, cross: bool, record: list) -> dict:
    table = {}
    en_index: dict[str, CorpusIndex] = {}
    for lang in languages:
        if cross and lang == "en":
            continue
        ds = load_xquad(lang, corpus_language="en" if cross else None, split="test")
        row = {} if base is None else {
            "BM25": evaluate_retrieval(None, ds, ["bm25"], show_progress=False)[0]["ndcg@10"],
            "e5-small": evaluate_retrieval(base, ds, ["dense"], show_progress=False)[0]["ndcg@10"]}
        for name, model in models.items():
            index = None
            if cross:  # one English index per model, shared by every query language
                index = en_index.get(name) or en_index.setdefault(name, CorpusIndex.build(model, ds.corpus, show_progress=False))
            scores, rows = m3_retrieval(model, ds, index)
            row.update({f"{name} {k}": v for k, v in scores.items()})
            record += [dict(r, model=name) for r in rows]
        table[lang] = row
        print(f"  {lang}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    return table


def bm25_bitext_accuracy(ds) -> float:
    """Share of sentences whose BM25 top hit on the other side is their translation, mean of both directions."""
    acc = []
    for queries, docs in ((ds.source, ds.target), (ds.target, ds.source)):
        idx, _ = BM25Index(docs, analyzer=standard_analyzer()).search(
            [q if q.strip() else "." for q in queries], top_k=1)
        acc.append(float(np.mean(idx[:, 0] == np.arange(len(queries)))))
    return float(np.mean(acc))


def tatoeba_table(models: dict[str, M3Model], base: M3Model, languages, record: list,
                  max_pairs: int | None = None) -> dict:
    table = {}
    names = {"dense": "Dense", "sparse": "Sparse", "colbert": "Multi-vec", "hybrid": "All"}
    for lang in languages:
        ds = load_tatoeba(lang, split="test")
        if max_pairs is not None:
            ds = BitextDataset(ds.name, ds.language, ds.source[:max_pairs], ds.target[:max_pairs])
        row = {} if base is None else {
            "BM25": bm25_bitext_accuracy(ds),
            "e5-small": evaluate_bitext(base, ds, ["dense"], show_progress=False)[0]["accuracy"]}
        for name, model in models.items():
            rows = evaluate_bitext(model, ds, ["dense", "sparse", "colbert", "hybrid"], weights=ALL, show_progress=False)
            rows += [dict(r, mode="dense+sparse") for r in
                     evaluate_bitext(model, ds, ["hybrid"], weights=DENSE_SPARSE, show_progress=False)]
            names2 = dict(names, **{"dense+sparse": "Dense+Sparse"})
            row.update({f"{name} {names2[r['mode']]}": r["accuracy"] for r in rows})
            record += [dict(r, model=name) for r in rows]
        table[lang] = row
        print(f"  {lang}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    return table


def mini_table(models: dict[str, M3Model], base: M3Model) -> dict:
    """Mini corpus, 6 languages in one corpus: first result = right topic / same-language passage."""
    ds = load_mini(languages=MINI_LANGUAGES)
    table: dict[str, dict] = {}
    runs = [("e5-small dense", base, "dense")] if base is not None else []
    runs += [(f"{n} All", m, "hybrid") for n, m in models.items()]
    for name, model, mode in runs:
        index = CorpusIndex.build(model, ds.corpus, show_progress=False)
        for lang, r in top1_rates(index, ds, mode=mode, weights=ALL).items():
            table.setdefault(lang, {})[f"{name} topic"] = r["group"]
            table[lang][f"{name} same-language"] = r["exact"]
    for lang, row in table.items():
        print(f"  {lang}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    return table


def scale_table(models: dict[str, M3Model], languages) -> dict:
    """Mean s_dense, s_lex, s_mul of the positives, and how often w_sparse = 0.3 changes dense's
    first result / top-10 (XQuAD test, same language)."""
    table = {}
    for lang in languages:
        ds = load_xquad(lang, split="test")
        row = {}
        for n, m in models.items():
            row.update({f"{n} s_{k}": v for k, v in positive_scores(m, ds).items()})
            index = CorpusIndex.build(m, ds.corpus, show_progress=False)
            row.update({f"{n} {k}": v for k, v in ranking_changes(index, ds).items()})
        table[lang] = row
        print(f"  {lang}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    return table


def markdown(title: str, table: dict, metric: str) -> str:
    columns = list(next(iter(table.values())))
    lines = [f"### {title} ({metric})", "", "| language | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for lang, row in table.items():
        lines.append(f"| {lang} | " + " | ".join(f"{100 * row[c]:.1f}" for c in columns) + " |")
    avg = {c: np.mean([row[c] for row in table.values()]) for c in columns}
    lines.append("| **avg** | " + " | ".join(f"**{100 * avg[c]:.1f}**" for c in columns) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--ablation", default=None, help="a second M3 model to report beside the first (e.g. no self-KD)")
    ap.add_argument("--ablation-name", default="no-self-KD")
    ap.add_argument("--languages", default=",".join(XQUAD_LANGUAGES))
    ap.add_argument("--tatoeba", default=",".join(DEFAULT_TATOEBA))
    ap.add_argument("--tatoeba-extra", default=",".join(EXTRA_TATOEBA), help="more Tatoeba languages ('' for none)")
    ap.add_argument("--extra-pairs", type=int, default=200, help="test pairs per extra Tatoeba language")
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"some of {','.join(TASKS)}")
    ap.add_argument("--base", default="e5-small", help="the base model, evaluated dense with its prompts "
                                                       "('none': no BM25 and base columns, e.g. for an ablation)")
    ap.add_argument("--out", required=True, help="output prefix: writes OUT.md and OUT.json")
    args = ap.parse_args()
    t0 = time.time()
    models = {"M3": M3Model.from_pretrained(args.model)}
    if args.ablation:
        models[args.ablation_name] = M3Model.from_pretrained(args.ablation)
    base = None if args.base == "none" else M3Model.from_pretrained(args.base)
    langs, tatoeba = args.languages.split(","), args.tatoeba.split(",")
    record: list[dict] = []
    tasks = set(args.tasks.split(","))
    if tasks - set(TASKS):
        ap.error(f"unknown tasks {sorted(tasks - set(TASKS))}; choose from {', '.join(TASKS)}")
    extra = [x for x in args.tatoeba_extra.split(",") if x]
    runs = [("xquad", "XQuAD test articles, same language", "nDCG@10 x 100",
             lambda: xquad_table(models, base, langs, cross=False, record=record)),
            ("xquad-cross", "XQuAD test articles, cross-lingual X -> en", "nDCG@10 x 100",
             lambda: xquad_table(models, base, langs, cross=True, record=record)),
            ("tatoeba", "Tatoeba test pairs, bitext mining", "accuracy x 100, mean of both directions",
             lambda: tatoeba_table(models, base, tatoeba, record=record)),
            ("tatoeba-extra", f"Tatoeba, {len(extra)} more languages (first {args.extra_pairs} test pairs)",
             "accuracy x 100, mean of both directions",
             lambda: tatoeba_table(models, base, extra, record=record, max_pairs=args.extra_pairs)),
            ("mini", "Mini corpus, 6 languages in one corpus: first result", "share of questions x 100",
             lambda: mini_table(models, base)),
            ("scale", "Score scale: mean score of the positives; share of queries whose top-1 / top-10 under "
                      "Dense+Sparse differs from Dense", "x 100",
             lambda: scale_table(models, langs))]
    tables, md = {}, ""
    for key, title, metric, run in runs:
        if key in tasks and not (key == "tatoeba-extra" and not extra):
            print(title, flush=True)
            tables[key] = run()
            md += ("\n" if md else "") + markdown(title, tables[key], metric)
    md += f"\nModels: M3 = {args.model}" + (f"; {args.ablation_name} = {args.ablation}" if args.ablation else "") + \
          f"; base = {args.base}, dense, with its prompts. Max length 512. Wall time {time.time() - t0:.0f} s.\n"
    out = Path(args.out)
    with atomic_file(out.with_suffix(".md")) as f:
        f.write(md)
    write_json(out.with_suffix(".json"), {"tables": tables,
                                          "results": record})
    print(md)


if __name__ == "__main__":
    main()
