"""What a run is set up with: its device and precision, what each stage trains, the optimizer."""
from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch

from ..modeling import M3Model
from ..modeling.matryoshka import check_matryoshka_dims
from .config import ConfigError, TrainConfig


def apply_freeze(model: M3Model, freeze: Sequence[str]) -> None:
    """Set ``requires_grad`` for a stage: everything trainable except what ``freeze`` names.

    ``encoder`` freezes all encoder weights, ``embeddings`` only its input embeddings,
    ``sparse``/``colbert`` their heads (``sparse_linear``/``colbert_linear``). ``dense`` has
    no weights of its own (it is the encoder's [CLS] state): it is handled by dropping its
    loss terms (:attr:`StageConfig.trained_functions`), nothing is frozen here.
    """
    for p in model.parameters():
        p.requires_grad_(True)
    frozen = []
    if "encoder" in freeze:
        frozen.append(model.encoder)
    elif "embeddings" in freeze:
        frozen.append(getattr(model.encoder, "embeddings", None) or model.encoder.get_input_embeddings())
    if "sparse" in freeze:
        frozen.append(model.sparse_linear)
    if "colbert" in freeze:
        frozen.append(model.colbert_linear)
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)


def check_matryoshka_model(config: TrainConfig, model: M3Model) -> tuple[int, ...] | None:
    """``config.matryoshka_dims`` checked against the model: each dim at most the dense (hidden) size and the
    multi-vector head's size, and below at least one of them (the full-size loss is always included).

    Returns the dims largest first (None when unset); raises :class:`ConfigError` naming the key.
    """
    if config.matryoshka_dims is None:
        return None
    sizes = {"the model's hidden size (dense dimension)": model.hidden_size,
             "the multi-vector (colbert) dimension": model.colbert_linear.out_features}
    try:
        for name, size in sizes.items():
            dims = check_matryoshka_dims(config.matryoshka_dims, size, name=name)
    except ValueError as err:
        raise ConfigError(f"config: 'matryoshka_dims': {err}") from None
    full = [d for d in dims if all(d == size for size in sizes.values())]
    if full:
        raise ConfigError(f"config: 'matryoshka_dims': {full[0]} is the model's full dimension; the full-size loss "
                          "is always included: list only smaller dims")
    return dims


def pick_device(device: str) -> torch.device:
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on a GPU that supports it, else fp16 on GPU, none on CPU."""
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def make_optimizer(model: M3Model, config: TrainConfig, total_steps: int):
    """AdamW (no weight decay on biases and LayerNorms, as nanoGPT) and the warm-up schedule.

    The two heads take ``head_learning_rate`` when it is set (a short run: the freshly
    initialised heads need a larger step than the pretrained encoder), else ``learning_rate``.
    """
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

    c = config
    heads = {id(p) for m in (model.sparse_linear, model.colbert_linear) for p in m.parameters()}
    groups = []
    for lr, is_head in ((c.learning_rate, False), (c.head_learning_rate or c.learning_rate, True)):
        params = [p for p in model.parameters() if (id(p) in heads) == is_head]
        groups += [{"params": [p for p in params if p.ndim >= 2], "weight_decay": c.weight_decay, "lr": lr},
                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr": lr}]
    optimizer = torch.optim.AdamW(groups, lr=c.learning_rate, betas=tuple(c.adam_betas), eps=c.adam_eps)
    warmup = c.warmup_steps if c.warmup_steps is not None else math.ceil(c.warmup_ratio * total_steps)
    scheduler = (get_linear_schedule_with_warmup(optimizer, warmup, total_steps) if c.lr_scheduler == "linear"
                 else get_constant_schedule_with_warmup(optimizer, warmup))
    return optimizer, scheduler
