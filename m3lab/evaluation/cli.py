"""Evaluation: retrieval metrics, bitext mining and the ``m3lab eval`` command.

Retrieval (XQuAD same-language and cross-lingual, XQuAD long documents, the mini corpus, any
BEIR folder): every mode of :class:`m3lab.retrieval.CorpusIndex` (dense, sparse, colbert, hybrid —
paper section 3.2) and the BM25 baselines of :mod:`m3lab.retrieval.bm25`. The metrics come from
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
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import __version__
from .._io import write_json
from ..modeling import M3Model
from ..retrieval.index import MODES as INDEX_MODES
from ..retrieval.index import CorpusIndex, corpus_fingerprint
from ..retrieval.spec import PRESETS, options_for_store, parse_index_spec
from ..retrieval.ranker import mode_functions
from .bitext import BITEXT_MODES, evaluate_bitext
from .datasets import check_languages, dataset_kind, load_dataset
from .retrieval import _NEEDS_HEADS, RETRIEVAL_MODES, check_modes, evaluate_retrieval

logger = logging.getLogger("m3lab")


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


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate retrieval (XQuAD, mini, BEIR) or bitext mining (Tatoeba)",
                       description="Evaluate a model; prints a markdown table and writes the results as JSON.")
    p.add_argument("--model", default="default", help="model directory, hub id, or a short name: 'default', 'e5-small', 'minilm' (default: default)")
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
    p.add_argument("--index-spec", default=None, metavar="SPEC",
                   help="index storage: a preset (" + ", ".join(PRESETS) + ") and/or key=value options, e.g. "
                        "'compact' or 'muvera,colbert_dtype=int8' (default: exact float32; see docs/evaluation.md)")
    p.add_argument("--backend", choices=["memory", "qdrant"], default="memory",
                   help="where the corpus is indexed: m3lab's in-process CorpusIndex (default) or Qdrant "
                        "(QdrantIndex: embedded qdrant-edge under --qdrant-path, or a server at --qdrant-url)")
    p.add_argument("--qdrant-path", default=None, metavar="DIR",
                   help="--backend qdrant: folder for the embedded collections (default: a temporary folder)")
    p.add_argument("--qdrant-url", default=None, metavar="URL", help="--backend qdrant: a Qdrant server or cluster")
    p.add_argument("--mcls", action="store_true", help="encode documents with a [CLS] every 256 tokens (appendix B.2)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--allow-untrained-heads", action="store_true",
                   help="evaluate sparse/colbert/hybrid even for a model without trained M3 heads")
    p.set_defaults(func=run_eval)


def _qdrant_index(model, data, args: argparse.Namespace, folder: Path | None):
    """A QdrantIndex of ``data``'s corpus, one collection per corpus (built once, resumed or reused after)."""
    from ..retrieval.qdrant import QdrantIndex

    key = corpus_fingerprint(data.corpus)[:16]
    where = {"url": args.qdrant_url} if args.qdrant_url else {"path": folder / key}
    return QdrantIndex.build(model, data.corpus, collection=f"m3lab-eval-{key}", max_length=args.max_length,
                             batch_size=args.batch_size, colbert_dtype="float32", **where)


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
    spec = parse_index_spec(args.index_spec)
    if args.backend == "qdrant" and (spec or args.dense_index != "flat" or args.mcls or bitext):
        raise ValueError("--backend qdrant stores every function as Qdrant does: it takes no --index-spec, "
                         "--dense-index or --mcls, and evaluates retrieval datasets (not tatoeba)")

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
                "dense_index": args.dense_index, "mcls": args.mcls, "index_spec": args.index_spec, "backend": args.backend}
    logger.info("m3lab eval: %s on %s (%s), modes %s", model or "BM25", dataset,
                ", ".join(str(x) for x in languages), ", ".join(modes))

    qdrant_dir = None
    if args.backend == "qdrant" and args.qdrant_url is None:
        qdrant_dir = Path(args.qdrant_path) if args.qdrant_path else Path(tempfile.mkdtemp(prefix="m3lab-eval-qdrant-"))
    opened: list = []  # Qdrant indexes, closed at the end (a temporary folder is removed then)
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
            if index_modes and args.backend == "qdrant":
                target = _qdrant_index(model, data, args, qdrant_dir)
                opened.append(target)
            elif index_modes and kind == "xquad-cross":
                key = corpus_fingerprint(data.corpus)
                if key not in indexes:
                    store = sorted({c for m in index_modes for c in mode_functions(m, weights)})
                    options = {"dense_index": args.dense_index, "colbert_dtype": "float32",
                               **options_for_store(spec, store)}
                    indexes[key] = CorpusIndex.build(model, data.corpus, max_length=args.max_length,
                                                     batch_size=args.batch_size, store=store, mcls=args.mcls,
                                                     **options)
                target = indexes[key]
            rows = evaluate_retrieval(target, data, modes, top_k=args.top_k, weights=weights,
                                      candidates=args.candidates, max_length=args.max_length,
                                      batch_size=args.batch_size, dense_index=args.dense_index, mcls=args.mcls,
                                      dataset_label=dataset, language=lang, index_spec=spec)
            size = f"{len(data.corpus)} docs, {rows[0]['n_queries']} queries"
        results.extend(rows)
        summary = ", ".join(f"{r['mode']} {100 * r.get('ndcg@10', r.get('accuracy', 0)):.2f}" for r in rows)
        print(f"[{i}/{len(languages)}] {dataset} {lang or ''} ({size}, {time.perf_counter() - t0:.0f}s): "
              f"{'accuracy' if bitext else 'nDCG@10'} {summary}", file=sys.stderr, flush=True)

    for index in opened:
        index.close()
    if qdrant_dir is not None and not args.qdrant_path:
        shutil.rmtree(qdrant_dir, ignore_errors=True)
    print(format_table(results))
    if args.json:
        write_json(args.json, {"results": results, "model": args.model, "m3lab_version": __version__,
                               "dataset": dataset, "settings": settings})
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
