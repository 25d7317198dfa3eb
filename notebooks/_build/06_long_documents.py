# Source of notebooks/06_long_documents.ipynb (build with: python notebooks/_build/build.py 06 --execute)

# %% [markdown]
# # 06 · Long documents: one [CLS] or many (MCLS)?
#
# **The question.** A model trained on short texts squeezes a long document into the single
# [CLS] state it learnt to use for a paragraph. MCLS (paper appendix B.2) inserts a [CLS] every 256
# tokens and averages their final states instead — no training needed. The paper found it lifts
# a model trained without long documents from 41.2 to 45.0 nDCG@10 on MLDR. Does it help here, and
# for which documents? And how do the lexical and multi-vector functions fare on long inputs,
# where the paper found the lexical one strongest?
#
# Benchmark: XQuAD's test articles as long documents — each article's five paragraphs joined
# (`load_xquad_long`), questions relevant to their article. The default model reads at most 512
# positions, so longer articles are cut: we look at results by document length and by where in
# the document each question's answer paragraph starts.
#
# `SMOKE=1` runs one language on a few queries.

# %%
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from IPython.display import Markdown, display

from m3lab import M3Model, experiments as ex, plots

run = ex.start_run()
cfg = ex.settings(
    smoke=dict(languages=["en"], max_queries=30, split="test"),
    cpu=dict(languages=["en", "de", "es", "ru"], max_queries=None, split="test"),
    gpu=dict(languages=["ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh"]),
)
display(Markdown(ex.settings_table(cfg)))
have_data = ex.require_data("XQuAD") is not None

# %% [markdown]
# MCLS averages [CLS] states, so it is compared with single-[CLS] pooling of the same weights. We
# also keep the model's own pooling (mean pooling for the MiniLM backbone) as a reference: mean
# pooling already averages over the whole input.

# %%
with run.section("load models"):
    own = M3Model.from_pretrained("default")
    cls = M3Model.from_pretrained("default", pooling="cls")
print(ex.describe_model(own))
print("max positions:", own.max_positions, "| MCLS inserts a [CLS] every", 256, "tokens")

# %%
rows, docs_info = [], []
if have_data:
    from m3lab.data import load_xquad_long

    with run.section("evaluate"):
        for lang in cfg.languages:
            data = ex.subsample(load_xquad_long(lang, split=cfg.split), cfg.max_queries)
            token_ids = own.tokenizer([d.text for d in data.corpus], add_special_tokens=True, verbose=False)["input_ids"]
            lengths = {d.id: len(ids) for d, ids in zip(data.corpus, token_ids)}
            offsets = ex.xquad_answer_offsets(lang, own.tokenizer, split=cfg.split)
            variants = [("dense, one [CLS]", cls, False, ("dense",)), ("dense, MCLS", cls, True, ("dense",)),
                        (f"dense, {own.pooling} pooling", own, False, ("dense", "sparse", "colbert", "hybrid"))]
            for label, m, mcls, modes in variants:
                for r in ex.per_query_metrics(m, data, modes, max_length=m.max_positions, mcls=mcls):
                    doc = next(iter(data.qrels[r["query_id"]]))
                    rows.append({**r, "variant": label if r["mode"] == "dense" else r["mode"], "language": lang,
                                 "doc_tokens": lengths[doc], "answer_at": offsets.get(r["query_id"])})
            docs_info += [{"language": lang, "tokens": n} for n in lengths.values()]
    per_query = pd.DataFrame(rows)
    summary = per_query.groupby(["variant"])[["ndcg@10", "recall@10", "mrr@10"]].mean()
    display(Markdown(f"All {per_query['query_id'].nunique()} questions ({', '.join(cfg.languages)}), mean:"))
    display(summary.round(4))

# %% [markdown]
# ## By document length
#
# How long are the documents (in the model's tokens), and how does each variant do as they grow?

# %%
if have_data:
    info = pd.DataFrame(docs_info)
    fig = go.Figure([go.Box(y=part["tokens"], name=lang) for lang, part in info.groupby("language")])
    fig.add_hline(y=own.max_positions, line_dash="dot", annotation_text="the model's limit")
    fig.update_layout(title="Document length (tokens) per language", template="plotly_white", height=340,
                      yaxis_title="tokens")
    ex.show(fig)
    bins = [0, 512, 768, 1024, 1536, 10**6]
    names = ["≤512", "513–768", "769–1024", "1025–1536", ">1536"]
    per_query["length"] = pd.cut(per_query["doc_tokens"], bins=bins, labels=names)
    by_length = per_query.groupby(["length", "variant"], observed=True)["ndcg@10"].mean().reset_index()
    counts = per_query[per_query["variant"] == "dense, MCLS"].groupby("length", observed=True).size()
    display(by_length.pivot(index="length", columns="variant", values="ndcg@10").assign(questions=counts).round(3))
    ex.show(plots.metric_bars(by_length.to_dict("records"), x="length", y="ndcg@10", color="variant",
                              title="nDCG@10 by document length"))

# %% [markdown]
# ## By where the answer is
#
# A question about the first paragraph is answerable from the start of the document; one about the
# fourth paragraph needs the model to have *read* that far. Grouping the questions by the token
# at which their paragraph starts:

# %%
if have_data:
    edges = [0, 1, 256, 512, 10**6]
    labels = ["first paragraph (0)", "starts in 1–255", "starts in 256–511", "starts past 512 (cut off)"]
    per_query["answer"] = pd.cut(per_query["answer_at"], bins=edges, labels=labels, right=False)
    by_answer = per_query.groupby(["answer", "variant"], observed=True)["ndcg@10"].mean().reset_index()
    counts = per_query[per_query["variant"] == "dense, MCLS"].groupby("answer", observed=True).size()
    display(by_answer.pivot(index="answer", columns="variant", values="ndcg@10").assign(questions=counts).round(3))
    ex.show(plots.metric_bars(by_answer.to_dict("records"), x="answer", y="ndcg@10", color="variant",
                              title="nDCG@10 by where the answer paragraph starts"))
    gain = (per_query[per_query["variant"] == "dense, MCLS"].set_index("query_id")["ndcg@10"]
            - per_query[per_query["variant"] == "dense, one [CLS]"].set_index("query_id")["ndcg@10"])
    print(f"MCLS vs one [CLS], per question: better for {(gain > 0).sum()}, worse for {(gain < 0).sum()}, "
          f"equal for {(gain == 0).sum()}")
else:
    print("SKIPPED: this notebook needs the local XQuAD data")

# %% [markdown]
# **What it shows.** *(Read with the tables: they come from this run.)* MCLS lifts single-[CLS]
# pooling a little (more questions gain than lose, printed above): each 256-token block gets its
# own [CLS], so what the model read after the first block reaches the vector more directly. It ends
# about level with the model's own mean pooling, which already averages over every token. Answers
# past the 512-token limit are out of reach for every function — that is what a longer model
# (bge-m3: 8192 positions) and long-document training fix — and longer documents are harder for
# all, partly because more of them is cut off. The functions that keep every token instead of
# pooling hold up best: here the multi-vector function leads; the paper finds the lexical one
# strongest on long documents (MLDR: sparse 62.2 vs dense 52.5), which this small model's weakly
# trained lexical head does not reach (notebook 05).
#
# ## Take-aways
#
# * MCLS is a switch (`encode(..., mcls=True)`, `CorpusIndex.build(..., mcls=True)`), no training.
# * It belongs with [CLS] pooling; a mean-pooled model already averages over the whole input.
# * For long documents, look at the lexical and multi-vector functions too — and at whether the
#   answer is within the model's reach at all.

# %%
run.report();
