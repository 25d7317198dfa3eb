"""M3Loss computes scores and loss terms in float32, also under autocast; ``M3Loss.terms``.

Under ``torch.autocast`` (bf16/fp16) the matrix products behind s_dense, s_lex and s_mul would
run in the low-precision type: bf16 keeps 8 significant bits, so near cosine 0.8 its spacing is
2^-8 = 0.0039, i.e. 0.2 logits at temperature 0.02, and 256 candidate scores there collapse to
about 11 distinct values. M3Loss casts the embeddings to float32 and disables autocast for its
whole computation (scores, s_inter, every term).
"""
from __future__ import annotations

import random

import pytest
import torch

from conftest import WORDS
from m3lab import M3Model, losses
from m3lab.losses import M3Loss

pytestmark = pytest.mark.usefixtures("one_thread")

N_Q, G = 4, 4
TERM_NAMES = ("dense", "sparse", "colbert", "inter", "kd_dense", "kd_sparse", "kd_colbert")


def _texts(rng: random.Random, n: int, lo: int, hi: int) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


@pytest.fixture(scope="module")
def model(tiny_xlmr_dir):
    return M3Model.from_pretrained(tiny_xlmr_dir, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def batches(model):
    rng = random.Random(0)
    queries = _texts(rng, N_Q, 3, 6)
    passages = _texts(rng, N_Q * G, 6, 14)
    return (model.collate(model.tokenize(queries, max_length=32)),
            model.collate(model.tokenize(passages, max_length=32)))


@pytest.fixture(scope="module")
def bf16_embeddings(model, batches):
    """The model's forward under CPU bf16 autocast, as a training step runs it."""
    qb, pb = batches
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        return model(**qb), model(**pb)


def _float32(e):
    from dataclasses import fields, replace

    return replace(e, **{f.name: getattr(e, f.name).float() for f in fields(e)
                         if torch.is_tensor(getattr(e, f.name)) and getattr(e, f.name).is_floating_point()})


def test_forward_under_autocast_gives_low_precision_embeddings(bf16_embeddings):
    """The premise: what reaches the loss under autocast is bf16 (else the tests below prove nothing)."""
    dtypes = {e.dense.dtype for e in bf16_embeddings} | {e.colbert.dtype for e in bf16_embeddings}
    assert torch.bfloat16 in dtypes


@pytest.mark.parametrize("kwargs", [dict(), dict(form="paper"), dict(self_distill=False),
                                    dict(use_teacher_scores=True)],
                         ids=["bge-m3", "paper", "no-self-distill", "teacher-scores"])
def test_loss_under_autocast_equals_float32_loss(bf16_embeddings, kwargs):
    """M3Loss under bf16 autocast == M3Loss in float32 on the same embeddings cast to float32.

    Tolerance rel 1e-6: both sides run the same float32 operations on the same float32 values
    (bf16 -> float32 is exact), so only kernel-order rounding may differ (~1e-7). Scores computed
    in bf16 instead are off by up to half a bf16 step (0.002 near 0.8, 0.1 logits at tau = 0.02),
    which moves the loss by ~1e-3..1e-2 relative.
    """
    q, p = bf16_embeddings
    teacher = torch.linspace(1.0, 0.0, G).repeat(N_Q, 1) if kwargs.get("use_teacher_scores") else None
    loss_fn = M3Loss(**kwargs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss_fn(q, p, group_size=G, teacher_scores=teacher)
    want = loss_fn(_float32(q), _float32(p), group_size=G, teacher_scores=teacher)
    assert got.loss.dtype == torch.float32
    assert got.loss.item() == pytest.approx(want.loss.item(), rel=1e-6, abs=1e-7)
    assert set(got.parts) == set(want.parts)
    for name, value in want.parts.items():
        assert got.parts[name] == pytest.approx(value, rel=1e-6, abs=1e-7), name


def test_scores_m3loss_uses_are_float32(bf16_embeddings, monkeypatch):
    """Every score matrix that reaches a loss term, and each function's scores, is float32 under autocast."""
    q, p = bf16_embeddings
    seen: list[tuple[str, torch.dtype]] = []
    score_functions, info_nce, self_distillation = losses.score_functions, losses.info_nce, losses.self_distillation

    def spy_scores(*args, **kwargs):
        out = score_functions(*args, **kwargs)
        seen.extend((f"s_{name}", s.dtype) for name, s in out.items())
        return out

    def spy_info_nce(scores, *args, **kwargs):
        seen.append(("info_nce", scores.dtype))
        return info_nce(scores, *args, **kwargs)

    def spy_self_distillation(student, teacher, *args, **kwargs):
        seen.extend((("kd student", student.dtype), ("kd teacher", teacher.dtype)))
        return self_distillation(student, teacher, *args, **kwargs)

    monkeypatch.setattr(losses, "score_functions", spy_scores)
    monkeypatch.setattr(losses, "info_nce", spy_info_nce)
    monkeypatch.setattr(losses, "self_distillation", spy_self_distillation)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        M3Loss()(q, p, group_size=G)
    names = [n for n, _ in seen]
    assert names.count("info_nce") == 4 and names.count("kd student") == 3 and {"s_dense", "s_sparse", "s_colbert"} <= set(names)
    assert all(dtype == torch.float32 for _, dtype in seen), seen


def test_gradient_reaches_low_precision_embeddings(model, batches):
    """The float32 block is differentiable: a bf16 training step still backpropagates into the encoder."""
    qb, pb = batches
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = M3Loss()(model(**qb), model(**pb), group_size=G)
    out.loss.backward()
    grads = [p.grad for p in (model.sparse_linear.weight, model.colbert_linear.weight,
                              model.encoder.get_input_embeddings().weight)]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    model.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------- M3Loss.terms

BGE_M3_COEFFICIENTS = {"dense": 1 / 8, "sparse": 0.1 / 8, "colbert": 1 / 8, "inter": 1 / 8,
                       "kd_dense": 1 / 6, "kd_sparse": 0.1 / 6, "kd_colbert": 1 / 6}


@pytest.mark.parametrize("kwargs, expected", [
    # (L + L')/2, L = (L_d + 0.1 L_s + L_c + L_inter)/4, L' = (L'_d + 0.1 L'_s + L'_c)/3
    (dict(), BGE_M3_COEFFICIENTS),
    # eq. 4: L + L', all weights 1
    (dict(form="paper"), {"dense": 1 / 4, "sparse": 1 / 4, "colbert": 1 / 4, "inter": 1 / 4,
                          "kd_dense": 1 / 3, "kd_sparse": 1 / 3, "kd_colbert": 1 / 3}),
    (dict(self_distill=False), {"dense": 1 / 4, "sparse": 0.1 / 4, "colbert": 1 / 4, "inter": 1 / 4}),
    (dict(functions=("dense", "sparse")), {"dense": 1 / 6, "sparse": 0.1 / 6, "inter": 1 / 6,
                                           "kd_dense": 1 / 4, "kd_sparse": 0.1 / 4}),
    (dict(functions=("dense",)), {"dense": 1.0}),
    (dict(loss_weights={"kd_sparse": 0.5, "inter": 2.0}),
     BGE_M3_COEFFICIENTS | {"kd_sparse": 0.5 / 6, "inter": 2 / 8}),
], ids=["bge-m3", "paper", "no-self-distill", "dense+sparse", "dense-only", "custom-weights"])
def test_terms_coefficients_and_sum(bf16_embeddings, kwargs, expected):
    q, p = (_float32(e) for e in bf16_embeddings)
    loss_fn = M3Loss(**kwargs)
    assert loss_fn.coefficients() == pytest.approx(expected)
    terms = loss_fn.terms(q, p, group_size=G)
    assert list(terms) == [n for n in TERM_NAMES if n in expected]
    assert {n: c for n, (_, c) in terms.items()} == loss_fn.coefficients()
    out = loss_fn(q, p, group_size=G)
    total = sum(c * t for t, c in terms.values())
    assert total.item() == pytest.approx(out.loss.item(), rel=1e-6)
    for name, (t, _) in terms.items():
        assert t.dtype == torch.float32 and t.dim() == 0
        assert t.item() == pytest.approx(out.parts[name], rel=1e-6)


def test_terms_under_autocast_and_with_teacher_scores(bf16_embeddings):
    q, p = bf16_embeddings
    teacher = torch.rand(N_Q, G, generator=torch.Generator().manual_seed(1))
    loss_fn = M3Loss(use_teacher_scores=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = loss_fn.terms(q, p, group_size=G, teacher_scores=teacher)
        out = loss_fn(q, p, group_size=G, teacher_scores=teacher)
    assert all(t.dtype == torch.float32 for t, _ in terms.values())
    assert sum(c * t for t, c in terms.values()).item() == pytest.approx(out.loss.item(), rel=1e-6)


def test_fp16_padding_gives_finite_gradients(model, batches):
    """Padding vectors are zero; normalising them in fp16 (where 1e-12 underflows) gave 0/0 = NaN, and its
    backward spread NaN into 39 of 41 parameter gradients. m3lab normalises in float32."""
    q, p = batches
    assert not q["attention_mask"].all() and not p["attention_mask"].all()  # both sides padded
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.float16):
        q_emb, p_emb = model(**q), model(**p)
        assert q_emb.colbert.dtype == torch.float16
        out = M3Loss()(q_emb, p_emb, group_size=G)
    out.loss.backward()
    grads = {n: x.grad for n, x in model.named_parameters() if x.grad is not None}
    assert len(grads) > 10
    bad = [n for n, g in grads.items() if not torch.isfinite(g).all()]
    assert not bad, f"non-finite gradients in {bad[:5]}"
    assert torch.isfinite(q_emb.colbert).all() and not q_emb.colbert[~q_emb.colbert_mask].any()
    model.zero_grad(set_to_none=True)
