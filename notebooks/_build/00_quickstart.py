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
# *Running it.* As is, the notebook does the real run (about a minute on a laptop CPU). With the
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
# `"default"` names the model m3lab ships (`data/models/m3lab-minilm`, a MiniLM-L6 trained with
# m3lab's recipe, see notebook 04). Until it is there, the same name loads the MiniLM-L6 backbone
# with **untrained** sparse and multi-vector heads: its dense vectors are good (it is a trained
# sentence embedder), its lexical and multi-vector scores are not yet meaningful. The line below
# says which one you have. Any bge-m3-layout directory or hub id works the same way, e.g.
# `M3Model.from_pretrained("BAAI/bge-m3")` when online (notebook 07).

# %%
with run.section("load model"):
    model = M3Model.from_pretrained("default")
print(ex.describe_model(model))

# %% [markdown]
# ## 2. Encode: three representations per text
#
# `encode` returns NumPy arrays: `dense` (n × d, unit length), `sparse` (one `{token id: weight}` per
# text; also `sparse_csr`, an n × vocabulary matrix) and `colbert` (one (tokens−1) × d array per text).

# %%
query = "How do plants turn sunlight into chemical energy?"
passages = [
    "Photosynthesis is the process by which plants, algae and some bacteria convert light energy into "
    "chemical energy, using carbon dioxide and water to make glucose and releasing oxygen.",
    "A solar panel converts sunlight into electricity using photovoltaic cells made of silicon.",
    "The Great Wall of China is a series of fortifications built across the northern borders of ancient China.",
]
q = model.encode([query])
p = model.encode(passages)
print("dense:  ", p.dense.shape, "| norm of row 0 =", round(float((p.dense[0] ** 2).sum() ** 0.5), 4))
print("sparse: ", len(p.sparse), "dicts; passage 0 has", len(p.sparse[0]), "weighted tokens; csr", p.sparse_csr.shape)
print("colbert:", [c.shape for c in p.colbert])

# %% [markdown]
# The lexical weights are per token: `m3lab.viz.inspect.token_weights` names them, heaviest first.

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
# **What it shows.** The photosynthesis passage wins on every function and the unrelated passage
# loses. Dense and multi-vector scores are cosines: related texts sit well above unrelated ones, and
# it is the *order* that matters, not the size. Lexical scores are small sums of products of token
# weights — large only when weighty content words are shared, exactly 0 when nothing is. In the
# stacked hybrid bar each colour is one weighted term $w_i s_i$; the bar's height is their sum.

# %% [markdown]
# ## 4. Hybrid search over the mini corpus
#
# The mini corpus ships with m3lab: short encyclopedic passages on everyday topics, each written in
# six languages (en, de, es, zh, ar, ru) with questions the passage answers. `CorpusIndex.build`
# encodes it once and stores the three representations: dense vectors in a faiss index, the
# lexical weights as an inverted index, the multi-vectors in one contiguous array.

# %%
data = load_mini(languages=cfg.languages)
docs = data.corpus[: cfg.max_docs] if cfg.max_docs else data.corpus
print(data, "->", len(docs), "documents indexed")
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
# **What it shows.** The English passage is first in every mode. Its translations are found by the
# dense and multi-vector functions as far as the model carries meaning across languages: the
# default model is MiniLM with an *English* WordPiece vocabulary, so Spanish and German come right
# after, Chinese a little later, while Arabic and Russian fall far behind — their scripts break
# into unknown or single-character tokens. The lexical function matches only shared tokens: it
# finds the Latin-script translations late (through shared subwords) and cannot score the others at
# all ("-": no shared token). The hybrid rank follows dense and multi-vector and adds lexical's
# exact matches. Each hybrid bar above is the sum of its result's weighted terms.
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
    question_xy = projection.transform(model.encode([question], return_sparse=False, return_colbert=False).dense,
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
# **What it shows.** Asked in German, the German passage of the topic comes first; here the
# lexical function helps too, because the question and the passage share German words.

# %% [markdown]
# ## Take-aways
#
# * One `encode` call yields all three representations; `score` and `CorpusIndex.search` combine
#   them with the paper's weights, and every component score stays visible.
# * Dense retrieval carries across languages; lexical retrieval needs shared tokens and is exact
#   about them; multi-vector scores each query token against its best passage token (notebook 01).
# * Next: notebook 01 takes each function apart; 04 trains the heads so all three become useful.

# %%
run.report();
