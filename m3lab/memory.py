"""Memory planning for M3 training: how large a batch of a given length fits on a device.

Paper section 3.4 trains with batch sizes chosen per length range (Table 9) and reports the
largest batch per 80 GB GPU with and without split-batch (Table 10). This module estimates the
same thing for m3lab's trainer, two ways:

* :func:`estimate_step_bytes` — an analytic model of one training step's memory: the model
  states (fp32 weights, gradients, AdamW moments, optionally sharded ZeRO-style) plus the
  activations that backward needs, following Korthikanti et al. (2022), "Reducing Activation
  Recomputation in Large Transformer Models": per layer and token about
  ``h * (8e + 2 + 2e * I/h)`` bytes (34 h for 16-bit activations, e = 2, and I = 4h), plus
  ``a * s * (2e + 1)`` for materialised attention scores (none with flash / memory-efficient
  attention). What each batching mode keeps alive for the whole batch and for one sub-batch is
  spelled out in :func:`estimate_step_bytes`.
* :func:`fit_per_example` — measured peaks at two or more batch sizes (e.g. from
  :func:`m3lab.experiments.measure_batching` on the target device) fitted to
  ``intercept + slope * batch``; :func:`max_batch` then solves for the budget.

:func:`plan_batch_sizes` turns either into the ``batch_size`` mapping per length group that
the trainer's config accepts (``batch_size: {0: 96, 500: 48, ...}``), like Table 9.
The analytic model is an estimate (allocator fragmentation, kernels' workspaces and the
framework's own buffers are not in it); measure on the target device before a long run.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: Encoder shapes (vocabulary, hidden size, layers, attention heads, intermediate size).
SHAPES: dict[str, dict[str, int]] = {
    "xlmr-large": dict(vocab_size=250_002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                       intermediate_size=4096),   # XLM-RoBERTa-large = BAAI/bge-m3's encoder (8194 positions)
    "xlmr-base": dict(vocab_size=250_002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072),
    "minilm": dict(vocab_size=30_522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536),
    "small": dict(vocab_size=30_000, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                  intermediate_size=512),
}
#: Paper Table 9: total batch size per length range (tokens), unsupervised pre-training and fine-tuning.
PAPER_TABLE9 = {
    "ranges": ["0-500", "500-1000", "1000-2000", "2000-3000", "3000-4000", "4000-5000", "5000-6000", "6000-7000",
               "7000-8192"],
    "unsupervised": [67200, 54720, 37248, 27648, 21504, 17280, 15072, 12288, 9984],
    "fine-tuning": [1152, 768, 480, 432, 336, 336, 288, 240, 192],
}
#: Paper Table 10: largest batch per A800-80GB GPU, XLM-R-large, by length, without / with split-batch.
PAPER_TABLE10 = {"plain": {1024: 262, 4096: 25, 8192: 6}, "split": {1024: 855, 4096: 258, 8192: 130}}
MODES = ("plain", "layer-checkpointing", "split", "gradcache")
ATTENTION = ("flash", "eager")


def encoder_parameters(shape: Mapping[str, int], *, max_positions: int = 8194, with_heads: bool = True) -> int:
    """Parameter count of a BERT/XLM-R encoder of this shape (embeddings, layers), plus M3's two heads."""
    v, h, n_layers, i = (shape[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size"))
    embeddings = (v + max_positions + 1) * h + 2 * h                     # word, position, type, LayerNorm
    layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h  # attention, LN, MLP, LN
    heads = (h * h + h) + (h + 1) if with_heads else 0                    # W_mul, W_lex
    return embeddings + n_layers * layer + heads


def model_state_bytes(n_params: int, *, zero_stage: int = 0, world_size: int = 1) -> int:
    """fp32 weights + fp32 gradients + AdamW's two moments (16 bytes per parameter).

    With ZeRO-style sharding over ``world_size`` devices: stage 1 shards the optimizer moments,
    stage 2 also the gradients, stage 3 also the weights.
    """
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0-3, got {zero_stage}")
    n = max(world_size, 1)
    weights = 4 * n_params / (n if zero_stage >= 3 else 1)
    grads = 4 * n_params / (n if zero_stage >= 2 else 1)
    moments = 8 * n_params / (n if zero_stage >= 1 else 1)
    return int(weights + grads + moments)


def layer_activation_bytes(length: int, shape: Mapping[str, int], *, dtype_bytes: int = 2,
                           attention: str = "flash") -> float:
    """Activations one encoder layer keeps for backward, per sequence of ``length`` tokens.

    Korthikanti et al. (2022), generalised to activation width ``e`` = ``dtype_bytes`` and any
    intermediate size I: ``s*h*(8e + 2 + 2e*I/h)`` (inputs of the projections, LayerNorms, GELU,
    1-byte dropout masks) + ``a*s^2*(2e + 1)`` with ``attention="eager"`` (scores, softmax,
    dropout). Flash / memory-efficient attention keeps no s x s tensor.
    """
    if attention not in ATTENTION:
        raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
    s, h, a, i, e = length, shape["hidden_size"], shape["num_attention_heads"], shape["intermediate_size"], dtype_bytes
    linear = s * h * (8 * e + 2 + 2 * e * i / h)
    quadratic = a * s * s * (2 * e + 1) if attention == "eager" else 0.0
    return linear + quadratic


def sequence_bytes(length: int, shape: Mapping[str, int], *, dtype_bytes: int = 2, attention: str = "flash",
                   reference_sparse: bool = False, distinct_tokens: int | None = None) -> dict[str, float]:
    """Per-sequence memory of one forward pass that backward needs, by part.

    ``layers``: all layers' activations (:func:`layer_activation_bytes`); ``layer``: one layer's;
    ``inputs``: every layer's input (what per-layer gradient checkpointing keeps); ``outputs``: what
    M3's heads produce and the loss reads (multi-vectors, token weights, dense vector: about 3
    vectors of width h per token); ``lexical``: the text's row of the batch's lexical matrix
    (one float32 per distinct token id of the batch, ``distinct_tokens``, at most the vocabulary;
    about 3 live copies: weights, scatter, gradient); ``sparse_reference``: the (length x
    vocabulary) tensor that the reference implementation builds for the lexical score (m3lab
    does not: 0 unless ``reference_sparse``).
    """
    s, h, v, n_layers = length, shape["hidden_size"], shape["vocab_size"], shape["num_hidden_layers"]
    one = layer_activation_bytes(length, shape, dtype_bytes=dtype_bytes, attention=attention)
    embed = s * h * (2 * dtype_bytes + 1)
    distinct = v if distinct_tokens is None else min(distinct_tokens, v)
    return {"layers": n_layers * one + embed, "layer": one, "inputs": n_layers * s * h * dtype_bytes + embed,
            "outputs": 3 * s * h * dtype_bytes, "lexical": 3 * 4 * distinct,
            "sparse_reference": 2.0 * s * v * dtype_bytes if reference_sparse else 0.0}


@dataclass
class StepEstimate:
    """One step's estimated peak: ``static`` (model states) + ``per_example * batch`` + ``fixed``."""

    static: float
    per_example: float
    fixed: float
    batch: int

    @property
    def total(self) -> float:
        return self.static + self.per_example * self.batch + self.fixed


def estimate_step_bytes(shape: Mapping[str, int] | str, length: int, batch: int, *, mode: str = "split",
                        sub_batch: int = 8, query_length: int = 64, group_size: int = 1, dtype_bytes: int = 2,
                        attention: str = "flash", reference_sparse: bool = False, distinct_tokens: int | None = None,
                        zero_stage: int = 0,
                        world_size: int = 1, loss_workspace_elements: int = 1 << 27,
                        include_states: bool = True) -> StepEstimate:
    """Estimated peak memory of one training step on one device.

    ``batch`` queries (``query_length`` tokens) with ``group_size`` passages (``length`` tokens)
    each. What the batch keeps alive, per ``mode``:

    * ``plain``: every layer's activations of every text until backward;
    * ``layer-checkpointing`` (``gradient_checkpointing: true``): every layer's input for the
      whole batch, and one layer's activations for the whole batch while it is recomputed;
    * ``split`` (split-batch, appendix B.3) and ``gradcache``: the heads' outputs for the whole
      batch (twice: the sub-batch outputs and their concatenation, or the cached embeddings and
      their gradient) and one sub-batch of ``sub_batch`` texts' activations.

    Backward adds a workspace of about one layer's activations (their gradients) for the texts it
    runs on (the batch, or one sub-batch). Every mode also holds each text's row of the batch's
    lexical matrix (``distinct_tokens``
    float32s; default: the vocabulary, an upper bound). Plus the loss's multi-vector similarity block (``loss_workspace_elements`` float32, m3lab's
    chunk size ``colbert_max_elements``, about 3 live copies) and the model states
    (:func:`model_state_bytes`; ``include_states=False`` leaves them out, e.g. to compare with a
    measurement taken after a warm-up step).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(shape, str):
        shape = SHAPES[shape]
    kw = dict(dtype_bytes=dtype_bytes, attention=attention, reference_sparse=reference_sparse,
              distinct_tokens=distinct_tokens)
    p, q = sequence_bytes(length, shape, **kw), sequence_bytes(query_length, shape, **kw)

    def texts(part: str) -> float:  # bytes of one example: its query and its group of passages
        return q[part] + group_size * p[part]

    # backward needs a workspace of about one layer's activations (their gradients) for the texts
    # being backpropagated: the whole batch, or one sub-batch
    if mode == "plain":
        per = texts("layers") + texts("layer") + texts("outputs") + texts("lexical") + texts("sparse_reference")
        fixed = 0.0
    elif mode == "layer-checkpointing":
        per = texts("inputs") + 2 * texts("layer") + texts("outputs") + texts("lexical") + texts("sparse_reference")
        fixed = 0.0
    else:
        per = 2 * texts("outputs") + texts("lexical") + texts("sparse_reference")
        fixed = min(sub_batch, batch * group_size) * (p["layers"] + p["layer"] + p["outputs"])
    fixed += 3 * 4 * loss_workspace_elements
    static = model_state_bytes(encoder_parameters(shape), zero_stage=zero_stage, world_size=world_size) \
        if include_states else 0.0
    return StepEstimate(static=static, per_example=per, fixed=fixed, batch=batch)


def fit_per_example(batches: Sequence[int], peak_bytes: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``(intercept, slope)`` of measured peaks against batch size (two or more points)."""
    if len(batches) != len(peak_bytes) or len(batches) < 2 or len(set(batches)) < 2:
        raise ValueError("need peaks measured at two or more different batch sizes")
    n = len(batches)
    mx, my = sum(batches) / n, sum(peak_bytes) / n
    sxx = sum((x - mx) ** 2 for x in batches)
    slope = sum((x - mx) * (y - my) for x, y in zip(batches, peak_bytes)) / sxx
    return my - slope * mx, slope


def max_batch(budget_bytes: float, *, per_example: float, fixed: float = 0.0, multiple_of: int = 1) -> int:
    """The largest batch with ``fixed + per_example * batch <= budget_bytes`` (0 if none), rounded
    down to a multiple of ``multiple_of`` (e.g. the number of devices)."""
    if per_example <= 0:
        raise ValueError(f"per_example must be > 0, got {per_example}")
    b = max(0, math.floor((budget_bytes - fixed) / per_example))
    return b - b % multiple_of if multiple_of > 1 else b


def plan_batch_sizes(shape: Mapping[str, int] | str, budget_bytes: float, *,
                     boundaries: Sequence[int] = (0, 500, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8192),
                     world_size: int = 1, **kwargs) -> dict[int, dict[str, int]]:
    """Per length group (keyed by its lower bound, as the trainer's ``batch_size`` mapping), the
    largest batch per device for texts as long as the group's upper bound, and the total over
    ``world_size`` devices. ``kwargs`` go to :func:`estimate_step_bytes` (mode, sub_batch, ...)."""
    out = {}
    for lo, hi in zip(boundaries[:-1], boundaries[1:]):
        est = estimate_step_bytes(shape, hi, 1, world_size=world_size, **kwargs)
        per_device = max_batch(budget_bytes - est.static, per_example=est.per_example, fixed=est.fixed)
        out[int(lo)] = {"max_length": int(hi), "per_device": per_device, "total": per_device * world_size}
    return out
