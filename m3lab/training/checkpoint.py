"""Checkpoints: atomic trainer state, random states, finding the latest complete checkpoint."""
from __future__ import annotations

import random
import shutil
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_file

logger = logging.getLogger("m3lab.train")

STATE_FILE = "trainer_state.pt"


CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete ``checkpoint-<step>`` directory with the highest step in ``output_dir``, or None.

    Directories being written have a hidden temporary name until they are complete, so
    any ``checkpoint-<step>`` with a ``trainer_state.pt`` is a whole checkpoint.
    """
    found = _checkpoints(Path(output_dir))
    return max(found)[1] if found else None


def _checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    if not output_dir.is_dir():
        return []
    out = []
    for p in output_dir.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and (p / STATE_FILE).is_file():
            out.append((int(m.group(1)), p))
    return out


def _save_state(state: dict[str, Any], path: Path) -> None:
    with atomic_file(path, "wb") as f:
        torch.save(state, f)


def _rng_state(device: torch.device) -> dict[str, Any]:
    """Python, NumPy and torch random states as tensors and primitives (loadable with weights_only)."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                                                     int(np_state[2]), int(np_state[3]), float(np_state[4])],
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def apply_hyperparameters(optimizer: torch.optim.Optimizer, scheduler, config) -> None:
    """After loading a checkpoint, the config's optimizer settings win over the saved ones.

    So a run can resume with, e.g., a lower learning rate; the schedule continues from
    the saved step with the config's rate, warm-up and length. Unchanged settings give
    bit-identical values, so an exact resume stays exact.
    """
    # groups (make_optimizer): encoder decay / no decay, heads decay / no decay
    rates = [config.learning_rate] * 2 + [config.head_learning_rate or config.learning_rate] * 2
    for i, group in enumerate(optimizer.param_groups):
        group.update(initial_lr=rates[i], betas=tuple(config.adam_betas), eps=config.adam_eps,
                     weight_decay=config.weight_decay if i % 2 == 0 else 0.0)
    scheduler.base_lrs = list(rates)
    step = scheduler.last_epoch
    for group, rate, schedule in zip(optimizer.param_groups, rates, scheduler.lr_lambdas):
        group["lr"] = rate * schedule(step)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def prune_checkpoints(output_dir: Path, limit: int | None, newest: Path) -> None:
    """Keep the ``limit`` newest checkpoints (never ``newest``); ``None`` keeps all."""
    if limit is None:
        return
    found = sorted(_checkpoints(output_dir), key=lambda x: x[0])
    for _, path in found[:-limit]:
        if path != newest:
            shutil.rmtree(path, ignore_errors=True)


def find_resume(resume_from: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: ``None``, ``"auto"`` (the latest in ``output_dir``, if any) or a path."""
    if resume_from is None:
        return None
    if resume_from == "auto":
        found = latest_checkpoint(output_dir)
        if found is None:
            logger.info("resume_from: auto: no checkpoint in %s, starting from scratch", output_dir)
        return found
    path = Path(resume_from)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"resume_from: {path} is not a complete checkpoint (no {STATE_FILE})")
    return path
