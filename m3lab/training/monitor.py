"""What training reports: running sums between log lines, the sparse-collapse warning, the JSONL log."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist

from .._io import atomic_file
from ..losses import LossOutput
from ..modeling import M3Embeddings

logger = logging.getLogger("m3lab.train")


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


    def summarize(self, world: int, device: torch.device) -> dict[str, Any]:
        """The window's means per step (losses, gradient norm) and rates, over all processes.

        Losses and norms are averaged over processes, token counts summed.
        """
        stats = torch.tensor([self.loss, self.tokens, self.cells, self.sparse_nonzero, self.sparse_tokens,
                              self.grad_norm], dtype=torch.float64, device=device)
        names = sorted(self.parts)
        parts = torch.tensor([self.parts[k] for k in names], dtype=torch.float64, device=device)
        if world > 1:
            tdist.all_reduce(stats)
            tdist.all_reduce(parts)
            stats[[0, 5]] /= world
            parts /= world
        loss, tokens, cells, nz, sparse_tokens, grad_norm = stats.tolist()
        elapsed = time.perf_counter() - self.start
        return {"loss": loss / self.steps, "losses": {k: float(v) / self.steps for k, v in zip(names, parts.tolist())},
                "grad_norm": grad_norm / self.steps,
                "sparse_nonzero_share": nz / sparse_tokens if sparse_tokens else None,
                "tokens_per_s": tokens / elapsed if elapsed > 0 else None,
                "padding_share": 1.0 - tokens / cells if cells else None}


class CollapseMonitor:
    """The sparse-collapse warning (docs/training.md, 'Sparse collapse').

    A ReLU that outputs 0 gets no gradient, so lexical weights that collapse to zero rarely
    recover: warn once the share of content tokens with a non-zero weight has stayed below
    ``threshold`` for ``patience`` log lines in a row.
    """

    def __init__(self, threshold: float, patience: int, streak: int = 0):
        self.threshold, self.patience, self.streak = threshold, patience, streak

    def update(self, share: float, step: int) -> str | None:
        """Record one log line's non-zero share; the warning's text when the streak reaches ``patience``."""
        self.streak = self.streak + 1 if share < self.threshold else 0
        if self.streak != self.patience:
            return None
        return (f"sparse weights are collapsing: only {share:.2%} of the content tokens have a non-zero "
                f"lexical weight (< {self.threshold:.2%} for {self.streak} logs in a row, step {step}); sparse "
                "retrieval will find nothing, and a ReLU that outputs 0 gets no gradient, so it rarely recovers. "
                "Resume from an earlier checkpoint with a lower learning_rate or a larger loss_weights.sparse "
                "(docs/training.md, 'Sparse collapse')")


def data_summary(data, config) -> dict[str, Any]:
    """The training data's counts for the start record; warns about truncated texts and filled groups."""
    d, c = data, config
    if d.truncated_queries or d.truncated_passages:
        logger.warning("truncated %d of %d queries to query_max_length=%d and %d of %d passages to "
                       "passage_max_length=%d tokens", d.truncated_queries, len(d.query_ids),
                       c.query_max_length, d.truncated_passages, len(d.passage_ids), c.passage_max_length)
    if d.filled_groups and c.group_size > 1:
        logger.info("%d of %d examples have fewer than %d negatives: filled by %s", d.filled_groups, len(d),
                    c.group_size - 1, c.negatives_policy)
    return {"examples": len(d), "queries": len(d.query_ids), "passages": len(d.passage_ids),
            "truncated_queries": d.truncated_queries, "truncated_passages": d.truncated_passages,
            "groups_filled": d.filled_groups, "negatives_policy": c.negatives_policy,
            "prompts": dict(d.prompts)}


def progress_postfix(record: dict[str, Any]) -> dict[str, str]:
    """The progress bar's summary of a step record."""
    share, pad, speed = record["sparse_nonzero_share"], record["padding_share"], record["tokens_per_s"]
    return {"stage": record["stage"], "loss": f"{record['loss']:.4f}",
            **{k: f"{v:.3f}" for k, v in record["losses"].items()},
            "sparse>0": "-" if share is None else f"{share:.0%}", "pad": "-" if pad is None else f"{pad:.0%}",
            "tok/s": "-" if speed is None else f"{speed:.0f}"}


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
