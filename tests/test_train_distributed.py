"""The trainer under torchrun: 2 CPU processes on gloo train exactly like 1 process on the same global batch."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml

from test_train import base_config, no_dropout_copy, read_log, state, steps_of, write_examples
from m3lab.training import train


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_processes_match_one_process(tiny_bert_dir, tmp_path):
    """Same config, world size 1 vs 2: the same steps, losses, gradient norms and weights.

    batch_size is the global batch (4 queries): each process takes 2 queries of the same
    length group, gathers all passages of all three functions (m3lab's option
    ``cross_device_functions: [dense, sparse, colbert]``) and the gradients are averaged, which
    must equal the single-process gradient of the whole batch. Dropout is off so the two runs
    can be compared number for number. (bge-m3's default, dense only, is checked against its own
    single-process loss in tests/test_distributed.py.)
    """
    model = no_dropout_copy(tiny_bert_dir, tmp_path / "tiny")
    data = write_examples(tmp_path / "train.jsonl")
    cfg = base_config(model, data, tmp_path / "one", stages=[{"steps": 3}], save_steps=2, max_grad_norm=None,
                      cross_device_functions=["dense", "sparse", "colbert"])
    one = train(cfg)

    config_file = tmp_path / "two.yaml"
    config_file.write_text(yaml.safe_dump({**cfg, "output_dir": str(tmp_path / "two")}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "m3lab.training", "--config", str(config_file)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("trained 3 steps") == 1  # only rank 0 reports

    two = tmp_path / "two"
    assert sorted(p.name for p in two.iterdir()) == ["checkpoint-2", "checkpoint-3", "final", "log.jsonl",
                                                     "train_config.json"]
    log = read_log(two / "log.jsonl")
    assert [r["event"] for r in log].count("start") == 1 and log[0]["world_size"] == 2  # written by rank 0 alone
    saved = torch.load(two / "checkpoint-2" / "trainer_state.pt", weights_only=True)
    assert len(saved["rng"]) == 2  # each process's random state, for an exact resume

    for a, b in zip(steps_of(read_log(one.log_path)), steps_of(log), strict=True):
        assert a["step"] == b["step"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["losses"] == pytest.approx(a["losses"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
        assert b["sparse_nonzero_share"] == pytest.approx(a["sparse_nonzero_share"])
    ref, got = state(one.final_dir), state(two / "final")
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=0, msg=k)
