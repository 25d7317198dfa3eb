"""The trainer (m3lab.training): stages and freezing, gradients, exact resume, logging, bad input."""
from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import WORDS
from m3lab import cli
from m3lab.training import TABLE9_BOUNDARIES, LengthGroupedBatchSampler
from m3lab.data.records import DataError
from m3lab.losses import M3Loss
from m3lab.modeling import M3Model
from m3lab.training import STATE_FILE, TrainingData, latest_checkpoint, train
from m3lab.training.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers

def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_examples(path: Path, n: int = 16, *, seed: int = 0, negatives: tuple[int, int] = (0, 4),
                   scores: bool = False) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            ex = {"query": sentence(rng, 4), "pos": [sentence(rng, rng.randint(5, 12))],
                  "neg": [sentence(rng, rng.randint(5, 12)) for _ in range(rng.randint(*negatives))]}
            if scores:
                ex["pos_scores"] = [1.0]
                ex["neg_scores"] = [round(rng.random(), 3) for _ in ex["neg"]]
            f.write(json.dumps(ex) + "\n")
    return path


def no_dropout_copy(src: Path, dst: Path) -> Path:
    """The tiny encoder with dropout 0, so that different batchings must give the same gradients."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def base_config(model: Path, train_file: Path, out: Path, **kw) -> dict:
    cfg = dict(model=str(model), train_files=[str(train_file)], output_dir=str(out), group_size=3, batch_size=4,
               learning_rate=1e-3, log_steps=1, save_steps=None, progress_bar=False, query_max_length=16,
               passage_max_length=24, stages=[{"name": "unified", "steps": 2}])
    cfg.update(kw)
    return cfg


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def steps_of(log: list[dict]) -> list[dict]:
    return [r for r in log if r["event"] == "step"]


def state(path: Path) -> dict[str, torch.Tensor]:
    return M3Model.from_pretrained(path, device="cpu").state_dict()


@pytest.fixture(scope="module")
def nodrop_dir(tiny_bert_dir, tmp_path_factory) -> Path:
    return no_dropout_copy(tiny_bert_dir, tmp_path_factory.mktemp("nodrop") / "tiny")


@pytest.fixture(scope="module")
def tiny_model(tiny_bert_dir) -> M3Model:
    return M3Model.from_pretrained(tiny_bert_dir, device="cpu", dtype=torch.float32)


@pytest.fixture()
def train_file(tmp_path) -> Path:
    return write_examples(tmp_path / "train.jsonl")


# ----------------------------------------------------------------------------- exact resume, interruption

def test_resume_is_exact_and_an_interrupted_run_keeps_its_last_checkpoint(tiny_bert_dir, train_file, tmp_path):
    """6 steps straight == 3 steps, stop, resume, 3 steps: same weights and the same logged losses.

    Dropout is on (the tiny BERT has p=0.1), so this also checks that the random states
    are restored; the stop comes mid-stage and mid-epoch (4 batches per epoch).
    """
    stages = [{"name": "dense", "steps": 2, "functions": ["dense"]},
              {"name": "unified", "steps": 4, "self_distill_from_step": 2}]
    straight = train(base_config(tiny_bert_dir, train_file, tmp_path / "a", stages=stages, save_steps=3))

    class Stop(Exception):
        pass

    def stop_at_4(record):
        if record["step"] == 4:
            raise Stop

    out = tmp_path / "b"
    with pytest.raises(Stop):
        train(base_config(tiny_bert_dir, train_file, out, stages=stages, save_steps=3), on_log=stop_at_4)
    # the interrupted run left exactly its last good checkpoint, complete, and nothing half-written
    assert latest_checkpoint(out) == out / "checkpoint-3"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-3", "log.jsonl", "train_config.json"]
    assert (out / "checkpoint-3" / STATE_FILE).is_file()
    assert read_log(out / "log.jsonl")[-1]["event"] == "interrupted"
    M3Model.from_pretrained(out / "checkpoint-3", device="cpu")  # bge-m3 layout, loadable

    resumed = train(base_config(tiny_bert_dir, train_file, out, stages=stages, save_steps=3),
                    overrides=["resume_from=auto"])
    assert resumed.steps == straight.steps == 6
    a, b = state(straight.final_dir), state(resumed.final_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log_a, log_b = steps_of(read_log(straight.log_path)), steps_of(read_log(resumed.log_path))
    assert [r["step"] for r in log_b] == [1, 2, 3, 4, 5, 6]
    keys = ("step", "stage", "self_distill", "lr", "loss", "losses", "grad_norm", "sparse_nonzero_share")
    assert [{k: r[k] for k in keys} for r in log_a] == [{k: r[k] for k in keys} for r in log_b]
    assert resumed.final_losses == straight.final_losses
    events = [r["event"] for r in read_log(resumed.log_path)]
    assert events.count("resume") == 1 and "interrupted" not in events  # lines after the checkpoint are dropped


def test_a_failure_while_saving_leaves_the_previous_checkpoint(tiny_bert_dir, train_file, tmp_path, monkeypatch):
    import m3lab.training.trainer as train_module

    real_save = train_module._save_state
    calls = []

    def failing_save(state, path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # e.g. Ctrl-C while the second checkpoint is being written
        real_save(state, path)

    monkeypatch.setattr(train_module, "_save_state", failing_save)
    out = tmp_path / "run"
    cfg = base_config(tiny_bert_dir, train_file, out, save_steps=1, stages=[{"steps": 3}])
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1", "log.jsonl", "train_config.json"]
    saved = torch.load(out / "checkpoint-1" / STATE_FILE, weights_only=True)
    assert saved["step"] == 1
    monkeypatch.setattr(train_module, "_save_state", real_save)
    # resumed with a new learning rate: the config wins, the linear schedule goes on from step 1 of 3
    result = train(cfg, overrides=["resume_from=auto", "save_total_limit=2", "learning_rate=6e-4"])
    assert result.steps == 3 and [p.name for p in result.checkpoints] == ["checkpoint-2", "checkpoint-3"]
    lrs = [r["lr"] for r in steps_of(read_log(result.log_path))]
    assert lrs == pytest.approx([1e-3, 6e-4 * 2 / 3, 6e-4 / 3])
    # save_total_limit keeps the newest two; the final model is bge-m3's layout
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert (result.final_dir / "colbert_linear.pt").is_file() and (result.final_dir / "sparse_linear.pt").is_file()
    # the tiny BERT started with initialised heads; trained ones are recorded as such
    assert json.loads((result.final_dir / "m3lab_config.json").read_text())["heads_trained"] is True


# ----------------------------------------------------------------------------- stages and freezing

def test_stages_train_the_chosen_functions_and_freeze_the_rest(tiny_bert_dir, train_file, tmp_path):
    stages = [
        {"name": "dense-pretrain", "steps": 2, "functions": ["dense"]},
        {"name": "heads", "steps": 2, "functions": ["sparse", "colbert"], "freeze": ["encoder"],
         "self_distill_from_step": 1},
        {"name": "unified", "steps": 2, "freeze": ["embeddings", "colbert"]},
    ]
    result = train(base_config(tiny_bert_dir, train_file, tmp_path / "r", stages=stages, save_steps=2))
    start = M3Model.from_pretrained(tiny_bert_dir, device="cpu").state_dict()
    s2, s4, s6 = (state(tmp_path / "r" / f"checkpoint-{n}") for n in (2, 4, 6))
    enc = [k for k in start if k.startswith("encoder.")]
    emb = [k for k in enc if ".embeddings." in k]
    layers = [k for k in enc if ".layer." in k and k.endswith("weight")]
    heads = {h: [k for k in start if k.startswith(h)] for h in ("sparse_linear", "colbert_linear")}

    def same(a, b, keys):
        return all(torch.equal(a[k], b[k]) for k in keys)

    # stage 1, dense only: the encoder moves, the heads get no gradient (AdamW must not touch them)
    assert not same(start, s2, layers)
    assert same(start, s2, heads["sparse_linear"] + heads["colbert_linear"])
    # stage 2, frozen encoder: only the two heads move
    assert same(s2, s4, enc)
    assert not same(s2, s4, heads["sparse_linear"]) and not same(s2, s4, heads["colbert_linear"])
    # stage 3: embeddings and the multi-vector head frozen, the rest trains
    assert same(s4, s6, emb + heads["colbert_linear"])
    assert not same(s4, s6, layers) and not same(s4, s6, heads["sparse_linear"])

    log = read_log(result.log_path)
    parts = {r["step"]: set(r["losses"]) for r in steps_of(log)}
    assert parts[1] == parts[2] == {"dense"}
    assert parts[3] == {"sparse", "colbert", "inter"}                       # warm-up step of stage 2
    assert parts[4] == {"sparse", "colbert", "inter", "kd_sparse", "kd_colbert"}  # self-KD from its 2nd step
    assert parts[5] == parts[6] == {"dense", "sparse", "colbert", "inter", "kd_dense", "kd_sparse", "kd_colbert"}
    stage_events = [r for r in log if r["event"] == "stage"]
    assert [(r["stage"], r["step"]) for r in stage_events] == [("dense-pretrain", 0), ("heads", 2), ("unified", 4)]
    assert stage_events[1]["trainable_parameters"] == 32 * 32 + 32 + 32 + 1  # colbert + sparse heads only


def test_freezing_dense_drops_its_loss_terms(tiny_bert_dir, train_file, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="m3lab.training"):
        result = train(base_config(tiny_bert_dir, train_file, tmp_path / "r",
                                   stages=[{"steps": 1, "freeze": ["dense"]}]))
    assert set(steps_of(read_log(result.log_path))[0]["losses"]) == {"sparse", "colbert", "inter", "kd_sparse",
                                                                      "kd_colbert"}
    assert "freezes 'dense'" in caplog.text


# ----------------------------------------------------------------------------- gradients

def test_accumulated_gradient_is_the_mean_over_micro_batches(nodrop_dir, train_file, tmp_path):
    """The logged gradient norm of one step (2 micro-batches of 4) equals a hand computation."""
    cfg = base_config(nodrop_dir, train_file, tmp_path / "r", gradient_accumulation_steps=2, max_grad_norm=None,
                      stages=[{"steps": 1}])
    record = steps_of(read_log(train(cfg).log_path))[0]

    model = M3Model.from_pretrained(nodrop_dir, device="cpu", dtype=torch.float32).train()
    config = load_config(cfg)
    data = TrainingData(config.train_files, model, config)
    sampler = LengthGroupedBatchSampler(data.lengths, 4, boundaries=TABLE9_BOUNDARIES, seed=0)
    loss_fn = M3Loss(self_distill=True)
    losses = []
    for indices in list(sampler)[:2]:
        batch = data.batch(indices, 0, model)
        out = loss_fn(model(**batch["q"]), model(**batch["p"]), group_size=3)
        (out.loss / 2).backward()
        losses.append(float(out.loss.detach()))
    norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    assert record["grad_norm"] == pytest.approx(float(norm), rel=1e-5)
    assert record["loss"] == pytest.approx(sum(losses) / 2, rel=1e-6)


def test_split_batch_and_gradcache_train_like_a_plain_batch(nodrop_dir, train_file, tmp_path):
    runs = {}
    for mode in ("plain", "split", "gradcache"):
        cfg = base_config(nodrop_dir, train_file, tmp_path / mode, batching=mode, sub_batch_size=3, max_grad_norm=None,
                          stages=[{"steps": 1}])
        runs[mode] = train(cfg)
    ref = state(runs["plain"].final_dir)
    ref_log = steps_of(read_log(runs["plain"].log_path))
    for mode in ("split", "gradcache"):
        log = steps_of(read_log(runs[mode].log_path))
        for a, b in zip(ref_log, log):
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
            assert b["sparse_nonzero_share"] == a["sparse_nonzero_share"]
        got = state(runs[mode].final_dir)
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=0, msg=f"{mode}: {k}")


# bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.2 % per operation), fp16 11 bits (0.05 %); the
# encoder's rounding reaches the embeddings, and the loss (computed in float32 from them) moves by a few
# times that: the first step's loss under autocast is the float32 loss to 2 % (bf16) or 0.5 % (fp16).
AMP_RTOL = {"bf16": 2e-2, "fp16": 5e-3}


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_computes_the_float32_loss(nodrop_dir, tmp_path, amp):
    """Autocast (here on CPU; fp16 with a gradient scaler): the first step's loss equals the float32 run's."""
    data = write_examples(tmp_path / "scored.jsonl", negatives=(1, 3))
    losses = {}
    for a in ("none", amp):
        result = train(base_config(nodrop_dir, data, tmp_path / a, amp=a, stages=[{"steps": 2}]))
        log = read_log(result.log_path)
        assert log[0]["amp"] == {"none": "none", "bf16": "bfloat16", "fp16": "float16"}[a]
        first = steps_of(log)[0]
        assert ("fp16_skipped_steps" in first) == (a == "fp16")  # overflowed steps the scaler skipped
        losses[a] = first
    assert losses[amp]["loss"] == pytest.approx(losses["none"]["loss"], rel=AMP_RTOL[amp])
    for k, v in losses["none"]["losses"].items():
        assert losses[amp]["losses"][k] == pytest.approx(v, rel=AMP_RTOL[amp], abs=1e-3), k


def test_teacher_scores_are_the_targets(nodrop_dir, tmp_path):
    """use_teacher_scores: a one-hot teacher (positive far above the negatives) gives InfoNCE's loss exactly,
    a flat teacher another loss."""
    data = write_examples(tmp_path / "d.jsonl", negatives=(2, 3))
    lines = [json.loads(x) for x in data.read_text().splitlines()]

    def first_loss(name: str, pos: float | None, neg: float | None) -> float:
        path = tmp_path / f"{name}.jsonl"
        with open(path, "w") as f:
            for x in lines:
                if pos is not None:
                    x = dict(x, pos_scores=[pos] * len(x["pos"]), neg_scores=[neg] * len(x["neg"]))
                f.write(json.dumps(x) + "\n")
        result = train(base_config(nodrop_dir, path, tmp_path / name, use_teacher_scores=pos is not None,
                                   negatives_policy="repeat", stages=[{"steps": 1}]))
        return steps_of(read_log(result.log_path))[0]["loss"]

    plain = first_loss("plain", None, None)
    assert first_loss("one-hot", 100.0, 0.0) == pytest.approx(plain, rel=1e-6)
    assert abs(first_loss("flat", 0.0, 0.0) - plain) > 1e-3


# ----------------------------------------------------------------------------- logging

def test_log_records_losses_throughput_padding_and_sparse_share(tiny_bert_dir, train_file, tmp_path):
    result = train(base_config(tiny_bert_dir, train_file, tmp_path / "r", stages=[{"steps": 3}], log_steps=2))
    log = read_log(result.log_path)
    assert [r["event"] for r in log] == ["start", "stage", "step", "step", "checkpoint", "end"]
    start = log[0]
    assert start["examples"] == 16 and start["total_steps"] == 3 and start["batches_per_epoch"] == 4
    assert start["length_groups"]["padding_share"] <= start["length_groups"]["random_padding_share"]
    first, last = steps_of(log)
    assert (first["step"], last["step"]) == (2, 3)  # every 2 steps, and the last one
    assert set(first["losses"]) == {"dense", "sparse", "colbert", "inter", "kd_dense", "kd_sparse", "kd_colbert"}
    for r in (first, last):
        assert 0 < r["sparse_nonzero_share"] <= 1 and 0 <= r["padding_share"] < 1 and r["tokens_per_s"] > 0
    assert result.final_losses == {"loss": last["loss"], **last["losses"]}


def test_sparse_collapse_is_warned(tiny_bert_dir, train_file, tmp_path, caplog):
    """All-zero lexical weights (here a head with bias -100) are reported after `patience` logs."""
    model = M3Model.from_pretrained(tiny_bert_dir, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        model.sparse_linear.bias.fill_(-100.0)
    collapsed = model.save_pretrained(tmp_path / "collapsed")
    with caplog.at_level(logging.WARNING, logger="m3lab.training"):
        result = train(base_config(collapsed, train_file, tmp_path / "r", stages=[{"steps": 3}],
                                   sparse_collapse_patience=2))
    log = read_log(result.log_path)
    assert [r["sparse_nonzero_share"] for r in steps_of(log)] == [0.0, 0.0, 0.0]
    warnings = [r for r in log if r["event"] == "warning"]
    assert len(warnings) == 1 and warnings[0]["step"] == 2 and warnings[0]["warning"] == "sparse_collapse"
    assert "sparse weights are collapsing" in caplog.text


# ----------------------------------------------------------------------------- training data

def test_negatives_policies(tiny_model, tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [
        {"query": "q one", "pos": ["p one"], "neg": ["n one"]},
        {"query": "q two", "pos": ["p two", "p two b"], "neg": ["n two", "n two b", "n two c", "n two d"]},
        {"query": "q three", "pos": ["p three"], "neg": []},
    ]) + "\n")

    def data(policy):
        return TrainingData([path], tiny_model, load_config({"train_files": [str(path)], "group_size": 4,
                                                             "negatives_policy": policy}))

    d = data("sample_from_corpus")  # the default
    ptext = {i: t for t, i in zip(["p one", "n one", "p two", "p two b", "n two", "n two b", "n two c", "n two d",
                                   "p three"], range(9))}
    assert d.filled_groups == 2
    for epoch in range(3):
        q, group, _ = d.group(0, epoch)
        assert len(group) == 4 and ptext[group[0]] == "p one" and ptext[group[1]] == "n one"
        assert 0 not in group[1:]  # never its own positive as a negative
        _, group, _ = d.group(1, epoch)
        assert ptext[group[0]] in ("p two", "p two b") and len(set(group[1:])) == 3
        assert {ptext[i] for i in group[1:]} <= {"n two", "n two b", "n two c", "n two d"}
        _, group, _ = d.group(2, epoch)
        assert ptext[group[0]] == "p three" and 8 not in group[1:]
    assert d.group(1, 0) == d.group(1, 0)  # reproducible per (seed, epoch, example)
    assert any(d.group(1, 0) != d.group(1, e) for e in range(1, 5))  # and reshuffled between epochs

    with pytest.raises(DataError, match=r"t\.jsonl:3: field 'neg': has no negatives to repeat"):
        data("repeat")
    with pytest.raises(DataError, match=r"t\.jsonl:1: field 'neg': has 1 negatives but group_size 4 needs 3"):
        data("error")
    path.write_text("\n".join(path.read_text().splitlines()[:2]) + "\n")
    d = data("repeat")
    _, group, _ = d.group(0, 0)
    assert [ptext[i] for i in group] == ["p one", "n one", "n one", "n one"]  # FlagEmbedding's repetition


def test_long_texts_are_truncated_and_counted_or_rejected(tiny_model, tmp_path, caplog):
    path = tmp_path / "long.jsonl"
    long = " ".join(["word"] * 40)
    path.write_text(json.dumps({"query": "short query", "pos": [long], "neg": ["short", long + " x"]}) + "\n"
                    + json.dumps({"query": long, "pos": ["fine"], "neg": ["fine too"]}) + "\n")
    cfg = {"train_files": [str(path)], "group_size": 2, "query_max_length": 8, "passage_max_length": 16}
    d = TrainingData([path], tiny_model, load_config(cfg))
    assert (d.truncated_queries, d.truncated_passages) == (1, 2)
    texts = ["short query", long]
    assert [x.tolist() for x in d.query_ids] == tiny_model.tokenize(texts, max_length=8)  # as at inference
    assert max(len(x) for x in d.passage_ids) == 16

    with pytest.raises(DataError, match=r"long\.jsonl:2: a query of 42 tokens exceeds query_max_length=8"):
        TrainingData([path], tiny_model, load_config({**cfg, "long_text_policy": "error"}))
    with pytest.raises(DataError, match=r"long\.jsonl:1: a passage of 42 tokens exceeds passage_max_length=16"):
        TrainingData([path], tiny_model, load_config({**cfg, "long_text_policy": "error", "query_max_length": 64}))

    with caplog.at_level(logging.WARNING, logger="m3lab.training"):
        result = train(base_config(tiny_model.name_or_path, path, tmp_path / "r", batch_size=2, group_size=2,
                                   query_max_length=8, passage_max_length=16, stages=[{"steps": 1}]))
    start = read_log(result.log_path)[0]
    assert (start["truncated_queries"], start["truncated_passages"]) == (1, 2)
    assert "truncated 1 of 2 queries" in caplog.text and "2 of 5 passages" in caplog.text


def test_bad_training_files_name_file_and_line(tiny_model, tmp_path):
    def load(text: str, name="bad.jsonl"):
        path = tmp_path / name
        path.write_text(text)
        return TrainingData([path], tiny_model, load_config({"train_files": [str(path)], "group_size": 2}))

    good = json.dumps({"query": "q", "pos": ["p"], "neg": ["n"]})
    with pytest.raises(DataError, match=r"bad\.jsonl:2: malformed JSON"):
        load(good + "\n{\"query\": \"q\", \"pos\": [\"p\"\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:3: field 'pos': expected a list of strings"):
        load(good + "\n\n" + json.dumps({"query": "q", "pos": "p", "neg": []}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'query': missing"):
        load(json.dumps({"pos": ["p"], "neg": []}) + "\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: no training examples: the file is empty"):
        load("\n\n", name="empty.jsonl")
    with pytest.raises(DataError, match=r"missing\.jsonl: file not found"):
        TrainingData([tmp_path / "missing.jsonl"], tiny_model, load_config({"train_files": ["x"]}))
    path = tmp_path / "noscores.jsonl"
    path.write_text(good + "\n")
    with pytest.raises(DataError, match=r"noscores\.jsonl:1: use_teacher_scores is on but this line has no"):
        TrainingData([path], tiny_model, load_config({"train_files": ["x"], "group_size": 2, "use_teacher_scores": True,
                                                      "negatives_policy": "repeat"}))


def test_query_instruction_and_prompt(tiny_model, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"query": "paris", "pos": ["p"], "neg": ["n"]}) + "\n"
                    + json.dumps({"query": "moon", "pos": ["p"], "neg": ["n"], "prompt": "find: "}) + "\n")
    d = TrainingData([path], tiny_model, load_config({"train_files": ["x"], "group_size": 2,
                                                      "query_instruction": "query: "}))
    assert [x.tolist() for x in d.query_ids] == tiny_model.tokenize(["query: paris", "find: moon"], max_length=64)


# ----------------------------------------------------------------------------- configuration

def test_config_errors_name_the_file_and_the_key(tmp_path):
    def write(obj, name="c.yaml"):
        path = tmp_path / name
        path.write_text(yaml.safe_dump(obj) if name.endswith(".yaml") else json.dumps(obj))
        return path

    ok = {"train_files": ["t.jsonl"]}
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'learnig_rate' \(did you mean 'learning_rate'( or 'head_learning_rate')?\?\)"):
        load_config(write({**ok, "learnig_rate": 1e-5}))
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'stages\.1\.freez' \(did you mean 'freeze'\?\)"):
        load_config(write({**ok, "stages": [{"name": "a"}, {"name": "b", "freez": ["encoder"]}]}))
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'zzz'$"):
        load_config(write({**ok, "zzz": 1}))
    with pytest.raises(ConfigError, match=r"c\.yaml: 'learning_rate': expected a number, got str 'fast'"):
        load_config(write({**ok, "learning_rate": "fast"}))
    with pytest.raises(ConfigError, match=r"'batching': expected one of 'plain', 'split', 'gradcache', got 'huge'"):
        load_config(write({**ok, "batching": "huge"}))
    with pytest.raises(ConfigError, match=r"'stages\.0\.functions': expected one of 'dense', 'sparse', 'colbert'"):
        load_config(write({**ok, "stages": [{"functions": ["lexical"]}]}))
    with pytest.raises(ConfigError, match=r"'stages\.0\.self_distill': self-distillation needs at least two"):
        load_config(write({**ok, "stages": [{"functions": ["dense"], "self_distill": True}]}))
    with pytest.raises(ConfigError, match=r"c\.yaml: missing required key 'train_files'"):
        load_config(write({"model": "minilm"}))
    with pytest.raises(ConfigError, match=r"c\.json: 'group_size': expected an integer, got float 2\.5"):
        load_config(write({**ok, "group_size": 2.5}, name="c.json"))
    with pytest.raises(ConfigError, match=r"'loss_weights\.sprase': unknown loss term \(did you mean 'sparse'\?\)"):
        load_config(write({**ok, "loss_weights": {"sprase": 0.1}}))
    with pytest.raises(ConfigError, match=r"use_teacher_scores choose 'repeat' or 'error'"):
        load_config(write({**ok, "use_teacher_scores": True}))
    with pytest.raises(ConfigError, match=r"c\.yaml: the config file is empty"):
        (tmp_path / "c.yaml").write_text("")
        load_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match=r"unknown key 'sub_batch'"):
        load_config(write(ok), overrides=["sub_batch=4"])


def test_config_files_overrides_and_defaults(tmp_path):
    obj = {"train_files": "one.jsonl", "batch_size": {0: 16, 500: 4},
           "stages": [{"name": "warmup", "steps": 10, "self_distill": False}, {"name": "unified", "epochs": 2}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(obj))
    (tmp_path / "c.json").write_text(json.dumps(obj))  # JSON keys are strings: "0", "500"
    a, b = load_config(tmp_path / "c.yaml"), load_config(tmp_path / "c.json")
    assert a == b and a.train_files == ["one.jsonl"] and a.batch_size == {0: 16, 500: 4}
    assert [s.uses_self_distill for s in a.stages] == [False, True]  # default: on with two or more functions
    c = load_config(tmp_path / "c.yaml", overrides=["learning_rate=2e-5", "stages.1.functions=[dense, sparse]",
                                                     "stages.0.freeze=[encoder]", "max_grad_norm=null"])
    assert c.learning_rate == 2e-5 and c.stages[1].functions == ["dense", "sparse"]
    assert c.stages[0].freeze == ["encoder"] and c.max_grad_norm is None
    d = load_config({"train_files": ["x"]}, overrides=["stages.0.steps=5"])  # edits the default stage
    assert d.stages[0].steps == 5 and d.stages[0].functions == ["dense", "sparse", "colbert"]
    assert load_config(d) == d


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_are_valid(path):
    config = load_config(path)
    assert config.stages and config.train_files


def test_cli_train_and_its_errors(tiny_bert_dir, train_file, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(base_config(tiny_bert_dir, train_file, tmp_path / "r")))
    assert cli.main(["train", "--config", str(cfg), "--set", "stages.0.steps=1", "--set", "log_steps=5"]) == 0
    out = capsys.readouterr().out
    assert "trained 1 steps" in out and str(tmp_path / "r" / "final") in out
    assert (tmp_path / "r" / "final" / "sparse_linear.pt").is_file()

    assert cli.main(["train", "--config", str(cfg), "--set", "temprature=0.05"]) == 2
    assert "unknown key 'temprature' (did you mean 'temperature'?)" in capsys.readouterr().err
    assert cli.main(["train", "--config", str(cfg), "--resume", str(tmp_path / "nowhere")]) == 2
    assert "not a complete checkpoint" in capsys.readouterr().err


def test_a_fresh_run_refuses_an_output_dir_with_checkpoints(tiny_bert_dir, train_file, tmp_path):
    cfg = base_config(tiny_bert_dir, train_file, tmp_path / "r", stages=[{"steps": 1}])
    train(cfg)
    with pytest.raises(ConfigError, match=r"already holds checkpoints \(latest: checkpoint-1\).*resume_from: auto"):
        train(cfg)
    result = train(cfg, overrides=["resume_from=auto"])  # already at its last step: only writes the final model
    assert result.steps == 1 and result.checkpoints == []
    # the old 'end' line is dropped on resume, the resumed run writes its own
    assert [r["event"] for r in read_log(result.log_path)] == ["start", "stage", "step", "checkpoint", "resume", "end"]


def test_a_stage_that_could_change_nothing_is_rejected(tmp_path):
    stages = [{"name": "ok", "steps": 1}, {"name": "stuck", "steps": 1, "functions": ["dense", "sparse"],
                                             "freeze": ["encoder", "sparse"]}]
    with pytest.raises(ConfigError, match=r"'stages\.1\.freeze': stage 'stuck' trains \['dense', 'sparse'\] but "):
        load_config({"train_files": ["t.jsonl"], "stages": stages})
    stages[1]["freeze"] = ["encoder"]  # the sparse head still trains
    assert load_config({"train_files": ["t.jsonl"], "stages": stages}).stages[1].freeze == ["encoder"]
