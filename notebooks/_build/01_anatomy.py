# Source of notebooks/01_anatomy.ipynb (build with: python notebooks/_build/build.py 01 --execute)

# %% [markdown]
# # 01 · Anatomy of M3: three functions on one set of hidden states
#
# **The question.** What exactly does each of M3's retrieval functions compute, and where in
# m3lab is that code? We follow one query and one passage through the encoder and take each score
# apart into the terms that make it: the dense dot product, the lexical weights of shared tokens,
# and the MaxSim alignment of query tokens to passage tokens. Then two practical pieces: **MCLS**
# for long inputs (paper appendix B.2) and the **bge-m3 checkpoint layout** m3lab reads and writes.
#
# Every number below comes from the library (`m3lab.modeling`, `m3lab.scoring`, `m3lab.viz.inspect`);
# the notebook only shows it. `SMOKE=1` runs a reduced version for CI.

# %%
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import tempfile
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import pandas as pd
import torch
from IPython.display import HTML, Markdown, display

from m3lab import M3Model, experiments as ex, inspect, plots, scoring
from m3lab.data import load_mini
from m3lab.modeling import colbert_embedding, dense_embedding, sparse_token_weights

run = ex.start_run()
cfg = ex.settings(
    smoke=dict(explorer_passages=4, mcls_questions=30),
    cpu=dict(explorer_passages=20, mcls_questions=1000),
)
display(Markdown(ex.settings_table(cfg)))

# %%
with run.section("load model"):
    model = M3Model.from_pretrained("default")
print(ex.describe_model(model))

# %% [markdown]
# ## 1. One forward pass, three outputs
#
# The encoder reads the padded batch once and returns the last hidden states
# $H \in \mathbb{R}^{B \times L \times d}$. Everything else is small heads on $H$:
#
# | function | formula (section 3.2) | m3lab |
# |---|---|---|
# | dense | $e = \mathrm{norm}(H[0])$ ([CLS]; mean pooling for sentence-transformers models) | `model.dense_embedding` |
# | lexical | $w_t = \mathrm{ReLU}(W_{lex}^\top H[t])$, $W_{lex} \in \mathbb{R}^{d \times 1}$ | `model.sparse_token_weights` |
# | multi-vector | $E = \mathrm{norm}(W_{mul}^\top H[1:])$, $W_{mul} \in \mathbb{R}^{d \times d}$ | `model.colbert_embedding` |

# %%
query = "Where in the plant cell does photosynthesis take place?"
topics = load_mini("en")
passage = next(d.text for d in topics.corpus if d.id.startswith("science-photosynthesis"))
ids = model.tokenize([query, passage])
batch = model.collate(ids)
with torch.no_grad():
    H = model.encoder(**batch).last_hidden_state
    emb = model(**batch)
print("input_ids     ", tuple(batch["input_ids"].shape), " (query padded to the passage's length)")
print("H             ", tuple(H.shape))
print("dense         ", tuple(emb.dense.shape))
print("token_weights ", tuple(emb.token_weights.shape))
print("colbert       ", tuple(emb.colbert.shape), " (the [CLS] position is dropped)")

# %% [markdown]
# ## 2. Dense: one vector per text
#
# $s_{dense}(q, p) = \langle e_q, e_p \rangle$ with $e$ the L2-normalised pooled state. The code:

# %%
ex.show_source(dense_embedding)
ex.show_source(scoring.dense_scores)

# %%
e = dense_embedding(H, batch["attention_mask"], model.pooling)
print("pooling:", model.pooling, "| |e| =", e.norm(dim=-1).numpy().round(4),
      "| same as the forward pass:", torch.allclose(e, emb.dense))
print("s_dense =", float(scoring.dense_scores(e[:1], e[1:])[0, 0]))

# %% [markdown]
# ## 3. Lexical: a weight per token, summed over shared tokens
#
# $w_t = \mathrm{ReLU}(W_{lex}^\top H[t])$; special tokens ([CLS], EOS, PAD, UNK) get 0 (a
# BERT-style tokenizer has no EOS, so its [SEP] keeps a weight, exactly as in bge-m3); a token that
# occurs several times keeps its largest weight;
# $s_{lex} = \sum_{t \in q \cap p} w_{q,t}\, w_{p,t}$.

# %%
ex.show_source(sparse_token_weights)

# %%
enc_q = model.encode([query])
enc_p = model.encode([passage])
tokens = model.tokenizer.convert_ids_to_tokens(ids[0])
w = emb.token_weights[0, : len(ids[0])].numpy()
pd.DataFrame({"position": range(len(tokens)), "token": tokens, "w_t": w.round(4)}).T

# %% [markdown]
# The passage, each token shaded by its weight (darker = heavier), and its heaviest tokens:

# %%
enc = model.tokenizer(passage, return_offsets_mapping=True, truncation=True, max_length=512)
display(HTML(plots.weighted_text_html(plots.weighted_spans(passage, enc["offset_mapping"],
                                                           emb.token_weights[1, : len(ids[1])].numpy()))))
ex.show(plots.token_weight_bar(inspect.token_weights(model, enc_p), top=20, title="Passage: heaviest lexical weights"))

# %% [markdown]
# The score is a sum over the shared tokens; `m3lab.viz.inspect.lexical_match` lists each term
# $w_{q,t} w_{p,t}$, and the terms add up to the score `m3lab.scoring.sparse_scores` gives:

# %%
match = inspect.lexical_match(model, enc_q, enc_p)
s_lex = float(scoring.sparse_scores(enc_q.sparse_csr, enc_p.sparse_csr)[0, 0])
print(f"sum of the terms = {match.total:.6f}   s_lex = {s_lex:.6f}")
ex.show(plots.lexical_contribution_bar(match))

# %% [markdown]
# **What it shows.** Only tokens that occur in both texts count, and the bars add up to $s_{lex}$
# exactly. How the weight is spread depends on the head: an *untrained* head (the MiniLM
# backbone's, see the first lines) starts every token near the same weight — m3lab initialises
# $W_{lex}$ small with a bias of 0.3, so $s_{lex}$ starts as a scaled count of shared tokens and
# every token still gets gradient; a *trained* head (notebook 04) gives the content words the
# heavy weights and lets function words fade.
#
# ## 4. Multi-vector: MaxSim of token vectors
#
# $E = \mathrm{norm}(W_{mul}^\top H)$ without the [CLS] position, padding masked;
# $s_{mul} = \frac{1}{N}\sum_{i=1}^{N} \max_j \langle E_q[i], E_p[j] \rangle$, $N$ = the number of
# query vectors. Each query token picks its best passage token:

# %%
ex.show_source(colbert_embedding)
ex.show_source(scoring.colbert_scores)

# %%
align = inspect.maxsim_alignment(model, enc_q, enc_p)
s_mul = float(scoring.colbert_scores_chunked(enc_q.colbert, enc_p.colbert)[0, 0])
print(f"sum of the contributions = {align.contributions.sum():.6f}   s_mul = {s_mul:.6f}")
pd.DataFrame({"query token": align.query_tokens, "best passage token": [align.passage_tokens[j] for j in align.best],
              "similarity": align.similarity.max(axis=1).round(3), "contribution": align.contributions.round(4)})

# %%
ex.show(plots.maxsim_heatmap(align, max_passage_tokens=80))

# %% [markdown]
# **Explore it.** Pick a passage (and edit the query): the map shows every query-token ×
# passage-token similarity, the red squares each query token's best match, the bars its share of
# $s_{mul}$. (The widget needs a running kernel; the static map above is the first passage.)

# %%
explore_docs = topics.corpus[: cfg.explorer_passages]
explore_enc = model.encode([d.text for d in explore_docs])
picker = widgets.Dropdown(options=[(d.title or d.id, i) for i, d in enumerate(explore_docs)], description="passage")
query_box = widgets.Text(value=query, description="query", layout=widgets.Layout(width="80%"))
view = widgets.Output()


def redraw(*_):
    q = model.encode([query_box.value or " "])
    a = inspect.maxsim_alignment(model, q, explore_enc, 0, picker.value)
    view.clear_output(wait=True)
    with view:
        ex.show(plots.maxsim_heatmap(a, max_passage_tokens=80), png=False)


picker.observe(redraw, names="value")
query_box.observe(redraw, names="value")
display(widgets.VBox([query_box, picker, view]))
redraw()

# %% [markdown]
# **What it shows.** Query tokens that also occur in the passage (the pieces of *photosynthesis*,
# *plant*, *place*) align to themselves with the highest similarities; the others find their
# nearest passage token — often a related form (*take* → *takes*). Every query token contributes
# 1/N of its best similarity, so a query whose tokens all find a close match scores high. Even an
# untrained head ($W_{mul}$ = identity) gives informative alignments: the vectors are then the
# normalised hidden states, which are already contextual.
#
# ## 5. MCLS: several [CLS] tokens for a long input (appendix B.2)
#
# A model trained on short texts pools a long document into one [CLS] state poorly. MCLS inserts
# a [CLS] every 256 tokens and uses the mean of their final states as the dense vector:
# $e = \mathrm{norm}\big(\frac{1}{K}\sum_k H[\mathrm{cls}_k]\big)$. It needs no training. In m3lab it
# is `mcls=True` in `tokenize`/`encode` (and `CorpusIndex.build`).
#
# MCLS averages [CLS] states, so it belongs with [CLS] pooling (bge-m3). The MiniLM backbone pools
# by mean, so we load it once more with `pooling="cls"` to show the mechanics; notebook 06 measures
# the effect on XQuAD's long documents.

# %%
cls_model = M3Model.from_pretrained("default", pooling="cls")
if ex.data_dir() is not None:
    from m3lab.data import load_xquad, load_xquad_long

    long_data = load_xquad_long("en")
    long_doc = long_data.corpus[0]
    paragraphs = long_doc.text.split("\n\n")
    # the paragraph each question was asked about, from the paragraph-level qrels ("p0_3" -> 3)
    paragraph_of = {qid: int(next(iter(rels)).split("_")[1]) for qid, rels in load_xquad("en").qrels.items()}
    questions = [(q, paragraph_of[q.id]) for q in long_data.queries if long_doc.id in long_data.qrels[q.id]]
    print(f"XQuAD article {long_doc.id} ({long_doc.title}): {len(paragraphs)} paragraphs, {len(questions)} questions")
else:
    print("XQuAD not found locally: six mini-corpus passages joined into one long document stand in for it")
    from m3lab.data import Document

    parts = topics.corpus[:6]
    paragraphs = [d.text for d in parts]
    long_doc = Document("mini-long", "\n\n".join(paragraphs), "en")
    questions = [(q, k) for k, d in enumerate(parts) for q in topics.queries if q.id.startswith(d.id + "/")]

max_len = cls_model.max_positions
plain_ids = cls_model.tokenize([long_doc.text], max_length=max_len)[0]
mcls_ids = cls_model.tokenize([long_doc.text], max_length=max_len, mcls=True)[0]
cls_positions = [i for i, t in enumerate(mcls_ids) if t == cls_model.tokenizer.cls_token_id]
full_length = len(cls_model.tokenizer(long_doc.text, add_special_tokens=False, verbose=False)["input_ids"])
print(f"the document has {full_length} tokens; the model reads at most {max_len} positions")
print(f"plain input: {len(plain_ids)} tokens, MCLS input: {len(mcls_ids)} tokens, [CLS] at positions {cls_positions}")
print("cls_mask marks", int(cls_model.collate([mcls_ids], mcls=True)["cls_mask"].sum()), "positions")

# %%
ex.show_source(M3Model.tokenize)

# %% [markdown]
# Each question is about one paragraph of the document. Where does that paragraph start — in the
# first 256-token block, in a later block, or past the model's length limit (cut off)? And how do
# the questions score against the document's one-[CLS] vector and its MCLS vector?

# %%
starts = [len(cls_model.tokenizer("\n\n".join(paragraphs[:k]), add_special_tokens=False, verbose=False)["input_ids"])
          if k else 0
          for k in range(len(paragraphs))]
n_blocks = len(cls_positions)


def block_of(k):
    b = starts[k] // 256
    return f"block {b + 1} (from token {256 * b})" if b < n_blocks else "cut off (beyond the limit)"


qs = questions[: cfg.mcls_questions]
q_enc = cls_model.encode([q.text for q, _ in qs], return_sparse=False, return_colbert=False)
doc_plain = cls_model.encode([long_doc.text], max_length=max_len, return_sparse=False, return_colbert=False)
doc_mcls = cls_model.encode([long_doc.text], max_length=max_len, mcls=True, return_sparse=False, return_colbert=False)
mcls_table = pd.DataFrame({"paragraph starts in": [block_of(k) for _, k in qs],
                           "s_dense, one [CLS]": scoring.dense_scores(q_enc.dense, doc_plain.dense)[:, 0],
                           "s_dense, MCLS": scoring.dense_scores(q_enc.dense, doc_mcls.dense)[:, 0]})
mcls_table["MCLS - one [CLS]"] = mcls_table["s_dense, MCLS"] - mcls_table["s_dense, one [CLS]"]
print("cosine(one-[CLS] vector, MCLS vector) =", round(float(scoring.dense_scores(doc_plain.dense, doc_mcls.dense)[0, 0]), 4))
mcls_table.groupby("paragraph starts in").agg(
    questions=("MCLS - one [CLS]", "size"), one_cls=("s_dense, one [CLS]", "mean"),
    mcls=("s_dense, MCLS", "mean"), mcls_minus_one_cls=("MCLS - one [CLS]", "mean")).round(4)

# %% [markdown]
# **What it shows.** The MCLS vector differs from the one-[CLS] vector (cosine above), and the
# table shows how that moves the scores of questions about each part of the document. Whether it
# helps *retrieval* is a question of ranking against other documents, which notebook 06 answers by
# document length. With 512 positions the MiniLM backbone fits two [CLS] blocks (the rest of the
# article is cut off); bge-m3, with 8192 positions, fits up to 32.
#
# ## 6. The bge-m3 checkpoint layout
#
# `save_pretrained` writes what `BAAI/bge-m3` ships: a Hugging Face encoder directory plus
# `colbert_linear.pt` (Linear d→d, with bias) and `sparse_linear.pt` (Linear d→1, with bias), each
# a `torch.save`d state dict, and `m3lab_config.json` (pooling). FlagEmbedding's `BGEM3FlagModel`
# loads the result unchanged (m3lab's parity test checks that scores match FlagEmbedding's), and
# `M3Model.from_pretrained` loads any such directory — e.g. `BAAI/bge-m3` itself when online.

# %%
with tempfile.TemporaryDirectory() as tmp, run.section("save and reload"):
    ckpt = model.save_pretrained(Path(tmp) / "my-m3", encoder_dtype=torch.float16)
    files = sorted(ckpt.iterdir())
    display(pd.DataFrame({"file": [f.name for f in files], "KiB": [round(f.stat().st_size / 1024, 1) for f in files]}))
    for name in ("colbert_linear.pt", "sparse_linear.pt"):
        state = torch.load(ckpt / name, map_location="cpu", weights_only=True)
        print(name, {k: tuple(v.shape) for k, v in state.items()})
    print("m3lab_config.json:", (ckpt / "m3lab_config.json").read_text().strip())
    again = M3Model.from_pretrained(ckpt)
    same = again.encode([query, passage])
    print(again)
    print("max |dense difference| after a float16 round trip:",
          float(np.abs(same.dense - model.encode([query, passage]).dense).max()))

# %% [markdown]
# ## Take-aways
#
# * One encoder pass, three small heads: a pooled vector, a ReLU weight per token, a projected
#   vector per token. Each score is a short formula in `m3lab.scoring`, and `m3lab.viz.inspect` splits
#   a score into its terms (shared tokens, MaxSim matches) that add up to it exactly.
# * MCLS is a tokenisation change plus a different pooling — no training.
# * m3lab's checkpoints are bge-m3 checkpoints: train here, serve with FlagEmbedding, or the reverse.

# %%
run.report();
