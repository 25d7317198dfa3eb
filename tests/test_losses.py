"""Losses (m3lab.losses) against hand computations on small tensors (paper eq. 1-4)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from m3lab import scoring
from m3lab.losses import (LossOutput, M3Loss, ensemble_scores, info_nce, score_functions, self_distillation,
                          sparse_training_scores, teacher_distillation)
from m3lab.modeling import M3Embeddings

S = [[0.5, 0.1, -0.2, 0.0], [0.3, 0.9, 0.0, 0.2]]  # 2 queries x 4 candidates


pytestmark = pytest.mark.usefixtures("one_thread")


def _nll(row: list[float], k: int, tau: float) -> float:
    """-log softmax(row / tau)[k], by hand."""
    return -(row[k] / tau - math.log(sum(math.exp(v / tau) for v in row)))


def _softmax(row: list[float], tau: float) -> list[float]:
    z = sum(math.exp(v / tau) for v in row)
    return [math.exp(v / tau) / z for v in row]


# ----------------------------------------------------------------------------- eq. 1

def test_info_nce_matches_hand_computation():
    scores = torch.tensor(S)
    tau = 0.1
    expected = (_nll(S[0], 0, tau) + _nll(S[1], 2, tau)) / 2
    got = info_nce(scores, torch.tensor([0, 2]), temperature=tau)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_default_temperature_is_002():
    scores = torch.tensor(S)
    expected = (_nll(S[0], 1, 0.02) + _nll(S[1], 1, 0.02)) / 2
    assert info_nce(scores, torch.tensor([1, 1])).item() == pytest.approx(expected, rel=1e-5)


def test_info_nce_rejects_bad_shapes():
    with pytest.raises(ValueError, match="target"):
        info_nce(torch.tensor(S), torch.tensor([0]))
    with pytest.raises(ValueError, match="n_queries"):
        info_nce(torch.tensor([0.1, 0.2]), torch.tensor([0]))


# ----------------------------------------------------------------------------- eq. 2

def test_ensemble_scores_is_weighted_sum():
    d, s, c = torch.tensor(S), torch.tensor(S) * 2, torch.tensor(S) - 1
    assert torch.allclose(ensemble_scores(d, s, c), d + 0.3 * s + c)
    assert torch.allclose(ensemble_scores(d, s, c, weights=(0.4, 0.2, 0.4)), 0.4 * d + 0.2 * s + 0.4 * c)
    assert torch.allclose(ensemble_scores(d, None, c, weights=(1, 0, 1)), d + c)


# ----------------------------------------------------------------------------- eq. 3

def test_self_distillation_matches_hand_computation_and_detaches_teacher():
    student = torch.tensor(S, requires_grad=True)
    teacher_rows = [[0.2, 0.4, 0.0, -0.1], [0.0, 0.1, 0.5, 0.3]]
    teacher = torch.tensor(teacher_rows, requires_grad=True)
    tau = 0.2
    expected = 0.0
    for srow, trow in zip(S, teacher_rows):
        p = _softmax(trow, tau)
        expected += sum(-p[j] * -_nll(srow, j, tau) for j in range(4))
    expected /= 2
    got = self_distillation(student, teacher, temperature=tau)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    got.backward()
    assert teacher.grad is None  # the teacher is a target
    # gradient of CE wrt the student logits: (softmax(student) - target) / tau / n_q
    ref = (torch.softmax(student.detach() / tau, -1) - torch.softmax(teacher.detach() / tau, -1)) / tau / 2
    assert torch.allclose(student.grad, ref, atol=1e-6)


def test_self_distillation_shape_mismatch():
    with pytest.raises(ValueError, match="differ"):
        self_distillation(torch.zeros(2, 3), torch.zeros(2, 4))


# ----------------------------------------------------------------------------- teacher scores

def _m3_kd_by_hand(student: list[list[float]], teacher: list[list[float]], g: int, tau: float,
                   offset: int = 0, t_tau: float = 1.0) -> float:
    """FlagEmbedding's m3_kd_loss written out: for group position k, cross-entropy over the
    group's passages at positions >= k plus every out-of-group passage, weighted by the
    teacher's softmax over the group."""
    total = 0.0
    for i, (row, trow) in enumerate(zip(student, teacher)):
        own = [(offset + i) * g + k for k in range(g)]
        t = _softmax(trow, t_tau)
        for k in range(g):
            cands = [j for j in range(len(row)) if j not in own[:k]]
            lse = math.log(sum(math.exp(row[j] / tau) for j in cands))
            total += t[k] * (lse - row[own[k]] / tau)
    return total / len(student)


def test_teacher_distillation_matches_hand_computation():
    torch.manual_seed(0)
    student = torch.randn(2, 6) * 0.3  # 2 queries, group 3, no extra passages
    teacher = torch.tensor([[2.0, 1.0, -1.0], [0.5, 0.7, 0.1]])
    tau = 0.5
    expected = _m3_kd_by_hand(student.tolist(), teacher.tolist(), 3, tau)
    got = teacher_distillation(student, teacher, temperature=tau)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_teacher_distillation_with_offset_and_extra_negatives():
    torch.manual_seed(1)
    student = torch.randn(2, 10) * 0.3  # queries 1 and 2 of a global batch (offset 1), G = 2, extra columns
    teacher = torch.tensor([[1.0, 0.0], [0.3, 0.9]])
    expected = _m3_kd_by_hand(student.tolist(), teacher.tolist(), 2, 0.1, offset=1, t_tau=0.5)
    got = teacher_distillation(student, teacher, 0.1, group_size=2, query_offset=1, teacher_temperature=0.5)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_teacher_distillation_one_hot_teacher_is_info_nce():
    torch.manual_seed(2)
    student = torch.randn(3, 12)
    teacher = torch.tensor([[1000.0, 0.0, 0.0, 0.0]] * 3)  # softmax -> one-hot on the positive
    got = teacher_distillation(student, teacher, 0.05)
    assert got.item() == pytest.approx(info_nce(student, torch.tensor([0, 4, 8]), 0.05).item(), rel=1e-5)


def test_teacher_distillation_checks_shapes():
    with pytest.raises(ValueError, match="group_size"):
        teacher_distillation(torch.zeros(2, 6), torch.zeros(2, 3), group_size=2)
    with pytest.raises(ValueError, match="passages"):
        teacher_distillation(torch.zeros(2, 4), torch.zeros(2, 3))


# ----------------------------------------------------------------------------- scores

def make_embeddings(n: int, length: int, *, vocab: int = 30, d: int = 8, seed: int = 0) -> M3Embeddings:
    """Random embeddings shaped like M3Model.forward's output (position 0 a special token)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, length + 1, (n,), generator=gen)
    lengths[0] = length
    mask = torch.arange(length)[None, :] < lengths[:, None]
    ids = torch.randint(4, vocab, (n, length), generator=gen)
    ids[:, 0] = 0                     # CLS
    ids[~mask] = 1                    # PAD
    weights = torch.relu(torch.randn(n, length, generator=gen)) * mask
    weights[:, 0] = 0
    colbert = F.normalize(torch.randn(n, length - 1, d, generator=gen), dim=-1) * mask[:, 1:, None]
    return M3Embeddings(dense=F.normalize(torch.randn(n, d, generator=gen), dim=-1), token_weights=weights,
                        input_ids=ids, colbert=colbert, colbert_mask=mask[:, 1:])


def naive_sparse_scores(qw, qids, pw, pids, vocab_size: int, specials=(0, 1)) -> torch.Tensor:
    """The reference code's form: scatter into zeros(B, L, V), max over L, drop specials, dot."""
    def embed(w, ids):
        full = torch.zeros(ids.shape[0], ids.shape[1], vocab_size, dtype=w.dtype)
        full = torch.scatter(full, -1, ids.unsqueeze(-1), w.unsqueeze(-1))
        out = full.max(dim=1).values
        keep = torch.ones(vocab_size, dtype=w.dtype)
        keep[list(specials)] = 0
        return out * keep

    return embed(qw, qids) @ embed(pw, pids).T


@pytest.mark.parametrize("form", [scoring.sparse_scores_from_tokens, sparse_training_scores])
def test_sparse_scores_equal_naive_vocabulary_form_values_and_gradients(form):
    q, p = make_embeddings(3, 7, seed=1), make_embeddings(6, 11, seed=2)
    assert not torch.isin(p.input_ids, q.input_ids).all()  # some passage tokens occur in no query
    qw1, pw1 = q.token_weights.clone().requires_grad_(), p.token_weights.clone().requires_grad_()
    qw2, pw2 = q.token_weights.clone().requires_grad_(), p.token_weights.clone().requires_grad_()
    ours = form(qw1, q.input_ids, pw1, p.input_ids)
    naive = naive_sparse_scores(qw2, q.input_ids, pw2, p.input_ids, vocab_size=30)
    assert torch.allclose(ours, naive, atol=1e-6)
    target = torch.tensor([0, 2, 4])
    info_nce(ours, target, 0.1).backward()
    info_nce(naive, target, 0.1).backward()
    # Where a weight is 0 (ReLU output, special or padding token) the max has ties and each
    # form picks a different subgradient; those never reach the parameters (ReLU'(0) = 0 and
    # the model multiplies specials by 0), so compare the positive weights.
    for w, g1, g2 in ((q.token_weights, qw1.grad, qw2.grad), (p.token_weights, pw1.grad, pw2.grad)):
        pos = w > 0
        assert pos.sum() > 10
        assert torch.allclose(g1[pos], g2[pos], atol=1e-6)


def test_repeated_token_keeps_its_max_weight():
    ids = torch.tensor([[0, 5, 5, 6]])
    w = torch.tensor([[0.0, 0.2, 0.7, 0.1]])
    pids = torch.tensor([[0, 5, 6, 1]])
    pw = torch.tensor([[0.0, 2.0, 3.0, 0.0]])
    assert scoring.sparse_scores_from_tokens(w, ids, pw, pids).item() == pytest.approx(0.7 * 2.0 + 0.1 * 3.0)


def test_score_functions_and_chunked_colbert():
    q, p = make_embeddings(3, 6, seed=3), make_embeddings(9, 10, seed=4)
    s = score_functions(q, p)
    assert set(s) == {"dense", "sparse", "colbert"}
    assert torch.allclose(s["dense"], q.dense @ p.dense.T)
    assert torch.allclose(s["sparse"], naive_sparse_scores(q.token_weights, q.input_ids, p.token_weights,
                                                           p.input_ids, vocab_size=30), atol=1e-6)
    ref = scoring.colbert_scores(q.colbert, q.colbert_mask, p.colbert, p.colbert_mask)
    assert torch.allclose(s["colbert"], ref)
    # chunked under checkpointing: same values and gradients
    qc1, qc2 = q.colbert.clone().requires_grad_(), q.colbert.clone().requires_grad_()
    full = scoring.colbert_scores(qc1, q.colbert_mask, p.colbert, p.colbert_mask)
    e2 = M3Embeddings(q.dense, q.token_weights, q.input_ids, qc2, q.colbert_mask)
    chunked = score_functions(e2, p, ("colbert",), colbert_max_elements=3 * 5 * 9 * 2)["colbert"]
    assert torch.allclose(full, chunked, atol=1e-6)
    (full * torch.arange(27.0).view(3, 9)).sum().backward()
    (chunked * torch.arange(27.0).view(3, 9)).sum().backward()
    assert torch.allclose(qc1.grad, qc2.grad, atol=1e-6)
    assert set(score_functions(q, p, ("dense",))) == {"dense"}
    with pytest.raises(ValueError, match="functions"):
        score_functions(q, p, ("dense", "lexical"))


# ----------------------------------------------------------------------------- M3Loss (eq. 4)

def _ce(scores: torch.Tensor, target: torch.Tensor, tau: float) -> float:
    return float(-(torch.log_softmax(scores / tau, -1)[torch.arange(len(target)), target]).mean())


def _kd(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> float:
    return float(-(torch.softmax(teacher / tau, -1) * torch.log_softmax(student / tau, -1)).sum(-1).mean())


@pytest.fixture(scope="module")
def batch():
    q, p = make_embeddings(3, 6, seed=5), make_embeddings(6, 9, seed=6)  # 3 queries, group size 2
    return q, p, score_functions(q, p), torch.tensor([0, 2, 4])


# bge-m3's own form (form="bge-m3", its default weights) is checked against FlagEmbedding's recorded
# training step in tests/test_training_parity.py; the tests below cover what FlagEmbedding has no
# counterpart for (the paper's form, other weights, subsets of functions, teacher scores, offsets).

def test_m3loss_paper_form_and_custom_weights(batch):
    q, p, s, target = batch
    tau = 0.05
    inter = s["dense"] + 0.3 * s["sparse"] + s["colbert"]
    L = {f: _ce(s[f], target, tau) for f in ("dense", "sparse", "colbert")}
    K = {f: _kd(s[f], inter, tau) for f in ("dense", "sparse", "colbert")}
    L_inter = _ce(inter, target, tau)
    out = M3Loss(form="paper", temperature=tau)(q, p, group_size=2)
    expected = (sum(L.values()) + L_inter) / 4 + sum(K.values()) / 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    w = {"dense": 2.0, "sparse": 0.5, "colbert": 0.0, "inter": 3.0, "kd_sparse": 1.0}
    out = M3Loss(form="paper", temperature=tau, loss_weights=w, ensemble_weights=(1, 1, 0.5))(q, p, group_size=2)
    inter = s["dense"] + s["sparse"] + 0.5 * s["colbert"]
    K = {f: _kd(s[f], inter, tau) for f in ("dense", "sparse", "colbert")}
    expected = ((2 * L["dense"] + 0.5 * L["sparse"] + 3 * _ce(inter, target, tau)) / 4
                + (2 * K["dense"] + 1.0 * K["sparse"]) / 3)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_m3loss_without_self_distillation_and_subsets(batch):
    q, p, s, target = batch
    tau = 0.05
    out = M3Loss(self_distill=False, temperature=tau)(q, p, group_size=2)
    inter = s["dense"] + 0.3 * s["sparse"] + s["colbert"]
    L = {f: _ce(s[f], target, tau) for f in ("dense", "sparse", "colbert")}
    assert out.loss.item() == pytest.approx((L["dense"] + 0.1 * L["sparse"] + L["colbert"]
                                             + _ce(inter, target, tau)) / 4, rel=1e-5)
    assert not any(k.startswith("kd_") for k in out.parts)
    # dense only (pre-training): no ensemble, no self-distillation
    out = M3Loss(functions=("dense",), temperature=tau)(q, p, group_size=2)
    assert out.loss.item() == pytest.approx(L["dense"], rel=1e-5)
    assert set(out.parts) == {"dense", "loss"}
    # two functions: s_inter over those two, divisors 3 and 2
    out = M3Loss(functions=("dense", "sparse"), temperature=tau)(q, p, group_size=2)
    inter2 = s["dense"] + 0.3 * s["sparse"]
    loss = (L["dense"] + 0.1 * L["sparse"] + _ce(inter2, target, tau)) / 3
    kd = (_kd(s["dense"], inter2, tau) + 0.1 * _kd(s["sparse"], inter2, tau)) / 2
    assert out.loss.item() == pytest.approx((loss + kd) / 2, rel=1e-5)


def test_m3loss_teacher_scores_replace_info_nce(batch):
    q, p, s, _ = batch
    tau = 0.05
    teacher = torch.tensor([[3.0, 1.0], [0.2, 0.1], [1.0, 2.0]])
    out = M3Loss(use_teacher_scores=True, temperature=tau)(q, p, group_size=2, teacher_scores=teacher)
    inter = s["dense"] + 0.3 * s["sparse"] + s["colbert"]
    T = {f: _m3_kd_by_hand(s[f].tolist(), teacher.tolist(), 2, tau) for f in ("dense", "sparse", "colbert")}
    T_inter = _m3_kd_by_hand(inter.tolist(), teacher.tolist(), 2, tau)
    K = {f: _kd(s[f], inter, tau) for f in ("dense", "sparse", "colbert")}
    expected = ((T["dense"] + 0.1 * T["sparse"] + T["colbert"] + T_inter) / 4
                + (K["dense"] + 0.1 * K["sparse"] + K["colbert"]) / 3) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="teacher_scores"):
        M3Loss(use_teacher_scores=True)(q, p, group_size=2)
    with pytest.raises(ValueError, match="teacher_scores"):
        M3Loss(use_teacher_scores=True)(q, p, group_size=2, teacher_scores=teacher[:, :1])


def test_m3loss_query_offset_selects_the_right_groups(batch):
    q, p, s, _ = batch
    tau = 0.05
    sub = M3Embeddings(q.dense[1:], q.token_weights[1:], q.input_ids[1:], q.colbert[1:], q.colbert_mask[1:])
    out = M3Loss(functions=("dense",), temperature=tau)(sub, p, group_size=2, query_offset=1)
    assert out.loss.item() == pytest.approx(_ce(s["dense"][1:], torch.tensor([2, 4]), tau), rel=1e-5)


def test_m3loss_rejects_bad_configuration(batch):
    q, p, _, _ = batch
    with pytest.raises(ValueError, match="form"):
        M3Loss(form="mine")
    with pytest.raises(ValueError, match="unknown loss weight"):
        M3Loss(loss_weights={"lexical": 1.0})
    with pytest.raises(ValueError, match="functions"):
        M3Loss(functions=("dense", "dense"))
    with pytest.raises(TypeError, match="string"):
        M3Loss(functions="dense")
    with pytest.raises(ValueError, match="passages"):
        M3Loss()(q, p, group_size=3)
    with pytest.raises(ValueError, match="group_size"):
        M3Loss()(q, p, group_size=0)


def test_m3loss_gradient_equals_finite_differences():
    """The gradient M3Loss sends to the dense vectors, token weights and multi-vectors is the loss's
    derivative: torch.autograd.gradcheck compares it with central differences in float64 (the loss
    keeps float64 inputs in float64), at every element, for the bge-m3 form (InfoNCE of the three
    functions and of s_inter). Self-distillation is off here: its teacher is detached by design, so
    its gradient is not the derivative of the loss (test_self_distillation_... checks that gradient)."""
    q, p = make_embeddings(2, 5, d=4, seed=11), make_embeddings(4, 6, d=4, seed=12)
    loss = M3Loss(temperature=0.5, self_distill=False)  # a mild temperature keeps the softmaxes unsaturated

    def as_double(e, dense, weights, colbert):
        return M3Embeddings(dense, weights, e.input_ids, colbert, e.colbert_mask)

    inputs = [t.double().requires_grad_() for e in (q, p) for t in (e.dense, e.token_weights, e.colbert)]

    def f(qd, qw, qc, pd, pw, pc):
        return loss(as_double(q, qd, qw, qc), as_double(p, pd, pw, pc), group_size=2).loss

    assert f(*inputs).dtype == torch.float64
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)
    # and every input receives gradient (padding and special positions aside)
    f(*inputs).backward()
    for t in inputs:
        assert t.grad is not None and t.grad.abs().sum() > 0
