"""One training step of a batch: embed (plain, split-batch or GradCache), score, backpropagate.

The trainer, the notebooks and the benchmarks all call :func:`training_step`, so the three
batching strategies of section 3.4 and cross-device negatives are written once:

* ``plain``: one forward of the whole batch;
* ``split``: sub-batches under gradient checkpointing, concatenated (appendix B.3,
  :func:`m3lab.training.batching.split_encode`);
* ``gradcache``: embed without a graph, backpropagate the loss's gradient sub-batch by
  sub-batch (:class:`m3lab.training.batching.GradCache`).

All three leave the gradient of the full-batch loss in ``.grad``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence

from torch import Tensor

from ..losses import GatheredPassages, LossOutput, M3Loss
from ..modeling import M3Embeddings
from . import distributed as dist
from .batching import GradCache, split_encode

BATCHING_MODES = ("plain", "split", "gradcache")
#: bge-m3's unified fine-tuning gathers only the dense function across devices (FlagEmbedding,
#: ``finetune/embedder/encoder_only/m3``: "disable cross device negatives for unified finetuning").
BGE_M3_CROSS_DEVICE = ("dense",)


def cross_device_loss(loss_fn: M3Loss, functions: Sequence[str] = BGE_M3_CROSS_DEVICE) -> Callable[..., LossOutput]:
    """Wrap an :class:`~m3lab.losses.M3Loss` so every process's queries see every process's passages.

    ``cross_device_loss(loss, functions)(q, p, group_size=G, ...)`` gathers the fields of
    ``functions`` of ``p`` from every process and computes the local queries' loss: the
    gathered functions' InfoNCE over all processes' passages, the rest (and, unless every
    function is gathered, s_inter and self-distillation) over this process's passages — see
    :meth:`M3Loss.terms`. In one process, or with no function to gather, it is ``loss`` itself.
    """
    functions = tuple(f for f in functions if f in loss_fn.functions)

    def fn(q: M3Embeddings, p: M3Embeddings, **kwargs) -> LossOutput:
        if not functions or not dist.is_initialized() or dist.world_size() == 1:
            return loss_fn(q, p, **kwargs)
        gathered = GatheredPassages(dist.all_gather_embeddings(p, functions), functions,
                                    dist.rank_offset(q.dense.shape[0], q.dense.device))
        return loss_fn(q, p, gathered=gathered, **kwargs)

    return fn


def training_step(model, loss_fn: M3Loss, q_batch: Mapping[str, Tensor], p_batch: Mapping[str, Tensor], *,
                  group_size: int = 1, mode: str = "plain", sub_batch_size: int = 8,
                  query_sub_batch_size: int | None = None, teacher_scores: Tensor | None = None,
                  cross_device_functions: Sequence[str] = (), scale: Callable[[Tensor], Tensor] | None = None,
                  autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                  on_embeddings: Callable[[M3Embeddings, M3Embeddings], None] | None = None) -> LossOutput:
    """Forward and backward of one batch; gradients accumulate in ``.grad``. Returns the loss output.

    ``mode``: ``plain``, ``split`` or ``gradcache`` (module docstring). ``cross_device_functions``:
    the functions whose passages are gathered from every process (:func:`cross_device_loss`;
    bge-m3: ``("dense",)``, empty: no gathering). ``scale`` maps the loss before backward (e.g.
    ``1 / accumulation steps`` times fp16's loss scale): the returned ``loss`` is the scaled one,
    its ``parts`` the unscaled terms. ``autocast`` makes the context the model runs in (the loss
    itself is float32 either way). ``on_embeddings`` sees the embeddings (e.g. to count tokens).
    """
    if mode not in BATCHING_MODES:
        raise ValueError(f"mode must be one of {BATCHING_MODES}, got {mode!r}")
    compute = cross_device_loss(loss_fn, cross_device_functions)

    def loss(q: M3Embeddings, p: M3Embeddings) -> LossOutput:
        if on_embeddings is not None:
            on_embeddings(q, p)
        out = compute(q, p, group_size=group_size, teacher_scores=teacher_scores)
        return LossOutput(scale(out.loss) if scale is not None else out.loss, out.parts)

    q_sub = query_sub_batch_size or sub_batch_size
    with autocast():
        if mode == "gradcache":  # embeds, scores and backpropagates in sub-batches itself
            return GradCache(model, loss, sub_batch_size=sub_batch_size, query_sub_batch_size=q_sub).step(
                q_batch, p_batch)
        if mode == "split":
            q = split_encode(model, q_batch, q_sub, checkpoint=True)
            p = split_encode(model, p_batch, sub_batch_size, checkpoint=True)
        else:
            q, p = model(**q_batch), model(**p_batch)
        out = loss(q, p)
    out.loss.backward()
    return out
