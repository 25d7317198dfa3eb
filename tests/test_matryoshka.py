"""Matryoshka truncation (m3lab.modeling.matryoshka) and the Matryoshka loss (M3Loss matryoshka_dims)."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from m3lab.losses import GatheredPassages, M3Loss
from m3lab.modeling import M3Embeddings, M3Model, check_matryoshka_dims, truncate_embeddings
from m3lab.training import train
from m3lab.training.config import ConfigError, load_config
from test_losses import make_embeddings
from test_train import base_config, read_log, steps_of, write_examples

pytestmark = pytest.mark.usefixtures("one_thread")

G = 3          # group size
D = 16         # embedding dimension of the random embeddings


def hand_truncate(x: np.ndarray, d: int) -> np.ndarray:
    """x[..., :d] / ||x[..., :d]||, in float64 (rows must be non-zero)."""
    y = x[..., :d].astype(np.float64)
    return y / np.sqrt((y ** 2).sum(-1, keepdims=True))


# ----------------------------------------------------------------------------- truncate_embeddings

@pytest.mark.parametrize("shape", [(5, D), (3, 4, D), (4, D)])
def test_truncate_numpy_and_torch_equal_hand_computation(shape):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    want = hand_truncate(x, 6)
    got_np = truncate_embeddings(x, 6)
    got_t = truncate_embeddings(torch.from_numpy(x), 6)
    assert isinstance(got_np, np.ndarray) and isinstance(got_t, torch.Tensor)
    assert got_np.shape == got_t.shape == shape[:-1] + (6,)
    np.testing.assert_allclose(got_np, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got_t.numpy(), want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(got_np, axis=-1), 1.0, rtol=1e-6)
    # the full size is only a renormalisation; normalize=False is the plain prefix
    np.testing.assert_allclose(truncate_embeddings(x, D), hand_truncate(x, D), rtol=1e-6, atol=1e-7)
    raw = truncate_embeddings(x, 6, normalize=False)
    assert np.array_equal(raw, x[..., :6]) and raw.flags.c_contiguous
    assert torch.equal(truncate_embeddings(torch.from_numpy(x), 6, normalize=False), torch.from_numpy(x)[..., :6])


def test_truncate_keeps_zero_vectors_zero_without_nan():
    x = np.zeros((3, 5, 8), dtype=np.float32)
    x[0, :2] = np.random.default_rng(1).normal(size=(2, 8))        # padding rows stay zero
    x[1, 0, 4:] = 1.0                                               # zero prefix, non-zero tail
    out = truncate_embeddings(x, 4)
    assert np.isfinite(out).all() and not out[1:].any() and not out[0, 2:].any()
    t = torch.from_numpy(x).requires_grad_(True)
    y = truncate_embeddings(t, 4)
    (y * torch.arange(4.0)).sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(t.grad).all()
    assert not t.grad[..., 4:].any()                               # the cut coordinates get no gradient


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_truncate_keeps_the_torch_dtype(dtype):
    x = torch.randn(4, 3, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    out = truncate_embeddings(x, 5)
    assert out.dtype == dtype
    want = torch.from_numpy(hand_truncate(x.double().numpy(), 5))
    tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3}.get(dtype, 1e-6)
    assert torch.allclose(out.double(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_truncate_keeps_the_numpy_dtype(dtype):
    x = np.random.default_rng(2).normal(size=(6, 8)).astype(dtype)
    out = truncate_embeddings(x, 3)
    assert out.dtype == dtype
    np.testing.assert_allclose(out.astype(np.float64), hand_truncate(x, 3), rtol=1e-3 if dtype == np.float16 else 1e-6)


@pytest.mark.parametrize("dim", [0, -1, 9, 2.0, "4", True, None])
def test_truncate_refuses_bad_dims(dim):
    for x in (np.ones((2, 8), np.float32), torch.ones(2, 8)):
        with pytest.raises(ValueError, match="dim"):
            truncate_embeddings(x, dim)
    assert truncate_embeddings(np.ones((2, 8), np.float32), np.int64(4)).shape == (2, 4)
    with pytest.raises(TypeError):
        truncate_embeddings([[1.0, 2.0]], 1)
    with pytest.raises(TypeError, match="floating"):
        truncate_embeddings(np.ones((2, 8), np.int64), 4)


def test_check_matryoshka_dims():
    assert check_matryoshka_dims([64, 256, 128], 384) == (256, 128, 64)
    assert check_matryoshka_dims((384,), 384) == (384,)
    for dims, match in (([0], "dim 0 must be >= 1"), ([64, -8], "dim -8 must be >= 1"),
                        ([512, 64], "512 is larger than the embedding dimension 384"),
                        ([64, 64], "64 is listed twice"), ([64.5], "64.5 is not an integer"),
                        ([], "empty"), ("64", "list of integers")):
        with pytest.raises(ValueError, match=match):
            check_matryoshka_dims(dims, 384)
    with pytest.raises(ValueError, match="larger than the dense dimension 32"):
        check_matryoshka_dims([48], 32, name="the dense dimension")


# ----------------------------------------------------------------------------- the loss

def batch(d: int = D, d_colbert: int | None = None, seed: int = 0, n_q: int = 3):
    q = make_embeddings(n_q, 5, d=d, seed=seed)
    p = make_embeddings(n_q * G, 9, d=d, seed=seed + 1)
    if d_colbert is not None:  # a multi-vector head of another width
        q, p = (replace(e, colbert=F.normalize(torch.randn(*e.colbert.shape[:2], d_colbert,
                                                           generator=torch.Generator().manual_seed(seed + 7)), dim=-1)
                        * e.colbert_mask[..., None]) for e in (q, p))
    return q, p


def leaves(q: M3Embeddings, p: M3Embeddings):
    """Copies of the float fields that require grad, and the embeddings built on them."""
    tensors = [t.detach().clone().requires_grad_(True) for t in (q.dense, q.colbert, q.token_weights,
                                                                  p.dense, p.colbert, p.token_weights)]
    qd, qc, qw, pd, pc, pw = tensors
    return tensors, replace(q, dense=qd, colbert=qc, token_weights=qw), replace(p, dense=pd, colbert=pc, token_weights=pw)


def manual_truncate(e: M3Embeddings, d: int) -> M3Embeddings:
    """Cut dense and multi-vectors to d coordinates and renormalise, by hand (padding rows stay 0)."""
    def cut(x):
        y = x[..., :d]
        return y / y.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return replace(e, dense=cut(e.dense), colbert=cut(e.colbert))


@pytest.mark.parametrize("kwargs", [{}, {"form": "paper"}, {"self_distill": False},
                                    {"functions": ("dense", "colbert")}])
def test_matryoshka_loss_equals_hand_computation(kwargs):
    q, p = batch()
    dims, weights = [8, 4], [0.5, 2.0]
    (t1, q1, p1), (t2, q2, p2) = leaves(q, p), leaves(q, p)
    got = M3Loss(matryoshka_dims=dims, matryoshka_weights=weights, **kwargs)(q1, p1, group_size=G)
    base = M3Loss(**kwargs)
    full = base(q2, p2, group_size=G)
    cut = {d: base(manual_truncate(q2, d), manual_truncate(p2, d), group_size=G) for d in dims}
    want = full.loss + sum(w * cut[d].loss for d, w in zip(dims, weights))
    # float32 all along: the two sides run the same operations, only the order of the final sum of
    # terms (and the norm's reduction) may differ, a few ulp of a loss of order 1, so rel 1e-6.
    assert got.loss.item() == pytest.approx(want.item(), rel=1e-6)
    for d in dims:
        assert got.parts[f"matryoshka_{d}"] == pytest.approx(cut[d].parts["loss"], rel=1e-6)
    assert {k: v for k, v in got.parts.items() if not k.startswith("matryoshka") and k != "loss"} == \
        {k: v for k, v in full.parts.items() if k != "loss"}
    got.loss.backward()
    want.backward()
    for a, b in zip(t1, t2):
        if b.grad is None:  # e.g. the sparse weights when sparse is not trained
            assert a.grad is None or not a.grad.any()
            continue
        # gradients: the same sums of O(1 / tau) = 50 sized products, so compare at 1e-6 of their scale
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-6 * b.grad.abs().max().item())


def test_terms_and_coefficients_list_every_pass():
    q, p = batch()
    loss_fn = M3Loss(matryoshka_dims=[4, 8], matryoshka_weights=[2.0, 0.5])   # sorted largest first
    assert (loss_fn.matryoshka_dims, loss_fn.matryoshka_weights) == ((8, 4), (0.5, 2.0))
    base = M3Loss().coefficients()
    coefficients = loss_fn.coefficients()
    assert coefficients == {**base, **{f"matryoshka_8.{k}": 0.5 * c for k, c in base.items()},
                            **{f"matryoshka_4.{k}": 2.0 * c for k, c in base.items()}}
    terms = loss_fn.terms(q, p, group_size=G)
    assert {k: c for k, (_, c) in terms.items()} == coefficients
    total = sum(c * t for t, c in terms.values())
    assert total.item() == loss_fn(q, p, group_size=G).loss.item()
    assert "matryoshka_8" in repr(loss_fn) or "matryoshka_dims=(8, 4)" in repr(loss_fn)


def test_no_matryoshka_dims_is_exactly_the_old_loss():
    q, p = batch()
    (t1, q1, p1), (t2, q2, p2) = leaves(q, p), leaves(q, p)
    old, new = M3Loss(), M3Loss(matryoshka_dims=None)
    a, b = old(q1, p1, group_size=G), new(q2, p2, group_size=G)
    assert torch.equal(a.loss, b.loss) and a.parts == b.parts
    assert set(b.parts) == {"dense", "sparse", "colbert", "inter", "kd_dense", "kd_sparse", "kd_colbert", "loss"}
    a.loss.backward()
    b.loss.backward()
    assert all(torch.equal(x.grad, y.grad) for x, y in zip(t1, t2))
    # a sparse-only loss has nothing to truncate: no extra pass
    sparse = M3Loss(functions=("sparse",), matryoshka_dims=[4])
    assert sparse(q, p, group_size=G).parts == M3Loss(functions=("sparse",))(q, p, group_size=G).parts


def test_matryoshka_with_gathered_passages_truncates_them_too():
    """Cross-device negatives, emulated in one process: two 'ranks' share all passages for dense."""
    q, p = batch(n_q=4)
    dims = [6]
    fields = ("dense", "token_weights", "input_ids", "colbert", "colbert_mask")
    loss_fn, base = M3Loss(matryoshka_dims=dims), M3Loss()
    for r in range(2):
        qs, ps = slice(2 * r, 2 * r + 2), slice(2 * r * G, (2 * r + 2) * G)
        q_r = M3Embeddings(*(getattr(q, f)[qs] for f in fields))
        p_r = M3Embeddings(*(getattr(p, f)[ps] for f in fields))
        got = loss_fn(q_r, p_r, group_size=G, gathered=GatheredPassages(p, ("dense",), 2 * r))
        cut = [manual_truncate(e, 6) for e in (q_r, p_r, p)]
        want = (base(q_r, p_r, group_size=G, gathered=GatheredPassages(p, ("dense",), 2 * r)).loss
                + base(cut[0], cut[1], group_size=G, gathered=GatheredPassages(cut[2], ("dense",), 2 * r)).loss)
        assert got.loss.item() == pytest.approx(want.item(), rel=1e-6)


def test_loss_refuses_bad_matryoshka_settings():
    q, p = batch(d=D, d_colbert=8)
    with pytest.raises(ValueError, match="12 is larger than the multi-vector .colbert. dimension 8"):
        M3Loss(matryoshka_dims=[12])(q, p, group_size=G)
    M3Loss(functions=("dense",), matryoshka_dims=[12])(q, p, group_size=G)        # colbert not trained: fine
    with pytest.raises(ValueError, match="20 is larger than the dense dimension 16"):
        M3Loss(matryoshka_dims=[20])(q, p, group_size=G)
    q, p = batch()
    with pytest.raises(ValueError, match="16 is the full dimension"):
        M3Loss(matryoshka_dims=[16, 8])(q, p, group_size=G)
    for kwargs, match in (({"matryoshka_dims": [0]}, "dim 0"), ({"matryoshka_dims": [8, 8]}, "listed twice"),
                          ({"matryoshka_weights": [1.0]}, "without matryoshka_dims"),
                          ({"matryoshka_dims": [8], "matryoshka_weights": [1.0, 2.0]}, "one weight per dim"),
                          ({"matryoshka_dims": [8], "matryoshka_weights": [-1.0]}, ">= 0")):
        with pytest.raises(ValueError, match=match):
            M3Loss(**kwargs)


# ----------------------------------------------------------------------------- config and training

def test_config_validates_matryoshka_dims(tmp_path):
    base = {"train_files": ["x.jsonl"]}
    assert load_config({**base, "matryoshka_dims": [16, 8]}).matryoshka_dims == [16, 8]
    assert load_config(base).matryoshka_dims is None
    for extra, match in (({"matryoshka_dims": [16, -4]}, "'matryoshka_dims'.*-4"),
                         ({"matryoshka_dims": [0]}, "'matryoshka_dims'.*dim 0"),
                         ({"matryoshka_dims": [8, 8]}, "'matryoshka_dims'.*twice"),
                         ({"matryoshka_dims": []}, "'matryoshka_dims'"),
                         ({"matryoshka_dims": [8.5]}, "'matryoshka_dims\\[0\\]'.*integer"),
                         ({"matryoshka_dim": [8]}, "unknown key 'matryoshka_dim'.*did you mean 'matryoshka_dims'"),
                         ({"matryoshka_weights": [1.0]}, "'matryoshka_weights'.*without matryoshka_dims"),
                         ({"matryoshka_dims": [8], "matryoshka_weights": [1.0, 1.0]}, "one weight per dim"),
                         ({"matryoshka_dims": [8], "matryoshka_weights": [-1.0]}, ">= 0")):
        with pytest.raises(ConfigError, match=match):
            load_config({**base, **extra})


def test_trainer_refuses_dims_the_model_does_not_have(tiny_bert_dir, tmp_path):
    train_file = write_examples(tmp_path / "train.jsonl", n=8)
    for dims, match in (([64], "64 is larger than the model's hidden size .dense dimension. 32"),
                        ([32, 8], "32 is the model's full dimension")):
        with pytest.raises(ConfigError, match=match):
            train(base_config(tiny_bert_dir, train_file, tmp_path / f"r{dims[0]}", matryoshka_dims=dims))


def test_training_with_matryoshka_dims(tiny_bert_dir, tmp_path):
    train_file = write_examples(tmp_path / "train.jsonl", n=8)
    result = train(base_config(tiny_bert_dir, train_file, tmp_path / "run", matryoshka_dims=[8, 16],
                               matryoshka_weights=[1.0, 0.5]))
    steps = steps_of(read_log(result.log_path))
    assert len(steps) == 2 and result.steps == 2
    for r in steps:
        losses = r["losses"]
        assert {"matryoshka_16", "matryoshka_8", "dense", "kd_colbert"} <= set(losses)
        full = sum(c * losses[k] for k, c in M3Loss().coefficients().items())
        assert r["loss"] == pytest.approx(full + 0.5 * losses["matryoshka_16"] + losses["matryoshka_8"], rel=1e-5)
    saved = json.loads((result.final_dir / "m3lab_config.json").read_text())
    assert saved["matryoshka_dims"] == [16, 8]
    model = M3Model.from_pretrained(result.final_dir, device="cpu")
    assert model.matryoshka_dims == [16, 8]
    out = model.encode(["a small test"], return_sparse=False, return_colbert=False)
    assert truncate_embeddings(out.dense, 8).shape == (1, 8)
