# Source of notebooks/03_efficient_batching.ipynb (build with: python notebooks/_build/build.py 03 --execute)

# %% [markdown]
# # 03 · Efficient batching: length groups, split-batch, GradCache, cross-device negatives
#
# **The question.** Contrastive training wants *large* batches (more in-batch negatives) of *long*
# texts (M3 reads up to 8192 tokens). Both cost memory. Section 3.4 of the paper combines three
# tricks: (1) group the data by length so a batch wastes little compute on padding; (2) encode a
# batch as sub-batches under gradient checkpointing and compute one loss over all of it
# (split-batch); (3) share embeddings across GPUs so each device sees every other device's
# passages as negatives. m3lab adds GradCache as a third way to encode. How much does each save,
# and do they change the gradient?
#
# `SMOKE=1` runs tiny shapes for CI; the real run measures a small random encoder on this
# machine's CPU (the GPU column shows what to use on a GPU).

# %%
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from IPython.display import Markdown, display

from m3lab import M3Model, experiments as ex
from m3lab.training import TABLE9_BOUNDARIES, LengthGroupedBatchSampler
from m3lab.losses import M3Loss

run = ex.start_run()
cfg = ex.settings(
    smoke=dict(shape="tiny", lengths=[32, 64], batch=4, sub_batch=2, group_size=1, xdev_queries=4, xdev_length=16),
    cpu=dict(shape="small", lengths=[128, 256, 512], batch=16, sub_batch=4, group_size=1, xdev_queries=8,
             xdev_length=64),
    gpu=dict(shape="xlmr-base", lengths=[512, 1024, 2048, 4096], batch=32, sub_batch=8),
)
display(Markdown(ex.settings_table(cfg)))

# %% [markdown]
# ## 1. Length groups and the padding they save
#
# A batch is padded to its longest text, so a batch that mixes a 100-token paragraph with a
# 2000-token article spends most of its compute on padding. The paper groups the training data by
# length (its Table 9 ranges: 0–500, 500–1000, 1000–2000, … 7000–8192 tokens) and draws every
# batch from one group. `LengthGroupedBatchSampler` does this; the shuffle depends only on the seed
# and the epoch, so every GPU draws the same group at each step and none waits for another.
#
# The texts: XQuAD's paragraphs *and* whole articles in its 12 languages (token lengths under the
# default model's tokenizer); without the local data, mini-corpus passages and joined passages.

# %%
tokenizer = M3Model.from_pretrained("default").tokenizer
if ex.require_data("XQuAD") is not None:
    from m3lab.data import XQUAD_LANGUAGES, load_xquad, load_xquad_long

    texts = [d.text for lang in XQUAD_LANGUAGES for d in load_xquad(lang).corpus]
    texts += [d.text for lang in XQUAD_LANGUAGES for d in load_xquad_long(lang).corpus]
else:
    from m3lab.data import MINI_LANGUAGES, load_mini

    passages = [d.text for d in load_mini(languages=MINI_LANGUAGES).corpus]
    texts = passages + [" ".join(passages[i:i + k]) for k in (3, 8) for i in range(0, len(passages) - k, k)]
lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]]
print(f"{len(texts)} texts, {min(lengths)}–{max(lengths)} tokens, median {int(np.median(lengths))}")

fig = go.Figure(go.Histogram(x=lengths, nbinsx=80, marker_color="#4C78A8"))
for b in TABLE9_BOUNDARIES:
    if b <= max(lengths):
        fig.add_vline(x=b, line_dash="dot", line_color="#E45756")
fig.update_layout(title="Token lengths, with the Table 9 group boundaries (dotted)", template="plotly_white",
                  xaxis_title="tokens", yaxis_title="texts", height=320)
ex.show(fig)

# %%
batch_size = 32
strategies = {
    "random batches (no grouping)": (0, max(lengths) + 1),
    "Table 9 groups (500-token ranges)": TABLE9_BOUNDARIES,
    "fine groups (64-token ranges)": tuple(range(0, max(lengths) + 65, 64)),
}
rows = []
for name, boundaries in strategies.items():
    sampler = LengthGroupedBatchSampler(lengths, batch_size, boundaries=boundaries, seed=0)
    stats = sampler.stats()
    padded = sum(len(b) * max(lengths[i] for i in b) for b in sampler.global_batches())
    rows.append({"batching": name, "batches": stats["batches"], "padding share": stats["padding_share"],
                 "padded tokens / real tokens": padded / sum(lengths)})
padding = pd.DataFrame(rows)
display(padding.round(3))
ex.show(go.Figure(go.Bar(x=padding["batching"], y=padding["padding share"], marker_color="#F58518",
                         text=[f"{v:.0%}" for v in padding["padding share"]], textposition="outside"))
        .update_layout(title=f"Share of padding tokens per epoch (batch size {batch_size})", template="plotly_white",
                       yaxis_tickformat=".0%", height=340))

# %% [markdown]
# Every rank draws the same group: two ranks of a 2-GPU run, first four steps (each rank takes its
# half of the global batch):

# %%
ranks = [LengthGroupedBatchSampler(lengths, batch_size, seed=0, rank=r, world_size=2) for r in (0, 1)]
for step, (b0, b1) in zip(range(4), zip(*ranks)):
    g0, g1 = {ranks[0].group_of[i] for i in b0}, {ranks[1].group_of[i] for i in b1}
    print(f"step {step}: rank 0 group {g0}, {len(b0)} texts, max {max(lengths[i] for i in b0)} tokens | "
          f"rank 1 group {g1}, {len(b1)} texts, max {max(lengths[i] for i in b1)} tokens")

# %% [markdown]
# **What it shows.** With texts from one to a few thousand tokens, random batches are mostly
# padding; Table 9's groups remove most of it, and finer groups remove more (at the price of
# more, smaller groups — each group's last batch is short). The trainer uses Table 9's ranges by
# default (`length_boundaries` changes them) and logs the padding share of every window.
#
# ## 2. Memory and speed: plain vs split-batch vs GradCache
#
# * **plain** — one forward of the whole batch; every layer's activations stay alive until backward.
# * **split-batch** (appendix B.3) — sub-batches, each under gradient checkpointing: only their
#   inputs and outputs are kept; activations are recomputed in backward, one sub-batch at a time.
# * **GradCache** (Gao et al., 2021) — embed all sub-batches *without* a graph, compute the loss and
#   its gradient with respect to the embeddings, then re-encode each sub-batch with a graph and
#   backpropagate that cached gradient. Memory: the embeddings plus one sub-batch.
#
# First, they compute the same gradient (dropout off, so the three runs are comparable):

# %%
model = ex.random_encoder_model(cfg.shape, max_length=max(cfg.lengths)).eval()
loss_fn = M3Loss()
vocab = model.encoder.config.vocab_size
q = ex.random_batch(cfg.batch, 16, vocab, seed=1, ragged=True)
p = ex.random_batch(cfg.batch, min(cfg.lengths), vocab, seed=2, ragged=True)
grads = {}
for mode in ex.BATCHING_MODES:
    model.zero_grad(set_to_none=True)
    out = ex.training_step(model, loss_fn, q, p, mode=mode, sub_batch_size=cfg.sub_batch)
    grads[mode] = torch.cat([prm.grad.reshape(-1) for prm in model.parameters() if prm.grad is not None])
    print(f"{mode:<9} loss {out.loss.item():.6f}   max |grad - plain grad| = "
          f"{float((grads[mode] - grads['plain']).abs().max()):.2e}   (|grad| = {float(grads[mode].norm()):.3f})")

# %% [markdown]
# Now the cost: one training step (queries of 32 tokens, `batch` passages of each length, the full
# M3 loss with self-distillation, backward) per mode and length. Memory is what the step *adds*
# on top of the weights and gradient buffers (`experiments.peak_memory`: on CPU the process's peak
# resident set, on CUDA `max_memory_allocated`). The encoder has random weights of the
# shape named above — memory and speed do not depend on what the weights are.

# %%
with run.section("measure batching"):
    measured = ex.measure_batching(model.train(), lengths=cfg.lengths, batch_size=cfg.batch,
                                   sub_batch_size=cfg.sub_batch, group_size=cfg.group_size)
mem = pd.DataFrame(measured)
mem["peak MiB"] = mem["peak_bytes"] / 2**20
plain = mem[mem["mode"] == "plain"].set_index("length")
mem["memory vs plain"] = mem["peak_bytes"] / mem["length"].map(plain["peak_bytes"])
mem["speed vs plain"] = mem["tokens_per_s"] / mem["length"].map(plain["tokens_per_s"])
print("memory measured as:", measured[0]["method"], "| device:", ex.device_name(model.device))
display(mem[["length", "mode", "batch", "peak MiB", "memory vs plain", "tokens_per_s", "speed vs plain"]].round(2))

# %%
colors = {"plain": "#4C78A8", "split": "#F58518", "gradcache": "#54A24B"}
fig = go.Figure()
for mode, part in mem.groupby("mode", sort=False):
    fig.add_trace(go.Scatter(x=part["length"], y=part["peak MiB"], name=mode, mode="lines+markers",
                             line_color=colors[mode]))
fig.update_layout(title=f"Peak memory of one training step (batch {cfg.batch}, sub-batch {cfg.sub_batch})",
                  xaxis_title="passage length (tokens)", yaxis_title="MiB added by the step", template="plotly_white",
                  height=360)
ex.show(fig)
fig = go.Figure()
for mode, part in mem.groupby("mode", sort=False):
    fig.add_trace(go.Bar(x=[str(v) for v in part["length"]], y=part["tokens_per_s"], name=mode, marker_color=colors[mode]))
fig.update_layout(title="Throughput (tokens per second)", barmode="group", xaxis_title="passage length (tokens)",
                  yaxis_title="tokens / s", template="plotly_white", height=340)
ex.show(fig)

# %% [markdown]
# **What it shows.** Plain encoding's memory grows with batch × length; split-batch and GradCache
# keep only one sub-batch's activations alive, so their memory grows far more slowly, and the gap
# widens with length. The price is time: both run the encoder's forward twice (split-batch
# recomputes in backward; GradCache embeds first without a graph). On a shared 2-core CPU the
# timings are noisy; the memory figures are not. On a GPU the same trade-off lets XLM-R-large train
# 855 instead of 262 texts of 1024 tokens per 80 GB device (paper Table 10); notebook 07 plans
# those numbers, and `benchmarks/batch_capacity.py --device cuda --config xlmr-large` measures them.
#
# ## 3. Cross-device negatives, with 2 processes
#
# With $n$ devices, each encodes its own queries and passages. If each device computed the loss on
# its own batch, a query would see only its device's passages as negatives. Gathering the passage
# embeddings of all devices scores each query against the **whole** global batch. (bge-m3's unified
# fine-tuning gathers the dense function only — the default, `cross_device_functions: [dense]`;
# here all three are gathered, m3lab's option, so that the step equals one process on the whole batch.)
# `m3lab.training.distributed.all_gather_embeddings` is differentiable: its backward sends each device the
# gradient for the rows it encoded, summed over every device's loss. Then the averaged update
# equals the single-process update on the global batch.
#
# Below, two CPU processes launched with `torchrun` (gloo) run one step on a fixed random batch, with
# and without the gather, and we compare with one process on the whole batch.

# %%
kw = dict(n_queries=cfg.xdev_queries, group_size=2, length=cfg.xdev_length, shape="tiny")
with run.section("cross-device (2 processes)"):
    single = ex.cross_device_gradients(**kw)
    launched = ex.launch_cross_device(2, **kw)
gathered, local_only = launched["gathered"], launched["local"]
print("launched as:", launched["command"])
pd.DataFrame([{"run": name, "processes": r["world_size"], "queries per process": r["queries_per_process"],
               "passages each query is scored against": r["passages_scored"], "loss": r["loss"],
               "max |grad - single-process grad|": float(np.abs(r["grad"] - single["grad"]).max())}
              for name, r in [("1 process, whole batch", single), ("2 processes, gathered passages", gathered),
                              ("2 processes, local passages only", local_only)]])

# %% [markdown]
# **What it shows.** With the gather, two processes reproduce the single-process loss and gradient
# (to float rounding) while each holds only half the batch; without it, each query sees half the
# negatives and the gradient is a different one. In training this is `cross_device_negatives: true`
# (the default) with `cross_device_functions` (default `[dense]`, as bge-m3) and a `torchrun` launch:
#
# ```bash
# torchrun --nproc_per_node 8 -m m3lab.training --config configs/minilm-m3.yaml            # one node, 8 GPUs
# torchrun --nnodes 2 --node_rank $RANK --master_addr $HOST --nproc_per_node 8 -m m3lab.training --config ...
# ```
#
# ## Take-aways
#
# * Length groups cut padding — the same examples, far fewer wasted tokens; every rank stays on the same group.
# * Split-batch and GradCache give the same gradient as plain encoding with a fraction of its
#   activation memory, for about one more forward pass.
# * Cross-device gathering multiplies the negatives per query by the number of devices at no change
#   to the result of the step.

# %%
run.report();
