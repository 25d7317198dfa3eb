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
# | dense | $e = \mathrm{norm}(H[0])$, the first token's state (bge-m3: [CLS] pooling); the default model pools by mean, $e = \mathrm{norm}\big(\frac{1}{L}\sum_t H[t]\big)$ over its $L$ non-padding tokens | `model.dense_embedding` |
# | lexical | $w_t = \mathrm{ReLU}(W_{lex}^\top H[t])$, $W_{lex} \in \mathbb{R}^{d \times 1}$ | `model.sparse_token_weights` |
# | multi-vector | $E = \mathrm{norm}(W_{mul}^\top H[1:])$, $W_{mul} \in \mathbb{R}^{d \times d}$ | `model.colbert_embedding` |
#
# The default model's tokenizer is XLM-R's (SentencePiece): a text is framed `<s> ... </s>`, where
# a BERT tokenizer writes `[CLS] ... [SEP]`; `<s>` plays the part of [CLS]. The query and the
# passage go in with the prompts `encode_queries` / `encode_corpus` put before them
# (`model.prompts`: e5's `"query: "` and `"passage: "`).

# %%
query = "Where in the plant cell does photosynthesis take place?"
topics = load_mini("en")
passage = next(d.text for d in topics.corpus if d.id.startswith("science-photosynthesis"))
q_text, p_text = model.prompts["query"] + query, model.prompts["passage"] + passage  # what encode_queries/encode_corpus encode
ids = model.tokenize([q_text, p_text])
batch = model.collate(ids)
with torch.no_grad():
    H = model.encoder(**batch).last_hidden_state
    emb = model(**batch)
print("input_ids     ", tuple(batch["input_ids"].shape), " (query padded to the passage's length)")
print("H             ", tuple(H.shape))
print("dense         ", tuple(emb.dense.shape))
print("token_weights ", tuple(emb.token_weights.shape))
print("colbert       ", tuple(emb.colbert.shape), " (the first position, <s>, is dropped)")
print("the query as tokens:", model.tokenizer.convert_ids_to_tokens(ids[0]))

# %% [markdown]
# ## 2. Dense: one vector per text
#
# $s_{dense}(q, p) = \langle e_q, e_p \rangle$ with $e$ the L2-normalised pooled state — here the mean
# of the token states (the model's `pooling`), padding excluded. The code:

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
# $w_t = \mathrm{ReLU}(W_{lex}^\top H[t])$; the special tokens bge-m3 drops get 0 — CLS, EOS, PAD
# and UNK, here `<s>`, `</s>`, `<pad>` and `<unk>` (a BERT-style tokenizer has no EOS, so there [SEP]
# would keep a weight, exactly as in bge-m3); a token that occurs several times keeps its largest
# weight; $s_{lex} = \sum_{t \in q \cap p} w_{q,t}\, w_{p,t}$. The prompt's pieces are ordinary
# tokens: they get weights too.

# %%
ex.show_source(sparse_token_weights)

# %%
enc_q = model.encode_queries([query])
enc_p = model.encode_corpus([passage])
tokens = model.tokenizer.convert_ids_to_tokens(ids[0])
w = emb.token_weights[0, : len(ids[0])].numpy()
pd.DataFrame({"position": range(len(tokens)), "token": tokens, "w_t": w.round(4)}).T

# %% [markdown]
# The passage, each token shaded by its weight (darker = heavier), and its heaviest tokens:

# %%
enc = model.tokenizer(p_text, return_offsets_mapping=True, truncation=True, max_length=512)
display(HTML(plots.weighted_text_html(plots.weighted_spans(p_text, enc["offset_mapping"],
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
# exactly: here eight shared pieces — those of *photosynthesis* (`yn`, `the`, `sis`), *plant*,
# *place*, *the*, *in*, and the `:` that ends both prompts. The head is trained (notebook 04), but
# its weights stay in a narrow band: in the passage, content words such as *base*, *glucose*,
# *root* and *food* reach 0.15–0.18, function words and suffixes (*of*, *a*, *with*, `ed`) about
# 0.07 — and not cleanly so (*by* is among the heaviest). Training started from m3lab's
# initialisation, every token near 0.3 ($W_{lex}$ small, bias 0.3: $s_{lex}$ starts as a scaled
# count of shared tokens and every ReLU is active, so every token gets gradient); it has lowered
# all weights and spread them about 2.5-fold, favouring content words without silencing the rest.
#
# ## 4. Multi-vector: MaxSim of token vectors
#
# $E = \mathrm{norm}(W_{mul}^\top H)$ without the first position (`<s>`), padding masked;
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
explore_enc = model.encode_corpus([d.text for d in explore_docs])
picker = widgets.Dropdown(options=[(d.title or d.id, i) for i, d in enumerate(explore_docs)], description="passage")
query_box = widgets.Text(value=query, description="query", layout=widgets.Layout(width="80%"))
view = widgets.Output()


def redraw(*_):
    q = model.encode_queries([query_box.value or " "])
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
# *plant*, *place*, *in*) align to themselves with the highest similarities, 0.80–0.94; the others
# find their nearest passage token — a related form (*take* → *takes*, *Where* → *place*) or a
# frequent piece (*the*, `s`). The prompt's pieces (`▁que`, `ry`, `:`) and the question mark have no
# counterpart and settle on *the* at about 0.72–0.74, and *cell*, which the passage lacks, finds
# only a piece `ll` (0.68, the lowest); the closing `</s>` matches the passage's `</s>`. Every
# similarity is high, so $s_{mul}$ (the mean, about 0.82) ranks passages by small differences, and
# each query token — prompt pieces included — contributes 1/N of its best match.
#
# ## 5. MCLS: several CLS tokens for a long input (appendix B.2)
#
# bge-m3 pools a text into its [CLS] state, and a model trained on short texts pools a long
# document into that one state poorly. MCLS inserts a CLS token every 256 tokens and uses the mean
# of their final states as the dense vector: $e = \mathrm{norm}\big(\frac{1}{K}\sum_k H[\mathrm{cls}_k]\big)$.
# It needs no training. In m3lab it is `mcls=True` in `tokenize`/`encode` (and `CorpusIndex.build`).
# In XLM-R's vocabulary (bge-m3's and the default model's) the CLS token is `<s>`.
#
# MCLS averages CLS states, so it belongs with CLS pooling. **The default model does not pool that
# way**: e5 and m3lab's fine-tuning use mean pooling, and its `<s>` state was never trained to be a
# text's vector. We load it once more with `pooling="cls"` only to show the mechanics — the inserted
# `<s>` tokens, the mask that averages them, the vector that results. The scores below are those of
# vectors this model was not trained to produce, so they say nothing about how well MCLS works; the
# model's own mean-pooled score is shown beside them for reference. Notebook 06 measures MCLS
# against one CLS on XQuAD's long documents.

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
doc_text = cls_model.prompts["passage"] + long_doc.text  # what encode_corpus encodes
plain_ids = cls_model.tokenize([doc_text], max_length=max_len)[0]
mcls_ids = cls_model.tokenize([doc_text], max_length=max_len, mcls=True)[0]
cls_id = cls_model.tokenizer.cls_token_id
cls_positions = [i for i, t in enumerate(mcls_ids) if t == cls_id]
full_length = len(cls_model.tokenizer(doc_text, add_special_tokens=False, verbose=False)["input_ids"])
print(f"CLS token: {cls_model.tokenizer.cls_token!r} (id {cls_id})")
print(f"the document has {full_length} tokens; the model reads at most {max_len} positions")
print(f"plain input: {len(plain_ids)} tokens, MCLS input: {len(mcls_ids)} tokens, "
      f"{cls_model.tokenizer.cls_token} at positions {cls_positions}")
print("cls_mask marks", int(cls_model.collate([mcls_ids], mcls=True)["cls_mask"].sum()), "positions")

# %%
ex.show_source(M3Model.tokenize)

# %% [markdown]
# Each question is about one paragraph of the document. Where does that paragraph start — in the
# first 256-token block, in a later block, or past the model's length limit (cut off)? And how do
# the questions score against the document's one-`<s>` vector, its MCLS vector, and — the model's
# own — its mean-pooled vector?

# %%
n_tokens = lambda text: len(cls_model.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
starts = [n_tokens(cls_model.prompts["passage"] + "\n\n".join(paragraphs[:k])) if k
          else n_tokens(cls_model.prompts["passage"]) for k in range(len(paragraphs))]
n_blocks = len(cls_positions)


def block_of(k):
    b = starts[k] // 256
    return f"block {b + 1} (from token {256 * b})" if b < n_blocks else "cut off (beyond the limit)"


qs = questions[: cfg.mcls_questions]
dense_only = dict(return_sparse=False, return_colbert=False)
q_cls = cls_model.encode_queries([q.text for q, _ in qs], **dense_only)
doc_plain = cls_model.encode_corpus([long_doc.text], max_length=max_len, **dense_only)
doc_mcls = cls_model.encode_corpus([long_doc.text], max_length=max_len, mcls=True, **dense_only)
q_mean = model.encode_queries([q.text for q, _ in qs], **dense_only)
doc_mean = model.encode_corpus([long_doc.text], max_length=max_len, **dense_only)
mcls_table = pd.DataFrame({"paragraph starts in": [block_of(k) for _, k in qs],
                           "one <s>": scoring.dense_scores(q_cls.dense, doc_plain.dense)[:, 0],
                           "MCLS": scoring.dense_scores(q_cls.dense, doc_mcls.dense)[:, 0],
                           "mean pooling (the model's own)": scoring.dense_scores(q_mean.dense, doc_mean.dense)[:, 0]})
mcls_table["MCLS - one <s>"] = mcls_table["MCLS"] - mcls_table["one <s>"]
print("cosine(one-<s> vector, MCLS vector) =", round(float(scoring.dense_scores(doc_plain.dense, doc_mcls.dense)[0, 0]), 4))
display(Markdown("Mean $s_{dense}$ of the questions, by where their paragraph starts:"))
mcls_table.groupby("paragraph starts in").agg(
    questions=("MCLS", "size"), one_s=("one <s>", "mean"), mcls=("MCLS", "mean"),
    mcls_minus_one_s=("MCLS - one <s>", "mean"), mean_pooling=("mean pooling (the model's own)", "mean")).round(4)

# %% [markdown]
# **What it shows.** The article has 757 tokens; the model reads 512 positions, so MCLS inserts one
# more `<s>` (position 257) and makes two blocks, and the rest of the article is cut off (bge-m3,
# with 8192 positions, fits up to 32 blocks). The MCLS vector is nearly the one-`<s>` vector
# (cosine 0.999): every group of questions moves by about +0.005, wherever its paragraph is.
# Neither says how well MCLS works — this model was not trained to put a text into its `<s>` state,
# and scores from different poolings are not comparable (the `<s>` columns are higher than the
# mean-pooled one, and that means nothing about retrieval). In the model's own mean pooling the
# questions about the first block score highest; those about the second block score no higher than
# those about the part the model never read. Notebook 06 measures retrieval.
#
# ## 6. The bge-m3 checkpoint layout
#
# The shipped default model is stored compactly, as **what training changed** on top of its
# backbone: `encoder_delta.safetensors` (the encoder tensors that differ from `"e5-small"`'s, in
# float16), the two heads and `m3lab_config.json`, which names the base. `M3Model.from_pretrained`
# rebuilds the model from the base plus these (`M3Model.save_delta` writes such a folder).

# %%
from safetensors import safe_open

from m3lab.modeling.hub import DEFAULT_MODEL_DIR

shipped = sorted(f for f in DEFAULT_MODEL_DIR.iterdir() if f.is_file())
display(pd.DataFrame({"file": [f.name for f in shipped], "KiB": [round(f.stat().st_size / 1024, 1) for f in shipped]}))
print("m3lab_config.json:", (DEFAULT_MODEL_DIR / "m3lab_config.json").read_text().strip())
with safe_open(str(DEFAULT_MODEL_DIR / "encoder_delta.safetensors"), "pt") as f:
    names = list(f.keys())
    delta_dtype = f.get_tensor(names[0]).dtype
changed_layers = sorted({int(n.split(".")[2]) + 1 for n in names if n.startswith("encoder.layer.")})
print(f"encoder_delta.safetensors: {len(names)} tensors ({delta_dtype}) of encoder layers {changed_layers} "
      f"(1-based) of {model.encoder.config.num_hidden_layers}; every other encoder weight is the base's; "
      f"other tensors: {[n for n in names if not n.startswith('encoder.layer.')]}")

# %% [markdown]
# `save_pretrained` writes the full layout `BAAI/bge-m3` ships: a Hugging Face encoder directory
# (`config.json`, `model.safetensors`, the tokenizer) plus `colbert_linear.pt` (Linear d→d, with
# bias) and `sparse_linear.pt` (Linear d→1, with bias), each a `torch.save`d state dict, and
# `m3lab_config.json` (pooling, prompts, max lengths). FlagEmbedding's `BGEM3FlagModel` loads the
# result unchanged (m3lab's parity test checks that scores match FlagEmbedding's), and
# `M3Model.from_pretrained` loads any such directory — e.g. `BAAI/bge-m3` itself when online. Most
# of the default model's full size is the embedding matrix of the 250,002-piece vocabulary.

# %%
with tempfile.TemporaryDirectory() as tmp, run.section("save and reload"):
    ckpt = model.save_pretrained(Path(tmp) / "my-m3", encoder_dtype=torch.float16)
    files = sorted(ckpt.iterdir())
    display(pd.DataFrame({"file": [f.name for f in files], "KiB": [round(f.stat().st_size / 1024, 1) for f in files]}))
    for name in ("colbert_linear.pt", "sparse_linear.pt"):
        state = torch.load(ckpt / name, map_location="cpu", weights_only=True)
        print(name, {k: tuple(v.shape) for k, v in state.items()})
    print("m3lab_config.json:", (ckpt / "m3lab_config.json").read_text().strip())
    embeddings = model.encoder.embeddings.word_embeddings.weight
    print(f"word embeddings: {tuple(embeddings.shape)} = {embeddings.numel() / 1e6:.1f}M of the encoder's "
          f"{sum(p.numel() for p in model.encoder.parameters()) / 1e6:.1f}M parameters")
    again = M3Model.from_pretrained(ckpt)
    same = again.encode_corpus([query, passage])
    print(again)
    print("max |dense difference| after a float16 round trip:",
          float(np.abs(same.dense - model.encode_corpus([query, passage]).dense).max()))

# %% [markdown]
# ## Take-aways
#
# * One encoder pass, three small heads: a pooled vector, a ReLU weight per token, a projected
#   vector per token. Each score is a short formula in `m3lab.scoring`, and `m3lab.viz.inspect` splits
#   a score into its terms (shared tokens, MaxSim matches) that add up to it exactly.
# * MCLS is a tokenisation change plus a different pooling — no training; it belongs with a model
#   that pools by CLS (bge-m3), not with the mean-pooled default model.
# * m3lab's checkpoints are bge-m3 checkpoints: train here, serve with FlagEmbedding, or the reverse.
#   The default model ships as a delta on its backbone; `save_pretrained` writes the full layout.

# %%
run.report();
