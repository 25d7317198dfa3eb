"""One unified fine-tuning step matches FlagEmbedding's own M3 training model.

``tests/reference/training_reference.npz`` was recorded by
``tests/reference/make_training_reference.py`` in a scratch virtualenv with FlagEmbedding 1.4.2
(``EncoderOnlyEmbedderM3Model``, ``unified_finetuning=True``, ``use_self_distill=True``,
temperature 0.02, no cross-device negatives): the total loss, its seven terms, the score
matrices and the gradient of every parameter after one backward, on the tiny random XLM-R
checkpoint of ``tests/reference/training_checkpoint.py`` and its fixed batch (4 queries, group
size 4, padded). Here the same checkpoint is rebuilt in tmp_path (digests checked), loaded with
``M3Model.from_pretrained``, run through ``M3Loss(form="bge-m3", self_distill=True)`` and
backpropagated; loss and every gradient must agree.

Known difference, not exercised by this batch (the reference records its size on it: 6e-8, float
rounding): FlagEmbedding's training s_mul takes each query token's max over *every* passage
position, padding included, where the masked vectors are 0, so a query token whose similarities to
all real passage tokens are negative scores 0 there; m3lab (and FlagEmbedding's own inference
``colbert_score``, which never sees padding) takes the max over real tokens only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import load_reference, load_reference_module
from m3lab import M3Model
from m3lab.losses import M3Loss

pytestmark = pytest.mark.usefixtures("one_thread")

REF_DIR = Path(__file__).resolve().parent / "reference"
REF_FILE = REF_DIR / "training_reference.npz"
RTOL = 1e-4
#: Absolute tolerance on gradients. The largest gradient entry is 0.67 (sparse_linear.weight) and
#: each tensor's largest entry is >= 0.011 (colbert_linear.bias) except for the attention key
#: biases, whose gradient is exactly 0 in exact arithmetic (a key bias adds q.b_k to every logit of
#: a query's softmax, which is shift-invariant) and is float32 rounding noise of up to 5e-8 on
#: either side. 1e-6 is ~1.5e-6 of the largest gradient and ~1e-4 of the smallest tensor's largest
#: entry: it absorbs that noise and the rounding of near-zero entries (m3lab and FlagEmbedding sum
#: in different orders: ~3e-7 of the largest gradient at most, measured), while every gradient that
#: means something is held to RTOL.
GRAD_ATOL = 1e-6
LOSS_ATOL = 1e-6  # loss terms are 0.2-1.9; float32 rounding differs by ~2e-7 (different op order)
TEMPERATURE = 0.02


def _load_builder():
    return load_reference_module("training_checkpoint")


@pytest.fixture(scope="module")
def ref():
    return load_reference(REF_FILE)


@pytest.fixture(scope="module")
def builder():
    return _load_builder()


@pytest.fixture(scope="module")
def model(tmp_path_factory, ref, builder):
    path = builder.build_training_checkpoint(tmp_path_factory.mktemp("training-parity") / "ckpt")
    # the reference was made from identical weights, or the comparison means nothing
    assert builder.encoder_digest(path) == ref["meta"]["encoder_sha256"], "encoder weights differ from the reference's"
    assert builder.heads_digest(path) == ref["meta"]["heads_sha256"], "head weights differ from the reference's"
    assert builder.config_summary(path) == ref["meta"]["config"]
    m = M3Model.from_pretrained(path, device="cpu", dtype=torch.float32)
    # FlagEmbedding's loss runs in train(); dropout probabilities are 0, so train() is deterministic
    assert m.encoder.config.hidden_dropout_prob == 0 and m.encoder.config.attention_probs_dropout_prob == 0
    return m.train()


def _batch(ref, side: str) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.from_numpy(ref[f"{side}_input_ids"]),
            "attention_mask": torch.from_numpy(ref[f"{side}_attention_mask"])}


def run_step(model, ref, **loss_kwargs):
    """One forward + backward of the reference batch; returns (loss output, {name: grad})."""
    kwargs = dict(form="bge-m3", self_distill=True, temperature=TEMPERATURE) | loss_kwargs
    loss_fn = M3Loss(**kwargs)
    model.zero_grad(set_to_none=True)
    out = loss_fn(model(**_batch(ref, "q")), model(**_batch(ref, "p")), group_size=ref["meta"]["group_size"])
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def mismatches(out, grads, ref) -> list[str]:
    """What differs from the reference beyond tolerance (empty when the step matches)."""
    bad = []
    if not np.isclose(float(out.loss.detach()), float(ref["loss"]), rtol=RTOL, atol=LOSS_ATOL):
        bad.append(f"loss {float(out.loss.detach()):.7f} vs {float(ref['loss']):.7f}")
    ref_grads = {k[len("grad/"):]: v for k, v in ref.items() if k.startswith("grad/")}
    if set(grads) != set(ref_grads):
        bad.append(f"parameters with a gradient differ: {sorted(set(grads) ^ set(ref_grads))}")
    for name in sorted(set(grads) & set(ref_grads)):
        g, r = grads[name].numpy(), ref_grads[name]
        if g.shape != r.shape or not np.allclose(g, r, rtol=RTOL, atol=GRAD_ATOL):
            bad.append(f"grad {name}: max |diff| {np.abs(g - r).max():.3g} (max |ref| {np.abs(r).max():.3g})")
    return bad


@pytest.fixture(scope="module")
def step(model, ref):
    return run_step(model, ref)


def test_reference_settings(ref):
    meta = ref["meta"]
    assert meta["flagembedding"] == "1.4.2"
    kw = meta["model_kwargs"]
    assert kw["unified_finetuning"] and kw["use_self_distill"] and kw["normalize_embeddings"]
    assert kw["temperature"] == TEMPERATURE and not kw["negatives_cross_device"]
    assert kw["sentence_pooling_method"] == "cls"
    # the batch has padding on both sides, so masking is exercised
    assert (ref["q_attention_mask"] == 0).any() and (ref["p_attention_mask"] == 0).any()
    assert meta["colbert_padding_quirk_max_abs_diff"] < 1e-6


def test_m3lab_collates_flagembeddings_batch(model, ref, builder):
    """m3lab's tokenize + collate give FlagEmbedding's collated batch (same ids, same padding)."""
    for side, texts, max_len in (("q", builder.QUERIES, builder.QUERY_MAX_LEN),
                                 ("p", builder.PASSAGES, builder.PASSAGE_MAX_LEN)):
        batch = model.collate(model.tokenize(list(texts), max_length=max_len))
        np.testing.assert_array_equal(batch["input_ids"].numpy(), ref[f"{side}_input_ids"])
        np.testing.assert_array_equal(batch["attention_mask"].numpy(), ref[f"{side}_attention_mask"])
    assert list(builder.QUERIES) == ref["meta"]["queries"] and list(builder.PASSAGES) == ref["meta"]["passages"]
    assert 3 in ref["q_input_ids"] and 3 in ref["p_input_ids"]  # <unk> occurs: the sparse function must drop it


def test_loss_and_terms_match(step, ref):
    out, _ = step
    assert float(out.loss.detach()) == pytest.approx(float(ref["loss"]), rel=RTOL, abs=LOSS_ATOL)
    for name in ("dense", "sparse", "colbert", "inter", "kd_dense", "kd_sparse", "kd_colbert"):
        assert out.parts[name] == pytest.approx(float(ref[f"part/{name}"]), rel=RTOL, abs=LOSS_ATOL), name


def test_scores_match(model, ref):
    """The raw score matrices behind the terms (FlagEmbedding's, times its temperature)."""
    from m3lab import losses

    with torch.no_grad():
        q, p = model(**_batch(ref, "q")), model(**_batch(ref, "p"))
        s = losses.score_functions(q, p)
        inter = losses.ensemble_scores(s["dense"], s["sparse"], s["colbert"])
    for name, mine in (("dense", s["dense"]), ("sparse", s["sparse"]), ("colbert", s["colbert"]), ("inter", inter)):
        np.testing.assert_allclose(mine.numpy(), ref[f"scores/{name}"], rtol=RTOL, atol=1e-6, err_msg=name)


def test_every_gradient_matches(step, ref, model):
    out, grads = step
    assert mismatches(out, grads, ref) == []
    # every parameter is compared: those FlagEmbedding left without a gradient (the unused pooler) too
    no_grad = {n for n, p in model.named_parameters() if p.grad is None}
    assert no_grad == set(ref["meta"]["parameters_without_grad"])
    assert len(grads) + len(no_grad) == len(list(model.parameters()))


PERTURBATIONS = {
    "weight dense": dict(loss_weights={"dense": 1.05}),
    "weight sparse": dict(loss_weights={"sparse": 0.11}),
    "weight colbert": dict(loss_weights={"colbert": 0.95}),
    "weight inter": dict(loss_weights={"inter": 1.05}),
    "weight kd_dense": dict(loss_weights={"kd_dense": 0.95}),
    "weight kd_sparse": dict(loss_weights={"kd_sparse": 0.11}),
    "weight kd_colbert": dict(loss_weights={"kd_colbert": 1.05}),
    "temperature": dict(temperature=0.021),
    "ensemble w_dense": dict(ensemble_weights=(1.05, 0.3, 1.0)),
    "ensemble w_sparse": dict(ensemble_weights=(1.0, 0.33, 1.0)),
    "ensemble w_colbert": dict(ensemble_weights=(1.0, 0.3, 0.95)),
    "no self-distillation": dict(self_distill=False),
    "paper form": dict(form="paper"),
}


@pytest.mark.parametrize("change", list(PERTURBATIONS), ids=list(PERTURBATIONS))
def test_comparison_detects_a_changed_setting(model, ref, change):
    """The tolerances are tight enough that a 5-10% change of any one setting fails the comparison."""
    out, grads = run_step(model, ref, **PERTURBATIONS[change])
    assert mismatches(out, grads, ref), f"changing {change} went unnoticed"
