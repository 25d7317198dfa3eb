# Source of notebooks/04_train_small_model.ipynb (build with: python notebooks/_build/build.py 04 --execute)

# %% [markdown]
# # 04 · Training a small M3 model, step by step
#
# **The question.** m3lab's default model is MiniLM-L6 turned into an M3 model: its dense
# function fine-tuned and its lexical and multi-vector heads trained from scratch. How is it
# made? We follow its recipe (`configs/m3lab-minilm.yaml`): build training data with hard
# negatives, warm each function up on its own contrastive loss, then train all three together with
# self-knowledge distillation — watching every loss term and the *sparse activity* (the share of
# tokens whose lexical weight is non-zero) as it trains.
#
# The recipe's full run (260 steps over 12 languages) takes about half an hour on a laptop CPU;
# here the steps are scaled down (see the settings; the `gpu` column is the full recipe).
# `SMOKE=1` trains a tiny random encoder for a few steps (CI).

# %%
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import tempfile
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import yaml
from IPython.display import Markdown, display

from m3lab import M3Model, experiments as ex, plots
from m3lab.training import train
from m3lab.training.config import load_config

run = ex.start_run()
cfg = ex.settings(
    smoke=dict(model="tiny", languages=["en"], tatoeba_pairs=0, max_examples=64, warmup_steps=3, unified_steps=4,
               batch_size=8, log_steps=1, eval_languages=["en"]),
    cpu=dict(model="minilm", languages=["en", "de", "es", "ru", "zh", "ar"], tatoeba_pairs=20, max_examples=None,
             warmup_steps=20, unified_steps=60, batch_size=16, log_steps=5, eval_languages=["en", "de"]),
    gpu=dict(languages=["ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh"], tatoeba_pairs=40,
             warmup_steps=60, unified_steps=200, log_steps=10),
)
display(Markdown(ex.settings_table(cfg)))
scratch = tempfile.TemporaryDirectory(prefix="m3lab-04-")  # removed when the kernel exits
workdir = Path(scratch.name)
RECIPE = ex.ROOT / "configs" / "m3lab-minilm.yaml"

# %% [markdown]
# ## 1. The recipe
#
# The whole recipe is one YAML file: the backbone, the data, the loss and two stages. We read it
# and replace only the data location, the output folder and the number of steps.

# %%
recipe = yaml.safe_load(RECIPE.read_text())
print(RECIPE.read_text().split("\nmodel:")[0])  # its header comment
show = {k: recipe[k] for k in ("model", "query_max_length", "passage_max_length", "group_size", "batch_size",
                               "learning_rate", "warmup_ratio", "temperature", "loss_form", "ensemble_weights")}
display(pd.DataFrame({"value": {k: str(v) for k, v in show.items()}}))
display(pd.DataFrame(recipe["stages"]))

# %% [markdown]
# ## 2. Training data with hard negatives
#
# Every line of a training file is `{"query", "pos": [...], "neg": [...]}` (FlagEmbedding's format).
# The recipe's data: XQuAD questions → their paragraph, from the **train** articles only (the first
# 24 of 48; notebook 05 evaluates on the other 24), in each language and across languages
# (X → English and English → X), plus Tatoeba translation pairs; the negatives are the paragraphs
# BM25 ranks highest that are not the answer — *hard* negatives, similar on the surface.

# %%
import random

from m3lab.data import build_tatoeba_training, build_xquad_training, read_training_file, write_training_file

have_data = ex.require_data("XQuAD and Tatoeba") is not None
if not have_data:  # the recipe's own smoke file (32 lines from the mini corpus) keeps the rest running
    train_file = ex.ROOT / "configs" / "data" / "smoke-train.jsonl"
    xquad, tatoeba, examples = read_training_file(train_file), [], read_training_file(train_file)
    print("training on", train_file.name, "instead;", len(examples), "examples")
else:
    with run.section("build training data"):
        xquad = build_xquad_training(cfg.languages, cross_lingual=True, n_negatives=3, max_examples=cfg.max_examples)
        tatoeba_languages = [lang for lang in cfg.languages if lang != "en"]
        tatoeba = (build_tatoeba_training(tatoeba_languages, n_negatives=3, max_pairs_per_language=cfg.tatoeba_pairs)
                   if cfg.tatoeba_pairs and tatoeba_languages else [])
        examples = xquad + tatoeba
        random.Random(0).shuffle(examples)  # mix tasks and languages across batches, as the recipe's script does
        train_file = workdir / "train.jsonl"
        write_training_file(train_file, examples)
    print(f"{len(examples)} examples: XQuAD {len(xquad)} (same-language and cross-lingual), Tatoeba {len(tatoeba)}")
example = next(e for e in (xquad or examples) if len(e.neg) >= 1)
print("query:   ", example.query)
print("positive:", example.pos[0][:160], "…")
for n in example.neg:
    print("negative:", n[:160], "…")

# %% [markdown]
# ## 3. Warm-up, then unified training
#
# Stage 1 (**warm-up**) trains each function on its own InfoNCE loss (eq. 1) plus the ensemble's,
# without distillation: the new heads first learn to rank at all. Stage 2 (**unified**) adds
# self-knowledge distillation (eq. 3): each function also learns the ensemble's ranking. The
# trainer logs every loss term, the learning rate and the sparse activity every few steps; we
# collect the records as they come (`on_log`).

# %%
model_name = str(ex.make_tiny_model(workdir / "tiny-bert")) if cfg.model == "tiny" else cfg.model
records = []
stages = [dict(stage) for stage in recipe["stages"]]
stages[0]["steps"], stages[1]["steps"] = cfg.warmup_steps, cfg.unified_steps
config = load_config({**recipe, "train_files": [str(train_file)], "output_dir": str(workdir / "run"), "model": model_name,
                      "batch_size": cfg.batch_size, "log_steps": cfg.log_steps, "save_steps": None,
                      "progress_bar": False, "resume_from": None, "stages": stages})
with run.section("train"):
    result = train(config, on_log=records.append)
print(result)

# %%
log = ex.read_log(result.log_path)
boundary = cfg.warmup_steps
fig = plots.loss_curves(log, keys=["loss_dense", "loss_sparse", "loss_colbert", "loss_inter"],
                        title="InfoNCE of each function and of the ensemble (eq. 1)")
fig.add_vline(x=boundary, line_dash="dot", annotation_text="unified + self-KD")
ex.show(fig)
fig = plots.loss_curves(log, keys=["loss_kd_dense", "loss_kd_sparse", "loss_kd_colbert"],
                        title="Self-distillation terms (eq. 3), unified stage only")
ex.show(fig)

# %%
fig = go.Figure()
fig.add_trace(go.Scatter(x=[r["step"] for r in log], y=[r["sparse_nonzero_share"] for r in log], name="sparse activity",
                         mode="lines+markers", line_color="#F58518"))
lr_max = max(r["lr"] for r in log)
fig.add_trace(go.Scatter(x=[r["step"] for r in log], y=[r["lr"] / lr_max for r in log],
                         name="learning rate (relative)", mode="lines", line=dict(dash="dash", color="#999")))
fig.add_vline(x=boundary, line_dash="dot")
fig.update_layout(title="Share of tokens with a non-zero lexical weight, and the learning-rate schedule",
                  template="plotly_white", xaxis_title="step", yaxis=dict(title="share", range=[0, 1.05]), height=360)
ex.show(fig)
pd.DataFrame(log)[["step", "stage", "self_distill", "loss", "loss_dense", "loss_sparse", "loss_colbert",
                   "sparse_nonzero_share", "padding_share", "tokens_per_s"]].round(4)

# %% [markdown]
# **What it shows.** The dense and multi-vector losses fall steadily through the warm-up. The
# lexical loss starts highest and stays noisy: at τ = 0.02 a lexical score that favours a hard
# negative sharing more words than the positive is punished hard, and BM25 picked exactly such
# negatives. In the unified stage the distillation terms join: small for dense and multi-vector,
# which already agree with the ensemble, largest for the lexical function, the one with most to
# learn from it. Sparse activity is the health check: if it dropped towards zero, lexical
# retrieval would return nothing (the trainer warns when it stays below 1%).
#
# ## 4. The full recipe's run, from its logs
#
# The shipped default model was trained with exactly this recipe at full length (260 steps, all 12
# languages); its logs ship with it (`data/models/m3lab-minilm/training/`): the run itself, the
# same run without self-distillation (the ablation of notebook 05) — and a first attempt that
# failed. That attempt initialised $W_{lex}$ with PyTorch's default Linear init: about half the
# tokens started at ReLU's zero (no gradient), and training drove the rest to zero too — the
# sparse collapse users of the reference code report. m3lab now starts $W_{lex}$ small with a
# bias of 0.3 (`m3lab.modeling.init_heads`), so every token starts active.

# %%
shipped = ex.ROOT / "data" / "models" / "m3lab-minilm" / "training"
logs = {name: ex.read_log(shipped / file) for name, file in (
    ("shipped run (self-KD)", "log.jsonl"), ("ablation (no self-KD)", "log-no-selfkd.jsonl"),
    ("first attempt (default W_lex init)", "log-collapsed-default-init.jsonl")) if (shipped / file).is_file()}
if logs:
    fig = go.Figure([go.Scatter(x=[r["step"] for r in log], y=[r["sparse_nonzero_share"] for r in log], name=name,
                                mode="lines+markers") for name, log in logs.items()])
    fig.add_hline(y=0.01, line_dash="dot", annotation_text="the trainer's collapse warning (1%)")
    fig.update_layout(title="Sparse activity in the full-length runs", template="plotly_white", xaxis_title="step",
                      yaxis=dict(title="share of tokens with a non-zero lexical weight", range=[0, 1.05]), height=380)
    ex.show(fig)
    main_log = logs.get("shipped run (self-KD)")
    if main_log:
        ex.show(plots.loss_curves(main_log, keys=["loss_dense", "loss_sparse", "loss_colbert", "loss_inter",
                                                  "loss_kd_sparse"], title="Loss terms of the shipped run", log_y=True))
else:
    print("the shipped model's training logs are not here (data/models/m3lab-minilm/training/)")

# %% [markdown]
# ## 5. What the training changed
#
# The held-out XQuAD **test** articles, same-language (English) and cross-lingual (German questions,
# English paragraphs), before and after training, every retrieval mode (nDCG@10). When the full
# recipe's model has shipped (`"default"`), it is evaluated too.

# %%
from m3lab.data import load_xquad
from m3lab.evaluation import evaluate_retrieval

trained = M3Model.from_pretrained(result.final_dir)
if not have_data:
    print("SKIPPED: the evaluation needs the local XQuAD data")
candidates = {"before training": M3Model.from_pretrained(model_name), "this run": trained}
default = M3Model.from_pretrained("default")
if default.heads_trained and cfg.model != "tiny":
    candidates["shipped default (full recipe)"] = default
rows = []
with run.section("evaluate"):
    for lang in cfg.eval_languages if have_data else []:
        data = load_xquad(lang, corpus_language="en", split="test")
        for name, m in candidates.items():
            for r in evaluate_retrieval(m, data, ["dense", "sparse", "colbert", "hybrid"], max_length=256,
                                        show_progress=False):
                rows.append({"model": name, "task": f"{lang} → en", **r})
results = pd.DataFrame(rows, columns=["model", "task", "mode", "ndcg@10"])
display(results.pivot_table(index=["task", "mode"], columns="model", values="ndcg@10").round(4))
for task, part in results.groupby("task"):
    ex.show(plots.metric_bars(part.to_dict("records"), x="mode", y="ndcg@10", color="model",
                              title=f"XQuAD test, {task}: nDCG@10"))

# %% [markdown]
# **What it shows.** *(Read with the table: the numbers come from this run.)* "Before training" is
# not a weak baseline here. m3lab's head initialisation makes the untrained lexical function a
# plain shared-token counter ($W_{lex}$ ≈ 0, bias 0.3) and the untrained multi-vector function
# MaxSim over the encoder's contextual token states ($W_{mul}$ = identity); on XQuAD, whose questions
# reuse the paragraph's words, both are strong in English. Training pays off where the backbone is
# weak — across languages: for German questions over English paragraphs the multi-vector and hybrid
# scores rise, most for the full-length shipped run. In English the shipped run's lexical function
# ends below the untrained counter: its trained weights trade some of the counter's recall for
# selectivity (weights shrink, some reach zero); a short run has not moved that far. The shipped
# model's card (`data/models/m3lab-minilm/README.md`) has all 12 languages and the BM25 baseline.
#
# ## 6. Using the result
#
# `result.final_dir` is a bge-m3-layout checkpoint: load it with `M3Model.from_pretrained`, serve it
# in the app (`m3lab demo --model DIR`), evaluate it with `m3lab eval --model DIR`, or continue
# training from it. The same recipe from the command line:
#
# ```bash
# python scripts/build_default_training_data.py --out runs/data/m3lab-minilm.jsonl
# m3lab train --config configs/m3lab-minilm.yaml
# ```

# %%
print(sorted(p.name for p in Path(result.final_dir).iterdir()))
run.report();
