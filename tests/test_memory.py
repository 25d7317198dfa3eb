"""m3lab.memory: the activation formula, parameter counts, batch planning arithmetic."""
from __future__ import annotations

import pytest
import torch

from m3lab import memory


def test_layer_activations_match_korthikanti():
    # 16-bit activations, I = 4h: s*h*34 + 5*a*s^2 bytes per sequence and layer (Korthikanti et al. 2022)
    shape = dict(vocab_size=1000, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                 intermediate_size=4096)
    for s in (128, 1024, 8192):
        assert memory.layer_activation_bytes(s, shape, dtype_bytes=2, attention="eager") == pytest.approx(
            34 * s * 1024 + 5 * 16 * s * s)
        assert memory.layer_activation_bytes(s, shape, dtype_bytes=2, attention="flash") == pytest.approx(34 * s * 1024)
    with pytest.raises(ValueError, match="attention"):
        memory.layer_activation_bytes(8, shape, attention="sparse")


@pytest.mark.parametrize("shape_name", ["small", "minilm"])
def test_parameter_count_matches_a_real_model(shape_name):
    from m3lab.experiments import ENCODER_SHAPES, random_encoder_model

    model = random_encoder_model(shape_name, max_length=62)  # XLM-R: max_length + 2 positions
    real = sum(p.numel() for p in model.parameters())
    assert memory.encoder_parameters(ENCODER_SHAPES[shape_name], max_positions=64) == real


def test_model_state_bytes_and_sharding():
    n = 1_000_000
    assert memory.model_state_bytes(n) == 16 * n
    assert memory.model_state_bytes(n, zero_stage=1, world_size=8) == 4 * n + 4 * n + n
    assert memory.model_state_bytes(n, zero_stage=3, world_size=8) == 2 * n
    with pytest.raises(ValueError, match="zero_stage"):
        memory.model_state_bytes(n, zero_stage=4)


def test_max_batch_and_fit():
    assert memory.max_batch(100, per_example=7, fixed=30) == 10
    assert memory.max_batch(100, per_example=7, fixed=30, multiple_of=4) == 8
    assert memory.max_batch(10, per_example=7, fixed=30) == 0
    with pytest.raises(ValueError):
        memory.max_batch(100, per_example=0)
    intercept, slope = memory.fit_per_example([2, 4, 8], [2 * 5 + 11, 4 * 5 + 11, 8 * 5 + 11])
    assert intercept == pytest.approx(11) and slope == pytest.approx(5)
    with pytest.raises(ValueError, match="two or more"):
        memory.fit_per_example([4, 4], [1.0, 2.0])


def test_estimate_orders_the_modes():
    kw = dict(query_length=64, sub_batch=8)
    batch = {}
    for mode in ("plain", "layer-checkpointing", "split", "gradcache"):
        est = memory.estimate_step_bytes("xlmr-large", 4096, 1, mode=mode, **kw)
        assert est.total == pytest.approx(est.static + est.per_example + est.fixed)
        batch[mode] = memory.max_batch(75e9 - est.static, per_example=est.per_example, fixed=est.fixed)
    assert batch["split"] == batch["gradcache"] > batch["layer-checkpointing"] > batch["plain"] > 0
    # the reference code's length x vocabulary lexical tensor and eager attention cost batch size
    ref = memory.estimate_step_bytes("xlmr-large", 4096, 1, mode="split", attention="eager", reference_sparse=True,
                                     **kw)
    assert memory.max_batch(75e9 - ref.static, per_example=ref.per_example, fixed=ref.fixed) < batch["split"]
    with pytest.raises(ValueError, match="mode"):
        memory.estimate_step_bytes("xlmr-large", 512, 1, mode="magic")


def test_estimate_grows_linearly_with_batch():
    a = memory.estimate_step_bytes("minilm", 256, 4, mode="plain")
    b = memory.estimate_step_bytes("minilm", 256, 8, mode="plain")
    assert b.total - a.total == pytest.approx(4 * a.per_example)


def test_plan_batch_sizes_is_the_trainers_mapping():
    plan = memory.plan_batch_sizes("xlmr-large", 75e9, world_size=8, mode="split", group_size=8)
    assert list(plan) == [0, 500, 1000, 2000, 3000, 4000, 5000, 6000, 7000]
    per_device = [g["per_device"] for g in plan.values()]
    assert per_device == sorted(per_device, reverse=True) and per_device[-1] > 0
    assert all(g["total"] == 8 * g["per_device"] for g in plan.values())
    from m3lab.training.config import load_config

    config = load_config({"train_files": ["x.jsonl"], "batch_size": {k: max(8, g["total"]) for k, g in plan.items()}})
    assert config.batch_size[0] == max(8, plan[0]["total"])


def test_paper_tables_are_complete():
    assert len(memory.PAPER_TABLE9["ranges"]) == len(memory.PAPER_TABLE9["fine-tuning"]) == 9
    assert memory.PAPER_TABLE10["split"][8192] == 130 and memory.PAPER_TABLE10["plain"][1024] == 262
    assert torch.tensor(memory.PAPER_TABLE9["unsupervised"]).diff().le(0).all()
