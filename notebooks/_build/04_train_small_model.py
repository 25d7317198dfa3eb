# Source of notebooks/04_train_small_model.ipynb (build with: python notebooks/_build/build.py 04 --execute)

# %% [markdown]
# # 04 · Training a small M3 model, step by step
#
# **The question.** m3lab's default model is multilingual-e5-small (12 layers, 384-d, XLM-R's
# vocabulary, mean pooling) turned into an M3 model: its dense function fine-tuned, its lexical and
# multi-vector heads trained from scratch. How is it made? We follow its recipe
# (`configs/m3lab-e5-small.yaml`): build training data with hard negatives, warm each function up
# on its own contrastive loss, then train all three together with self-knowledge distillation —
# watching every loss term and the *sparse activity* (the share of tokens whose lexical weight is
# non-zero) as it trains.
#
# The recipe is sized for a CPU: the embeddings and the lower layers are **frozen** and run once per
# text (`frozen_layers`), so each step runs only the top layers and the heads, and the fresh heads
# get a larger learning rate than the pretrained layers (`head_learning_rate`). The full recipe
# (500 steps; 30,292 training examples from XQuAD in 12 languages and from Tatoeba) ran on a 2-core
# CPU — section 4 reads its log; here the data and the steps are scaled down (see the settings;
# the `gpu` column is the full recipe). `SMOKE=1` trains a tiny random encoder for a few steps (CI).

# %%
import json
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
    smoke=dict(model="tiny", frozen_layers=1, languages=["en"], tatoeba_pairs=0, max_examples=64, warmup_steps=3,
               unified_steps=4, batch_size=8, log_steps=1, eval_languages=["en"]),
    cpu=dict(model="e5-small", frozen_layers=9, languages=["en", "de", "zh", "ar"], tatoeba_pairs=20,
             max_examples=400, warmup_steps=10, unified_steps=60, batch_size=16, log_steps=5,
             eval_languages=["en", "de"]),
    gpu=dict(frozen_layers=9, languages=["ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh"],
             tatoeba_pairs=40, max_examples=None, warmup_steps=60, unified_steps=440, log_steps=10),
)
display(Markdown(ex.settings_table(cfg)))
scratch = tempfile.TemporaryDirectory(prefix="m3lab-04-")  # removed when the kernel exits
workdir = Path(scratch.name)
RECIPE = ex.ROOT / "configs" / "m3lab-e5-small.yaml"

# %% [markdown]
# ## 1. The recipe
#
# The whole recipe is one YAML file: the backbone, the data, the loss and two stages. We read it
# and replace only the data location, the output folder, the number of steps and of frozen layers
# (the settings above).

# %%
recipe = yaml.safe_load(RECIPE.read_text())
print(RECIPE.read_text().split("\nmodel:")[0])  # its header comment
show = {k: recipe[k] for k in ("model", "pooling", "query_max_length", "passage_max_length", "group_size",
                               "batch_size", "frozen_layers", "learning_rate", "head_learning_rate", "warmup_ratio",
                               "temperature", "loss_form", "ensemble_weights")}
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
# collect the records as they come (`on_log`). Before the first step it runs the frozen lower layers
# once over every distinct query and passage (`m3lab.training.frozen`); every step then runs only
# the layers above them. The queries and passages get the model's prompts (e5's `"query: "` /
# `"passage: "`), as at inference.

# %%
model_name = str(ex.make_tiny_model(workdir / "tiny-bert")) if cfg.model == "tiny" else cfg.model
records = []
stages = [dict(stage) for stage in recipe["stages"]]
stages[0]["steps"], stages[1]["steps"] = cfg.warmup_steps, cfg.unified_steps
config = load_config({**recipe, "train_files": [str(train_file)], "output_dir": str(workdir / "run"), "model": model_name,
                      "batch_size": cfg.batch_size, "frozen_layers": cfg.frozen_layers,
                      "log_steps": cfg.log_steps, "save_steps": None,
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
# **What it shows.** The dense and multi-vector losses fall over the run (dense from about 1.0 to
# 0.5, multi-vector from 0.86 to 0.26 at the last record; single batches are noisy). The lexical
# loss starts far higher, near 11: the untrained lexical score is a scaled count of shared tokens,
# and at τ = 0.02 every BM25 hard negative that shares as many words as the positive is punished
# hard. It falls to about 3.3 by step 70 — close to ln 32 ≈ 3.47, the loss of a function that
# scores the 32 passages of a batch alike: after 70 steps the lexical function's own ranking is
# still weak. In the unified stage the distillation terms join: small for dense and multi-vector
# (0.3–0.8), which already agree with the ensemble, largest for the lexical function (2.3–5.2), the
# one with most to learn from it. Sparse activity is the health check: it stays at 1.0 — every
# token keeps a non-zero lexical weight — so nothing collapsed (the trainer warns when it stays
# below 1%; with `head_learning_rate` 5e-4 an earlier version of this recipe did collapse).
#
# ## 4. The full recipe's run, from its logs
#
# The shipped default model was trained with this recipe at full length (all 12 languages, the
# full training file, the steps in the table below); its logs ship with it
# (`data/models/m3lab-e5-small/training/`: each run's `<run>.log.jsonl` and
# `<run>.train_config.json`), next to the same run without self-distillation (the ablation of
# notebook 05) when that has been run, and the logs of two earlier attempts: `log-first-run-lr-5e-5`
# (one learning rate, 5e-5, for the encoder and the heads; 300 steps) and
# `log-collapsed-head-lr-5e-4` (the heads at 5e-4; stopped). The model card says why each was
# replaced. The table summarises each log (`ex.log_summary`; its
# `logged_hours` are the training steps only, not the setup before them, such as the frozen-layer
# cache over some 16,000 queries and 28,000 passages) and the settings of each run's
# `train_config.json`; the plots show the sparse activity and the loss terms over the whole run.

# %%
shipped = ex.ROOT / "data" / "models" / "m3lab-e5-small" / "training"
log_files = {f.name.removesuffix(".jsonl").removesuffix(".log"): f
             for f in sorted(shipped.glob("*.jsonl"))} if shipped.is_dir() else {}
ablation_run = ex.ROOT / "runs" / "m3lab-e5-small-no-selfkd" / "log.jsonl"  # the ablation, if run here but not shipped
if (log_files and not any(name.endswith("no-selfkd") for name in log_files) and ablation_run.is_file()
        and ex.log_summary(ablation_run)["finished"]):
    log_files["m3lab-e5-small-no-selfkd"] = ablation_run
if log_files:
    summary = {name: ex.log_summary(f) for name, f in log_files.items()}
    for name, f in log_files.items():  # the settings each run used, from its train_config.json
        conf = f.parent / (f"{name}.train_config.json" if f.name != "log.jsonl" else "train_config.json")
        if conf.is_file():
            c = json.loads(conf.read_text())
            summary[name].update({k: c.get(k) for k in ("model", "frozen_layers", "learning_rate", "head_learning_rate",
                                                        "batch_size")})
    display(pd.DataFrame(summary).T)
    logs = {name: ex.read_log(f) for name, f in log_files.items()}
    fig = go.Figure([go.Scatter(x=[r["step"] for r in log], y=[r["sparse_nonzero_share"] for r in log], name=name,
                                mode="lines+markers") for name, log in logs.items()])
    fig.add_hline(y=0.01, line_dash="dot", annotation_text="the trainer's collapse warning (1%)")
    fig.update_layout(title="Sparse activity in the full-length runs", template="plotly_white", xaxis_title="step",
                      yaxis=dict(title="share of tokens with a non-zero lexical weight", range=[0, 1.05]), height=380)
    ex.show(fig)
    main_log = logs.get("m3lab-e5-small")
    if main_log:
        ex.show(plots.loss_curves(main_log, keys=["loss_dense", "loss_sparse", "loss_colbert", "loss_inter",
                                                  "loss_kd_sparse"], title="Loss terms of the shipped run", log_y=True))
else:
    print("SKIPPED: the shipped model's training logs are not here (data/models/m3lab-e5-small/training/*.log.jsonl)")

# %% [markdown]
# **What it shows.** The shipped run and its ablation keep every token's lexical weight non-zero
# (activity 1.0 at every record), with and without self-distillation, and so does the first run.
# The attempt with the heads at 5e-4 collapsed: its activity fell from 1.0 to 0.24 within 70 steps.
# Large steps push $W_{lex}^\top H[t]$ + bias below zero for most tokens, where ReLU passes no
# gradient back, so they stay there — the dead-ReLU collapse; the recipe's heads now learn at 1e-4.
# In the shipped run's loss terms the dense and multi-vector losses fall from about 0.9 and 0.8 to
# about 0.3; the lexical loss falls from 8.6 to about 2.5 within the first 70 steps and stays there,
# below the ln 32 ≈ 3.47 of a function that cannot tell a batch's passages apart (the short run
# above ended at 3.3), with its distillation term beside it (2.2–2.8).
#
# ## 5. What the training changed
#
# The held-out XQuAD **test** articles, same-language (English) and cross-lingual (German questions,
# English paragraphs), every retrieval mode (nDCG@10), for three models: "before training" is the
# `"e5-small"` backbone with m3lab's initial heads — its dense function is multilingual-e5-small
# itself, with its prompts, the base the recipe starts from; "this run" is the model trained above;
# and, when it has shipped, the full recipe's model (`"default"`).

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
# a strong baseline: e5-small's dense function scores 0.970 in English and 0.922 for German
# questions over English paragraphs, and training leaves it where it was (within 0.005: the recipe
# moves the top layers at e5's fine-tuning rate, 1e-5). m3lab's initial heads are not weak either:
# the untrained multi-vector function is MaxSim over the encoder's contextual token states
# ($W_{mul}$ = identity) and already the best mode; the untrained lexical function, a plain
# shared-token counter, is strong in English (0.906: XQuAD's questions reuse the paragraph's words)
# and poor across languages (0.332: German questions share few tokens with English paragraphs).
# Training lifts the lexical function most — English 0.906 → 0.920 after this run → 0.943 for the
# shipped model, German → English 0.332 → 0.367 → 0.450 — and multi-vector and hybrid by about 0.01
# and 0.02 across languages, where this 70-step run already reaches the shipped model's scores. The
# shipped model's card (`data/models/m3lab-e5-small/README.md`) has all 12 languages, the BM25
# baseline and the ablation.
#
# ## 6. Using the result
#
# `result.final_dir` is a full bge-m3-layout checkpoint (the trainer writes it with
# `save_pretrained`): load it with `M3Model.from_pretrained`, serve it in the app
# (`m3lab demo --model DIR`), evaluate it with `m3lab eval --model DIR`, or continue training from
# it. The shipped model is the same kind of checkpoint stored as a delta on its base
# (`M3Model.save_delta`, notebook 01). The full recipe from the command line:
#
# ```bash
# python scripts/build_default_training_data.py --out runs/data/m3lab-e5-small.jsonl
# m3lab train --config configs/m3lab-e5-small.yaml
# python scripts/ship_default_model.py runs/m3lab-e5-small/final data/models/m3lab-e5-small \
#     --logs runs/m3lab-e5-small runs/m3lab-e5-small-no-selfkd
# ```

# %%
print(sorted(p.name for p in Path(result.final_dir).iterdir()))
run.report();
