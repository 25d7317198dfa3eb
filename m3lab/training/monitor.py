"""What training reports: running sums between log lines, the JSONL log, resuming it."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_file
from ..losses import LossOutput
from ..modeling import M3Embeddings


class _Window:
    """Running sums between two log lines (losses are means over micro-batches of a step)."""

    def __init__(self):
        self.start = time.perf_counter()
        self.steps = 0
        self.loss = 0.0
        self.parts: dict[str, float] = {}
        self.grad_norm = 0.0
        self.tokens = self.cells = 0
        self.sparse_nonzero = self.sparse_tokens = 0

    def add_loss(self, out: LossOutput, weight: float) -> None:
        """Add a micro-batch's (unscaled) loss and parts, as logged by :class:`M3Loss`."""
        for k, v in out.parts.items():
            if k == "loss":
                self.loss += float(v) * weight
            else:
                self.parts[k] = self.parts.get(k, 0.0) + float(v) * weight

    def count_tokens(self, *batches: dict[str, torch.Tensor]) -> None:
        for b in batches:
            self.tokens += int(b["attention_mask"].sum())
            self.cells += b["attention_mask"].numel()

    def count_sparse(self, q: M3Embeddings, p: M3Embeddings, special_ids: torch.Tensor) -> None:
        """Count the content tokens (not special, not padding) and those with a lexical weight > 0."""
        for e in (q, p):
            with torch.no_grad():
                content = ~torch.isin(e.input_ids, special_ids.to(e.input_ids.device))
                self.sparse_tokens += int(content.sum())
                self.sparse_nonzero += int(((e.token_weights > 0) & content).sum())


class _JsonlLog:
    """Appends one JSON object per line (rank 0 only; other processes pass ``None``)."""

    def __init__(self, path: Path | None):
        self.file = open(path, "a", encoding="utf-8") if path is not None else None

    def write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps({"time": round(time.time(), 3), **record}, ensure_ascii=False) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _truncate_log(path: Path, step: int) -> None:
    """On resume, drop log lines written after the checkpoint (the resumed run writes them again).

    A fresh run (``step=-1``) starts a new log.
    """
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash
            continue
        if record.get("step", 0) <= step and not (record.get("step") == step and record.get("event") == "end"):
            kept.append(line)
    with atomic_file(path) as f:
        f.write("".join(line + "\n" for line in kept))
