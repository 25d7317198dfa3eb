"""m3lab.experiments: the notebooks' helpers (settings, loss decomposition, gradient flow, batching
measurements, cross-device demo, per-query metrics)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from m3lab import experiments as ex
from m3lab.losses import M3Loss
from m3lab.modeling import M3Model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return M3Model.from_pretrained(ex.make_tiny_model(tmp_path_factory.mktemp("tiny") / "bert"), device="cpu")


QUERIES = ["what is the capital of france", "who built the eiffel tower", "why is the sun hot"]
PASSAGES = ["paris is the capital of france", "the moon is far", "the eiffel tower was built by eiffel",
            "a river in the city", "the sun is a hot star", "water is wet"]


def _batches(model):
    return model.collate(model.tokenize(QUERIES)), model.collate(model.tokenize(PASSAGES))


# ----------------------------------------------------------------------------- settings

def test_settings_follow_the_profile(monkeypatch):
    kw = dict(smoke=dict(n=1), cpu=dict(n=10, m="x"), gpu=dict(n=100))
    monkeypatch.delenv("M3LAB_PROFILE", raising=False)
    monkeypatch.setenv("SMOKE", "1")
    assert ex.smoke() and ex.profile() == "smoke"
    s = ex.settings(**kw)
    assert (s.n, s.m, s._profile) == (1, "x", "smoke")
    monkeypatch.setenv("M3LAB_PROFILE", "gpu")
    assert ex.settings(**kw).n == 100
    monkeypatch.setenv("SMOKE", "0")
    monkeypatch.setenv("M3LAB_PROFILE", "cpu")
    assert not ex.smoke() and ex.settings(**kw).n == 10
    assert "| `n` |" in ex.settings_table(ex.settings(**kw))
    with pytest.raises(KeyError, match="typo"):
        ex.settings(smoke=dict(typo=1), cpu=dict(n=1))
    monkeypatch.setenv("M3LAB_PROFILE", "tpu")
    with pytest.raises(ValueError, match="M3LAB_PROFILE"):
        ex.profile()


def test_cpu_threads_env(monkeypatch):
    monkeypatch.setenv("M3LAB_THREADS", "3")
    assert ex.cpu_threads() == 3


def test_run_record(monkeypatch):
    monkeypatch.setenv("M3LAB_PROFILE", "cpu")
    run = ex.Run()
    with run.section("a"):
        pass
    with run.section("a"):
        pass
    info = run.info()
    assert info["profile"] == "cpu" and info["torch"] == torch.__version__ and "a" in info["sections_s"]
    assert info["device"].startswith("CPU") or "CUDA" in info["device"]


# ----------------------------------------------------------------------------- models

@pytest.mark.parametrize("kind", ["bert", "xlmr"])
def test_make_tiny_model(tmp_path, kind):
    model = M3Model.from_pretrained(ex.make_tiny_model(tmp_path / kind, kind), device="cpu")
    out = model.encode(["the city of paris", "the river"])
    assert out.dense.shape == (2, 32) and np.allclose(np.linalg.norm(out.dense, axis=1), 1, atol=1e-5)
    assert (model.tokenizer.eos_token_id is None) == (kind == "bert")
    assert "UNTRAINED" in ex.describe_model(model)
    with pytest.raises(ValueError, match="kind"):
        ex.make_tiny_model(tmp_path / "x", "gpt")


# ----------------------------------------------------------------------------- losses

@pytest.mark.parametrize("form", ["bge-m3", "paper"])
@pytest.mark.parametrize("self_distill", [True, False])
@pytest.mark.parametrize("functions", [("dense", "sparse", "colbert"), ("dense", "colbert"), ("dense",)])
def test_loss_terms_sum_to_m3loss(tiny, form, self_distill, functions):
    q_batch, p_batch = _batches(tiny)
    tiny.eval()
    with torch.no_grad():
        q, p = tiny(**q_batch), tiny(**p_batch)
    loss_fn = M3Loss(form=form, self_distill=self_distill, functions=functions)
    terms = ex.loss_terms(loss_fn, q, p, group_size=2)
    total = sum(c * t for t, c in terms.values())
    assert float(total) == pytest.approx(float(loss_fn(q, p, group_size=2).loss), rel=1e-5)
    expected = set(functions) | ({"inter"} if len(functions) > 1 else set()) | \
        ({f"kd_{f}" for f in functions} if self_distill and len(functions) > 1 else set())
    assert set(terms) == expected


def test_gradient_flow_follows_the_graph(tiny):
    q_batch, p_batch = _batches(tiny)
    tiny.eval()
    rows = {r["term"]: r for r in ex.gradient_flow(tiny, M3Loss(), q_batch, p_batch, group_size=2)}
    lex, mul = "sparse head (W_lex)", "multi-vector head (W_mul)"
    # no path from the dense loss to either head; distillation (detached teacher) reaches only its own head
    assert rows["dense"][lex] == 0 and rows["dense"][mul] == 0 and rows["kd_dense"][lex] == 0
    assert rows["sparse"][mul] == 0 and rows["kd_sparse"][mul] == 0 and rows["sparse"][lex] > 0
    assert rows["colbert"][lex] == 0 and rows["kd_colbert"][lex] == 0 and rows["colbert"][mul] > 0
    assert rows["inter"][lex] > 0 and rows["inter"][mul] > 0 and rows["inter"]["encoder"] > 0
    assert rows["sparse"]["weighted encoder"] == pytest.approx(rows["sparse"]["coefficient"] * rows["sparse"]["encoder"])


def test_read_log_flattens_step_records(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"event": "start", "step": 0},
        {"event": "step", "step": 1, "loss": 2.0, "losses": {"dense": 1.0, "kd_sparse": 3.0}, "sparse_nonzero_share": 0.5},
        {"event": "checkpoint", "step": 1}]) + "\n")
    rows = ex.read_log(path)
    assert rows == [{"event": "step", "step": 1, "loss": 2.0, "sparse_nonzero_share": 0.5, "loss_dense": 1.0,
                     "loss_kd_sparse": 3.0}]


# ----------------------------------------------------------------------------- batching

def test_random_batch_framing():
    b = ex.random_batch(5, 20, 100, seed=1, ragged=True)
    ids, mask = b["input_ids"], b["attention_mask"]
    assert ids.shape == mask.shape == (5, 20) and (ids[:, 0] == 0).all()
    for row, m in zip(ids, mask):
        n = int(m.sum())
        assert row[n - 1] == 2 and (row[n:] == 1).all() and (row[1:n - 1] >= 4).all()


def test_training_step_modes_give_the_plain_gradient():
    model = ex.random_encoder_model("tiny", max_length=32).eval()
    q = ex.random_batch(4, 8, 1000, seed=1, ragged=True)
    p = ex.random_batch(8, 24, 1000, seed=2, ragged=True)
    grads = {}
    for mode in ex.BATCHING_MODES:
        model.zero_grad(set_to_none=True)
        ex.training_step(model, M3Loss(), q, p, mode=mode, group_size=2, sub_batch_size=3)
        grads[mode] = torch.cat([x.grad.reshape(-1) for x in model.parameters() if x.grad is not None])
    for mode in ("split", "gradcache"):
        torch.testing.assert_close(grads[mode], grads["plain"], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="mode"):
        ex.training_step(model, M3Loss(), q, p, mode="fast")


def test_measure_batching_rows():
    model = ex.random_encoder_model("tiny", max_length=32)
    rows = ex.measure_batching(model, lengths=[16, 32], batch_size=2, sub_batch_size=1, query_length=8)
    assert [(r["length"], r["mode"]) for r in rows] == [(16, m) for m in ex.BATCHING_MODES] + \
        [(32, m) for m in ex.BATCHING_MODES]
    for r in rows:
        assert r["tokens_per_s"] > 0 and np.isfinite(r["loss"])
        if r["method"] != "unavailable":
            assert r["peak_bytes"] >= 0


def test_cross_device_single_process_is_the_full_batch():
    r = ex.cross_device_gradients(n_queries=4, group_size=2, length=16)
    assert (r["world_size"], r["queries_per_process"], r["passages_scored"]) == (1, 4, 8)
    model = ex.random_encoder_model("tiny", max_length=16, seed=0)
    assert r["grad"].shape == (sum(p.numel() for p in model.parameters()),) and np.isfinite(r["loss"])


@pytest.mark.slow
def test_two_processes_reproduce_the_single_process_gradient():
    kw = dict(n_queries=4, group_size=2, length=16)
    single = ex.cross_device_gradients(**kw)
    launched = ex.launch_cross_device(2, **kw)
    gathered, local = launched["gathered"], launched["local"]
    assert gathered["passages_scored"] == 8 and local["passages_scored"] == 4
    assert gathered["loss"] == pytest.approx(single["loss"], rel=1e-5)
    np.testing.assert_allclose(gathered["grad"], single["grad"], rtol=1e-4, atol=1e-5)
    assert np.abs(local["grad"] - single["grad"]).max() > 1e-3  # without the gather: another gradient


def _fake_torchrun(monkeypatch, failures: list[str]):
    """subprocess.run for launch_cross_device: the first launches fail with the given stderr,
    later ones run for real."""
    import subprocess

    real, calls = subprocess.run, []

    def run(cmd, **kw):
        calls.append(cmd)
        if len(calls) <= len(failures):
            return subprocess.CompletedProcess(cmd, 1, stdout="", stderr=failures[len(calls) - 1])
        return real(cmd, **kw)

    monkeypatch.setattr(subprocess, "run", run)
    return calls


ABORT = "terminate called without an active exception\n  traceback : Signal 6 (SIGABRT) received by PID 1\n"


@pytest.mark.slow
def test_launch_is_retried_once_after_a_worker_is_killed_by_a_signal(monkeypatch):
    kw = dict(n_queries=4, group_size=2, length=16)
    calls = _fake_torchrun(monkeypatch, [ABORT])
    with pytest.warns(RuntimeWarning, match="(?s)retrying the launch once.*SIGABRT"):
        launched = ex.launch_cross_device(2, **kw)
    assert len(calls) == 2 and calls[0][5] != calls[1][5]  # a fresh --master_port
    np.testing.assert_allclose(launched["gathered"]["grad"], ex.cross_device_gradients(**kw)["grad"], rtol=1e-4, atol=1e-5)


def test_launch_fails_on_a_second_abort_or_any_other_error(monkeypatch):
    _fake_torchrun(monkeypatch, [ABORT, ABORT])
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match=r"exit 1; result not written"):
        ex.launch_cross_device(2, n_queries=4)
    calls = _fake_torchrun(monkeypatch, ["ValueError: n_queries=3 must be divisible"])
    with pytest.raises(RuntimeError, match="must be divisible"):
        ex.launch_cross_device(2, n_queries=3)
    assert len(calls) == 1


# ----------------------------------------------------------------------------- evaluation helpers

def test_per_query_metrics_average_to_evaluate_retrieval(tiny):
    from m3lab.data import load_mini
    from m3lab.evaluation import evaluate_retrieval

    data = ex.subsample(load_mini("en"), 20, seed=3)
    assert len(data.queries) == 20 and data.corpus == load_mini("en").corpus and set(data.qrels) == {q.id for q in data.queries}
    rows = ex.per_query_metrics(tiny, data, ("dense", "sparse", "hybrid"), max_length=128)
    means = evaluate_retrieval(tiny, data, ["dense", "sparse", "hybrid"], max_length=128, show_progress=False)
    for m in means:
        per = [r for r in rows if r["mode"] == m["mode"]]
        assert len(per) == 20
        for metric in ("ndcg@10", "recall@10", "mrr@10"):
            assert np.mean([r[metric] for r in per]) == pytest.approx(m[metric], abs=1e-9)


def test_xquad_answer_offsets(data_dir, tiny):
    from m3lab.data import load_xquad_long

    offsets = ex.xquad_answer_offsets("en", tiny.tokenizer, split="test")
    long = load_xquad_long("en", split="test")
    assert set(offsets) == {q.id for q in long.queries}
    assert min(offsets.values()) == 0 and max(offsets.values()) > 256
