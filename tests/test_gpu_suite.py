"""benchmarks/gpu_suite.py (issue 17): its dry run on the CPU, and its capacity search on a simulated device."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_suite.py"
SECTIONS = ("capacity", "precision", "throughput", "notebooks")
GiB = 2**30


def _load_suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """Run the suite once as CI does: ``--dry-run`` in a subprocess, one torch thread."""
    out = tmp_path_factory.mktemp("gpu-suite")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads((out / "gpu_suite.json").read_text())
    return {"out": out, "report": report, "seconds": seconds, "stdout": proc.stdout}


def test_dry_run_report_and_environment(dry_run):
    r = dry_run["report"]
    assert r["schema"] == "m3lab.gpu_suite/1"
    assert r["dry_run"] is True
    dev = r["device"]
    assert dev["type"] == "cpu" and dev["torch"] and dev["transformers"] and dev["name"].startswith("CPU")
    assert set(r["sections"]) == set(SECTIONS)
    for name, sec in r["sections"].items():
        assert "error" not in sec, f"{name}: {sec.get('error')}"
        assert sec["wall_s"] >= 0
        assert sec["device"] == "cpu"  # never labelled as a GPU figure
    assert r["wall_s"] > 0 and r["time_budget_s"] > 0  # recorded; never a wall-clock assertion (load varies)


def test_dry_run_capacity(dry_run):
    cap = dry_run["report"]["sections"]["capacity"]
    assert cap["status"] == "ok"
    rows = cap["rows"]
    assert {(x["length"], x["mode"]) for x in rows} == {(L, m) for L in {x["length"] for x in rows}
                                                         for m in ("plain", "split-ref", "split", "gradcache")}
    assert len({x["length"] for x in rows}) == 3
    for row in rows:
        assert isinstance(row["max_batch"], int) and row["max_batch"] >= 1, row
        assert row["device"] == "cpu"
        assert row["probes"] and all(p["batch"] >= 1 for p in row["probes"])
        assert row["peak_bytes"] and row["peak_bytes"] > 0
        assert row["tokens_per_s"] > 0
        assert isinstance(row["analytic_estimate"], int)
        assert row["stopped_by"] in ("exact", "max batch", "probe limit", "time")


def test_dry_run_precision(dry_run):
    prec = dry_run["report"]["sections"]["precision"]
    rows = {x["dtype"]: x for x in prec["rows"]}
    assert set(rows) == {"fp32", "bf16", "fp16"}
    for dtype, row in rows.items():
        assert math.isfinite(row["loss"]) and row["loss"] > 0, row
        assert {"dense", "sparse", "colbert", "inter", "kd_dense", "kd_sparse", "kd_colbert"} <= set(row["parts"])
    for dtype in ("bf16", "fp16"):
        assert math.isfinite(rows[dtype]["loss_rel_diff"])
        assert isinstance(rows[dtype]["pass"], bool)
    assert prec["tolerance"]["loss_rtol"] > 0
    assert isinstance(prec["pass"], bool)


def test_dry_run_throughput(dry_run):
    thr = dry_run["report"]["sections"]["throughput"]
    assert thr["status"] == "ok"
    m3 = [x for x in thr["rows"] if x["implementation"].startswith("m3lab")]
    assert {(x["model"].split(" ")[0], x["dtype"]) for x in m3} == {(a, d) for a in ("default", "bge-m3-shaped")
                                                                     for d in ("fp16", "bf16")}
    for row in m3:
        assert row["tokens_per_s"] > 0 and row["tokens"] > 0 and row["device"] == "cpu"
    flag = [x for x in thr["rows"] if x["implementation"].startswith("FlagEmbedding")]
    assert len(flag) == 4
    for row in flag:  # measured, or says why not ("not installed", an import error)
        assert row.get("tokens_per_s", 0) > 0 or row.get("skipped") or row.get("error")
    assert thr["flagembedding"]


def test_dry_run_notebooks_skipped_and_markdown(dry_run):
    nbs = dry_run["report"]["sections"]["notebooks"]
    assert nbs["status"] == "skipped" and nbs["reason"] == "dry run"
    md = (dry_run["out"] / "gpu_suite.md").read_text()
    assert "DRY RUN" in md
    assert "| section | case | result | reference / check | device |" in md
    table = [line for line in md.splitlines() if line.startswith("| ")]
    for section in SECTIONS:
        assert any(line.startswith(f"| {section} |") for line in table), section
    assert "cuda:" not in md  # no row claims a GPU


def test_capacity_search_on_a_simulated_device():
    """The search finds Table-10-sized maxima within the tolerance in a handful of probes, from an
    estimate off by 4x either way, with out-of-memory failures that report no peak (as on CUDA)."""
    import torch

    suite = _load_suite()

    def bench(static, per, est):
        c = object.__new__(suite.Capacity)
        c.cfg = dict(tolerance=0.05, max_batch=8192, max_probes=6, query_len=32, sub_batch_tokens=16384)
        c.device, c.cuda, c.budget, c.rate = torch.device("cpu"), True, 80 * GiB, {}
        c.estimate = lambda mode, length: est

        def trial(mode, b, length):
            peak = static + per * b
            if peak > c.budget:
                return {"batch": b, "fits": False, "oom": True, "peak_bytes": None, "seconds": 0.01}
            return {"batch": b, "fits": True, "oom": False, "peak_bytes": int(peak), "seconds": 0.01}

        c.trial = trial
        return c

    for static, per, est in [(10 * GiB, 0.27 * GiB, 80), (10 * GiB, 0.27 * GiB, 1000), (12 * GiB, 0.08 * GiB, 3915),
                             (10 * GiB, 2.8 * GiB, 10), (12 * GiB, 12 * GiB, 10)]:
        true = int((80 * GiB - static) // per)
        row = bench(static, per, est).largest("plain", 1024, time.perf_counter() + 60)
        assert row["exact"], row
        assert true * 0.95 - 1 <= row["max_batch"] <= true, (true, row["max_batch"], row["probes"])
        assert row["first_failing"] > true
        assert len(row["probes"]) <= 6
    # nothing fits: 0, after one probe
    row = bench(90 * GiB, 1, 5).largest("plain", 1024, time.perf_counter() + 60)
    assert row["max_batch"] == 0 and row["first_failing"] == 1
    # out of time after the first probe: a lower bound, not an exact figure
    slow = bench(10 * GiB, 0.27 * GiB, 1000)
    slow.rate["plain"] = 10.0  # seconds per token: any further probe would overrun
    row = slow.largest("plain", 1024, time.perf_counter() + 1)
    assert row["stopped_by"] == "time" and not row["exact"] and len(row["probes"]) == 1
