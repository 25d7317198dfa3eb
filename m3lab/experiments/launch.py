"""Cross-device negatives measured in real processes: torchrun on CPU (gloo), from a notebook."""
from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Sequence
from typing import Any, NoReturn

import torch

from ..scoring import FUNCTIONS
from .tiny import random_batch, random_encoder_model


def cross_device_gradients(*, n_queries: int = 8, group_size: int = 2, length: int = 32, shape: str = "tiny",
                           seed: int = 0, cross_device: bool = True,
                           functions: Sequence[str] = FUNCTIONS) -> dict[str, Any]:
    """One loss and gradient of a fixed random batch, split over the processes of a torchrun launch.

    Every process builds the same random model (:func:`random_encoder_model`, dropout off) and the
    same global batch of ``n_queries`` queries with ``group_size`` passages each, and encodes its
    own equal share. With ``cross_device`` the passages of all processes are gathered for the
    ``functions`` given (:func:`m3lab.training.step.training_step`; all three by default, so each
    query is scored against every passage of the global batch; bge-m3 trains with ``("dense",)``);
    without it, only against its own process's passages. The parameter gradients are averaged
    over processes as DistributedDataParallel does.

    Run alone it computes the single-process full-batch reference. Returns ``{"world_size",
    "queries_per_process", "passages_scored", "loss", "grad"}`` (``grad``: the flat averaged
    gradient as a NumPy array; ``loss``: the mean over processes).
    """
    import torch.distributed as tdist

    from ..losses import M3Loss
    from ..training import distributed as dist
    from ..training.step import training_step

    world, rank = dist.world_size(), dist.rank()
    if n_queries % world:
        raise ValueError(f"n_queries={n_queries} must be divisible by the number of processes ({world})")
    model = random_encoder_model(shape, max_length=length, seed=seed).eval()  # eval: no dropout
    vocab = model.encoder.config.vocab_size
    q_all = random_batch(n_queries, 12, vocab, seed=seed + 1, ragged=True)
    p_all = random_batch(n_queries * group_size, length, vocab, seed=seed + 2, ragged=True)
    k = n_queries // world
    q_local = {key: v[rank * k:(rank + 1) * k] for key, v in q_all.items()}
    p_local = {key: v[rank * k * group_size:(rank + 1) * k * group_size] for key, v in p_all.items()}
    gathered = tuple(functions) if cross_device else ()
    out = training_step(model, M3Loss(), q_local, p_local, group_size=group_size, cross_device_functions=gathered)
    grad = torch.cat([prm.grad.reshape(-1) if prm.grad is not None else torch.zeros(prm.numel())
                      for prm in model.parameters()])
    loss = torch.tensor(out.parts["loss"], dtype=grad.dtype)
    if world > 1:
        tdist.all_reduce(grad)
        tdist.all_reduce(loss)
        grad /= world
        loss /= world
    scored = n_queries * group_size if gathered and world > 1 else k * group_size
    return {"world_size": world, "queries_per_process": k, "passages_scored": scored,
            "loss": float(loss), "grad": grad.numpy()}


def launch_cross_device(nproc: int = 2, *, timeout: float = 600, **kwargs) -> dict[str, dict[str, Any]]:
    """Run :func:`cross_device_gradients` in ``nproc`` CPU processes launched with torchrun (gloo),
    once with the passages gathered across processes and once without, in one launch.

    ``kwargs`` go to :func:`cross_device_gradients`. Returns ``{"gathered": result, "local": result,
    "command": the torchrun command line}`` (results from rank 0). A failed launch raises
    ``RuntimeError`` with its output.
    """
    import json
    import socket
    import subprocess
    import sys
    import tempfile
    import warnings

    import numpy as np

    with tempfile.TemporaryDirectory(prefix="m3lab-xdev-") as tmp:
        out = Path(tmp) / "result.npz"
        for attempt in (1, 2):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                   "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "m3lab.experiments", "cross-device",
                   "--out", str(out), "--kwargs", json.dumps(kwargs)]
            env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
            if proc.returncode == 0 and out.is_file():
                break
            report = (f"torchrun failed (exit {proc.returncode}; result "
                      f"{'written' if out.is_file() else 'not written'}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            # A worker killed by a signal (a gloo worker aborted once in CI with "terminate called
            # without an active exception") is retried once on a fresh port; any other failure,
            # or a second one, is an error.
            if attempt == 2 or "Signal " not in proc.stderr:
                raise RuntimeError(report)
            warnings.warn(f"retrying the launch once: {report}", RuntimeWarning, stacklevel=2)
            out.unlink(missing_ok=True)
        with np.load(out, allow_pickle=False) as z:
            flat = {k: z[k] for k in z.files}
    result: dict[str, Any] = {"gathered": {}, "local": {}}
    for key, value in flat.items():
        variant, name = key.split("/", 1)
        result[variant][name] = value.item() if value.ndim == 0 else value
    shown = [c if c != str(out) else "result.npz" for c in cmd[3:]]
    result["command"] = " ".join(["torchrun", *shown[:-1], f"'{shown[-1]}'"])
    return result


def _main(argv: list[str] | None = None) -> NoReturn:
    import argparse
    import json
    import sys

    import numpy as np

    parser = argparse.ArgumentParser(prog="python -m m3lab.experiments", description="notebook helpers run as processes")
    sub = parser.add_subparsers(dest="command", required=True)
    xdev = sub.add_parser("cross-device", help="cross_device_gradients (gathered and local) in every torchrun process")
    xdev.add_argument("--out", required=True, help="where rank 0 writes the result (.npz)")
    xdev.add_argument("--kwargs", default="{}", help="JSON keyword arguments of cross_device_gradients")
    args = parser.parse_args(argv)
    from ..training import distributed as dist

    dist.init_from_env(backend="gloo")
    try:
        kwargs = json.loads(args.kwargs)
        flat = {}
        for variant, gather in (("gathered", True), ("local", False)):
            for key, value in cross_device_gradients(**kwargs, cross_device=gather).items():
                flat[f"{variant}/{key}"] = np.asarray(value)
        if dist.is_main_process():
            from .._io import atomic_file

            with atomic_file(Path(args.out), "wb") as f:
                np.savez(f, **flat)
        dist.barrier()
    except BaseException:
        dist.cleanup()
        raise
    # Every rank is past the barrier and the result is on disk: leave without the gloo teardown
    # (destroy_process_group, interpreter finalisation), where torch's worker threads can abort.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
