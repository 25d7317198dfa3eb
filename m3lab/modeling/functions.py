"""The three retrieval functions of M3-Embedding on an encoder's hidden states (paper section 3.2).

    H = encoder(x).last_hidden_state
    dense   e   = norm(pool(H))                       (CLS, or mean for sentence-transformers models)
    sparse  w_t = ReLU(W_lex H[t]), specials dropped  (repeated tokens keep the max: :func:`max_token_weights`)
    colbert E   = norm(W_mul H[1:]), padding masked

Plus :func:`init_heads`, m3lab's initialisation of untrained heads.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

POOLINGS = ("cls", "mean")


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / max(||x||, 1e-12) over the last axis, computed in float32 and returned in x's dtype.

    In fp16 the epsilon 1e-12 underflows to 0: a zero (padding) vector would normalise to 0/0 =
    NaN, and its backward would spread NaN into every gradient under mixed precision.
    """
    return F.normalize(x.float(), dim=-1).to(x.dtype)


def dense_embedding(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "cls",
                    cls_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Dense function (section 3.2): e = norm(H[CLS]) — or the masked mean of H for ``pooling='mean'``.

    With ``cls_mask`` (MCLS, appendix B.2) the vector is the mean of the final states at
    every [CLS] position instead.
    """
    if cls_mask is not None:
        m = cls_mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    elif pooling == "cls":
        pooled = hidden[:, 0]
    elif pooling == "mean":
        m = attention_mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    else:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    return l2_normalize(pooled)


def sparse_token_weights(hidden: torch.Tensor, sparse_linear: nn.Linear, input_ids: torch.Tensor,
                         drop_ids: torch.Tensor) -> torch.Tensor:
    """Lexical function (section 3.2): w_t = ReLU(W_lex^T H[t]) per position, (batch, length).

    Positions holding a dropped special token (CLS, EOS, PAD, UNK, whichever the
    tokenizer has) get weight 0, so padding never contributes.
    """
    weights = torch.relu(sparse_linear(hidden)).squeeze(-1)
    # Not torch.isin: it has no ONNX export, and drop_ids holds at most four ids.
    keep = (input_ids.unsqueeze(-1) != drop_ids).all(-1)
    return weights * keep.to(weights.dtype)


def colbert_embedding(hidden: torch.Tensor, attention_mask: torch.Tensor, colbert_linear: nn.Linear,
                      cls_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-vector function (section 3.2): E = norm(W_mul^T H), without the [CLS] position.

    Returns the (batch, length-1, d') vectors, zero at padding, and their mask. Under MCLS
    the inserted [CLS] positions are masked out too.
    """
    vecs = colbert_linear(hidden[:, 1:])
    mask = attention_mask[:, 1:].bool()
    if cls_mask is not None:
        mask = mask & ~cls_mask[:, 1:].bool()
    vecs = vecs * mask.unsqueeze(-1).to(vecs.dtype)
    return l2_normalize(vecs), mask


def _max_weights(ids: np.ndarray, weights: np.ndarray) -> dict[int, float]:
    """{token_id: max weight} over the positive weights of one text."""
    keep = weights > 0
    ids, weights = ids[keep], weights[keep]
    order = np.argsort(weights, kind="stable")  # ascending: the max is written last
    return dict(zip(ids[order].tolist(), weights[order].tolist()))


SPARSE_INIT_BIAS = 0.3


def init_heads(colbert_linear: nn.Linear, sparse_linear: nn.Linear, seed: int = 0) -> None:
    """Initialise untrained heads reproducibly.

    W_mul = identity, b = 0: multi-vector starts as the normalised token states.
    W_lex ~ U(+-0.1/sqrt(d)) from ``seed`` and b_lex = 0.3: every token starts with a weight
    near 0.3, so s_lex starts as a scaled count of shared tokens and every ReLU is active.
    (A default-initialised W_lex leaves about half the tokens at zero, with no gradient;
    with hard negatives that share many words, training then drives the rest to zero too —
    the sparse collapse users of the reference code report.)
    """
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        if colbert_linear.in_features == colbert_linear.out_features:
            colbert_linear.weight.copy_(torch.eye(colbert_linear.in_features))
        else:
            nn.init.xavier_uniform_(colbert_linear.weight, generator=gen)
        colbert_linear.bias.zero_()
        bound = 0.1 / sparse_linear.in_features ** 0.5
        sparse_linear.weight.uniform_(-bound, bound, generator=gen)
        sparse_linear.bias.fill_(SPARSE_INIT_BIAS)
