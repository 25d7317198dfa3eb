"""Training objectives of M3-Embedding (paper section 3.3).

=======================================  ===========================================
InfoNCE per function (eq. 1)             :func:`info_nce`
ensemble teacher s_inter (eq. 2)         :func:`ensemble_scores`
self-knowledge distillation (eq. 3)      :func:`self_distillation`
teacher scores (FlagEmbedding m3_kd)     :func:`teacher_distillation`
the combined loss (eq. 4 / bge-m3 code)  :class:`M3Loss`
=======================================  ===========================================

Scores come from :mod:`m3lab.scoring` (the one place the formulas live); the sparse
score is computed over the batch's own token ids (``sparse_scores_from_tokens``, after
dropping passage tokens that occur in no query), so no (batch x length x vocabulary)
tensor is ever built.

Batch layout (as in FlagEmbedding): ``p`` holds one group of ``group_size`` passages per
query, query i's group is ``p[i*G:(i+1)*G]`` with its positive first, and every passage
outside a query's group is an in-batch negative for it (eq. 1's P' = hard negatives +
in-batch negatives).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from . import scoring
from .modeling.outputs import M3Embeddings

FUNCTIONS = ("dense", "sparse", "colbert")
FORMS = ("bge-m3", "paper")
#: Weights of L_dense, L_lex, L_mul, L_inter (and of the matching L' terms) per form.
DEFAULT_LOSS_WEIGHTS: dict[str, dict[str, float]] = {
    "bge-m3": {"dense": 1.0, "sparse": 0.1, "colbert": 1.0, "inter": 1.0},
    "paper": {"dense": 1.0, "sparse": 1.0, "colbert": 1.0, "inter": 1.0},
}


# ----------------------------------------------------------------------------- single losses

def info_nce(scores: Tensor, target: Tensor, temperature: float = 0.02) -> Tensor:
    """InfoNCE (eq. 1): -log( exp(s(q,p*)/tau) / sum_{p in {p*} U P'} exp(s(q,p)/tau) ).

    ``scores`` (n_q, n_p) are raw similarities of each query with every candidate (its
    positive, hard negatives and in-batch negatives); ``target`` (n_q,) the column of each
    query's positive. Returns the mean over queries. FlagEmbedding uses tau = 0.02.
    """
    _check_scores(scores)
    if target.shape != (scores.shape[0],):
        raise ValueError(f"target must have shape ({scores.shape[0]},), got {tuple(target.shape)}")
    return F.cross_entropy(scores / temperature, target.to(device=scores.device, dtype=torch.long))


def ensemble_scores(dense: Tensor | None, sparse: Tensor | None, colbert: Tensor | None,
                    weights: Sequence[float] = scoring.DEFAULT_WEIGHTS) -> Tensor:
    """The ensemble teacher s_inter = w1 s_dense + w2 s_lex + w3 s_mul (eq. 2).

    bge-m3 was trained with (1, 0.3, 1). Same formula as the hybrid rank score, so this
    calls :func:`m3lab.scoring.combine_scores`.
    """
    return scoring.combine_scores(dense, sparse, colbert, weights)


def self_distillation(student: Tensor, teacher: Tensor, temperature: float = 0.02) -> Tensor:
    """Self-knowledge distillation (eq. 3): L'_* = -p(s_inter) * log p(s_*).

    p = softmax over each query's candidates at temperature tau; the teacher distribution
    is detached (it is a target, as in bge-m3). Returns the mean over queries of the
    cross-entropy. (bge-m3's code calls this "kl_div"; it differs from the KL divergence
    by the teacher's entropy, a constant for the student.)
    """
    _check_scores(student)
    if teacher.shape != student.shape:
        raise ValueError(f"teacher scores {tuple(teacher.shape)} and student scores {tuple(student.shape)} differ")
    target = torch.softmax(teacher.detach() / temperature, dim=-1)
    return -(target * torch.log_softmax(student / temperature, dim=-1)).sum(-1).mean()


def teacher_distillation(student: Tensor, teacher_scores: Tensor, temperature: float = 0.02, *,
                         group_size: int | None = None, query_offset: int = 0,
                         teacher_temperature: float = 1.0) -> Tensor:
    """Distillation from another ranker's scores (FlagEmbedding ``m3_kd_loss``).

    ``teacher_scores`` (n_q, G) are the training file's ``pos_scores + neg_scores`` for
    each query's own group, in the group's order (positive first). The teacher covers only
    that group: its targets are t = softmax(teacher_scores / teacher_temperature) over the
    G passages (FlagEmbedding: temperature 1, i.e. none).

    ``student`` (n_q, n_p) are raw scores against every passage; query i's group is
    columns ``(query_offset+i)*G ... +G-1``. In-batch negatives (every column outside the
    query's own group, including passages gathered from other ranks) get no target weight
    but stay in every softmax denominator. For group position k the candidates are the
    group's passages at positions >= k plus all in-batch negatives (the passages before k
    are removed, as in FlagEmbedding), so with z = student / tau:

        loss = mean_i sum_k t[i,k] * ( logsumexp_{j in C_ik} z[i,j] - z[i, own_ik] )

    With a one-hot teacher (t = [1, 0, ...]) this is :func:`info_nce`.
    """
    _check_scores(student)
    n_q, n_p = student.shape
    if teacher_scores.dim() != 2 or teacher_scores.shape[0] != n_q:
        raise ValueError(f"teacher_scores must be (n_queries={n_q}, group_size), got {tuple(teacher_scores.shape)}")
    g = teacher_scores.shape[1] if group_size is None else group_size
    if teacher_scores.shape[1] != g:
        raise ValueError(f"teacher_scores has {teacher_scores.shape[1]} columns but group_size is {g}")
    own = _group_columns(n_q, n_p, g, query_offset, student.device)                  # (n_q, G)
    z = student / temperature
    z_own = z.gather(1, own)
    is_own = torch.zeros_like(z, dtype=torch.bool).scatter_(1, own, True)
    # logsumexp over own-group positions k..G-1 (a reversed cumulative logsumexp)
    lse_suffix = torch.logcumsumexp(z_own.flip(1), dim=1).flip(1)
    if n_p > g:
        lse_other = z.masked_fill(is_own, float("-inf")).logsumexp(dim=1, keepdim=True)
        lse = torch.logaddexp(lse_suffix, lse_other)
    else:  # no in-batch negatives at all
        lse = lse_suffix
    target = torch.softmax(teacher_scores.detach().to(z.dtype) / teacher_temperature, dim=-1)
    return (target * (lse - z_own)).sum(1).mean()


# ----------------------------------------------------------------------------- scores

def score_functions(q: M3Embeddings, p: M3Embeddings, functions: Sequence[str] = FUNCTIONS, *,
                    colbert_max_elements: int | None = 1 << 25) -> dict[str, Tensor]:
    """Raw (n_q, n_p) scores of the selected functions, via :mod:`m3lab.scoring`.

    Sparse scores use the batch's own token ids (:func:`sparse_training_scores`: memory
    (n_q + n_p) x distinct query ids, not batch x length x V). Multi-vector scores whose similarity block would exceed
    ``colbert_max_elements`` floats are computed in passage chunks, each under gradient
    checkpointing, so large (GradCache) batches need one chunk's memory, not n_q L_q n_p L_p.
    """
    _check_functions(functions)
    out: dict[str, Tensor] = {}
    if "dense" in functions:
        out["dense"] = scoring.dense_scores(q.dense, p.dense)
    if "sparse" in functions:
        out["sparse"] = sparse_training_scores(q.token_weights, q.input_ids, p.token_weights, p.input_ids)
    if "colbert" in functions:
        out["colbert"] = _colbert_scores(q.colbert, q.colbert_mask, p.colbert, p.colbert_mask, colbert_max_elements)
    return out


def sparse_training_scores(q_weights: Tensor, q_ids: Tensor, p_weights: Tensor, p_ids: Tensor) -> Tensor:
    """s_lex for every query/passage pair of a training batch, in memory independent of V.

    s_lex only sums over tokens that occur in both texts, so a passage token that occurs in
    no query of the batch cannot score: it is dropped first (weight 0, id replaced by a
    query id), and :func:`m3lab.scoring.sparse_scores_from_tokens` then builds lexical
    vectors over the queries' distinct ids only: (n_q + n_p) x U_q floats with
    U_q <= the batch's query tokens, instead of the reference code's (batch x length x V).
    Values and gradients equal the full-vocabulary form (dropped tokens have gradient 0
    there too: they touch no score).
    """
    keep = torch.isin(p_ids, q_ids)
    filler = q_ids.reshape(-1)[:1].expand_as(p_ids)
    p_weights = p_weights * keep.to(p_weights.dtype)
    return scoring.sparse_scores_from_tokens(q_weights, q_ids, p_weights, torch.where(keep, p_ids, filler))


def _colbert_scores(q: Tensor, q_mask: Tensor, p: Tensor, p_mask: Tensor, max_elements: int | None) -> Tensor:
    n_q, l_q, _ = q.shape
    n_p, l_p, _ = p.shape
    per_passage = max(n_q * l_q * l_p, 1)
    if max_elements is None or per_passage * n_p <= max_elements:
        return scoring.colbert_scores(q, q_mask, p, p_mask)
    step = max(1, max_elements // per_passage)
    chunks = []
    for s in range(0, n_p, step):
        args = (q, q_mask, p[s:s + step], p_mask[s:s + step])
        if torch.is_grad_enabled():
            # recompute the chunk's similarity block in backward instead of keeping it
            chunks.append(checkpoint(scoring.colbert_scores, *args, use_reentrant=False))
        else:
            chunks.append(scoring.colbert_scores(*args))
    return torch.cat(chunks, dim=1)


# ----------------------------------------------------------------------------- the combined loss

@dataclass
class LossOutput:
    """The loss to backpropagate and its parts as floats (for logging)."""

    loss: Tensor
    parts: dict[str, float] = field(default_factory=dict)


class M3Loss(nn.Module):
    """The unified fine-tuning objective of M3-Embedding (section 3.3).

    For each selected function f, L_f = InfoNCE(s_f) (eq. 1); with two or more functions
    also L_inter = InfoNCE(s_inter), s_inter = ensemble of the scores (eq. 2), and with
    ``self_distill`` the terms L'_f = -p(s_inter) log p(s_f) (eq. 3). With weights
    lambda_f (``loss_weights``):

        L  = (sum_f lambda_f L_f + lambda_inter L_inter) / (n_functions + 1)
        L' = (sum_f lambda'_f L'_f) / n_functions
        form="bge-m3":  L_final = (L + L') / 2          (the code bge-m3 was trained with)
        form="paper":   L_final = L + L'                (eq. 4)

    Defaults: bge-m3 lambda = (1, 0.1, 1, inter 1), paper all 1; lambda'_f = lambda_f unless
    ``loss_weights`` gives ``"kd_dense"``/``"kd_sparse"``/``"kd_colbert"``. PAPER.md states
    the paper's L' and L_final; its L is taken as the same average over the four terms.
    With ``self_distill=False``, L_final = L. With a single function (e.g. dense-only
    pre-training) there is no ensemble: L_final = L_f.

    ``use_teacher_scores=True`` replaces every InfoNCE term (L_f and L_inter) by
    :func:`teacher_distillation` on the batch's teacher scores (FlagEmbedding's
    ``m3_kd_loss``); the self-distillation terms are unchanged.

    ``colbert_max_elements`` bounds the multi-vector similarity block (n_q L_q x n_p L_p
    floats) held at once; larger batches are scored in checkpointed passage chunks
    (:func:`score_functions`), which matters with GradCache-sized batches.
    """

    def __init__(self, *, functions: Sequence[str] = FUNCTIONS, form: str = "bge-m3", self_distill: bool = True,
                 temperature: float = 0.02, ensemble_weights: Sequence[float] = scoring.DEFAULT_WEIGHTS,
                 loss_weights: Mapping[str, float] | None = None, use_teacher_scores: bool = False,
                 teacher_temperature: float = 1.0, colbert_max_elements: int | None = 1 << 25):
        super().__init__()
        _check_functions(functions)
        self.functions = tuple(functions)
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if len(ensemble_weights) != 3:
            raise ValueError(f"ensemble_weights must be (w_dense, w_sparse, w_colbert), got {tuple(ensemble_weights)}")
        weights = dict(DEFAULT_LOSS_WEIGHTS[form])
        allowed = set(weights) | {f"kd_{f}" for f in FUNCTIONS}
        for key, value in (loss_weights or {}).items():
            if key not in allowed:
                raise ValueError(f"unknown loss weight {key!r}; expected some of {sorted(allowed)}")
            weights[key] = float(value)
        for f in FUNCTIONS:
            weights.setdefault(f"kd_{f}", weights[f])
        self.form = form
        self.self_distill = self_distill
        self.temperature = float(temperature)
        self.ensemble_weights = tuple(float(w) for w in ensemble_weights)
        self.loss_weights = weights
        self.use_teacher_scores = use_teacher_scores
        self.teacher_temperature = float(teacher_temperature)
        self.colbert_max_elements = colbert_max_elements

    def forward(self, q: M3Embeddings, p: M3Embeddings, *, group_size: int, teacher_scores: Tensor | None = None,
                query_offset: int = 0) -> LossOutput:
        """The loss of a batch of queries ``q`` against passages ``p``.

        ``query_offset`` is the index of ``q``'s first query among all queries whose groups
        ``p`` holds: 0 on one device; under cross-device negatives ``p`` is gathered from
        every rank and ``q`` is local (see :func:`m3lab.training.distributed.rank_offset`).
        ``teacher_scores`` (n_q, group_size) is needed when ``use_teacher_scores``.
        """
        n_q, n_p = q.dense.shape[0], p.dense.shape[0]
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if query_offset < 0 or (query_offset + n_q) * group_size > n_p:
            raise ValueError(f"{n_q} queries at offset {query_offset} with group_size {group_size} need "
                             f"{(query_offset + n_q) * group_size} passages, got {n_p}")
        if self.use_teacher_scores:
            if teacher_scores is None:
                raise ValueError("use_teacher_scores=True but the batch has no teacher_scores")
            teacher_scores = torch.as_tensor(teacher_scores, device=q.dense.device)
            if teacher_scores.shape != (n_q, group_size):
                raise ValueError(f"teacher_scores must be (n_queries={n_q}, group_size={group_size}), "
                                 f"got {tuple(teacher_scores.shape)}")

        scores = score_functions(q, p, self.functions, colbert_max_elements=self.colbert_max_elements)
        target = (torch.arange(n_q, device=q.dense.device) + query_offset) * group_size

        def contrastive(s: Tensor) -> Tensor:
            if self.use_teacher_scores:
                return teacher_distillation(s, teacher_scores, self.temperature, group_size=group_size,
                                            query_offset=query_offset, teacher_temperature=self.teacher_temperature)
            return info_nce(s, target, self.temperature)

        parts: dict[str, Tensor] = {f: contrastive(s) for f, s in scores.items()}
        if len(self.functions) == 1:
            loss = parts[self.functions[0]]
            return LossOutput(loss, {k: float(v.detach()) for k, v in parts.items()} | {"loss": float(loss.detach())})

        w = self.loss_weights
        inter = ensemble_scores(*(scores.get(f) for f in FUNCTIONS),
                                weights=[wt if f in scores else 0.0 for f, wt in zip(FUNCTIONS, self.ensemble_weights)])
        parts["inter"] = contrastive(inter)
        loss = (sum(w[f] * parts[f] for f in self.functions) + w["inter"] * parts["inter"]) / (len(self.functions) + 1)
        if self.self_distill:
            for f in self.functions:
                parts[f"kd_{f}"] = self_distillation(scores[f], inter, self.temperature)
            kd = sum(w[f"kd_{f}"] * parts[f"kd_{f}"] for f in self.functions) / len(self.functions)
            loss = (loss + kd) / 2 if self.form == "bge-m3" else loss + kd
        logged = {k: float(v.detach()) for k, v in parts.items()}
        logged["loss"] = float(loss.detach())
        return LossOutput(loss, logged)

    def extra_repr(self) -> str:
        return (f"functions={self.functions}, form={self.form!r}, self_distill={self.self_distill}, "
                f"temperature={self.temperature}, ensemble_weights={self.ensemble_weights}, "
                f"use_teacher_scores={self.use_teacher_scores}")


# ----------------------------------------------------------------------------- helpers

def _check_scores(scores: Tensor) -> None:
    if scores.dim() != 2:
        raise ValueError(f"scores must be (n_queries, n_candidates), got shape {tuple(scores.shape)}")


def _check_functions(functions: Sequence[str]) -> None:
    if isinstance(functions, str):
        raise TypeError(f"functions must be a sequence of names, got the string {functions!r}")
    bad = [f for f in functions if f not in FUNCTIONS]
    if bad or not functions or len(set(functions)) != len(functions):
        raise ValueError(f"functions must be distinct names among {FUNCTIONS}, got {tuple(functions)}")


def _group_columns(n_q: int, n_p: int, group_size: int, query_offset: int, device) -> Tensor:
    """(n_q, G) column indices of each query's own group in the passage axis."""
    if (query_offset + n_q) * group_size > n_p:
        raise ValueError(f"{n_q} queries at offset {query_offset} with group_size {group_size} need "
                         f"{(query_offset + n_q) * group_size} passages, got {n_p}")
    start = (torch.arange(n_q, device=device) + query_offset) * group_size
    return start[:, None] + torch.arange(group_size, device=device)[None, :]
