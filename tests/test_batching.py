"""Efficient batching (m3lab.training): length-grouped sampling, split-batch encoding and GradCache.

The gradient tests compare every way of encoding a batch with the single-process,
full-batch ``loss.backward()`` on a tiny model.
"""
from __future__ import annotations

import random

import pytest
import torch

from m3lab.training import TABLE9_BOUNDARIES, GradCache, LengthGroupedBatchSampler, split_encode
from m3lab.training.batching import concat_embeddings, layer_checkpointing, sub_batches
from m3lab.losses import LossOutput, M3Loss
from m3lab.modeling import M3Model

from conftest import WORDS


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- sampler

def _lengths(n: int = 400, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.choice([rng.randint(1, 499), rng.randint(500, 999), rng.randint(1000, 1999), rng.randint(7000, 9000)])
            for _ in range(n)]


def _group(sampler: LengthGroupedBatchSampler, i: int) -> int:
    return sampler.group_of[i]


def test_every_batch_from_one_group_and_every_index_once():
    lengths = _lengths()
    s = LengthGroupedBatchSampler(lengths, 16, seed=3)
    batches = list(s)
    assert len(batches) == len(s)
    for b in batches:
        assert len({_group(s, i) for i in b}) == 1
        lo = TABLE9_BOUNDARIES[_group(s, b[0])]
        assert all(lengths[i] >= lo for i in b)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # one rank, no drop: each index exactly once
    assert all(s.group_of[i] == len(TABLE9_BOUNDARIES) - 2 for i, x in enumerate(lengths) if x >= 8192)


def test_groups_follow_boundaries():
    s = LengthGroupedBatchSampler([0, 499, 500, 999, 1000, 7999, 8192, 20000], 1)
    assert s.group_of == [0, 0, 1, 1, 2, 8, 8, 8]


def test_ranks_share_the_group_and_take_disjoint_slices():
    lengths = _lengths()
    samplers = [LengthGroupedBatchSampler(lengths, 12, seed=5, rank=r, world_size=3) for r in range(3)]
    runs = [list(s) for s in samplers]
    assert len({len(r) for r in runs}) == 1
    glob = samplers[0].global_batches()
    for step, parts in enumerate(zip(*runs)):
        assert {len(p) for p in parts} == {len(glob[step]) // 3}
        groups = {samplers[0].group_of[i] for p in parts for i in p}
        assert len(groups) == 1                                   # the same group on every rank
        assert sum(parts, []) == glob[step]                       # disjoint slices of the global batch
    covered = {i for r in runs for b in r for i in b}
    assert covered == set(range(len(lengths)))                    # top-up repeats, never loses an example


def test_epochs_reshuffle_deterministically_and_drop_last():
    lengths = _lengths()
    a, b = LengthGroupedBatchSampler(lengths, 16, seed=1), LengthGroupedBatchSampler(lengths, 16, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    d = LengthGroupedBatchSampler(lengths, 16, seed=1, drop_last=True)
    assert all(len(x) == 16 for x in d)
    assert len(list(d)) == len(d)


def test_per_group_batch_sizes():
    lengths = [100] * 50 + [700] * 30
    s = LengthGroupedBatchSampler(lengths, {0: 10, 500: 6}, boundaries=(0, 500, 1000))
    for b in s:
        assert len(b) == (10 if lengths[b[0]] == 100 else 6)
    assert len(s) == 5 + 5
    with pytest.raises(ValueError, match="no batch size"):
        LengthGroupedBatchSampler(lengths, {0: 10}, boundaries=(0, 500, 1000))
    with pytest.raises(ValueError, match="lower bounds"):
        LengthGroupedBatchSampler(lengths, {0: 10, 600: 4}, boundaries=(0, 500, 1000))
    with pytest.raises(ValueError, match="divisible"):
        LengthGroupedBatchSampler(lengths, 10, world_size=3)
    with pytest.raises(ValueError, match="negative"):
        LengthGroupedBatchSampler([3, -1], 2)


def test_padding_share_by_hand_and_against_random_batches():
    s = LengthGroupedBatchSampler([10, 5, 20, 20], 2)
    assert s.padding_share([0, 1]) == pytest.approx(1 - 15 / 20)
    assert s.padding_share([2, 3]) == 0.0
    s = LengthGroupedBatchSampler(_lengths(), 16, seed=0)
    st = s.stats()
    assert st["batches"] == len(s)
    assert 0 <= st["padding_share"] < st["random_padding_share"] < 1
    assert sum(st["batches_per_group"].values()) == len(s)


# ----------------------------------------------------------------------------- sub-batches

QUERIES = ["what is the capital of france", "who built the tower", "how many people", "why did the sun",
           "where is the river", "the moon"]


def _passages(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20))) for _ in range(n)]


@pytest.fixture(scope="module", params=["xlmr", "bert"])
def model(request, tiny_xlmr_dir, tiny_bert_dir):
    path = tiny_xlmr_dir if request.param == "xlmr" else tiny_bert_dir
    return M3Model.from_pretrained(path, device="cpu")


@pytest.fixture(scope="module")
def xlmr_model(tiny_xlmr_dir):
    return M3Model.from_pretrained(tiny_xlmr_dir, device="cpu")


def _batches(model, n_q: int = 4, group: int = 2):
    q = model.collate(model.tokenize(QUERIES[:n_q]))
    p = model.collate(model.tokenize(_passages(n_q * group)))
    return q, p


def test_sub_batches_trim_trailing_padding(model):
    _, p = _batches(model)
    subs = sub_batches(p, 3)
    assert sum(s["input_ids"].shape[0] for s in subs) == p["input_ids"].shape[0]
    for s in subs:
        assert s["attention_mask"][:, -1].any()                   # no all-padding last column
        assert s["input_ids"].shape == s["attention_mask"].shape
    assert max(s["input_ids"].shape[1] for s in subs) == p["input_ids"].shape[1]
    with pytest.raises(ValueError, match="sub_batch_size"):
        sub_batches(p, 0)


def test_concat_embeddings_pads_token_axes(model):
    _, p = _batches(model)
    with torch.no_grad():
        full = model(**p)
        parts = [model(**s) for s in sub_batches(p, 3)]
    cat = concat_embeddings(parts, pad_id=model.tokenizer.pad_token_id)
    assert cat.token_weights.shape == full.token_weights.shape
    assert cat.colbert.shape == full.colbert.shape
    assert torch.equal(cat.input_ids, full.input_ids)
    assert torch.equal(cat.colbert_mask, full.colbert_mask)
    assert torch.allclose(cat.dense, full.dense, atol=1e-5)
    assert torch.allclose(cat.token_weights, full.token_weights, atol=1e-5)
    assert torch.allclose(cat.colbert, full.colbert, atol=1e-5)


# ----------------------------------------------------------------------------- gradients

def _grads(model) -> dict[str, torch.Tensor]:
    out = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def _assert_same_grads(a: dict, b: dict, atol: float = 1e-5):
    assert set(a) == set(b) and len(a) > 10
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=1e-4), (k, (a[k] - b[k]).abs().max().item())


LOSS = M3Loss(temperature=0.05)


def test_split_batch_and_gradcache_equal_full_batch_gradients(model):
    model.eval()  # no dropout: every encoding order must give the same numbers
    model.zero_grad(set_to_none=True)
    q, p = _batches(model)
    teacher = torch.randn(4, 2)
    loss_fn = M3Loss(temperature=0.05, use_teacher_scores=True)
    full = loss_fn(model(**q), model(**p), group_size=2, teacher_scores=teacher)
    full.loss.backward()
    g_full = _grads(model)

    split = loss_fn(split_encode(model, q, 3), split_encode(model, p, 3), group_size=2, teacher_scores=teacher)
    assert split.loss.item() == pytest.approx(full.loss.item(), rel=1e-5)
    split.loss.backward()
    _assert_same_grads(g_full, _grads(model))

    gc = GradCache(model, loss_fn, sub_batch_size=3, query_sub_batch_size=3)
    out = gc.step(q, p, group_size=2, teacher_scores=teacher)
    assert isinstance(out, LossOutput) and not out.loss.requires_grad
    assert out.loss.item() == pytest.approx(full.loss.item(), rel=1e-5)
    assert out.parts.keys() == full.parts.keys()
    _assert_same_grads(g_full, _grads(model))


def test_gradcache_with_a_plain_tensor_loss_and_dense_only(xlmr_model):
    model = xlmr_model.eval()
    model.zero_grad(set_to_none=True)
    q, p = _batches(model, n_q=4, group=2)
    loss_fn = M3Loss(functions=("dense",))
    loss_fn(model(**q), model(**p), group_size=2).loss.backward()
    g_full = _grads(model)
    gc = GradCache(model, lambda a, b, **kw: loss_fn(a, b, **kw).loss, sub_batch_size=3)
    gc.step(q, p, group_size=2)
    g = _grads(model)
    # dense-only: the heads get no gradient, exactly as in the full-batch run
    _assert_same_grads(g_full, g)
    assert not any(k.startswith(("colbert_linear", "sparse_linear")) for k in g)


@pytest.mark.parametrize("layers", [False, True], ids=["", "layer-ckpt"])
def test_dropout_is_replayed_exactly(xlmr_model, layers):
    """With dropout on, GradCache's re-encoding must see the masks of its first pass: it then
    equals plain split encoding (same sub-batches, same RNG stream), and checkpointed split
    encoding equals the non-checkpointed one; also with per-layer checkpointing inside."""
    model = xlmr_model.train()
    model.zero_grad(set_to_none=True)
    q, p = _batches(model)

    def run_split(ckpt: bool, layer_ckpt: bool = False):
        torch.manual_seed(123)
        out = LOSS(split_encode(model, q, 3, checkpoint=ckpt, layer_checkpointing=layer_ckpt),
                   split_encode(model, p, 3, checkpoint=ckpt, layer_checkpointing=layer_ckpt), group_size=2)
        out.loss.backward()
        return out.loss.item(), _grads(model)

    loss_plain, g_plain = run_split(False)
    loss_ckpt, g_ckpt = run_split(True, layers)
    assert loss_ckpt == pytest.approx(loss_plain, rel=1e-6)
    _assert_same_grads(g_plain, g_ckpt)

    torch.manual_seed(123)
    out = GradCache(model, LOSS, sub_batch_size=3, query_sub_batch_size=3, layer_checkpointing=layers).step(
        q, p, group_size=2)
    assert out.loss.item() == pytest.approx(loss_plain, rel=1e-6)
    _assert_same_grads(g_plain, _grads(model))

    # and dropout really is on: another seed gives another loss
    torch.manual_seed(7)
    other = LOSS(split_encode(model, q, 3), split_encode(model, p, 3), group_size=2).loss.item()
    assert other != pytest.approx(loss_plain, rel=1e-6)
    model.eval()


def test_gradcache_rejects_non_scalar_loss(xlmr_model):
    model = xlmr_model.eval()
    q, p = _batches(model, n_q=2, group=1)
    gc = GradCache(model, lambda a, b: a.dense @ b.dense.T, sub_batch_size=2)
    with pytest.raises(TypeError, match="scalar"):
        gc.step(q, p)
    with pytest.raises(ValueError, match="sub_batch_size"):
        GradCache(model, LOSS, sub_batch_size=0)


def test_layer_checkpointing_is_scoped(xlmr_model):
    enc = xlmr_model.encoder
    assert not enc.is_activation_checkpointing
    with layer_checkpointing(xlmr_model):
        assert enc.is_activation_checkpointing
    assert not enc.is_activation_checkpointing
    with pytest.raises(TypeError, match="encoder"):
        with layer_checkpointing(torch.nn.Linear(2, 2)):
            pass


def test_no_example_twice_in_a_global_batch():
    """A short group is topped up with examples it does not hold, never by repeating one (issue 12, 2.3).

    The old top-up repeated the group's first indices: a group of 3 examples for 4 processes
    gave the global batch [2, 0, 1, 2], whose repeated query met its own positive as a negative.
    """
    lengths = [10, 12, 11] + [600 + i for i in range(9)]          # a 3-example group and a 9-example group
    for world in (2, 4):
        sampler = LengthGroupedBatchSampler(lengths, 8, boundaries=(0, 500, 1000), world_size=world, seed=3)
        for epoch in range(5):
            for batch in sampler.global_batches(epoch):
                assert len(batch) == len(set(batch)), f"world {world}, epoch {epoch}: {batch} repeats an example"
                assert len(batch) % world == 0
            covered = {i for b in sampler.global_batches(epoch) for i in b}
            assert covered == set(range(len(lengths)))
    short = LengthGroupedBatchSampler([10, 12, 11], 4, world_size=4)
    with pytest.raises(ValueError, match="without repeating"):
        short.global_batches()
