"""Frozen lower layers, run once: a CPU-sized way to fine-tune a deep encoder.

With ``frozen_layers: N`` the embeddings and the first N transformer layers get no update in
any stage. Their output depends only on the text, so :class:`LowerLayerCache` computes it
once per distinct training text (eval mode: no dropout below layer N) and every step runs
only the layers above N and the heads (``M3Model.forward(..., lower_states=...)``). The
gradient of the trained weights is the one an uncached step with those layers frozen (and
their dropout off) would give; ``tests/test_frozen_layers.py`` checks it.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..modeling import M3Model
from ..modeling.model import encoder_layers


def freeze_lower_layers(model: M3Model, layers: int) -> None:
    """``requires_grad_(False)`` on the encoder's embeddings and its first ``layers`` layers."""
    stack = encoder_layers(model.encoder)
    if not 0 < layers < len(stack):
        raise ValueError(f"frozen_layers must be between 1 and {len(stack) - 1} for this encoder "
                         f"({len(stack)} layers), got {layers}")
    for module in [model.encoder.embeddings, *stack[:layers]]:
        for p in module.parameters():
            p.requires_grad_(False)


class LowerLayerCache:
    """The output of the embeddings and the first ``layers`` layers for a list of token-id sequences.

    ``states[i]`` is a ``(len(ids[i]), hidden)`` float32 tensor (on the CPU); :meth:`batch`
    right-pads rows into the layout :meth:`M3Model.collate` gives the same ids.
    """

    def __init__(self, model: M3Model, ids: Sequence[Sequence[int]], layers: int, *, batch_size: int = 32,
                 desc: str = "lower layers", progress: bool = True):
        self.states: list[torch.Tensor] = [torch.empty(0)] * len(ids)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # length-sorted: little padding
        was_training = model.training
        model.eval()
        try:
            with tqdm(total=sum(len(x) for x in ids), desc=desc, unit="tok", disable=not progress) as bar:
                for start in range(0, len(order), batch_size):
                    rows = order[start:start + batch_size]
                    batch = model.collate([ids[i] for i in rows])
                    batch = {k: v.to(model.device) for k, v in batch.items()}
                    hidden = model.lower_states(batch["input_ids"], batch["attention_mask"], layers).float().cpu()
                    for j, i in enumerate(rows):
                        self.states[i] = hidden[j, : len(ids[i])].clone()
                    bar.update(sum(len(ids[i]) for i in rows))
        finally:
            model.train(was_training)

    def batch(self, rows: Sequence[int]) -> torch.Tensor:
        """``(len(rows), longest, hidden)`` states, zero-padded on the right."""
        length = max(self.states[i].shape[0] for i in rows)
        out = torch.zeros(len(rows), length, self.states[rows[0]].shape[1])
        for j, i in enumerate(rows):
            out[j, : self.states[i].shape[0]] = self.states[i]
        return out
