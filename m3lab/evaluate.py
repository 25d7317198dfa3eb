"""Evaluation: retrieval metrics, bitext mining and the ``m3lab eval`` command.

Retrieval (XQuAD same-language and cross-lingual, XQuAD long documents, the mini corpus, any
BEIR folder): every mode of :class:`m3lab.index.CorpusIndex` (dense, sparse, colbert, hybrid —
paper section 3.2) and the BM25 baselines of :mod:`m3lab.bm25`. The metrics come from
``ir_measures``: nDCG@10, Recall@10 and Recall@100 by its ``pytrec_eval`` back end, the
evaluator MTEB uses, MRR@10 by its MS MARCO provider. A plain model configured as MTEB
configures it (mean pooling, max length 256, ``--split all``) reproduces MTEB's
XQuADRetrieval nDCG@10 (``benchmarks/mteb_parity.py``).

Bitext mining (Tatoeba): for every source sentence, its nearest target sentence by the mode's
score; accuracy = share of sentences whose nearest neighbour is their translation, both
directions (as MTEB's BitextMining accuracy).

    m3lab eval --model PATH_OR_ID --dataset {xquad,xquad-cross,tatoeba,xquad-long,mini,beir:PATH} \\
        --languages en,de,... --modes dense,sparse,colbert,hybrid --pooling {cls,mean} --max-length N \\
        --split {all,train,test} --data-dir DIR --json OUT
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import ir_measures
import numpy as np
from ir_measures import RR, R, nDCG

from . import __version__, scoring
from ._io import write_json
from .bm25 import BM25_MODES, BM25Index, model_tokenizer_analyzer, standard_analyzer
from .data import (
    MINI_LANGUAGES,
    TATOEBA_LANGUAGES,
    XQUAD_LANGUAGES,
    BitextDataset,
    RetrievalDataset,
    load_beir,
    load_mini,
    load_tatoeba,
    load_xquad,
    load_xquad_long,
)
from .data.tatoeba import ISO1_TO_TATOEBA, tatoeba_code
from .index import MODES as INDEX_MODES
from .index import CorpusIndex, corpus_fingerprint, document_text
from .model import M3Model

logger = logging.getLogger("m3lab")

RETRIEVAL_MODES: tuple[str, ...] = INDEX_MODES + BM25_MODES
BITEXT_MODES: tuple[str, ...] = INDEX_MODES
DATASETS: tuple[str, ...] = ("xquad", "xquad-cross", "tatoeba", "xquad-long", "mini", "beir:PATH")
#: result key -> ir_measures measure (computed by pytrec_eval, as in MTEB)
METRICS = {"ndcg@10": nDCG @ 10, "recall@10": R @ 10, "recall@100": R @ 100, "mrr@10": RR @ 10}
#: Tatoeba languages evaluated when none are given: XQuAD's, without English (the target side).
DEFAULT_TATOEBA = tuple(ISO1_TO_TATOEBA[lang] for lang in XQUAD_LANGUAGES if lang != "en")
_NEEDS_HEADS = ("sparse", "colbert", "hybrid")


# ----------------------------------------------------------------------------- retrieval

def retrieval_metrics(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean nDCG@10, Recall@10, Recall@100 and MRR@10 over the judged queries, by ``ir_measures``.

    ir_measures computes nDCG and Recall with pytrec_eval (MTEB's evaluator) and MRR@10 with its
    MS MARCO provider (pytrec_eval's reciprocal rank has no cutoff). A judged query with an empty
    ranking counts as 0.
    """
    run = {qid: run.get(qid, {}) for qid in qrels}
    scores = ir_measures.calc_aggregate(list(METRICS.values()), qrels, run)
    return {name: float(scores.get(measure, 0.0)) for name, measure in METRICS.items()}


def _run(query_ids: Sequence[str], doc_ids: Sequence[str], indices: np.ndarray, scores: np.ndarray
         ) -> dict[str, dict[str, float]]:
    """A TREC-style run {query: {doc: score}} from ranked document positions (-1 = none)."""
    run = {}
    for qid, idx, sc in zip(query_ids, indices, scores):
        run[qid] = {doc_ids[j]: float(s) for j, s in zip(idx, sc) if j >= 0}
    return run


def check_modes(modes: Sequence[str], allowed: Sequence[str] = RETRIEVAL_MODES) -> list[str]:
    """The modes, validated (an unknown one raises ``ValueError`` listing the valid ones)."""
    modes = list(dict.fromkeys(modes))
    if not modes:
        raise ValueError(f"no modes given; choose from {', '.join(allowed)}")
    for m in modes:
        if m not in allowed:
            raise ValueError(f"unknown mode {m!r}; the modes are {', '.join(allowed)}")
    return modes


def evaluate_retrieval(model_or_index: M3Model | CorpusIndex | None, dataset: RetrievalDataset,
                       modes: Sequence[str] = INDEX_MODES, *, top_k: int = 100,
                       weights: Sequence[float] = scoring.DEFAULT_WEIGHTS, candidates: int = 100,
                       max_length: int = 512, batch_size: int = 32, dense_index: str = "flat", mcls: bool = False,
                       dataset_label: str | None = None, language: str | None = None,
                       show_progress: bool = True) -> list[dict]:
    """Rank ``dataset``'s corpus for its queries in each mode and score the rankings.

    ``model_or_index``: an :class:`M3Model` (the corpus is indexed here, storing only what
    the modes need), a :class:`CorpusIndex` already built on this corpus, or ``None`` when the
    only mode is ``bm25``. Rankings are ``top_k`` deep (100: Recall@100 needs it). Queries
    without a relevant document are left out, as MTEB does. Returns one dict per mode:
    ``{"dataset", "language", "mode", "ndcg@10", "recall@10", "recall@100", "mrr@10",
    "n_queries", "n_documents", "seconds"}``.
    """
    modes = check_modes(modes)
    queries = [q for q in dataset.queries if any(v > 0 for v in dataset.qrels.get(q.id, {}).values())]
    if not queries:
        raise ValueError(f"dataset {dataset.name!r} has no query with a relevant document")
    qrels = {q.id: dataset.qrels[q.id] for q in queries}
    query_texts = [q.text for q in queries]
    base = {"dataset": dataset_label or dataset.name, "language": language or dataset.query_language}
    if dataset.corpus_language and dataset.corpus_language != dataset.query_language:
        base["corpus_language"] = dataset.corpus_language
    index = model_or_index if isinstance(model_or_index, CorpusIndex) else None
    model = index.model if index is not None else model_or_index
    if model is None and any(m != "bm25" for m in modes):
        raise ValueError(f"modes {[m for m in modes if m != 'bm25']} need a model")

    results: dict[str, dict] = {}
    index_modes = [m for m in modes if m in INDEX_MODES]
    if index_modes:
        t0 = time.perf_counter()
        components = sorted({c for m in index_modes for c in _components(m, weights)})
        if index is None:
            index = CorpusIndex.build(model, dataset.corpus, max_length=max_length, batch_size=batch_size,
                                      dense_index=dense_index, store=components, mcls=mcls, show_progress=show_progress)
        elif corpus_fingerprint(index.documents) != corpus_fingerprint(dataset.corpus):
            raise ValueError(f"the index holds another corpus than dataset {dataset.name!r} "
                             f"({len(index)} vs {len(dataset.corpus)} documents)")
        q = index.encode_queries(query_texts, components=components, max_length=max_length, batch_size=batch_size,
                                 show_progress=show_progress and len(queries) > 8 * batch_size)
        rankings = index.rank(q, index_modes, top_k=top_k, weights=weights, candidates=candidates)
        seconds = time.perf_counter() - t0
        for m in index_modes:
            r = rankings[m]
            results[m] = {**retrieval_metrics(qrels, _run([x.id for x in queries], index.doc_ids, r.indices, r.scores)),
                          "seconds": round(seconds, 2)}
    for m in (m for m in modes if m in BM25_MODES):
        t0 = time.perf_counter()
        analyzer = (standard_analyzer(dataset.corpus_language) if m == "bm25"
                    else model_tokenizer_analyzer(model.tokenizer))
        bm25 = BM25Index([document_text(d) for d in dataset.corpus], analyzer=analyzer)
        idx, sc = bm25.search(query_texts, top_k=top_k)
        results[m] = {**retrieval_metrics(qrels, _run([x.id for x in queries], [d.id for d in dataset.corpus], idx, sc)),
                      "seconds": round(time.perf_counter() - t0, 2)}
    return [{**base, "mode": m, **results[m], "n_queries": len(queries), "n_documents": len(dataset.corpus)}
            for m in modes]


def _components(mode: str, weights: Sequence[float]) -> tuple[str, ...]:
    if mode == "hybrid":
        return ("dense", "sparse") + (("colbert",) if weights[2] != 0 else ())
    return (mode,)


# ----------------------------------------------------------------------------- bitext mining

def bitext_scores(model: M3Model, source: Sequence[str], target: Sequence[str], mode: str = "dense", *,
                  weights: Sequence[float] = scoring.DEFAULT_WEIGHTS, max_length: int = 512,
                  batch_size: int = 32, encoded=None) -> tuple[np.ndarray, np.ndarray]:
    """All-pairs scores source→target and target→source (the multi-vector score is asymmetric)."""
    src, tgt = encoded if encoded is not None else (
        model.encode(list(source), max_length=max_length, batch_size=batch_size),
        model.encode(list(target), max_length=max_length, batch_size=batch_size))
    comps = _components(mode, weights)
    fwd, bwd = {}, {}
    if "dense" in comps:
        fwd["dense"] = scoring.dense_scores(src.dense, tgt.dense)
        bwd["dense"] = fwd["dense"].T
    if "sparse" in comps:
        fwd["sparse"] = scoring.sparse_scores(src.sparse_csr, tgt.sparse_csr)
        bwd["sparse"] = fwd["sparse"].T
    if "colbert" in comps:
        fwd["colbert"] = scoring.colbert_scores_chunked(src.colbert, tgt.colbert)
        bwd["colbert"] = scoring.colbert_scores_chunked(tgt.colbert, src.colbert)
    if mode != "hybrid":
        return fwd[mode], bwd[mode]
    combine = lambda s: np.asarray(scoring.combine_scores(s.get("dense"), s.get("sparse"), s.get("colbert"),
                                                          weights), dtype=np.float32)
    return combine(fwd), combine(bwd)


def evaluate_bitext(model: M3Model, dataset: BitextDataset, modes: Sequence[str] = ("dense",), *,
                    weights: Sequence[float] = scoring.DEFAULT_WEIGHTS, max_length: int = 512, batch_size: int = 32,
                    dataset_label: str = "tatoeba", show_progress: bool = True) -> list[dict]:
    """Bitext-mining accuracy both ways: ``accuracy_xx_en`` (each source sentence's nearest English
    sentence is its translation), ``accuracy_en_xx`` (the reverse) and their mean ``accuracy``."""
    modes = check_modes(modes, BITEXT_MODES)
    if len(dataset) == 0:
        raise ValueError(f"bitext {dataset.name!r} is empty")
    comps = sorted({c for m in modes for c in _components(m, weights)})
    kw = dict(max_length=max_length, batch_size=batch_size, return_dense="dense" in comps,
              return_sparse="sparse" in comps, return_colbert="colbert" in comps,
              show_progress=show_progress and len(dataset) > 8 * batch_size)
    encoded = (model.encode(dataset.source, **kw), model.encode(dataset.target, **kw))
    gold = np.arange(len(dataset))
    rows = []
    for m in modes:
        fwd, bwd = bitext_scores(model, dataset.source, dataset.target, m, weights=weights, encoded=encoded)
        xx_en = float(np.mean(np.argmax(fwd, axis=1) == gold))
        en_xx = float(np.mean(np.argmax(bwd, axis=1) == gold))
        rows.append({"dataset": dataset_label, "language": dataset.language, "mode": m,
                     "accuracy": (xx_en + en_xx) / 2, "accuracy_xx_en": xx_en, "accuracy_en_xx": en_xx,
                     "n_pairs": len(dataset)})
    return rows


# ----------------------------------------------------------------------------- data sets by name

def dataset_languages(dataset: str) -> tuple[str, ...]:
    """The languages ``dataset`` accepts (``()`` for a BEIR folder, which has no language choice)."""
    kind = dataset_kind(dataset)
    return {"xquad": XQUAD_LANGUAGES, "xquad-cross": XQUAD_LANGUAGES, "xquad-long": XQUAD_LANGUAGES,
            "mini": MINI_LANGUAGES, "tatoeba": TATOEBA_LANGUAGES, "beir": ()}[kind]


def default_languages(dataset: str) -> tuple[str, ...]:
    kind = dataset_kind(dataset)
    return DEFAULT_TATOEBA if kind == "tatoeba" else (None,) if kind == "beir" else dataset_languages(dataset)


def dataset_kind(dataset: str) -> str:
    """``xquad``, ``xquad-cross``, ``xquad-long``, ``mini``, ``tatoeba`` or ``beir`` (for ``beir:PATH``)."""
    if dataset.startswith("beir:"):
        if not dataset[5:]:
            raise ValueError("beir:PATH needs the path of a BEIR folder, e.g. beir:./scifact")
        return "beir"
    if dataset not in DATASETS[:-1]:
        raise ValueError(f"unknown dataset {dataset!r}; the datasets are {', '.join(DATASETS)}")
    return dataset


def check_languages(dataset: str, languages: Sequence[str] | None) -> list[str | None]:
    """The languages to evaluate (the data set's defaults when ``None``), each validated."""
    kind = dataset_kind(dataset)
    if not languages:
        return list(default_languages(dataset))
    if kind == "beir":
        raise ValueError("a BEIR folder has no language choice: leave out --languages")
    valid = dataset_languages(dataset)
    out = []
    for lang in languages:
        if kind == "tatoeba":
            try:
                lang = tatoeba_code(lang)
            except ValueError:
                raise ValueError(f"unknown language {lang!r} for tatoeba; use ISO 639-1 (de) or the LASER "
                                 f"ISO 639-3 codes: {', '.join(valid)}") from None
        elif lang not in valid:
            raise ValueError(f"unknown language {lang!r} for {dataset}; the languages are {', '.join(valid)}")
        out.append(lang)
    return list(dict.fromkeys(out))


def load_dataset(dataset: str, language: str | None, *, split: str = "all",
                 data_dir: str | Path | None = None) -> RetrievalDataset | BitextDataset:
    """One language of a named data set, through :mod:`m3lab.data`.

    ``xquad-cross``: ``language``'s questions against the English paragraphs. ``mini`` has no
    split; a BEIR folder's ``all`` means its ``test`` qrels.
    """
    kind = dataset_kind(dataset)
    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be all, train or test, got {split!r}")
    if kind == "xquad":
        return load_xquad(language, split=split, data_dir=data_dir)
    if kind == "xquad-cross":
        return load_xquad(language, corpus_language="en", split=split, data_dir=data_dir)
    if kind == "xquad-long":
        return load_xquad_long(language, split=split, data_dir=data_dir)
    if kind == "tatoeba":
        return load_tatoeba(language, split=split, data_dir=data_dir)
    if kind == "mini":
        if split != "all":
            raise ValueError("the mini corpus has no train/test split: use --split all")
        return load_mini(language)
    return load_beir(dataset[5:], split="test" if split == "all" else split)


# ----------------------------------------------------------------------------- output

def format_table(results: Sequence[dict]) -> str:
    """Markdown tables (values × 100): rows = data set / language, columns = mode × metric.

    Retrieval and bitext results get one table each; a data set with several languages gets
    an ``avg`` row.
    """
    retrieval = {"ndcg@10": "nDCG@10", "recall@10": "R@10", "recall@100": "R@100", "mrr@10": "MRR@10"}
    bitext = {"accuracy_xx_en": "acc xx→en", "accuracy_en_xx": "acc en→xx"}
    tables = [_table([r for r in results if "ndcg@10" in r], retrieval),
              _table([r for r in results if "accuracy" in r], bitext)]
    return "\n\n".join(t for t in tables if t)


def _table(rows: Sequence[dict], metrics: dict[str, str]) -> str:
    if not rows:
        return ""
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    cell = {(r["dataset"], r["language"], r["mode"]): r for r in rows}
    header = ["dataset", "language"] + [f"{m} {label}" for m in modes for label in metrics.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 2)]

    def line(name: str, lang: str, values: list[float | None]) -> str:
        return f"| {name} | {lang} | " + " | ".join("" if v is None else f"{100 * v:.2f}" for v in values) + " |"

    keys = list(dict.fromkeys((r["dataset"], r["language"]) for r in rows))
    for ds in dict.fromkeys(d for d, _ in keys):
        langs = [lang for d, lang in keys if d == ds]
        for lang in langs:
            values = [cell.get((ds, lang, m), {}).get(k) for m in modes for k in metrics]
            lines.append(line(ds, lang if lang is not None else "-", values))
        if len(langs) > 1:  # the mean over languages, where every language has the value
            values = []
            for m in modes:
                for k in metrics:
                    got = [cell[(ds, lang, m)].get(k) for lang in langs if (ds, lang, m) in cell]
                    complete = len(got) == len(langs) and all(v is not None for v in got)
                    values.append(float(np.mean(got)) if complete else None)
            lines.append(line(ds, "**avg**", values))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the command

def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate retrieval (XQuAD, mini, BEIR) or bitext mining (Tatoeba)",
                       description="Evaluate a model; prints a markdown table and writes the results as JSON.")
    p.add_argument("--model", default="default", help="model directory, hub id, 'default' or 'minilm' (default: default)")
    p.add_argument("--dataset", default="xquad",
                   help="xquad, xquad-cross (questions vs the English paragraphs), tatoeba, xquad-long, mini or "
                        "beir:PATH (default: xquad)")
    p.add_argument("--languages", default=None,
                   help="comma-separated languages (default: all of the data set's; tatoeba: XQuAD's except en)")
    p.add_argument("--modes", default=None,
                   help=f"comma-separated, from {', '.join(RETRIEVAL_MODES)} (default: dense,sparse,colbert,hybrid; "
                        "dense only for a model without trained M3 heads)")
    p.add_argument("--pooling", choices=["cls", "mean"], default=None, help="override the checkpoint's pooling")
    p.add_argument("--max-length", type=int, default=512, help="max tokens per text (default 512)")
    p.add_argument("--split", choices=["all", "train", "test"], default="all",
                   help="XQuAD: articles 1-24 (train) or 25-48 (test); Tatoeba: a seeded half (default: all)")
    p.add_argument("--data-dir", default=None, help="folder with xquad/ and tatoeba/ (default: $M3LAB_DATA_DIR, "
                                                    "else the cache, downloading when online)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the results to this JSON file")
    p.add_argument("--weights", default="1,0.3,1", help="hybrid weights w_dense,w_sparse,w_colbert (default 1,0.3,1)")
    p.add_argument("--candidates", type=int, default=100, help="hybrid: dense and sparse top-k candidates (default 100)")
    p.add_argument("--top-k", type=int, default=100, help="ranking depth scored (default 100)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dense-index", choices=["flat", "ivf", "hnsw"], default="flat")
    p.add_argument("--mcls", action="store_true", help="encode documents with a [CLS] every 256 tokens (appendix B.2)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--allow-untrained-heads", action="store_true",
                   help="evaluate sparse/colbert/hybrid even for a model without trained M3 heads")
    p.set_defaults(func=run_eval)


def _split_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def run_eval(args: argparse.Namespace) -> int:
    """``m3lab eval``: validate everything, load the model once, evaluate each language, print and save."""
    dataset = args.dataset
    kind = dataset_kind(dataset)
    languages = check_languages(dataset, _split_list(args.languages))
    bitext = kind == "tatoeba"
    modes = check_modes(_split_list(args.modes) or list(INDEX_MODES), BITEXT_MODES if bitext else RETRIEVAL_MODES)
    try:
        weights = tuple(float(w) for w in args.weights.split(","))
    except ValueError:
        raise ValueError(f"--weights must be three numbers like 1,0.3,1, got {args.weights!r}") from None
    if len(weights) != 3:
        raise ValueError(f"--weights must be three numbers (dense, sparse, colbert), got {args.weights!r}")
    if args.max_length < 2:
        raise ValueError(f"--max-length must be >= 2, got {args.max_length}")

    model = None
    if any(m != "bm25" for m in modes):
        model = M3Model.from_pretrained(args.model, pooling=args.pooling, device=args.device)
        if not model.heads_trained and any(m in _NEEDS_HEADS for m in modes) and not args.allow_untrained_heads:
            dropped = [m for m in modes if m in _NEEDS_HEADS]
            modes = [m for m in modes if m not in _NEEDS_HEADS]
            print(f"m3lab eval: {args.model} has no trained M3 heads (a plain encoder): evaluating "
                  f"{', '.join(modes) or 'nothing'} and skipping {', '.join(dropped)} "
                  "(pass --allow-untrained-heads to score them anyway)", file=sys.stderr)
            if not modes:
                raise ValueError("no mode left to evaluate: add dense or a BM25 mode, or --allow-untrained-heads")
    settings = {"max_length": args.max_length, "pooling": model.pooling if model else None, "split": args.split,
                "weights": list(weights), "candidates": args.candidates, "top_k": args.top_k,
                "dense_index": args.dense_index, "mcls": args.mcls}
    logger.info("m3lab eval: %s on %s (%s), modes %s", model or "BM25", dataset,
                ", ".join(str(x) for x in languages), ", ".join(modes))

    results: list[dict] = []
    indexes: dict[str, CorpusIndex] = {}  # by corpus hash: xquad-cross reuses the English index
    for i, lang in enumerate(languages, 1):
        t0 = time.perf_counter()
        data = load_dataset(dataset, lang, split=args.split, data_dir=args.data_dir)
        if bitext:
            rows = evaluate_bitext(model, data, modes, weights=weights, max_length=args.max_length,
                                   batch_size=args.batch_size, dataset_label=dataset)
            size = f"{len(data)} pairs"
        else:
            target: M3Model | CorpusIndex | None = model
            index_modes = [m for m in modes if m in INDEX_MODES]
            if index_modes and kind == "xquad-cross":
                key = corpus_fingerprint(data.corpus)
                if key not in indexes:
                    store = sorted({c for m in index_modes for c in _components(m, weights)})
                    indexes[key] = CorpusIndex.build(model, data.corpus, max_length=args.max_length,
                                                     batch_size=args.batch_size, dense_index=args.dense_index,
                                                     store=store, mcls=args.mcls)
                target = indexes[key]
            rows = evaluate_retrieval(target, data, modes, top_k=args.top_k, weights=weights,
                                      candidates=args.candidates, max_length=args.max_length,
                                      batch_size=args.batch_size, dense_index=args.dense_index, mcls=args.mcls,
                                      dataset_label=dataset, language=lang)
            size = f"{len(data.corpus)} docs, {rows[0]['n_queries']} queries"
        results.extend(rows)
        summary = ", ".join(f"{r['mode']} {100 * r.get('ndcg@10', r.get('accuracy', 0)):.2f}" for r in rows)
        print(f"[{i}/{len(languages)}] {dataset} {lang or ''} ({size}, {time.perf_counter() - t0:.0f}s): "
              f"{'accuracy' if bitext else 'nDCG@10'} {summary}", file=sys.stderr, flush=True)

    print(format_table(results))
    if args.json:
        write_json(args.json, {"results": results, "model": args.model, "m3lab_version": __version__,
                               "dataset": dataset, "settings": settings})
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
