"""Training objectives of M3-Embedding (paper section 3.3).

=======================================  ===========================================
InfoNCE per function (eq. 1)             :func:`info_nce`
ensemble teacher s_inter (eq. 2)         :func:`ensemble_scores`
self-knowledge distillation (eq. 3)      :func:`self_distillation`
teacher scores (FlagEmbedding m3_kd)     :func:`teacher_distillation`
the combined loss (eq. 4 / bge-m3 code)  :class:`M3Loss` (its terms: ``M3Loss.terms``)
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

from contextlib import nullcontext
import math
from dataclasses import dataclass, field, fields, replace
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from . import scoring
from .modeling.matryoshka import check_matryoshka_dims, truncate_embeddings
from .modeling.outputs import M3Embeddings

FUNCTIONS = scoring.FUNCTIONS
FORMS = ("bge-m3", "paper")
#: Weights of L_dense, L_lex, L_mul, L_inter (and of the matching L' terms) per form.
DEFAULT_LOSS_WEIGHTS: dict[str, dict[str, float]] = {
    "bge-m3": {"dense": 1.0, "sparse": 0.1, "colbert": 1.0, "inter": 1.0},
    "paper": {"dense": 1.0, "sparse": 1.0, "colbert": 1.0, "inter": 1.0},
}
#: The functions whose embeddings Matryoshka truncation cuts (sparse weights are one scalar per token).
MATRYOSHKA_FUNCTIONS = ("dense", "colbert")


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
class GatheredPassages:
    """The passages of every process, for cross-device negatives (section 3.4; :func:`m3lab.training.step`).

    ``passages`` holds all processes' passages in rank order, with the fields of ``functions``
    (:func:`m3lab.training.distributed.all_gather_embeddings`); ``query_offset`` is this
    process's first query among all processes' queries.
    """

    passages: M3Embeddings
    functions: tuple[str, ...]
    query_offset: int


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

    Precision: scores, s_inter and every term are computed in float32 with autocast disabled,
    whatever the embeddings' dtype (fp16/bf16 embeddings are cast to float32 first, float64 ones
    stay float64; the cast is differentiable, so gradients still reach a bf16/fp16 encoder). Under bf16 autocast the score products would
    otherwise be rounded to 8 significant bits: a step of 0.0039 near cosine 0.8, i.e. 0.2
    logits at tau = 0.02 (256 candidate scores there collapse to ~11 distinct values).

    Matryoshka representation learning (``matryoshka_dims``; Kusupati et al., arXiv:2205.13147,
    as sentence-transformers' ``MatryoshkaLoss``): the whole objective above is computed once at
    the full dimension and once more for each listed dim m on embeddings whose dense vectors and
    multi-vectors are cut to their first m coordinates and renormalised
    (:func:`m3lab.modeling.matryoshka.truncate_embeddings`), and the passes are summed:

        L_matryoshka = L_final(full) + sum_m w_m * L_final(truncated to m)    (w_m: ``matryoshka_weights``, default 1)

    Each truncated pass is the complete M3 objective (L_f, L_inter, L'_f): s_inter and the
    self-distillation teacher are rebuilt from the truncated dense/multi-vector scores, so every
    truncated function also learns to agree with the ensemble at that size. Sparse weights are
    not truncated, so each pass repeats the full pass's L_sparse: its effective weight is
    (1 + sum w_m) times ``loss_weights["sparse"]``, like every other term's. A dim must not exceed
    the dense or multi-vector dimension of a trained function, nor equal all of them (that pass
    would repeat the full one); with neither dense nor colbert among ``functions`` (a sparse-only
    stage) there is nothing to truncate and no extra pass. Cost: one more loss (scores and
    terms, not an encoder pass) per dim. Terms of the pass at m are named ``matryoshka_<m>.<term>``;
    :meth:`forward` logs each pass's total as ``matryoshka_<m>``. Cross-device negatives work
    unchanged: truncation is row-wise, so the gathered passages are truncated like the local ones.

    :meth:`coefficients` is the one place the weights of the terms in L_final live;
    :meth:`terms` returns every term with its coefficient and :meth:`forward` sums them.
    """

    def __init__(self, *, functions: Sequence[str] = FUNCTIONS, form: str = "bge-m3", self_distill: bool = True,
                 temperature: float = 0.02, ensemble_weights: Sequence[float] = scoring.DEFAULT_WEIGHTS,
                 loss_weights: Mapping[str, float] | None = None, use_teacher_scores: bool = False,
                 teacher_temperature: float = 1.0, colbert_max_elements: int | None = 1 << 25,
                 matryoshka_dims: Sequence[int] | None = None, matryoshka_weights: Sequence[float] | None = None):
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
        self.matryoshka_dims, self.matryoshka_weights = _matryoshka_setting(matryoshka_dims, matryoshka_weights)

    @property
    def _matryoshka(self) -> tuple[tuple[int, float], ...]:
        """(dim, weight) of each truncated pass, largest dim first; empty when nothing is truncated."""
        if not any(f in MATRYOSHKA_FUNCTIONS for f in self.functions):
            return ()
        return tuple(zip(self.matryoshka_dims, self.matryoshka_weights))

    def coefficients(self) -> dict[str, float]:
        """The coefficient of each term in L_final, by term name (the one source of them).

        With n selected functions, lambda = ``loss_weights`` and h = 1/2 for ``form="bge-m3"``
        with self-distillation (L_final = (L + L')/2), else h = 1 (eq. 4: L_final = L + L'):

            L_f, L_inter (eq. 1, 2):  h * lambda / (n + 1)      (L is the mean of n + 1 terms)
            L'_f (eq. 3):             h * lambda'_f / n         (L' is the mean of n terms)

        bge-m3: dense/colbert/inter 1/8, sparse 0.1/8; kd_dense/kd_colbert 1/6, kd_sparse 0.1/6.
        A single function (no ensemble, no self-distillation) has coefficient 1.
        Names: ``dense``/``sparse``/``colbert``, ``inter``, ``kd_<function>``, in that order; with
        ``matryoshka_dims``, then ``matryoshka_<m>.<name>`` = w_m times that coefficient, per dim m.
        """
        base = self._base_coefficients()
        out = dict(base)
        for dim, weight in self._matryoshka:
            out.update({f"matryoshka_{dim}.{name}": weight * c for name, c in base.items()})
        return out

    def _base_coefficients(self) -> dict[str, float]:
        """The coefficients of one pass of the objective (:meth:`coefficients` without Matryoshka)."""
        n = len(self.functions)
        if n == 1:
            return {self.functions[0]: 1.0}
        w = self.loss_weights
        h = 0.5 if self.self_distill and self.form == "bge-m3" else 1.0
        out = {f: h * w[f] / (n + 1) for f in self.functions}
        out["inter"] = h * w["inter"] / (n + 1)
        if self.self_distill:
            out.update({f"kd_{f}": h * w[f"kd_{f}"] / n for f in self.functions})
        return out

    def terms(self, q: M3Embeddings, p: M3Embeddings, *, group_size: int, teacher_scores: Tensor | None = None,
              query_offset: int = 0, gathered: GatheredPassages | None = None) -> dict[str, tuple[Tensor, float]]:
        """Every term of the loss as a float32 scalar tensor (autocast off), with its coefficient in L_final.

        ``{name: (term, coefficient)}`` for the names of :meth:`coefficients`:
        L_f = InfoNCE(s_f) (eq. 1, or :func:`teacher_distillation` with ``use_teacher_scores``),
        L_inter on s_inter (eq. 2), L'_f = -p(s_inter) log p(s_f) (eq. 3).
        ``sum(c * t for t, c in terms.values())`` is exactly :meth:`forward`'s loss, so a
        notebook can plot or backpropagate each term on its own. Arguments as for :meth:`forward`.

        Cross-device negatives (``gathered``, section 3.4): ``p`` is this process's passages and
        ``gathered.passages`` those of every process. L_f of each function in
        ``gathered.functions`` scores the local queries against all gathered passages; every
        other L_f scores them against ``p``. s_inter and the self-distillation terms need one
        candidate set for all functions: with every function gathered it is the gathered one,
        otherwise the local block ``p`` (the gathered scores cut to this process's passages) —
        bge-m3's unified fine-tuning gathers dense only ("cross-device negatives disabled for
        unified fine-tuning").

        With ``matryoshka_dims``, the terms of each truncated pass follow, named
        ``matryoshka_<m>.<term>`` (class docstring); gathered passages are truncated too.
        """
        n_q, n_p = q.dense.shape[0], p.dense.shape[0]
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if gathered is not None:
            _check_functions(gathered.functions)
            if query_offset:
                raise ValueError("with gathered passages, p holds this process's passages only: query_offset must "
                                 "be 0 (gathered.query_offset places the queries among all processes')")
            n_all = gathered.passages.dense.shape[0]
            if gathered.query_offset < 0 or (gathered.query_offset + n_q) * group_size > n_all:
                raise ValueError(f"{n_q} queries at gathered offset {gathered.query_offset} need "
                                 f"{(gathered.query_offset + n_q) * group_size} gathered passages, got {n_all}")
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
        coefficients = self.coefficients()
        matryoshka = self._matryoshka
        if matryoshka:
            self._check_matryoshka_dims(q)

        with _full_precision(q.dense.device.type):
            q, p = _float32_embeddings(q), _float32_embeddings(p)
            every = _float32_embeddings(gathered.passages) if gathered is not None else None
            values = self._pass_values(q, p, every, group_size=group_size, teacher_scores=teacher_scores,
                                       query_offset=query_offset, gathered=gathered)
            for dim, _ in matryoshka:  # the whole objective again on the truncated embeddings
                cut = [self._truncated(e, dim) if e is not None else None for e in (q, p, every)]
                part = self._pass_values(*cut, group_size=group_size, teacher_scores=teacher_scores,
                                         query_offset=query_offset, gathered=gathered)
                values.update({f"matryoshka_{dim}.{name}": v for name, v in part.items()})
        return {name: (values[name], c) for name, c in coefficients.items()}

    def _pass_values(self, q: M3Embeddings, p: M3Embeddings, every: M3Embeddings | None, *, group_size: int,
                     teacher_scores: Tensor | None, query_offset: int,
                     gathered: GatheredPassages | None) -> dict[str, Tensor]:
        """The terms of one pass of the objective (inputs checked, float32, autocast off: see :meth:`terms`).

        ``every`` is ``gathered.passages`` as this pass sees them (float32, perhaps truncated).
        """
        n_q, n_p = q.dense.shape[0], p.dense.shape[0]
        wide = tuple(f for f in self.functions if gathered is not None and f in gathered.functions)
        scores = score_functions(q, p, [f for f in self.functions if f not in wide],
                                 colbert_max_elements=self.colbert_max_elements) if len(wide) < len(self.functions) else {}
        offsets = {f: query_offset for f in scores}          # where each query's group starts, in groups
        if wide:
            scores.update(score_functions(q, every, wide, colbert_max_elements=self.colbert_max_elements))
            offsets.update({f: gathered.query_offset for f in wide})

        def contrastive(s: Tensor, offset: int) -> Tensor:
            if self.use_teacher_scores:
                return teacher_distillation(s, teacher_scores, self.temperature, group_size=group_size,
                                            query_offset=offset, teacher_temperature=self.teacher_temperature)
            return info_nce(s, (torch.arange(n_q, device=s.device) + offset) * group_size, self.temperature)

        values: dict[str, Tensor] = {f: contrastive(scores[f], offsets[f]) for f in self.functions}
        if len(self.functions) > 1:  # the ensemble terms (see coefficients())
            # one candidate set for the ensemble: all gathered, or this process's block of each
            if len(wide) == len(self.functions):
                same, offset = scores, gathered.query_offset
            else:
                lo = (gathered.query_offset if gathered is not None else 0) * group_size
                same = {f: s[:, lo:lo + n_p] if f in wide else s for f, s in scores.items()}
                offset = query_offset
            inter = ensemble_scores(*(same.get(f) for f in FUNCTIONS),
                                    weights=[wt if f in same else 0.0
                                             for f, wt in zip(FUNCTIONS, self.ensemble_weights)])
            values["inter"] = contrastive(inter, offset)
            if self.self_distill:
                for f in self.functions:
                    values[f"kd_{f}"] = self_distillation(same[f], inter, self.temperature)
        return values

    def _truncated(self, e: M3Embeddings, dim: int) -> M3Embeddings:
        """``e`` with the dense vectors and multi-vectors of the trained functions cut to ``dim`` and renormalised."""
        cut = {f: truncate_embeddings(getattr(e, f), dim) for f in MATRYOSHKA_FUNCTIONS if f in self.functions}
        return replace(e, **cut)

    def _check_matryoshka_dims(self, q: M3Embeddings) -> None:
        """Every dim fits each truncated function's dimension, and is below at least one of them."""
        sizes = {f: int(getattr(q, f).shape[-1]) for f in MATRYOSHKA_FUNCTIONS if f in self.functions}
        names = {"dense": "the dense dimension", "colbert": "the multi-vector (colbert) dimension"}
        for f, size in sizes.items():
            check_matryoshka_dims(self.matryoshka_dims, size, name=names[f])
        same = [d for d in self.matryoshka_dims if all(d == size for size in sizes.values())]
        if same:
            raise ValueError(f"matryoshka dim {same[0]} is the full dimension of "
                             f"{' and '.join(names[f] for f in sizes)}: that pass would repeat the full-dimension "
                             "loss, which is always included; list only smaller dims")

    def forward(self, q: M3Embeddings, p: M3Embeddings, *, group_size: int, teacher_scores: Tensor | None = None,
                query_offset: int = 0, gathered: GatheredPassages | None = None) -> LossOutput:
        """The loss of a batch of queries ``q`` against passages ``p``: sum of coefficient x term (:meth:`terms`).

        ``query_offset`` is the index of ``q``'s first query among all queries whose groups
        ``p`` holds: 0 on one device; under cross-device negatives ``p`` is gathered from
        every rank and ``q`` is local (see :func:`m3lab.training.distributed.rank_offset`).
        ``teacher_scores`` (n_q, group_size) is needed when ``use_teacher_scores``. ``gathered``:
        the passages of every process for some functions (:meth:`terms`).
        Returns the float32 loss and every term (and ``"loss"``) as floats for logging.
        """
        terms = self.terms(q, p, group_size=group_size, teacher_scores=teacher_scores, query_offset=query_offset,
                           gathered=gathered)
        loss = sum(c * t for t, c in terms.values())
        base = self._base_coefficients()
        logged = {name: float(terms[name][0].detach()) for name in base}
        for dim, _ in self._matryoshka:  # each truncated pass's L_final (before its weight)
            logged[f"matryoshka_{dim}"] = float(sum(c * terms[f"matryoshka_{dim}.{name}"][0].detach()
                                                    for name, c in base.items()))
        logged["loss"] = float(loss.detach())
        return LossOutput(loss, logged)

    def extra_repr(self) -> str:
        return (f"functions={self.functions}, form={self.form!r}, self_distill={self.self_distill}, "
                f"temperature={self.temperature}, ensemble_weights={self.ensemble_weights}, "
                f"use_teacher_scores={self.use_teacher_scores}"
                + (f", matryoshka_dims={self.matryoshka_dims}, matryoshka_weights={self.matryoshka_weights}"
                   if self.matryoshka_dims else ""))


# ----------------------------------------------------------------------------- helpers

def _full_precision(device_type: str):
    """A context with autocast off for ``device_type`` (a no-op where autocast does not exist)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return nullcontext()


def _float32_embeddings(e: M3Embeddings) -> M3Embeddings:
    """``e`` with every half-precision tensor (fp16, bf16) cast to float32, differentiably.

    float32 and float64 tensors are left as they are (float64 keeps its precision, e.g. for
    gradient checks).
    """
    cast = {f.name: v.float() for f in fields(e)
            if isinstance(v := getattr(e, f.name), Tensor) and v.is_floating_point() and v.element_size() < 4}
    return replace(e, **cast) if cast else e


def _matryoshka_setting(dims: Sequence[int] | None, weights: Sequence[float] | None
                        ) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(dims, weights) sorted largest dim first, each weight kept with its dim; ``((), ())`` for none."""
    if dims is None:
        if weights is not None:
            raise ValueError("matryoshka_weights given without matryoshka_dims")
        return (), ()
    ordered = check_matryoshka_dims(dims, None)
    dims = [int(d) for d in dims]
    if weights is None:
        weights = [1.0] * len(dims)
    if isinstance(weights, (str, bytes)) or len(weights) != len(dims):
        raise ValueError(f"matryoshka_weights must give one weight per dim of {dims}, got {weights!r}")
    by_dim = {}
    for d, w in zip(dims, weights):
        w = float(w)
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"matryoshka weight {w} (of dim {d}) must be a finite number >= 0")
        by_dim[d] = w
    return ordered, tuple(by_dim[d] for d in ordered)


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
