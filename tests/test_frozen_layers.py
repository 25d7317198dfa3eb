"""Frozen, cached lower layers (``frozen_layers``) and delta checkpoints (``save_delta``).

The cached path must be the encoder itself split in two: the same outputs in eval mode,
the same gradients of the trained weights, and a trainer run that leaves the frozen part
bit-identical. A delta checkpoint must rebuild the model it was written from.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from m3lab.losses import M3Loss
from m3lab.modeling import M3Model
from m3lab.modeling.hub import DELTA_FILE
from m3lab.training import train
from m3lab.training.config import ConfigError, load_config
from m3lab.training.frozen import LowerLayerCache, freeze_lower_layers
from m3lab.training.step import training_step

from test_train import base_config, no_dropout_copy, write_examples

pytestmark = pytest.mark.usefixtures("one_thread")
TEXTS = ["alpha beta gamma delta", "beta", "gamma delta alpha alpha beta gamma", "delta gamma"]


def _load(path) -> M3Model:
    return M3Model.from_pretrained(path, device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("kind", ["bert", "xlmr"])
def test_cached_lower_layers_give_the_encoders_output(kind, tiny_bert_dir, tiny_xlmr_dir):
    model = _load(tiny_bert_dir if kind == "bert" else tiny_xlmr_dir)
    batch = model.collate(model.tokenize(TEXTS))
    with torch.no_grad():
        full = model(**batch)
        cache = LowerLayerCache(model, model.tokenize(TEXTS), 1, batch_size=3, progress=False)
        split = model(**batch, lower_states=cache.batch(range(len(TEXTS))), lower_layers=1)
    # the same float operations in the same order (padding rows are masked): equal to rounding
    for a, b in [(full.dense, split.dense), (full.token_weights, split.token_weights), (full.colbert, split.colbert)]:
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    # a length-sorted cache batch of 3 gives each text the states of its own unpadded row
    alone = model.lower_states(*model.collate(model.tokenize(TEXTS[:1])).values(), 1)[0]
    assert torch.allclose(cache.states[0], alone, rtol=1e-6, atol=1e-6)


def test_cached_step_has_the_gradient_of_a_frozen_uncached_step(tiny_bert_dir, tmp_path):
    """Same loss and gradients of every trained weight (dropout 0, so both are deterministic)."""
    path = no_dropout_copy(tiny_bert_dir, tmp_path / "nodrop")
    loss_fn = M3Loss(self_distill=True)
    queries, passages = TEXTS[:2], TEXTS
    grads = []
    for cached in (False, True):
        model = _load(path).train()
        freeze_lower_layers(model, 1)
        q = model.collate(model.tokenize(queries))
        p = model.collate(model.tokenize(passages))
        if cached:
            for b, texts in ((q, queries), (p, passages)):
                c = LowerLayerCache(model, model.tokenize(texts), 1, progress=False)
                b.update(lower_states=c.batch(range(len(texts))), lower_layers=1)
        out = training_step(model, loss_fn, q, p, group_size=2)
        grads.append((float(out.loss.detach()), {n: w.grad.clone() for n, w in model.named_parameters()
                                               if w.requires_grad and w.grad is not None}))
    (loss_a, a), (loss_b, b) = grads
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert a.keys() == b.keys() and any(".layer.1." in n for n in a) and not any(".layer.0." in n for n in a)
    assert not any("embeddings" in n for n in a)
    for name in a:  # float32 sums over a few hundred terms: 1e-5 of the largest entry
        scale = a[name].abs().max().clamp_min(1e-12)
        assert (a[name] - b[name]).abs().max() <= 1e-5 * scale, name


def test_trainer_with_frozen_layers_changes_only_what_is_above(tiny_bert_dir, tmp_path):
    train_file = write_examples(tmp_path / "train.jsonl")
    result = train(base_config(tiny_bert_dir, train_file, tmp_path / "run", frozen_layers=1))
    before, after = _load(tiny_bert_dir).state_dict(), _load(result.final_dir).state_dict()
    frozen = [k for k in before if "embeddings" in k or ".layer.0." in k]
    trained = [k for k in before if ".layer.1." in k or k.startswith(("colbert_linear", "sparse_linear"))]
    assert frozen and trained
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(not torch.equal(before[k], after[k]) for k in trained if k.endswith("weight"))


@pytest.mark.parametrize("value, message", [(-1, "must be >= 0"), (1, "batching: plain")])
def test_frozen_layers_config_errors(value, message, tmp_path):
    extra = {"batching": "split"} if value == 1 else {}
    with pytest.raises(ConfigError, match=message):
        load_config(dict(train_files=["x.jsonl"], frozen_layers=value, **extra))


def test_frozen_layers_beyond_the_encoder_is_an_error(tiny_bert_dir):
    with pytest.raises(ValueError, match="between 1 and 1"):
        freeze_lower_layers(_load(tiny_bert_dir), 2)


# ----------------------------------------------------------------------------- delta checkpoints

@pytest.fixture()
def trained(tiny_bert_dir) -> M3Model:
    """The tiny model with its top layer and heads changed, as a frozen_layers run leaves it."""
    model = _load(tiny_bert_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, w in model.named_parameters():
            if ".layer.1." in name or name.startswith(("colbert_linear", "sparse_linear")):
                w.add_(0.01 * torch.randn_like(w))
    return model


def test_delta_rebuilds_the_model_and_saves_as_bge_m3(trained, tiny_bert_dir, tmp_path):
    delta = trained.save_delta(tmp_path / "delta", str(tiny_bert_dir), dtype=torch.float32)
    stored = load_file(str(delta / DELTA_FILE))
    assert stored and all(".layer.1." in k for k in stored)  # only what changed
    assert not (delta / "config.json").exists() and json.loads((delta / "m3lab_config.json").read_text())["base"]
    rebuilt = _load(delta)
    a, b = trained.state_dict(), rebuilt.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # save_pretrained of the rebuilt model is the complete bge-m3 layout, loadable without the base
    full = rebuilt.save_pretrained(tmp_path / "full")
    assert {"config.json", "model.safetensors", "colbert_linear.pt", "sparse_linear.pt"} <= {p.name for p in full.iterdir()}
    assert "base" not in json.loads((full / "m3lab_config.json").read_text())
    again = _load(full)
    enc = again.encode(TEXTS)
    ref = trained.encode(TEXTS)
    assert (enc.dense - ref.dense).__abs__().max() < 1e-6


def test_fp16_delta_is_the_model_rounded_to_fp16(trained, tiny_bert_dir, tmp_path):
    rebuilt = _load(trained.save_delta(tmp_path / "delta", str(tiny_bert_dir)))
    for name, w in trained.encoder.state_dict().items():
        got = rebuilt.encoder.state_dict()[name]
        expect = w.half().float() if ".layer.1." in name else w
        assert torch.equal(got, expect), name


def test_broken_delta_is_a_clear_error(trained, tiny_bert_dir, tmp_path):
    delta = trained.save_delta(tmp_path / "delta", str(tiny_bert_dir))
    bad = tmp_path / "bad"
    shutil.copytree(delta, bad)
    save_file({"encoder.layer.9.output.dense.weight": torch.zeros(2, 2)}, str(bad / DELTA_FILE))
    with pytest.raises(ValueError, match=r"encoder_delta.safetensors: tensor 'encoder.layer.9"):
        _load(bad)
    (bad / DELTA_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="encoder_delta.safetensors is missing"):
        _load(bad)


def test_head_learning_rate_applies_to_the_two_heads_only(tiny_bert_dir):
    from m3lab.training.setup import make_optimizer

    model = _load(tiny_bert_dir)
    config = load_config(dict(train_files=["x.jsonl"], learning_rate=1e-5, head_learning_rate=1e-3))
    optimizer, _ = make_optimizer(model, config, total_steps=10)
    rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    heads = {id(p) for m in (model.sparse_linear, model.colbert_linear) for p in m.parameters()}
    assert len(rate) == len(list(model.parameters()))
    assert all(rate[i] == 1e-3 for i in heads)
    assert all(lr == 1e-5 for i, lr in rate.items() if i not in heads)
    with pytest.raises(ConfigError, match="head_learning_rate"):
        load_config(dict(train_files=["x.jsonl"], head_learning_rate=0))
