"""Index trade-offs (issue 14): every storage/search variant against exhaustive scoring, on XQuAD and a 100k+ haystack.

For each variant (a :meth:`CorpusIndex.build` spec and a search mode) on each corpus it reports
recall@10 and recall@100 of the exhaustive ranking of the same function (the share of the
exhaustive top 10 found in the variant's top 10 / top 100; hybrid variants against exhaustive
hybrid), nDCG@10 on the qrels, p50/p95 single-query latency including query encoding
(``CorpusIndex.search``), bytes per document (every structure the variant stores) and build time
(the corpus encoding, measured once per corpus and shared, plus the variant's own build).

Corpora, with the default model:

* ``xquad``: the 12-language XQuAD corpus, 2,880 passages; 11,900 questions (a seeded sample of
  ``--queries`` for the quality columns).
* ``haystack``: those passages plus every distinct Tatoeba sentence of all 112 languages (both
  sides) as distractors; XQuAD's questions as queries, XQuAD's qrels.

The corpus encodings are cached under ``.cache/benchmarks/encodings`` in resumable parts (the
haystack takes about half an hour to encode on 2 cores), so variants are built from one encoding
(``CorpusIndex.build(..., encodings=...)``).

    M3LAB_DATA_DIR=../shared/data python benchmarks/index_tradeoffs.py                # both corpora
    M3LAB_DATA_DIR=../shared/data python benchmarks/index_tradeoffs.py --corpus xquad --queries 500
    python benchmarks/index_tradeoffs.py --encode-only --corpus haystack             # fill the cache

Writes ``benchmarks/results/index_tradeoffs.json`` (a list of records with ``corpus``, ``variant``,
``recall@10``, ``recall@100``, ``ndcg@10``, ``p50_ms``, ``p95_ms``, ``bytes_per_doc``, ``build_s``
and more) and ``index_tradeoffs.md`` (the table, with the issue's goals met or not).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from m3lab._io import write_json  # noqa: E402
from m3lab.data import XQUAD_LANGUAGES, Document, load_xquad  # noqa: E402
from m3lab.data.tatoeba import TATOEBA_LANGUAGES  # noqa: E402
from m3lab.data._files import read_lines  # noqa: E402
from m3lab.data.sources import resolve_data_file  # noqa: E402
from m3lab.modeling import EncodeOutput, M3Model  # noqa: E402
from m3lab.evaluation.tradeoffs import VARIANTS, compare_variants, tradeoff_goals  # noqa: E402

PART = 8192  # documents per cached encoding part


# ---------------------------------------------------------------------- corpora
@dataclass
class Corpus:
    name: str
    documents: list[Document]
    queries: list[tuple[str, str]]           # (query id, text)
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)


def xquad_corpus(data_dir: str | None) -> Corpus:
    docs, queries, qrels = [], [], {}
    for lang in XQUAD_LANGUAGES:
        ds = load_xquad(lang, data_dir=data_dir)
        docs += [Document(f"{lang}/{d.id}", d.text, lang) for d in ds.corpus]
        for q in ds.queries:
            qid = f"{lang}/{q.id}"
            queries.append((qid, q.text))
            qrels[qid] = {f"{lang}/{d}": r for d, r in ds.qrels[q.id].items()}
    return Corpus("xquad", docs, queries, qrels)


def haystack_corpus(data_dir: str | None) -> Corpus:
    """XQuAD plus every distinct Tatoeba sentence (112 languages and their English sides)."""
    base = xquad_corpus(data_dir)
    seen = {d.text for d in base.documents}
    extra = []
    for code in TATOEBA_LANGUAGES:
        for side in (code, "eng"):
            path = resolve_data_file("tatoeba", f"tatoeba.{code}-eng.{side}", data_dir=data_dir)
            for i, line in enumerate(read_lines(path)):
                text = line.strip()
                if text and text not in seen:
                    seen.add(text)
                    extra.append(Document(f"tatoeba/{code}-eng.{side}/{i}", text, side))
    return Corpus("haystack", base.documents + extra, base.queries, base.qrels)


# ---------------------------------------------------------------------- encodings, cached in parts
def encode_cached(model: M3Model, name: str, texts: list[str], cache: Path, *, kind: str, max_length: int,
                  batch_size: int = 64) -> tuple[EncodeOutput, float]:
    """All three encodings of ``texts`` (as passages or queries), from the cache or encoded in
    resumable parts; returns them and the seconds the encoding took (recorded with the parts)."""
    from m3lab.retrieval import model_fingerprint

    folder = cache / f"{name}-{kind}-{model_fingerprint(model)[:16]}-L{max_length}-n{len(texts)}"
    folder.mkdir(parents=True, exist_ok=True)
    encode = model.encode_corpus if kind == "passage" else model.encode_queries
    n_parts = -(-len(texts) // PART)
    seconds = 0.0
    bar = tqdm(total=len(texts), desc=f"encode {name} ({kind}s)", unit="text")
    for p in range(n_parts):
        file = folder / f"part-{p:05d}.npz"
        chunk = texts[p * PART:(p + 1) * PART]
        if not file.is_file():
            t = time.perf_counter()
            out = encode(chunk, batch_size=batch_size, max_length=max_length, show_progress=False)
            dt = time.perf_counter() - t
            csr = out.sparse_csr
            tmp = folder / f".part-{p:05d}.tmp.npz"
            np.savez(tmp, dense=out.dense, sp_data=csr.data, sp_indices=csr.indices, sp_indptr=csr.indptr,
                     lengths=np.array([len(c) for c in out.colbert], dtype=np.int64),
                     colbert=np.concatenate(out.colbert).astype(np.float32),
                     token_ids=np.concatenate(out.colbert_token_ids).astype(np.int64), seconds=np.float64(dt))
            os.replace(tmp, file)
        bar.update(len(chunk))
    bar.close()
    dense, csrs, colbert, token_ids, lengths = [], [], [], [], []
    for p in range(n_parts):
        with np.load(folder / f"part-{p:05d}.npz") as z:
            seconds += float(z["seconds"])
            dense.append(z["dense"])
            csrs.append(sp.csr_matrix((z["sp_data"], z["sp_indices"], z["sp_indptr"]),
                                      shape=(len(z["dense"]), model.vocab_size)))
            colbert.append(z["colbert"])
            token_ids.append(z["token_ids"])
            lengths.append(z["lengths"])
    csr = sp.vstack(csrs, format="csr")
    vectors, ids = np.concatenate(colbert), np.concatenate(token_ids)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.concatenate(lengths))
    sparse = [dict(zip(csr.indices[csr.indptr[i]:csr.indptr[i + 1]].tolist(),
                       csr.data[csr.indptr[i]:csr.indptr[i + 1]].tolist())) for i in range(len(texts))]
    out = EncodeOutput(dense=np.concatenate(dense), sparse=sparse,
                       colbert=[vectors[offsets[i]:offsets[i + 1]] for i in range(len(texts))],
                       input_ids=[ids[offsets[i]:offsets[i + 1]] for i in range(len(texts))],
                       vocab_size=model.vocab_size,
                       colbert_token_ids=[ids[offsets[i]:offsets[i + 1]] for i in range(len(texts))])
    out.__dict__["sparse_csr"] = csr  # the cached_property, already known
    return out, seconds


def load_corpus(name: str, data_dir: str | None) -> Corpus:
    return xquad_corpus(data_dir) if name == "xquad" else haystack_corpus(data_dir)


ORDER = {v.name: i for i, v in enumerate(VARIANTS)}


def markdown(records: list[dict], header: str) -> str:
    lines = [header, "",
             "| corpus | variant | recall@10 | recall@100 | nDCG@10 | p50 ms | p95 ms | bytes/doc | build s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['corpus']} | {r['variant']} | {r['recall@10']:.3f} | {r['recall@100']:.3f} | "
                     f"{100 * r['ndcg@10']:.2f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['bytes_per_doc']:,.0f} | "
                     f"{r['build_s']:.0f} |")
    lines += ["", "Goals:", ""]
    for text, met, detail in tradeoff_goals(records):
        lines.append(f"- {'met' if met else 'not met' if met is False else 'not measured'}: {text} — {detail}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", choices=["xquad", "haystack", "both"], default="both")
    ap.add_argument("--model", default="default")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000, help="queries for the quality columns (seeded sample)")
    ap.add_argument("--haystack-queries", type=int, default=300, help="the same on the haystack")
    ap.add_argument("--latency-queries", type=int, default=50, help="single queries timed per variant")
    ap.add_argument("--variants", default=None, help="comma-separated variant names (default: all)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, i.e. the cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=os.environ.get("M3LAB_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "benchmarks" / "encodings"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "index_tradeoffs.json"))
    ap.add_argument("--encode-only", action="store_true", help="fill the encoding cache and stop")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = M3Model.from_pretrained(args.model)
    out = Path(args.out)
    records = json.loads(out.read_text()) if out.is_file() else []  # other corpora's records are kept
    wanted = set(args.variants.split(",")) if args.variants else None
    unknown = sorted(wanted - set(ORDER)) if wanted else []
    if unknown:
        ap.error(f"unknown variants {unknown}; the variants are {', '.join(ORDER)}")
    for name in (["xquad", "haystack"] if args.corpus == "both" else [args.corpus]):
        corpus = load_corpus(name, args.data_dir)
        print(f"{name}: {len(corpus.documents):,} documents, {len(corpus.queries):,} queries", flush=True)
        encodings, encode_s = encode_cached(model, name, [d.text for d in corpus.documents], Path(args.cache),
                                            kind="passage", max_length=args.max_length)
        print(f"{name}: corpus encoded in {encode_s:.0f} s", flush=True)
        if args.encode_only:
            continue
        queries = args.queries if name == "xquad" else args.haystack_queries
        variants = [v for v in VARIANTS if name in v.corpora and (wanted is None or v.name in wanted)]
        new = compare_variants(model, name, corpus.documents, corpus.queries, corpus.qrels, variants=variants,
                               encodings=encodings, encode_s=encode_s, n_queries=queries,
                               n_latency=args.latency_queries, seed=args.seed, log=lambda s: tqdm.write(s))
        done = {(r["corpus"], r["variant"]) for r in new}
        records = [r for r in records if (r["corpus"], r["variant"]) not in done] + new
        records.sort(key=lambda r: (r["corpus"], ORDER.get(r["variant"], len(ORDER))))  # VARIANTS' order
        header = (f"Index trade-offs, model {args.model!r}, {platform.processor() or platform.machine()}, "
                  f"{torch.get_num_threads()} torch threads, torch {torch.__version__}; "
                  "`python benchmarks/index_tradeoffs.py`")
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, records)
        out.with_suffix(".md").write_text(markdown(records, header), encoding="utf-8")
        print(markdown(records, header), flush=True)


if __name__ == "__main__":
    main()
