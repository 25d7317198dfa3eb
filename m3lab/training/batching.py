"""Large batches in bounded memory (paper section 3.4, appendix B.3).

* :func:`split_encode`: encode a batch as sub-batches under gradient checkpointing and
  concatenate the embeddings, so one loss covers the whole batch (appendix B.3) while the
  activations of only one sub-batch are alive at a time.
* :class:`GradCache` (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under
  Memory Limited Setup"): embed every sub-batch without a graph, compute the loss and its
  gradient with respect to the embeddings, then re-encode each sub-batch with a graph and
  backpropagate that gradient. The batch is then bounded by the memory of the embeddings
  (and the loss), not of the encoder's activations.

Both give the gradient of the full-batch loss (tests/test_batching.py checks it).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils import checkpoint as _ckpt

from ..losses import LossOutput
from ..modeling import M3Embeddings

_FLOAT_FIELDS = ("dense", "token_weights", "colbert")


def sub_batches(batch: Mapping[str, Tensor], sub_batch_size: int) -> list[dict[str, Tensor]]:
    """Split a padded batch into row chunks, each cut to its own longest (right-padded) row."""
    if sub_batch_size < 1:
        raise ValueError(f"sub_batch_size must be >= 1, got {sub_batch_size}")
    if "input_ids" not in batch or "attention_mask" not in batch:
        raise ValueError(f"batch needs 'input_ids' and 'attention_mask', got keys {sorted(batch)}")
    n, length = batch["input_ids"].shape
    out = []
    for s in range(0, n, sub_batch_size):
        sub = {k: v[s:s + sub_batch_size] for k, v in batch.items()}
        cols = sub["attention_mask"].any(dim=0).nonzero()
        keep = int(cols.max()) + 1 if cols.numel() else length
        if keep < length:  # trailing all-padding columns change nothing under the attention mask
            sub = {k: v[:, :keep] if v.dim() >= 2 and v.shape[1] == length else v for k, v in sub.items()}
        out.append(sub)
    return out


def _pad_dim1(t: Tensor, size: int, value=0) -> Tensor:
    if t.shape[1] == size:
        return t
    out = t.new_full((t.shape[0], size, *t.shape[2:]), value)
    out[:, : t.shape[1]] = t
    return out


def concat_embeddings(parts: Sequence[M3Embeddings], *, pad_id: int = 0) -> M3Embeddings:
    """Stack sub-batch embeddings along the batch axis, padding the token axes to the longest.

    Padding positions get weight 0, id ``pad_id``, a zero multi-vector and mask False, so
    they add nothing to any score. Differentiable.
    """
    if not parts:
        raise ValueError("concat_embeddings needs at least one part")
    if len(parts) == 1:
        return parts[0]
    lt = max(p.token_weights.shape[1] for p in parts)
    lc = max(p.colbert.shape[1] for p in parts)
    return M3Embeddings(
        dense=torch.cat([p.dense for p in parts]),
        token_weights=torch.cat([_pad_dim1(p.token_weights, lt) for p in parts]),
        input_ids=torch.cat([_pad_dim1(p.input_ids, lt, pad_id) for p in parts]),
        colbert=torch.cat([_pad_dim1(p.colbert, lc) for p in parts]),
        colbert_mask=torch.cat([_pad_dim1(p.colbert_mask, lc, False) for p in parts]),
    )


def _pad_id(model: nn.Module) -> int:
    tok = getattr(getattr(model, "module", model), "tokenizer", None)
    pad = getattr(tok, "pad_token_id", None)
    return int(pad) if pad is not None else 0


def _forward(model: nn.Module, sub: Mapping[str, Tensor], layer_ckpt: bool = False) -> M3Embeddings:
    if not layer_ckpt:
        return model(**sub)
    with layer_checkpointing(model):
        return model(**sub)


@contextlib.contextmanager
def layer_checkpointing(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Per-layer activation checkpointing of the model's Hugging Face encoder, inside the block.

    Each transformer layer then keeps only its input and recomputes its activations in
    backward (in training mode; transformers applies it only then). Nothing changes if the
    encoder already checkpoints its layers.
    """
    encoder = getattr(getattr(model, "module", model), "encoder", None)
    if encoder is None:
        raise TypeError(f"{type(model).__name__} has no Hugging Face .encoder to checkpoint per layer")
    if hasattr(encoder, "activation_checkpointing_enable"):  # transformers >= 5
        active = encoder.is_activation_checkpointing
        enable = lambda: encoder.activation_checkpointing_enable({"use_reentrant": False})  # noqa: E731
        disable = encoder.activation_checkpointing_disable
    else:
        active = encoder.is_gradient_checkpointing
        enable = lambda: encoder.gradient_checkpointing_enable({"use_reentrant": False})  # noqa: E731
        disable = encoder.gradient_checkpointing_disable
    if not enabled or active:
        yield
        return
    enable()
    try:
        yield
    finally:
        disable()


def split_encode(model: nn.Module, batch: Mapping[str, Tensor], sub_batch_size: int, *,
                 checkpoint: bool = True, layer_checkpointing: bool = False) -> M3Embeddings:
    """Split-batch encoding (appendix B.3): sub-batches, each under gradient checkpointing.

    Each sub-batch is encoded inside ``torch.utils.checkpoint`` (non-reentrant, RNG state
    preserved so dropout replays identically), which keeps only its inputs and outputs;
    its activations are recomputed during backward, one sub-batch at a time. The outputs
    are concatenated (token axes padded to the longest sub-batch), ready for one loss over
    the whole batch. Without grad (or ``checkpoint=False``) the sub-batches run plainly.

    Memory: the embeddings of the whole batch plus one sub-batch's activations during its
    recomputation. (FlagEmbedding's split-batch instead checkpoints every layer, which
    keeps each layer's input of every sub-batch.) With ``layer_checkpointing`` the
    recomputation also checkpoints every layer, so it holds one layer's activations at a
    time instead of the whole sub-batch's (one more forward; worth it for long inputs,
    where a single text's activations dominate).
    """
    parts = []
    for sub in sub_batches(batch, sub_batch_size):
        if checkpoint and torch.is_grad_enabled():
            parts.append(_ckpt.checkpoint(_forward, model, sub, layer_checkpointing, use_reentrant=False))
        else:
            parts.append(_forward(model, sub, layer_checkpointing))
    return concat_embeddings(parts, pad_id=_pad_id(model))


class _RngState:
    """CPU (and CUDA) RNG state at one moment, to replay dropout exactly."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def replay(self):
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


@dataclass
class _Cached:
    sub: dict[str, Tensor]
    rng: _RngState
    start: int
    stop: int


def _as_leaves(e: M3Embeddings) -> M3Embeddings:
    values = {f.name: getattr(e, f.name) for f in fields(e)}
    for name in _FLOAT_FIELDS:
        values[name] = values[name].detach().requires_grad_(True)
    return M3Embeddings(**values)


class GradCache:
    """Gradient caching for all three functions (Gao et al., 2021).

    ``step`` (1) embeds every sub-batch of queries and passages without a graph, saving the
    RNG state before each; (2) computes ``loss_fn(q, p, **loss_kwargs)`` on the
    concatenated embeddings and its gradient with respect to the dense vectors, token
    weights and multi-vectors; (3) re-encodes each sub-batch with a graph under its saved
    RNG state and backpropagates the cached gradient. ``.grad`` of the model's parameters
    then holds the full-batch gradient (accumulated, like ``loss.backward()``). Peak memory
    is the embeddings plus the loss plus one sub-batch's activations.

    ``loss_fn`` returns a tensor or a :class:`~m3lab.losses.LossOutput`; it may gather
    embeddings across ranks (:func:`m3lab.training.step.cross_device_loss`); the gradients are then
    all-reduced once per step by the trainer.
    With ``layer_checkpointing`` the re-encoding checkpoints every encoder layer, so it
    holds one layer's activations at a time (for long inputs; one more forward).
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[..., Tensor | LossOutput], *, sub_batch_size: int,
                 query_sub_batch_size: int | None = None, layer_checkpointing: bool = False):
        if sub_batch_size < 1:
            raise ValueError(f"sub_batch_size must be >= 1, got {sub_batch_size}")
        self.model = model
        self.loss_fn = loss_fn
        self.sub_batch_size = int(sub_batch_size)
        self.query_sub_batch_size = int(query_sub_batch_size or sub_batch_size)
        self.layer_checkpointing = layer_checkpointing

    def _embed(self, batch: Mapping[str, Tensor], size: int) -> tuple[M3Embeddings, list[_Cached]]:
        subs = sub_batches(batch, size)
        n, lt = batch["input_ids"].shape
        device = batch["input_ids"].device
        out: dict[str, Tensor] = {}
        cached, start = [], 0
        with torch.no_grad():
            for sub in subs:
                rng = _RngState(device)
                e = _forward(self.model, sub)
                stop = start + sub["input_ids"].shape[0]
                if not out:  # write into full-size buffers: no second copy of the embeddings
                    lc = lt - (sub["input_ids"].shape[1] - e.colbert.shape[1])
                    out = {"dense": e.dense.new_zeros(n, e.dense.shape[1]),
                           "token_weights": e.token_weights.new_zeros(n, lt),
                           "input_ids": e.input_ids.new_full((n, lt), _pad_id(self.model)),
                           "colbert": e.colbert.new_zeros(n, lc, e.colbert.shape[2]),
                           "colbert_mask": e.colbert_mask.new_zeros(n, lc)}
                for name, buf in out.items():
                    value = getattr(e, name)
                    buf[start:stop, : value.shape[1]] = value
                cached.append(_Cached(sub, rng, start, stop))
                start = stop
        return _as_leaves(M3Embeddings(**out)), cached

    def step(self, q_batch: Mapping[str, Tensor], p_batch: Mapping[str, Tensor], **loss_kwargs) -> LossOutput:
        """One forward/backward over the whole batch; returns the (detached) loss and its parts."""
        q, q_cached = self._embed(q_batch, self.query_sub_batch_size)
        p, p_cached = self._embed(p_batch, self.sub_batch_size)
        with torch.enable_grad():
            out = self.loss_fn(q, p, **loss_kwargs)
        loss = out.loss if isinstance(out, LossOutput) else out
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            raise TypeError(f"loss_fn must return a scalar tensor or a LossOutput, got {type(out).__name__}")
        loss.backward()
        # m3lab's trainer all-reduces the gradients itself after the step (no DistributedDataParallel),
        # so the sub-batches backpropagate without any per-sub-batch synchronisation
        for emb, c in [(q, c) for c in q_cached] + [(p, c) for c in p_cached]:
            with c.rng.replay(), torch.enable_grad():
                sub_emb = _forward(self.model, c.sub, self.layer_checkpointing)
            tensors, grads = [], []
            for name in _FLOAT_FIELDS:
                full_grad = getattr(emb, name).grad
                if full_grad is None:  # this field was not used by the loss
                    continue
                t = getattr(sub_emb, name)
                g = full_grad[c.start:c.stop]
                if t.dim() >= 2:  # cut the token axis back to this sub-batch's length
                    g = g[:, : t.shape[1]]
                tensors.append(t)
                grads.append(g)
            if tensors:
                torch.autograd.backward(tensors, grads)
        parts = dict(out.parts) if isinstance(out, LossOutput) else {"loss": float(loss.detach())}
        return LossOutput(loss.detach(), parts)
