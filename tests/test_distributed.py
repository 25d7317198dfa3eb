"""Cross-device negatives (m3lab.training.distributed, m3lab.training.step): a 2-process gloo run equals one process.

Each rank encodes half of the queries and their passage groups, gathers every rank's
passages with ``all_gather_embeddings`` and computes the loss of its own queries. The
all-reduced (averaged, as DistributedDataParallel does) gradients must equal the
single-process gradients of the same global batch:

* every function gathered (m3lab's option): the full-batch loss;
* dense only (bge-m3's default): L_dense over the full batch, every other term (sparse,
  multi-vector, s_inter, self-distillation) within each process's own block, averaged.
"""
from __future__ import annotations

import random

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from m3lab.losses import M3Loss
from m3lab.modeling import M3Embeddings, M3Model
from m3lab.scoring import FUNCTIONS
from m3lab.training import GradCache, distributed
from m3lab.training.step import cross_device_loss, training_step

from conftest import WORDS


pytestmark = pytest.mark.usefixtures("one_thread")

WORLD = 2
N_Q, GROUP = 4, 3
QUERIES = ["what is the capital of france", "who built the tower", "how many people live in the city",
           "why did the sun"]


def _passages() -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 25))) for _ in range(N_Q * GROUP)]


def _teacher() -> torch.Tensor:
    return torch.linspace(-1, 2, N_Q * GROUP).view(N_Q, GROUP)


def _loss() -> M3Loss:
    return M3Loss(temperature=0.05, use_teacher_scores=True)


def _mean_grads(model) -> dict[str, torch.Tensor]:
    """DDP's reduction: the mean over ranks."""
    out = {}
    for k, p in model.named_parameters():
        if p.grad is None:
            continue
        g = p.grad.detach().clone()
        dist.all_reduce(g)
        out[k] = g / dist.get_world_size()
    model.zero_grad(set_to_none=True)
    return out


def _worker(rank: int, init_file: str, model_dir: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        model = M3Model.from_pretrained(model_dir, device="cpu").eval()
        per = N_Q // WORLD
        qs = QUERIES[rank * per:(rank + 1) * per]
        ps = _passages()[rank * per * GROUP:(rank + 1) * per * GROUP]
        teacher = _teacher()[rank * per:(rank + 1) * per]
        q = model.collate(model.tokenize(qs))
        p = model.collate(model.tokenize(ps))
        loss_fn = _loss()
        results = {}

        # plain: local queries against the passages of every rank
        q_emb = model(**q)
        p_all = distributed.all_gather_embeddings(model(**p))
        offset = distributed.rank_offset(q_emb.dense.shape[0])
        out = loss_fn(q_emb, p_all, group_size=GROUP, teacher_scores=teacher, query_offset=offset)
        out.loss.backward()
        loss = out.loss.detach().clone()
        dist.all_reduce(loss)
        results["plain"] = (_mean_grads(model), float(loss) / WORLD, offset, p_all.dense.shape[0])

        # GradCache with the gather inside the loss
        GradCache(model, cross_device_loss(loss_fn, FUNCTIONS), sub_batch_size=2, query_sub_batch_size=1).step(
            q, p, group_size=GROUP, teacher_scores=teacher)
        results["gradcache"] = (_mean_grads(model),)

        # bge-m3's default: only the dense function gathered, through the trainer's step (plain and GradCache)
        for mode in ("plain", "gradcache"):
            out = training_step(model, loss_fn, q, p, group_size=GROUP, mode=mode, sub_batch_size=2,
                                query_sub_batch_size=1, teacher_scores=teacher, cross_device_functions=("dense",))
            loss = torch.tensor(out.parts["loss"])
            dist.all_reduce(loss)
            results[f"dense_only_{mode}"] = (_mean_grads(model), float(loss) / WORLD)

        # unequal rows and lengths: content and gradient of the gather itself
        n, length = 2 + rank, 3 + 2 * rank
        x = M3Embeddings(dense=torch.full((n, 2), float(rank + 1), requires_grad=True),
                         token_weights=torch.arange(n * length, dtype=torch.float).view(n, length).requires_grad_(),
                         input_ids=torch.full((n, length), 10 + rank),
                         colbert=torch.ones(n, length - 1, 2) * (rank + 1),
                         colbert_mask=torch.ones(n, length - 1, dtype=torch.bool))
        g = distributed.all_gather_embeddings(x)
        ((g.dense.sum(1) * torch.arange(1.0, 6.0)).sum() + g.token_weights.sum()).backward()
        results["gather"] = (g.dense.detach(), g.token_weights.detach(), g.input_ids, g.colbert_mask,
                             x.dense.grad, x.token_weights.grad, distributed.rank(), distributed.world_size())
        dense_only = distributed.all_gather_embeddings(x, functions=("dense",))
        results["dense_only"] = (dense_only.dense.shape, dense_only.token_weights.shape, dense_only.colbert.shape)
        torch.save(results, f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tiny_xlmr_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    out = str(tmp / "results.pt")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tiny_xlmr_dir), out), nprocs=WORLD, join=True)
    return [torch.load(f"{out}.{r}", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def full_batch(tiny_xlmr_dir):
    model = M3Model.from_pretrained(tiny_xlmr_dir, device="cpu").eval()
    q = model.collate(model.tokenize(QUERIES))
    p = model.collate(model.tokenize(_passages()))
    out = _loss()(model(**q), model(**p), group_size=GROUP, teacher_scores=_teacher())
    out.loss.backward()
    return {k: v.grad.detach().clone() for k, v in model.named_parameters() if v.grad is not None}, out.loss.item()


@pytest.fixture(scope="module")
def dense_only_batch(tiny_xlmr_dir):
    """One process, the same global batch, bge-m3's terms: L_dense over all queries and passages,
    the other terms on each rank's block (its queries and their passages), averaged over the blocks."""
    model = M3Model.from_pretrained(tiny_xlmr_dir, device="cpu").eval()
    q = model.collate(model.tokenize(QUERIES))
    p = model.collate(model.tokenize(_passages()))
    q_all, p_all = model(**q), model(**p)
    loss_fn = _loss()
    dense_full = M3Loss(functions=("dense",), temperature=loss_fn.temperature, use_teacher_scores=True)(
        q_all, p_all, group_size=GROUP, teacher_scores=_teacher()).loss
    per = N_Q // WORLD
    blocks = []
    for r in range(WORLD):
        qs, ps = slice(r * per, (r + 1) * per), slice(r * per * GROUP, (r + 1) * per * GROUP)
        q_r = M3Embeddings(*(getattr(q_all, f)[qs] for f in ("dense", "token_weights", "input_ids", "colbert",
                                                             "colbert_mask")))
        p_r = M3Embeddings(*(getattr(p_all, f)[ps] for f in ("dense", "token_weights", "input_ids", "colbert",
                                                             "colbert_mask")))
        blocks.append(loss_fn.terms(q_r, p_r, group_size=GROUP, teacher_scores=_teacher()[qs]))
    loss = sum(c * (dense_full if name == "dense" else sum(b[name][0] for b in blocks) / WORLD)
               for name, (_, c) in blocks[0].items())
    loss.backward()
    return {k: v.grad.detach().clone() for k, v in model.named_parameters() if v.grad is not None}, loss.item()


def _assert_same(a: dict, b: dict):
    assert set(a) == set(b) and len(a) > 10
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), (k, (a[k] - b[k]).abs().max().item())


def test_two_process_gradients_equal_full_batch(runs, full_batch):
    grads, loss = full_batch
    for r, res in enumerate(runs):
        g, mean_loss, offset, n_passages = res["plain"]
        assert offset == r * (N_Q // WORLD)
        assert n_passages == N_Q * GROUP
        assert mean_loss == pytest.approx(loss, rel=1e-5)
        _assert_same(grads, g)


def test_two_process_gradcache_equals_full_batch(runs, full_batch):
    for res in runs:
        _assert_same(full_batch[0], res["gradcache"][0])


@pytest.mark.parametrize("mode", ["plain", "gradcache"])
def test_two_process_dense_only_gathering_is_bge_m3s_loss(runs, dense_only_batch, full_batch, mode):
    grads, loss = dense_only_batch
    for res in runs:
        g, mean_loss = res[f"dense_only_{mode}"]
        assert mean_loss == pytest.approx(loss, rel=1e-5)
        _assert_same(grads, g)
    # and it is not the all-gathered loss: the local blocks have fewer in-batch negatives
    assert abs(loss - full_batch[1]) > 1e-3


def test_gather_pads_rows_and_lengths_and_sums_gradients(runs):
    for r, res in enumerate(runs):
        dense, weights, ids, mask, g_dense, g_weights, rank, world = res["gather"]
        assert (rank, world) == (r, WORLD)
        # rank 0 holds 2 rows of length 3, rank 1 holds 3 rows of length 5
        assert dense.tolist() == [[1.0, 1.0]] * 2 + [[2.0, 2.0]] * 3
        assert weights.shape == (5, 5) and ids.shape == (5, 5) and mask.shape == (5, 4)
        assert weights[:2, :3].tolist() == torch.arange(6.0).view(2, 3).tolist()
        assert weights[:2, 3:].abs().sum() == 0 and (ids[:2, 3:] == 0).all() and not mask[:2, 2:].any()
        assert weights[2:].tolist() == torch.arange(15.0).view(3, 5).tolist()
        assert (ids[:2, :3] == 10).all() and (ids[2:] == 11).all()
        # every rank's loss weights global row i by (i + 1): the gradient of a row is the sum over ranks
        rows = [0, 1] if r == 0 else [2, 3, 4]
        expected = torch.tensor([[(i + 1.0) * WORLD] * 2 for i in rows])
        assert torch.equal(g_dense, expected)
        assert torch.equal(g_weights, torch.full_like(g_weights, float(WORLD)))
        assert res["dense_only"] == (torch.Size([5, 2]), torch.Size([5, 0]), torch.Size([5, 0, 2]))


def test_single_process_is_a_no_op():
    assert not distributed.is_initialized()
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main_process()
    assert distributed.rank_offset(7) == 0
    distributed.barrier()
    e = M3Embeddings(torch.zeros(1, 2), torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.long),
                     torch.zeros(1, 2, 2), torch.zeros(1, 2, dtype=torch.bool))
    assert distributed.all_gather_embeddings(e) is e
    loss = M3Loss(functions=("dense",))
    q = M3Embeddings(torch.eye(2), torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long),
                     torch.zeros(2, 2, 2), torch.zeros(2, 2, dtype=torch.bool))
    assert cross_device_loss(loss)(q, q, group_size=1).loss.item() == pytest.approx(
        loss(q, q, group_size=1).loss.item())


def test_init_from_env_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env() is False
    monkeypatch.setenv("WORLD_SIZE", "2")
    for k in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        distributed.init_from_env()
