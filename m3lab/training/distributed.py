"""Multi-process helpers and cross-device negatives (paper section 3.4).

Launch with ``torchrun``; :func:`init_from_env` joins the process group (NCCL on GPU,
gloo on CPU). Everything here is a no-op in a single process.

Cross-device negatives: every rank encodes its own queries and their passage groups,
gathers the passages of all ranks with :func:`all_gather_embeddings`, and computes the
loss of *its* queries against *all* passages (:func:`m3lab.training.step.cross_device_loss` wraps an
M3Loss so; bge-m3 gathers the dense function only).
The gather is differentiable: its backward sums, over ranks, the gradient that every
rank's loss sends to a passage, and hands each rank the rows it encoded. With each rank's
loss the mean over its local queries (equal local batches) and DistributedDataParallel
averaging the parameter gradients, the update equals the single-process gradient of the
full-batch loss (tests/test_distributed.py checks it against one process).
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from ..modeling import M3Embeddings
from ..scoring import FUNCTIONS

# ----------------------------------------------------------------------------- process group

def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def init_from_env(backend: str | None = None, timeout_minutes: float = 30) -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``...).

    Returns True when running with more than one process. ``backend`` defaults to NCCL when
    CUDA is available (each process then uses GPU ``LOCAL_RANK``), gloo otherwise.
    """
    if is_initialized():
        return world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE is set but {', '.join(missing)} is not: launch with torchrun")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
    return world_size() > 1


def cleanup() -> None:
    """Leave the process group (if any)."""
    if is_initialized():
        dist.destroy_process_group()


def device() -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` with CUDA, else the CPU."""
    return torch.device(f"cuda:{local_rank()}") if torch.cuda.is_available() else torch.device("cpu")


# ----------------------------------------------------------------------------- gathering

def _gather_sizes(values: Sequence[int], device: torch.device) -> Tensor:
    """(world, len(values)) int64: every rank's ``values``."""
    mine = torch.tensor(list(values), dtype=torch.long, device=device)
    out = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(out, mine)
    return torch.stack(out).cpu()


def rank_offset(n: int, device: torch.device | str | None = None) -> int:
    """How many rows (e.g. queries) the lower ranks hold: this rank's first global index."""
    if not is_initialized():
        return 0
    sizes = _gather_sizes([n], torch.device(device) if device is not None else _collective_device())
    return int(sizes[: rank(), 0].sum())


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


class _AllGather(torch.autograd.Function):
    """all_gather whose backward all-reduces (sums) the gradient and returns this rank's rows."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.rank = dist.get_rank()
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.stack(out)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank]


def all_gather_tensor(x: Tensor) -> Tensor:
    """Differentiable all-gather of equally shaped tensors: (world * n, ...).

    The backward sums the gradient over ranks (each rank's loss may use every row).
    """
    if not is_initialized() or world_size() == 1:
        return x
    return _AllGather.apply(x).flatten(0, 1)


def _pad(t: Tensor, rows: int, length: int | None = None, value=0) -> Tensor:
    shape = list(t.shape)
    shape[0] = rows
    if length is not None:
        shape[1] = length
    if list(t.shape) == shape:
        return t
    out = t.new_full(shape, value)
    out[: t.shape[0], : t.shape[1]] = t
    return out


def all_gather_embeddings(e: M3Embeddings, functions: Sequence[str] = FUNCTIONS) -> M3Embeddings:
    """The embeddings of all ranks, concatenated in rank order, differentiably.

    Ranks may hold different numbers of rows and token lengths: rows and token axes are
    padded to the global maximum first (padding has weight 0 and mask False, so it adds
    nothing to any score) and row padding is removed after. Only the fields the selected
    ``functions`` use are gathered; the others come back empty (0 tokens), which saves the
    large multi-vector transfer in a dense-only stage. Gradients flow back to this rank's
    rows, summed over every rank's use of them. A no-op without a process group.
    """
    if not is_initialized() or world_size() == 1:
        return e
    bad = [f for f in functions if f not in FUNCTIONS]
    if bad:
        raise ValueError(f"functions must be among {FUNCTIONS}, got {tuple(functions)}")
    want_sparse, want_colbert = "sparse" in functions, "colbert" in functions
    n = e.dense.shape[0]
    sizes = _gather_sizes([n, e.token_weights.shape[1], e.colbert.shape[1]], e.dense.device)
    n_max, lt, lc = (int(v) for v in sizes.max(dim=0).values)
    counts = sizes[:, 0].tolist()
    d, d_col = e.dense.shape[1], e.colbert.shape[2]
    dtype = e.dense.dtype

    # one differentiable gather for all float fields -> one all-reduce in backward
    floats = [_pad(e.dense, n_max)]
    if want_sparse:
        floats.append(_pad(e.token_weights.to(dtype), n_max, lt))
    if want_colbert:
        floats.append(_pad(e.colbert.to(dtype), n_max, lc).flatten(1))
    gathered = _AllGather.apply(torch.cat(floats, dim=1))                     # (world, n_max, width)
    ints = []
    if want_sparse:
        ints.append(_pad(e.input_ids.long(), n_max, lt))
    if want_colbert:
        ints.append(_pad(e.colbert_mask.long(), n_max, lc))
    if ints:
        mine = torch.cat(ints, dim=1).contiguous()
        int_list = [torch.empty_like(mine) for _ in range(world_size())]
        dist.all_gather(int_list, mine)
        gathered_ints = torch.stack(int_list)
    keep = torch.cat([torch.arange(c) + r * n_max for r, c in enumerate(counts)]).to(e.dense.device)
    flat = gathered.flatten(0, 1).index_select(0, keep)
    dense, col = flat[:, :d], d
    empty_f = e.dense.new_zeros(len(keep), 0)
    empty_i = e.input_ids.new_zeros(len(keep), 0)
    token_weights, input_ids = empty_f, empty_i
    colbert, colbert_mask = e.dense.new_zeros(len(keep), 0, d_col), torch.zeros(len(keep), 0, dtype=torch.bool,
                                                                                  device=e.dense.device)
    if ints:
        flat_i = gathered_ints.flatten(0, 1).index_select(0, keep)
        icol = 0
    if want_sparse:
        token_weights, col = flat[:, col:col + lt], col + lt
        input_ids, icol = flat_i[:, :lt].to(e.input_ids.dtype), lt
    if want_colbert:
        colbert = flat[:, col:col + lc * d_col].reshape(len(keep), lc, d_col)
        colbert_mask = flat_i[:, icol:icol + lc].bool()
    return M3Embeddings(dense=dense, token_weights=token_weights, input_ids=input_ids,
                        colbert=colbert, colbert_mask=colbert_mask)


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every process (the same starting weights, as DDP does)."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def average_gradients(params: list[torch.Tensor], world: int) -> None:
    """All-reduce the gradients in one flat buffer and divide by the number of processes (as DDP).

    Each process's loss is the mean over its own queries; the gathered passages carry
    their gradient back to the process that encoded them, so the average over processes
    is the gradient of the mean loss over the global batch.
    """
    # Parameters outside this stage's loss (e.g. the heads in a dense-only stage) have no
    # gradient on any process (every process runs the same stage) and must keep none, so
    # AdamW leaves them alone.
    params = [p for p in params if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n
