"""Matryoshka truncation: the first ``dim`` coordinates of an embedding, renormalised.

Matryoshka Representation Learning (Kusupati et al., "Matryoshka Representation Learning",
NeurIPS 2022, arXiv:2205.13147) trains an encoder so that every prefix of its embedding of a
listed size is itself a good embedding; at inference the vectors are cut to such a prefix
(smaller indexes, faster search). :func:`truncate_embeddings` is the one place m3lab cuts
vectors, for training (:class:`m3lab.losses.M3Loss` ``matryoshka_dims``) and inference alike.
"""
from __future__ import annotations

import numbers
from typing import Iterable, TypeVar

import numpy as np
import torch

__all__ = ["truncate_embeddings", "check_matryoshka_dims"]

#: Norms below this are treated as 0: such vectors (e.g. multi-vector padding) stay 0.
_EPS = 1e-12

ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)


def truncate_embeddings(x: ArrayT, dim: int, *, normalize: bool = True) -> ArrayT:
    """The first ``dim`` coordinates of the last axis of ``x``, each vector rescaled to unit L2 norm.

    Matryoshka truncation (Kusupati et al., "Matryoshka Representation Learning",
    arXiv:2205.13147). ``x`` is a torch tensor or a NumPy array of any shape ``(..., d)``:
    dense vectors ``(n, d)``, multi-vectors ``(n, L, d)`` or one text's ``(L, d)``; the result
    has the same type, leading shape and dtype, with last axis ``dim``.

    ``normalize``: divide each truncated vector by its L2 norm, computed in float32 (float64
    inputs in float64) and cast back to the input dtype; a vector whose prefix is zero (e.g.
    multi-vector padding) stays zero, with no NaN in values or gradients. Torch inputs stay
    differentiable. ``normalize=False`` gives the plain prefix (NumPy: a contiguous copy).
    Raises ``ValueError`` unless ``dim`` is an integer with ``1 <= dim <= x.shape[-1]``.
    """
    is_torch = isinstance(x, torch.Tensor)
    if not is_torch and not isinstance(x, np.ndarray):
        raise TypeError(f"expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if x.ndim == 0:
        raise ValueError("cannot truncate a scalar: expected an array of shape (..., d)")
    full = int(x.shape[-1])
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise ValueError(f"dim must be an integer, got {type(dim).__name__} {dim!r}")
    dim = int(dim)
    if not 1 <= dim <= full:
        raise ValueError(f"dim must be in [1, {full}] (the embedding dimension), got {dim}")
    if is_torch:
        if normalize and not x.is_floating_point():
            raise TypeError(f"cannot normalise a {x.dtype} tensor: expected floating point")
        prefix = x[..., :dim]
        if not normalize:
            return prefix
        work = prefix if prefix.dtype == torch.float64 else prefix.float()
        norm = torch.linalg.vector_norm(work, dim=-1, keepdim=True)
        return (work / norm.clamp_min(_EPS)).to(x.dtype)
    if normalize and not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"cannot normalise a {x.dtype} array: expected floating point")
    prefix = x[..., :dim]
    if not normalize:
        return np.ascontiguousarray(prefix)
    work = prefix.astype(np.float64 if x.dtype == np.float64 else np.float32)
    norm = np.linalg.norm(work, axis=-1, keepdims=True)
    return (work / np.maximum(norm, _EPS)).astype(x.dtype, copy=False)


def check_matryoshka_dims(dims: Iterable[int], full_dim: int | None, *,
                          name: str = "the embedding dimension") -> tuple[int, ...]:
    """``dims`` validated and sorted largest first: distinct integers in ``[1, full_dim]``.

    ``full_dim=None`` checks only that they are distinct positive integers. Each error names
    the bad value (and ``name``/``full_dim`` when a dim is too large), e.g.
    ``check_matryoshka_dims([256, 64], 384) == (256, 64)``.
    """
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Iterable):
        raise ValueError(f"matryoshka dims must be a list of integers, got {dims!r}")
    dims = list(dims)
    if not dims:
        raise ValueError("matryoshka dims is empty: list at least one dimension (or give none)")
    seen: set[int] = set()
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral):
            raise ValueError(f"matryoshka dim {d!r} is not an integer")
        if d < 1:
            raise ValueError(f"matryoshka dim {d} must be >= 1")
        if full_dim is not None and d > full_dim:
            raise ValueError(f"matryoshka dim {d} is larger than {name} {full_dim}")
        if int(d) in seen:
            raise ValueError(f"matryoshka dim {d} is listed twice")
        seen.add(int(d))
    return tuple(sorted(seen, reverse=True))
