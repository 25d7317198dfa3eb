"""Encoding with several processes or devices: :class:`EncodePool` (as sentence-transformers'
multi-process pool, built for M3's three outputs).

    with EncodePool(model, processes=4) as pool:              # CPU: the cores split between 4 workers
        out = model.encode_corpus(texts, pool=pool)            # the same EncodeOutput, in input order
    model.encode_corpus(texts, devices=["cuda:0", "cuda:1"])   # a pool for one call

The parent tokenises and plans the batches exactly as a single-process :meth:`M3Model.encode`
does; the workers run those same padded batches through copies of the model and send back the
forward outputs; the parent assembles them (:func:`m3lab.modeling.model.encode_batches`). So every
text meets the same padding and the same kernels as in one process, and the result is the same
up to float rounding (the test finds it identical). Workers are started with ``spawn`` (safe with
CUDA and threads); the model's weights reach them through shared memory, not a copy per worker.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.multiprocessing as mp

if TYPE_CHECKING:
    from .model import M3Model


def _worker(model, device: str, threads: int, tasks, results) -> None:
    torch.set_num_threads(threads)
    model = model.to(device).eval()
    while True:
        task = tasks.get()
        if task is None:
            return
        i, batch, wanted = task
        try:
            with torch.inference_mode():
                out = model(**{k: v.to(device) for k, v in batch.items()})
            numpy = lambda t, keep: t.float().cpu().numpy() if keep else None  # noqa: E731
            results.put((i, (numpy(out.dense, wanted[0]), numpy(out.token_weights, wanted[1]),
                             numpy(out.colbert, wanted[2]), out.colbert_mask.cpu().numpy() if wanted[2] else None)))
        except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
            results.put((i, RuntimeError(f"encoding worker on {device} failed: {type(e).__name__}: {e}")))


class EncodePool:
    """Worker processes, each with a copy of ``model`` on one device.

    ``processes``: that many CPU workers (the machine's cores divided between them); or ``devices``:
    one worker per device (``["cuda:0", "cuda:1"]``, or ``["cpu", "cpu"]``). Use it as a context
    manager, or call :meth:`close`.
    """

    def __init__(self, model: M3Model, *, processes: int | None = None, devices: Sequence[str] | None = None,
                 threads_per_process: int | None = None):
        if devices is None:
            if processes is None or processes < 1:
                raise ValueError(f"give processes >= 1 or a list of devices, got processes={processes!r}")
            devices = ["cpu"] * int(processes)
        devices = [str(d) for d in devices]
        if not devices:
            raise ValueError("devices is empty")
        cpu_workers = sum(d == "cpu" for d in devices)
        threads = threads_per_process or max(1, (os.cpu_count() or 1) // max(cpu_workers, 1))
        self.devices = devices
        ctx = mp.get_context("spawn")
        self._tasks = ctx.Queue()
        self._results = ctx.Queue()
        shared = model.to("cpu") if next(model.parameters()).device.type != "cpu" else model
        self._workers = [ctx.Process(target=_worker, args=(shared, d, threads, self._tasks, self._results), daemon=True)
                         for d in devices]
        for w in self._workers:
            w.start()

    def __len__(self) -> int:
        return len(self._workers)

    def map_batches(self, batches: Iterable[dict[str, torch.Tensor]],
                    wanted: tuple[bool, bool, bool]) -> Iterator[tuple]:
        """The forward outputs of ``batches``, in their order (what ``encode_batches`` consumes)."""
        batches = list(batches)
        in_flight = 2 * len(self._workers)  # queued ahead, so no worker waits for the next batch
        sent = 0
        done: dict[int, tuple] = {}
        for sent in range(min(in_flight, len(batches))):
            self._tasks.put((sent, batches[sent], wanted))
        sent = min(in_flight, len(batches))
        for i in range(len(batches)):
            while i not in done:
                j, out = self._get()
                if isinstance(out, Exception):
                    raise out
                done[j] = out
                if sent < len(batches):
                    self._tasks.put((sent, batches[sent], wanted))
                    sent += 1
            yield done.pop(i)

    def _get(self):
        while True:
            try:
                return self._results.get(timeout=5)
            except Exception:  # queue.Empty: check the workers are still there
                dead = [w for w in self._workers if not w.is_alive()]
                if dead:
                    raise RuntimeError(f"{len(dead)} encoding worker(s) died (exit codes "
                                       f"{[w.exitcode for w in dead]}); out of memory?") from None

    def close(self) -> None:
        for _ in self._workers:
            self._tasks.put(None)
        for w in self._workers:
            w.join(timeout=30)
            if w.is_alive():
                w.terminate()
        self._workers = []

    def __enter__(self) -> EncodePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def split_evenly(n: int, parts: int) -> list[np.ndarray]:
    """Positions 0..n-1 in ``parts`` contiguous slices whose sizes differ by at most one."""
    return [a for a in np.array_split(np.arange(n), parts)]
