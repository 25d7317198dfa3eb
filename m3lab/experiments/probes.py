"""Memory and speed of one training step per batching strategy (section 3.4), measured in this process."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..training.step import BATCHING_MODES, training_step
from .tiny import random_batch

_LIBC: Any = None


def _libc():
    """glibc with large allocations served by mmap (freed memory leaves the process at once), or None."""
    global _LIBC
    if _LIBC is None:
        import ctypes

        try:
            lib = ctypes.CDLL("libc.so.6")
            lib.mallopt(-3, 65536)  # M_MMAP_THRESHOLD: blocks >= 64 KiB via mmap
            _LIBC = lib
        except (OSError, AttributeError):
            _LIBC = False
    return _LIBC or None


def _status_kib(key: str) -> int:
    import re

    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE).group(1))


@contextlib.contextmanager
def peak_memory(device: str | torch.device = "cpu") -> Iterator[dict[str, Any]]:
    """Measure the peak memory a block adds: ``result["peak_bytes"]`` after the block.

    CUDA: ``torch.cuda.max_memory_allocated`` above what was allocated before. CPU (Linux):
    the peak resident set (VmHWM, reset through ``/proc/self/clear_refs``) above the resident
    set before, with glibc serving allocations >= 64 KiB by mmap so freed tensors leave the
    process (``mallopt``, set on first use). Elsewhere ``peak_bytes`` is ``None``.
    ``result["method"]`` says which.
    """
    import gc

    device = torch.device(device)
    result: dict[str, Any] = {"peak_bytes": None, "method": "unavailable"}
    # Tensors are freed by reference counting; only a young-generation pass is needed for stray
    # cycles (a full gc.collect() walks every object of torch and transformers: seconds).
    gc.collect(0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result.update(peak_bytes=torch.cuda.max_memory_allocated(device) - base, method="cuda max_memory_allocated")
        return
    libc = _libc()
    try:
        if libc:
            libc.malloc_trim(0)
        base = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    except OSError:
        yield result
        return
    yield result
    result.update(peak_bytes=(_status_kib("VmHWM") - base) * 1024, method="peak RSS (VmHWM) above the RSS before")


def measure_batching(model, *, lengths: list[int], batch_size: int, modes: tuple[str, ...] = BATCHING_MODES,
                     query_length: int = 32, sub_batch_size: int = 8, group_size: int = 1, loss_fn=None,
                     repeats: int = 1, seed: int = 0) -> list[dict[str, Any]]:
    """Peak memory and speed of one training step per (length, mode) on random token batches.

    Each step: ``batch_size`` queries of ``query_length`` tokens and ``batch_size * group_size``
    passages of ``length`` tokens, the full M3 loss with self-distillation, backward (no
    optimizer step). A warm-up step per mode allocates the gradient buffers and one-time state
    first, so the figures are what one step *adds* (activations, embeddings, loss). Rows: ``{"mode", "length", "batch",
    "peak_bytes", "seconds", "tokens_per_s", "loss", "method"}`` (seconds: the fastest of ``repeats``).
    """
    import time as _time

    from ..losses import M3Loss

    loss_fn = loss_fn or M3Loss()
    device = model.device
    vocab = model.encoder.config.vocab_size
    model.train()
    q = random_batch(batch_size, query_length, vocab, seed=seed, device=device)
    warm = random_batch(batch_size * group_size, min(lengths), vocab, seed=seed + 1, device=device)
    for mode in modes:  # allocate gradients and each mode's one-time buffers before measuring
        training_step(model, loss_fn, q, warm, mode=mode, group_size=group_size, sub_batch_size=sub_batch_size)
    rows = []
    for length in lengths:
        p = random_batch(batch_size * group_size, length, vocab, seed=seed + length, device=device)
        for mode in modes:
            best, peak, loss, method = float("inf"), None, None, None
            for _ in range(repeats):
                with peak_memory(device) as mem:
                    t0 = _time.perf_counter()
                    out = training_step(model, loss_fn, q, p, mode=mode, group_size=group_size,
                                        sub_batch_size=sub_batch_size)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    seconds = _time.perf_counter() - t0
                best = min(best, seconds)
                peak = mem["peak_bytes"] if peak is None else max(peak, mem["peak_bytes"] or 0)
                loss, method = float(out.loss.detach()), mem["method"]
            tokens = batch_size * (query_length + group_size * length)
            rows.append({"mode": mode, "length": length, "batch": batch_size, "peak_bytes": peak, "seconds": best,
                         "tokens_per_s": tokens / best, "loss": loss, "method": method})
    model.zero_grad(set_to_none=True)
    return rows
