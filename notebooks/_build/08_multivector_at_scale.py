# Source of notebooks/08_multivector_at_scale.ipynb (build with: python notebooks/_build/build.py 08 --execute)

# %% [markdown]
# # 08 · Multi-vector retrieval at scale: what can be dropped, and what it costs
#
# **The question.** The multi-vector function (MaxSim, paper eq. 3) is M3's best single function,
# and also the one that cannot grow: one vector per token, ~200 per XQuAD passage, 300 kB per
# passage in float32, and exhaustive MaxSim touches every one of them per query. Which of the
# known remedies keeps its quality?
#
# * **fewer bits**: float16, int8 with a scale per vector;
# * **fewer vectors**: hierarchical token pooling (PyLate), k-means centroids (CRISP), pruning of
#   content-free tokens or of the tokens the lexical head weighs least;
# * **fewer dimensions**: Matryoshka truncation (the default model was not trained for it);
# * **a cheaper first stage**: MUVERA fixed-dimensional encodings, one vector per document, whose
#   top candidates exact MaxSim reranks;
# * and for the dense function: int8 and binary codes with float rescoring.
#
# Every variant is one `CorpusIndex.build(...)` spec, built from **one** encoding of the corpus
# (`encodings=`), and measured by `m3lab.evaluation.tradeoffs.compare_variants` against the
# exhaustive float32 ranking of the same function: recall@10 / recall@100 of its top 10, nDCG@10 on
# the qrels, single-query latency (query encoding included), bytes per document.
#
# `SMOKE=1` runs the mini corpus on a few queries; the cpu profile three XQuAD languages. The full
# benchmark (12 languages, and a 160,958-text haystack) is `benchmarks/index_tradeoffs.py`; its
# committed results are plotted at the end.

# %%
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import pandas as pd
from IPython.display import Markdown, display

from m3lab import M3Model, experiments as ex, plots
from m3lab.data import Document, load_mini, load_xquad
from m3lab.evaluation.tradeoffs import VARIANTS, compare_variants, tradeoff_goals

run = ex.start_run()
cfg = ex.settings(
    smoke=dict(corpus="mini", languages=["en"], queries=12, latency_queries=4,
               variants=["exhaustive-colbert", "colbert-int8-pool2", "muvera-fp16-c100", "dense-float32",
                         "dense-binary"]),
    cpu=dict(corpus="xquad", languages=["en", "de", "zh"], queries=300, latency_queries=30,
             variants=[v.name for v in VARIANTS if v.name not in ("muvera-r20-fp16-c500",)]),
)
display(Markdown(ex.settings_table(cfg)))

# %%
with run.section("load model and corpus"):
    model = M3Model.from_pretrained("default")
    documents, queries, qrels = [], [], {}
    have_data = cfg.corpus == "mini" or ex.require_data("XQuAD") is not None
    for lang in cfg.languages if have_data else []:
        ds = load_mini(lang) if cfg.corpus == "mini" else load_xquad(lang)
        documents += [Document(f"{lang}/{d.id}", d.text, lang, d.title) for d in ds.corpus]
        for q in ds.queries:
            queries.append((f"{lang}/{q.id}", q.text))
            qrels[f"{lang}/{q.id}"] = {f"{lang}/{d}": r for d, r in ds.qrels[q.id].items()}
print(ex.describe_model(model))
print(f"{len(documents):,} documents, {len(queries):,} queries ({', '.join(cfg.languages)})")

# %% [markdown]
# ## Every variant against exhaustive scoring
#
# One encoding of the corpus, then one index per variant. `recall@100` of a MUVERA variant is the
# share of exhaustive MaxSim's top 10 among its reranked candidates; `bytes_per_doc` counts every
# structure the variant stores.

# %%
if have_data:
    with run.section("compare variants"):
        wanted = [v for v in VARIANTS if v.name in cfg.variants]
        records = compare_variants(model, cfg.corpus, documents, queries, qrels, variants=wanted,
                                   n_queries=cfg.queries, n_latency=cfg.latency_queries, log=lambda s: None)
    table = pd.DataFrame(records)[["variant", "mode", "recall@10", "recall@100", "ndcg@10", "p50_ms", "p95_ms",
                                   "bytes_per_doc", "build_own_s"]]
    display(table.set_index("variant").round(3))

# %% [markdown]
# ## Quality against latency, quality against bytes
#
# Points on the dotted line are the Pareto front: no other variant is both cheaper and better.

# %%
if have_data:
    ex.show(plots.tradeoff_scatter(records, x="p50_ms", y="ndcg@10",
                                   title="nDCG@10 against single-query latency (p50, ms)"))
    ex.show(plots.tradeoff_scatter([r for r in records if r["mode"] in ("colbert", "hybrid")], x="bytes_per_doc",
                                   y="ndcg@10", title="Multi-vector variants: nDCG@10 against bytes per document"))
    ex.show(plots.tradeoff_scatter([r for r in records if r["mode"] == "colbert"], x="bytes_per_doc",
                                   y="recall@10", title="Multi-vector variants: recall@10 of exhaustive MaxSim"))

# %% [markdown]
# ## The full benchmark: 12 languages and a 160,958-text haystack
#
# `benchmarks/index_tradeoffs.py` ran the same comparison on the 12-language XQuAD corpus (2,880
# passages) and on a haystack of those passages plus every distinct Tatoeba sentence of 112
# languages. Its committed results, and the goals:

# %%
results = Path(os.environ.get("M3LAB_ROOT", Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()))
results = results / "benchmarks" / "results" / "index_tradeoffs.json"
if results.is_file():
    bench = json.loads(results.read_text())
    for corpus in ("xquad", "haystack"):
        part = [r for r in bench if r["corpus"] == corpus]
        if part:
            ex.show(plots.tradeoff_scatter(part, x="p50_ms", y="ndcg@10",
                                           title=f"{corpus} ({part[0]['documents']:,} documents): nDCG@10 "
                                                 "against latency (p50, ms)"))
    for text, met, detail in tradeoff_goals(bench):
        print(f"{'met' if met else 'NOT met' if met is False else 'not measured'}: {text}\n    {detail}")
else:
    print(f"SKIPPED: {results} is not there (run benchmarks/index_tradeoffs.py)")

# %% [markdown]
# **What it shows.** *(Read with the tables: they come from this run and the committed benchmark.)*
# Precision is nearly free: float16 and int8 multi-vectors rank as float32 does (recall@10 of the
# exhaustive top 10 at 0.997 or more, nDCG@10 within 0.1 point). On a CPU float16 is the *slower*
# store, because every block is cast to float32 before its matrix product; int8 and pooling, which
# shrink what is read, are faster. Halving the vectors by hierarchical pooling costs under half a
# point of nDCG@10, and int8 plus pooling by 2 is about 8x smaller than float32. CRISP's k-means
# centroids at the same size rank a little below hierarchical pooling and take longer to build.
# Pruning half the tokens by their lexical weight loses more than pooling at the same size: a
# token the lexical head ignores can still be the best match of a query token; stop-token pruning
# drops about a tenth of the vectors at no cost. Matryoshka truncation to 192 dimensions costs the
# dense function several points, because this model was never trained for it (`matryoshka_dims`
# in training is the fix). MUVERA turns MaxSim's cost from "every vector" into "one inner product
# per document plus a rerank"; on XQuAD 500 reranked candidates hold 0.98 of the exhaustive top 10,
# but on the haystack, where 158,000 short sentences crowd the FDE ranking, far fewer, and the
# speed-up stays under the 10x the issue asks for. Binary dense codes are 32x smaller; rescoring
# the top candidates with the float query recovers only part of what the codes lose (about 80 % of
# float nDCG@10, against the 95 % asked), and rescoring 10x more candidates changes little: the
# rescore multiplies the float query with each candidate's +-1 code, as sentence-transformers does,
# so the document side stays one bit per dimension. Keeping float vectors (or int8) for the rerank
# is what closes that gap, at their size.
#
# ## Take-aways
#
# * Store multi-vectors as int8 (or float16), pooled by 2: most of the size goes, little quality.
# * On large corpora, put MUVERA in front of MaxSim and rerank a few hundred candidates.
# * Every option is a `CorpusIndex.build` argument, recorded in the manifest (`m3lab index info`),
#   and a spec string for `m3lab eval --index-spec` and the app's Corpus view.

# %%
run.report();
