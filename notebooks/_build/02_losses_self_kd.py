# Source of notebooks/02_losses_self_kd.ipynb (build with: python notebooks/_build/build.py 02 --execute)

# %% [markdown]
# # 02 · Losses and self-knowledge distillation
#
# **The question.** M3 trains three retrieval functions on one encoder at once. How does the
# objective do it? Each function gets its own contrastive loss (InfoNCE, eq. 1); their weighted sum
# is an *ensemble teacher* (eq. 2) whose ranking each function is then distilled towards (eq. 3).
# Which parameters does each term move — and does self-distillation change what a short training
# run learns?
#
# Plan: one real training batch → the score matrices → InfoNCE per function → the teacher and the
# distillation term → the whole loss, term by term → which head each term's gradient reaches → two
# short training runs, with and without self-KD.
#
# `SMOKE=1` uses a tiny random encoder and a few steps (for CI); the real run starts from the MiniLM
# backbone with fresh (untrained) heads — the starting point of the default model's recipe.

# %%
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import tempfile
from pathlib import Path

import pandas as pd
import torch
from IPython.display import Markdown, display

from m3lab import M3Model, experiments as ex, losses, plots
from m3lab.data import load_mini, mine_hard_negatives

run = ex.start_run()
cfg = ex.settings(
    smoke=dict(model="tiny", queries=4, group_size=4, passage_max_length=64,
               train_examples=32, train_steps=4, batch_size=4, learning_rate=1e-4, log_steps=1),
    cpu=dict(model="minilm", queries=4, group_size=4, passage_max_length=128,
             train_examples=None, train_steps=60, batch_size=4, learning_rate=5e-5, log_steps=5),
    gpu=dict(queries=8, group_size=8, passage_max_length=256, train_steps=300, batch_size=32, learning_rate=2e-5,
             log_steps=10),
)
display(Markdown(ex.settings_table(cfg)))
scratch = tempfile.TemporaryDirectory(prefix="m3lab-02-")  # removed when the kernel exits
workdir = Path(scratch.name)
model_name = str(ex.make_tiny_model(workdir / "tiny-bert")) if cfg.model == "tiny" else cfg.model
model = M3Model.from_pretrained(model_name, device="cpu" if ex.profile() != "gpu" else None, dtype=torch.float32)
print(ex.describe_model(model))

# %% [markdown]
# ## 1. A training batch: queries, positives, hard negatives
#
# A training example is a query, its positive passage and hard negatives — passages a retriever
# ranks high that are not the answer (the paper uses 7; here `group_size − 1`). We mine them with
# BM25 from the mini corpus. The batch layout is FlagEmbedding's: query *i* owns passages
# `i·G … i·G+G−1`, positive first; every other passage in the batch is an **in-batch negative** for it.

# %%
mini = load_mini("en")
docs = [d.text for d in mini.corpus]
doc_of_topic = {d.id.rsplit("/", 1)[0]: i for i, d in enumerate(mini.corpus)}
chosen = mini.queries[:: max(1, len(mini.queries) // cfg.queries)][: cfg.queries]
positives = [doc_of_topic[q.id.rsplit("/", 2)[0]] for q in chosen]
negatives = mine_hard_negatives([q.text for q in chosen], positives, docs, n_negatives=cfg.group_size - 1)
groups = [[docs[pos]] + [docs[j] for j in neg] for pos, neg in zip(positives, negatives)]
for q, g in zip(chosen, groups):
    print(f"{q.text}\n   + {g[0][:70]}…\n" + "".join(f"   - {t[:70]}…\n" for t in g[1:]))

q_batch = model.collate(model.tokenize([q.text for q in chosen], max_length=64))
p_batch = model.collate(model.tokenize([t for g in groups for t in g], max_length=cfg.passage_max_length))
G = cfg.group_size
model.train()  # dropout on, as in training
torch.manual_seed(0)
q_emb, p_emb = model(**q_batch), model(**p_batch)
print("queries", tuple(q_batch["input_ids"].shape), "passages", tuple(p_batch["input_ids"].shape))

# %% [markdown]
# ## 2. InfoNCE per function (eq. 1)
#
# For each function $f$ the scores of every query against every passage in the batch form a matrix;
# the loss is a softmax cross-entropy that wants each query's positive on top:
#
# $$\mathcal{L}_f = -\log \frac{\exp(s_f(q, p^*)/\tau)}{\sum_{p \in \{p^*\} \cup P'} \exp(s_f(q, p)/\tau)}, \qquad \tau = 0.02$$
#
# $P'$ = the query's hard negatives plus all in-batch negatives. Scores come from `m3lab.scoring`
# through `losses.score_functions` (the sparse score over the batch's own token ids, never a
# batch × length × vocabulary tensor).

# %%
ex.show_source(losses.info_nce)
scores = losses.score_functions(q_emb, p_emb)
target = torch.arange(len(chosen)) * G
pd.DataFrame({f: {"InfoNCE": losses.info_nce(s, target).item(),
                  "positive on top (share of queries)": float((s.argmax(1) == target).float().mean())}
              for f, s in scores.items()}).T.round(4)

# %%
ex.show(ex.score_matrix_figure(scores["dense"], G, title="Dense scores in the batch: each query's group outlined, "
                                                          "its positive starred"))

# %% [markdown]
# ## 3. The ensemble teacher (eq. 2) and the distillation target
#
# The three scores are combined into $s_{inter} = w_1 s_{dense} + w_2 s_{lex} + w_3 s_{mul}$
# (bge-m3: 1, 0.3, 1) — the same formula as hybrid ranking, so it is `scoring.combine_scores`.
# Its softmax over a query's candidates is the **teacher distribution**. For the first query:

# %%
inter = losses.ensemble_scores(scores["dense"], scores["sparse"], scores["colbert"])
tau = 0.02
probs = {f"{f} p(s_{f})": torch.softmax(s[0].detach() / tau, -1) for f, s in scores.items()}
probs["hybrid teacher p(s_inter)"] = torch.softmax(inter[0].detach() / tau, -1)
ex.show(ex.distributions_figure(probs, title=f"Query 0: softmax over the batch's {p_emb.dense.shape[0]} passages "
                                             f"(its group is p0–p{G - 1}, p0 the positive)"))

# %% [markdown]
# ## 4. The self-distillation term (eq. 3)
#
# Each function is also trained to match the teacher's distribution:
# $\mathcal{L}'_f = -\,p(s_{inter}) \cdot \log p(s_f)$, with the teacher **detached** (a target, not a
# path for gradient). Its gradient with respect to the student's scores is
# $\big(p(s_f) - p(s_{inter})\big) / \tau$ per query (averaged over queries) — the student is pulled
# towards the teacher wherever they disagree. Autograd agrees:

# %%
ex.show_source(losses.self_distillation)
student = scores["sparse"].detach().clone().requires_grad_(True)
losses.self_distillation(student, inter.detach()).backward()
expected = (torch.softmax(student.detach() / tau, -1) - torch.softmax(inter.detach() / tau, -1)) / tau / len(chosen)
print("max |autograd - (p_student - p_teacher)/tau/n| =", float((student.grad - expected).abs().max()))

# %% [markdown]
# ## 5. The whole objective, term by term
#
# `M3Loss` puts it together. In the form bge-m3 was trained with:
#
# $$\mathcal{L} = \tfrac{1}{4}(\mathcal{L}_{dense} + 0.1\,\mathcal{L}_{lex} + \mathcal{L}_{mul} + \mathcal{L}_{inter}),\quad
# \mathcal{L}' = \tfrac{1}{3}(\mathcal{L}'_{dense} + 0.1\,\mathcal{L}'_{lex} + \mathcal{L}'_{mul}),\quad
# \mathcal{L}_{final} = \tfrac{1}{2}(\mathcal{L} + \mathcal{L}')$$
#
# (`form="paper"` gives eq. 4's $\mathcal{L} + \mathcal{L}'$ with equal weights). `experiments.loss_terms`
# lists each term with its coefficient; their weighted sum is exactly `M3Loss`'s value:

# %%
loss_fn = losses.M3Loss()  # form="bge-m3", self_distill=True
full = loss_fn(q_emb, p_emb, group_size=G)
terms = ex.loss_terms(loss_fn, q_emb, p_emb, group_size=G)
table = pd.DataFrame([{"term": k, "coefficient": c, "value": t.item(), "coefficient × value": c * t.item()}
                      for k, (t, c) in terms.items()])
display(table.round(4))
print(f"sum of coefficient × value = {table['coefficient × value'].sum():.6f}   M3Loss = {full.loss.item():.6f}")

# %% [markdown]
# ## 6. Where each term's gradient goes
#
# The dense function has no weights of its own: its loss can only move the encoder. The lexical
# loss moves the encoder and $W_{lex}$; the multi-vector loss the encoder and $W_{mul}$. The
# ensemble loss reaches all three. Because the teacher is detached, each distillation term
# $\mathcal{L}'_f$ reaches only its own function's head (plus the encoder). The table: gradient
# norm of each term (times its coefficient) in each part of the model, from one backward pass per
# term (`experiments.gradient_flow`).

# %%
model.zero_grad()
torch.manual_seed(0)
flow = ex.gradient_flow(model, loss_fn, q_batch, p_batch, group_size=G)
groups_ = list(ex.parameter_groups(model))
ex.show(ex.heatmap_figure(flow, index="term", columns=[f"weighted {g}" for g in groups_],
                          title="‖coefficient × ∂term/∂θ‖ per part of the model (0 = no path)"))
pd.DataFrame(flow).set_index("term")[["coefficient", "value", *groups_]].round(5)

# %% [markdown]
# **What it shows.** The zeros are structural: no gradient path exists from the dense loss to either
# head, or from $\mathcal{L}'_{lex}$ to $W_{mul}$. Only two terms reach $W_{lex}$ — $\mathcal{L}_{lex}$ and
# $\mathcal{L}'_{lex}$ — plus the ensemble term through its 0.3-weighted lexical part; the bge-m3 recipe
# scales both lexical terms by 0.1 (compare the weighted norms). Self-distillation gives the lexical
# head a second, denser signal: the teacher's whole ranking of the batch instead of one positive.
#
# ## 7. A short run with and without self-distillation
#
# The same data, model, seed and steps; only `self_distill` differs. Data: the XQuAD training
# split (first 24 articles, English) with 3 BM25 hard negatives per question; evaluation: the
# held-out test split (the other 24 articles), nDCG@10 per retrieval mode. The trainer logs every
# loss term and the share of tokens with a non-zero lexical weight (*sparse activity*).

# %%
from m3lab.training import train

have_xquad = ex.require_data("XQuAD") is not None
if have_xquad:
    from m3lab.data import build_xquad_training, load_xquad, write_training_file
    from m3lab.evaluation import evaluate_retrieval

    examples = build_xquad_training(["en"], cross_lingual=False, n_negatives=G - 1, max_examples=cfg.train_examples)
    write_training_file(workdir / "train.jsonl", examples)
    test = load_xquad("en", split="test")
    print(len(examples), "training examples;", test)
    runs, results = {}, []
    for self_distill in (True, False):
        name = "with self-KD" if self_distill else "without self-KD"
        with run.section(f"train {name}"):
            result = train({"train_files": [str(workdir / "train.jsonl")], "output_dir": str(workdir / name),
                            "model": model_name, "group_size": G, "batch_size": cfg.batch_size,
                            "passage_max_length": cfg.passage_max_length, "learning_rate": cfg.learning_rate,
                            "warmup_ratio": 0.1, "log_steps": cfg.log_steps, "save_steps": None,
                            "progress_bar": False,
                            "stages": [{"name": "unified", "steps": cfg.train_steps, "self_distill": self_distill}]})
        runs[name] = ex.read_log(result.log_path)
        with run.section(f"evaluate {name}"):
            trained = M3Model.from_pretrained(result.final_dir)
            for row in evaluate_retrieval(trained, test, ["dense", "sparse", "colbert", "hybrid"],
                                          max_length=cfg.passage_max_length, show_progress=False):
                results.append({"run": name, **row})
    with run.section("evaluate the untrained model"):
        for row in evaluate_retrieval(model.eval(), test, ["dense", "sparse", "colbert", "hybrid"],
                                      max_length=cfg.passage_max_length, show_progress=False):
            results.append({"run": "before training", **row})
    scores_table = pd.DataFrame(results).pivot(index="mode", columns="run", values="ndcg@10")
    scores_table = scores_table[["before training", "without self-KD", "with self-KD"]]
    scores_table["self-KD − no self-KD"] = scores_table["with self-KD"] - scores_table["without self-KD"]
    display(scores_table.round(4))

# %%
if have_xquad:
    ex.show(plots.metric_bars([r for r in results], x="mode", y="ndcg@10", color="run",
                              title="XQuAD test (en), nDCG@10 per retrieval mode"))
    for name, log in runs.items():
        keys = [k for k in ("loss_dense", "loss_sparse", "loss_colbert", "loss_inter", "loss_kd_sparse")
                if any(k in r for r in log)]
        ex.show(plots.loss_curves(log, keys=keys, title=f"Loss terms, {name}"))

# %%
if have_xquad:
    import plotly.graph_objects as go

    fig = go.Figure([go.Scatter(x=[r["step"] for r in log], y=[r["sparse_nonzero_share"] for r in log], name=name,
                                mode="lines+markers") for name, log in runs.items()])
    fig.update_layout(title="Sparse activity: share of tokens with a non-zero lexical weight", template="plotly_white",
                      xaxis_title="step", yaxis_title="share", height=360)
    ex.show(fig)

# %% [markdown]
# **What it shows.** *(Read with the numbers above; they come from this run.)* On English XQuAD
# every function starts strong: MiniLM's dense vectors are already trained, and m3lab's head
# initialisation makes the untrained lexical function a shared-token counter and the multi-vector
# function MaxSim over the encoder's states (notebook 01). So the losses start low, and which
# questions and hard negatives land in a batch moves them more than training does; a few dozen
# steps change nDCG@10 by about a point at most, and the with/without difference (last column)
# is no larger than that noise. The paper's ablation (MIRACL, full training) found self-KD helps
# the sparse function most (36.7 → 53.9 nDCG@10) and the dense and multi-vector functions a little
# (67.2 → 67.8, 67.8 → 69.0); notebook 05 runs the ablation on the default model's full recipe,
# where, as in the paper, the lexical function gains most. Watch the sparse-activity curve: it
# stays at 1.0 here (every token keeps a weight); if it fell towards 0, the lexical weights would
# be collapsing (the trainer warns when it stays below 1%).

# %% [markdown]
# ## Take-aways
#
# * Every function has its own InfoNCE; their ensemble is both a fourth InfoNCE term and the
#   teacher of self-distillation.
# * The teacher is detached: distillation sends each head a signal about the *whole* ranking of the
#   ensemble, and only into that head's own path.
# * `m3lab.losses.M3Loss` implements both the bge-m3 weighting and the paper's eq. 4
#   (`form="paper"`); `experiments.loss_terms` / `gradient_flow` take it apart.

# %%
run.report();
