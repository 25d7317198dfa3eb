"""M3Model: loading/saving the bge-m3 layout, the three functions, MCLS and encode (issue 2).

Every embedding is checked against a hand computation from the encoder's
``last_hidden_state`` and the head weights, one text at a time (no padding), on a
BERT-style tokenizer (no EOS: [SEP] is kept by bge-m3) and an XLM-R-style one (<s> ... </s>).
"""
from __future__ import annotations

import json
import logging
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from m3lab import EncodeOutput, M3Model, score_encoded, scoring
from m3lab.modeling import COLBERT_FILE, MCLS_INTERVAL, SPARSE_FILE, plan_batches

TEXTS = [
    "what is the capital of france",
    "paris is the capital of france and the largest city of france",
    "the tower by the river",
    "zzz qqq \U0001f642",  # <unk> in both vocabularies (the emoji; XLM-R: every word): dropped from the lexical weights
    "music science history water light energy plant cell sun moon " * 3,
    "a",
]
ATOL = 1e-5


def _with_heads(src: Path, dst: Path, seed: int) -> Path:
    """A copy of a tiny encoder directory plus random bge-m3 head files (so the heads are not identity)."""
    shutil.copytree(src, dst)
    d = json.loads((dst / "config.json").read_text())["hidden_size"]
    gen = torch.Generator().manual_seed(seed)
    torch.save({"weight": torch.randn(d, d, generator=gen) / d ** 0.5, "bias": 0.1 * torch.randn(d, generator=gen)},
               dst / COLBERT_FILE)
    torch.save({"weight": torch.randn(1, d, generator=gen) / d ** 0.5, "bias": 0.1 * torch.randn(1, generator=gen)},
               dst / SPARSE_FILE)
    return dst


@pytest.fixture(scope="module", params=["bert", "xlmr"])
def ckpt(request, tiny_bert_dir, tiny_xlmr_dir, tmp_path_factory) -> Path:
    src = tiny_bert_dir if request.param == "bert" else tiny_xlmr_dir
    return _with_heads(src, tmp_path_factory.mktemp(f"heads-{request.param}") / "ckpt", seed=7)


@pytest.fixture(scope="module")
def model(ckpt) -> M3Model:
    return M3Model.from_pretrained(ckpt, device="cpu", dtype=torch.float32)


class Hand:
    """bge-m3's three functions written out for one unpadded text (section 3.2)."""

    def __init__(self, path: Path):
        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.enc = AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
        col = torch.load(path / COLBERT_FILE, weights_only=True)
        spa = torch.load(path / SPARSE_FILE, weights_only=True)
        self.w_mul, self.b_mul = col["weight"], col["bias"]
        self.w_lex, self.b_lex = spa["weight"], spa["bias"]
        self.specials = {getattr(self.tok, f"{t}_token_id") for t in ("cls", "eos", "pad", "unk")} - {None}

    def ids(self, text: str, max_length: int = 512) -> list[int]:
        return self.tok(text, truncation=True, max_length=max_length)["input_ids"]

    @torch.no_grad()
    def hidden(self, ids: list[int]) -> torch.Tensor:
        return self.enc(input_ids=torch.tensor([ids])).last_hidden_state[0]

    def embed(self, ids: list[int], pooling: str = "cls", cls_positions: list[int] | None = None):
        h = self.hidden(ids)
        if cls_positions is not None:
            pooled = h[cls_positions].mean(0)
        else:
            pooled = h[0] if pooling == "cls" else h.mean(0)
        dense = (pooled / pooled.norm()).numpy()
        lex: dict[int, float] = {}
        for t, hid in zip(ids, h):
            w = float(torch.relu(hid @ self.w_lex[0] + self.b_lex[0]))
            if t not in self.specials and w > 0:
                lex[t] = max(lex.get(t, 0.0), w)
        keep = [i for i in range(1, len(ids)) if cls_positions is None or i not in cls_positions]
        colbert = F.normalize(h[keep] @ self.w_mul.T + self.b_mul, dim=-1).numpy()
        return dense, lex, colbert


@pytest.fixture(scope="module")
def hand(ckpt) -> Hand:
    return Hand(ckpt)


def assert_lexical_equal(mine: dict, theirs: dict, what: str = "") -> None:
    assert set(mine) == set(theirs), f"{what}: token ids differ: {sorted(set(mine) ^ set(theirs))}"
    for t in theirs:
        assert abs(mine[t] - theirs[t]) <= ATOL, f"{what}: token {t}: {mine[t]} vs {theirs[t]}"


def assert_same_output(a: EncodeOutput, b: EncodeOutput) -> None:
    np.testing.assert_allclose(a.dense, b.dense, atol=ATOL, rtol=0)
    for i, (x, y) in enumerate(zip(a.sparse, b.sparse, strict=True)):
        assert_lexical_equal(x, y, f"text {i}")
    for x, y in zip(a.colbert, b.colbert, strict=True):
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- the three functions

def test_encode_equals_hand_computation(model, hand):
    out = model.encode(TEXTS, batch_size=4)
    assert out.dense.dtype == np.float32 and out.dense.shape == (len(TEXTS), model.hidden_size)
    for i, text in enumerate(TEXTS):
        ids = hand.ids(text)
        dense, lex, colbert = hand.embed(ids)
        np.testing.assert_allclose(out.dense[i], dense, atol=ATOL, rtol=0)
        assert_lexical_equal(out.sparse[i], lex, f"text {i}")
        assert out.colbert[i].dtype == np.float32 and out.colbert[i].shape == (len(ids) - 1, model.hidden_size)
        np.testing.assert_allclose(out.colbert[i], colbert, atol=ATOL, rtol=0)
        np.testing.assert_array_equal(out.input_ids[i], ids)
        np.testing.assert_array_equal(out.colbert_token_ids[i], ids[1:])
        assert all(w > 0 for w in out.sparse[i].values())


def test_specials_dropped_as_bge_m3_does(model, hand):
    tok = model.tokenizer
    expected = {tok.cls_token_id, tok.pad_token_id, tok.unk_token_id} | ({tok.eos_token_id} - {None})
    assert set(model.drop_ids.tolist()) == expected
    out = model.encode(TEXTS)
    for w in out.sparse:
        assert not (set(w) & expected)
    if tok.eos_token_id is None:  # BERT-style: bge-m3 keeps [SEP], so it may carry weight
        assert tok.sep_token_id not in expected
    # the unknown words really were <unk>/[UNK] in the input, so dropping them was exercised
    assert tok.unk_token_id in hand.ids(TEXTS[3])


def test_repeated_tokens_keep_max_weight(model):
    text = "the city the city the city"
    out = model.encode([text])
    ids = out.input_ids[0]
    assert len(set(ids.tolist())) < len(ids)
    batch = model.collate([ids.tolist()])
    with torch.no_grad():
        w = model(**batch).token_weights[0].numpy()
    for t in set(ids.tolist()) - set(model.drop_ids.tolist()):
        best = w[ids == t].max()
        assert out.sparse[0].get(t, 0.0) == pytest.approx(float(best), abs=ATOL)
    assert len(out.colbert[0]) == len(ids) - 1  # repeats stay separate vectors in the multi-vector function


def test_mean_pooling(ckpt, hand, tmp_path):
    model = M3Model.from_pretrained(ckpt, pooling="mean", device="cpu")
    assert model.pooling == "mean"
    out = model.encode(TEXTS[:3], batch_size=2)
    for i, text in enumerate(TEXTS[:3]):
        dense, _, _ = hand.embed(hand.ids(text), pooling="mean")
        np.testing.assert_allclose(out.dense[i], dense, atol=ATOL, rtol=0)
    # a sentence-transformers directory that pools by mean is detected
    st = tmp_path / "st"
    shutil.copytree(ckpt, st)
    (st / "1_Pooling").mkdir()
    (st / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    assert M3Model.from_pretrained(st, device="cpu").pooling == "mean"
    assert M3Model.from_pretrained(st, pooling="cls", device="cpu").pooling == "cls"
    with pytest.raises(ValueError, match="pooling"):
        M3Model.from_pretrained(ckpt, pooling="max", device="cpu")


# ----------------------------------------------------------------------------- MCLS (appendix B.2)

def _long_text(n_words: int) -> str:
    words = "music science history water light energy plant cell sun moon city river".split()
    return " ".join(words[i % len(words)] for i in range(n_words))


@pytest.mark.parametrize("max_length", [512, 300, 260])
def test_mcls_equals_hand_computation(model, hand, max_length):
    text = _long_text(700)
    content = hand.tok(text, add_special_tokens=False)["input_ids"]
    frame = hand.ids("")  # [CLS] [SEP] or <s> </s>
    cls_id = hand.tok.cls_token_id
    # the most content that fits when every further 256 tokens cost one inserted [CLS]
    n = max(k for k in range(len(content) + 1) if len(frame) + k + max(k - 1, 0) // MCLS_INTERVAL <= max_length)
    ids, cls_positions = [frame[0]], [0]
    for start in range(0, n, MCLS_INTERVAL):
        if start:
            cls_positions.append(len(ids))
            ids.append(cls_id)
        ids.extend(content[start:min(start + MCLS_INTERVAL, n)])
    ids += frame[1:]
    assert len(ids) <= max_length and len(cls_positions) >= 2

    out = model.encode([text, "the river"], mcls=True, max_length=max_length)
    np.testing.assert_array_equal(out.input_ids[0], ids)
    dense, lex, colbert = hand.embed(ids, cls_positions=cls_positions)
    np.testing.assert_allclose(out.dense[0], dense, atol=ATOL, rtol=0)
    assert_lexical_equal(out.sparse[0], lex)
    assert out.colbert[0].shape == (len(ids) - len(cls_positions), model.hidden_size)
    np.testing.assert_allclose(out.colbert[0], colbert, atol=ATOL, rtol=0)
    assert cls_id not in out.colbert_token_ids[0]
    # a short text has one [CLS]: MCLS changes nothing
    plain = model.encode(["the river"])
    np.testing.assert_allclose(out.dense[1], plain.dense[0], atol=ATOL, rtol=0)
    np.testing.assert_allclose(out.colbert[1], plain.colbert[0], atol=ATOL, rtol=0)


def test_mcls_length_never_exceeds_max_length(model):
    for max_length in (3, 10, 257, 258, 259, 260, 513, 514, 1024):
        for ids in model.tokenize([_long_text(900), "a b c", ""], max_length=max_length, mcls=True):
            assert len(ids) <= min(max_length, model.max_positions)


# ----------------------------------------------------------------------------- encode

def test_batching_and_order(model):
    one = model.encode(TEXTS, batch_size=1)
    for bs in (3, 32):
        assert_same_output(model.encode(TEXTS, batch_size=bs), one)
    # the input order is kept whatever the length order
    rev = model.encode(TEXTS[::-1], batch_size=4)
    assert_same_output(rev.select(range(len(TEXTS) - 1, -1, -1)), one)


def _batch_cost(lengths, batches, overhead):
    return sum(len(b) * max(lengths[i] for i in b) + overhead for b in batches)


def test_plan_batches_is_optimal_and_complete():
    rng = np.random.default_rng(0)
    for trial in range(30):
        lengths = rng.integers(1, 400, size=int(rng.integers(1, 11))).tolist()
        bs = int(rng.integers(1, 5))
        plan = plan_batches(lengths, bs, overhead_tokens=128)
        assert sorted(int(i) for b in plan for i in b) == list(range(len(lengths)))
        assert all(1 <= len(b) <= bs for b in plan)
        flat = [lengths[i] for b in plan for i in b]
        assert flat == sorted(lengths, reverse=True)  # consecutive runs of the length-sorted order
        # brute force over every split of the sorted order into runs of at most bs
        srt = sorted(lengths, reverse=True)
        n, best = len(srt), float("inf")
        for mask in range(1 << (n - 1)):
            cuts = [0] + [k + 1 for k in range(n - 1) if mask >> k & 1] + [n]
            runs = [srt[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
            if all(len(r) <= bs for r in runs):
                best = min(best, sum(len(r) * r[0] + 128 for r in runs))
        assert _batch_cost(lengths, plan, 128) == best
    # fixed batches without an overhead; a long outlier gets its own batch with one
    assert [len(b) for b in plan_batches([9] * 70, 32, None)] == [32, 32, 6]
    assert [len(b) for b in plan_batches([300] + [20] * 31, 32)] == [1, 31]
    assert plan_batches([], 32) == []


@pytest.mark.parametrize("blank", ["   ", "\n\t ", "\u3000"])
def test_empty_and_whitespace_texts(model, blank):
    """encode's docstring: encoded like "" (special tokens only); sparse holds no content token."""
    out = model.encode(["", blank, "the river"])
    assert_same_output(out.select([1]), out.select([0]))
    assert out.dense.shape == (3, model.hidden_size)
    assert np.linalg.norm(out.dense[0]) == pytest.approx(1.0, abs=1e-5)
    frame = model.tokenizer("")["input_ids"]
    np.testing.assert_array_equal(out.input_ids[0], frame)
    assert out.colbert[0].shape == (len(frame) - 1, model.hidden_size)
    allowed = set() if model.tokenizer.eos_token_id is not None else {model.tokenizer.sep_token_id}
    assert set(out.sparse[0]) <= allowed


def test_non_string_input_names_its_index(model):
    with pytest.raises(TypeError, match=r"texts\[2\] is int"):
        model.encode(["a", "b", 3])
    with pytest.raises(TypeError, match=r"texts\[0\] is NoneType"):
        model.encode([None])
    with pytest.raises(TypeError, match="bytes"):
        model.encode(b"abc")
    with pytest.raises(ValueError, match="batch_size"):
        model.encode(["a"], batch_size=0)


def test_single_string_empty_list_and_flags(model):
    single = model.encode("the river")
    assert single.dense.shape == (1, model.hidden_size) and len(single.sparse) == 1 and len(single.colbert) == 1
    assert_same_output(single, model.encode(["the river"]))

    empty = model.encode([])
    assert len(empty) == 0 and empty.dense.shape == (0, model.hidden_size)
    assert empty.sparse == [] and empty.colbert == [] and empty.sparse_csr.shape == (0, model.vocab_size)

    full = model.encode(TEXTS[:3])
    only_dense = model.encode(TEXTS[:3], return_sparse=False, return_colbert=False)
    assert only_dense.sparse is None and only_dense.colbert is None and only_dense.colbert_token_ids is None
    np.testing.assert_allclose(only_dense.dense, full.dense, atol=ATOL)
    with pytest.raises(ValueError, match="return_sparse"):
        _ = only_dense.sparse_csr
    only_sparse = model.encode(TEXTS[:3], return_dense=False, return_colbert=False)
    assert only_sparse.dense is None and only_sparse.colbert is None
    only_colbert = model.encode(TEXTS[:3], return_dense=False, return_sparse=False)
    assert only_colbert.dense is None and only_colbert.sparse is None
    for x, y in zip(only_colbert.colbert, full.colbert):
        np.testing.assert_allclose(x, y, atol=ATOL)


def test_sparse_csr_matches_dicts(model):
    out = model.encode(TEXTS)
    csr = out.sparse_csr
    assert csr.shape == (len(TEXTS), model.vocab_size)
    for i, w in enumerate(out.sparse):
        row = csr.getrow(i)
        assert dict(zip(row.indices.tolist(), row.data.tolist())) == pytest.approx(w)
        assert np.all(row.data > 0)


def test_truncation_to_max_length_and_positions(model):
    text = _long_text(900)
    assert len(model.encode([text], max_length=17).input_ids[0]) == 17
    # more than the encoder has positions: capped at its limit instead of crashing
    out = model.encode([text], max_length=4096)
    assert len(out.input_ids[0]) == model.max_positions


def test_forward_is_differentiable(model):
    batch = model.collate(model.tokenize(TEXTS[:3]))
    model.train()
    try:
        out = model(**batch)
        loss = out.dense.sum() + out.token_weights.sum() + out.colbert.sum()
        loss.backward()
    finally:
        model.eval()
        grads = [p.grad for p in (model.sparse_linear.weight, model.colbert_linear.weight,
                                  model.encoder.get_input_embeddings().weight)]
        model.zero_grad(set_to_none=True)
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert out.colbert_mask.shape == out.colbert.shape[:2]
    assert not out.colbert[~out.colbert_mask].any()  # padding rows are zero


# ----------------------------------------------------------------------------- loading and saving

def test_heads_loaded_from_files(model, ckpt):
    assert model.heads_trained
    col = torch.load(ckpt / COLBERT_FILE, weights_only=True)
    spa = torch.load(ckpt / SPARSE_FILE, weights_only=True)
    assert torch.equal(model.colbert_linear.weight, col["weight"]) and torch.equal(model.colbert_linear.bias, col["bias"])
    assert torch.equal(model.sparse_linear.weight, spa["weight"]) and torch.equal(model.sparse_linear.bias, spa["bias"])


def test_missing_heads_are_initialised_and_logged(tiny_bert_dir, caplog):
    """init_heads exactly: W_mul = I, b_mul = 0; W_lex ~ U(-0.1/sqrt(d), 0.1/sqrt(d)) from seed 0; b_lex = 0.3."""
    from m3lab.modeling.functions import SPARSE_INIT_BIAS

    with caplog.at_level(logging.WARNING, logger="m3lab"):
        a = M3Model.from_pretrained(tiny_bert_dir, device="cpu")
    assert not a.heads_trained
    assert any("untrained" in r.getMessage() for r in caplog.records)
    d = a.hidden_size
    assert torch.equal(a.colbert_linear.weight, torch.eye(d)) and not a.colbert_linear.bias.any()
    expected = torch.empty(1, d).uniform_(-0.1 / d ** 0.5, 0.1 / d ** 0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.sparse_linear.weight, expected)
    assert SPARSE_INIT_BIAS == 0.3 and torch.equal(a.sparse_linear.bias, torch.tensor([0.3]))
    # so every content token starts active: ReLU(W_lex h + 0.3) > 0 for |W_lex h| < 0.3
    out = a(**a.collate(a.tokenize(TEXTS[:3])))
    content = ~torch.isin(out.input_ids, a.drop_ids) & (out.input_ids != a.tokenizer.sep_token_id) & \
        (out.input_ids != a.tokenizer.pad_token_id)
    assert (out.token_weights[content] > 0).all()


def test_unsafe_head_file_is_refused(ckpt, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    torch.save({"weight": torch.zeros(1), "payload": Fraction(1, 3)}, bad / SPARSE_FILE)
    with pytest.raises(ValueError, match=SPARSE_FILE):
        M3Model.from_pretrained(bad, device="cpu")


def test_not_a_model_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        M3Model.from_pretrained(tmp_path, device="cpu")


def test_save_pretrained_layout_and_round_trip(model, tmp_path):
    saved = model.save_pretrained(tmp_path / "out")
    names = {p.name for p in saved.iterdir()}
    assert {"config.json", "model.safetensors", COLBERT_FILE, SPARSE_FILE, "tokenizer_config.json"} <= names
    for name, shape in ((COLBERT_FILE, (model.hidden_size, model.hidden_size)), (SPARSE_FILE, (1, model.hidden_size))):
        state = torch.load(saved / name, weights_only=True)
        assert set(state) == {"weight", "bias"} and tuple(state["weight"].shape) == shape
        assert state["weight"].dtype == torch.float32
    again = M3Model.from_pretrained(saved, device="cpu")
    assert again.heads_trained and again.pooling == model.pooling
    assert_same_output(again.encode(TEXTS), model.encode(TEXTS))


def test_save_pretrained_float16_encoder(model, tmp_path):
    from safetensors import safe_open

    saved = model.save_pretrained(tmp_path / "fp16", encoder_dtype=torch.float16)
    with safe_open(str(saved / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert torch.float16 in dtypes and torch.float32 not in dtypes
    assert torch.load(saved / COLBERT_FILE, weights_only=True)["weight"].dtype == torch.float32
    again = M3Model.from_pretrained(saved, device="cpu")
    np.testing.assert_allclose(again.encode(TEXTS).dense, model.encode(TEXTS).dense, atol=5e-3)
    assert model.encoder.dtype == torch.float32  # saving in float16 leaves the live model alone


def test_save_pretrained_mean_pooling_is_kept(ckpt, tmp_path):
    m = M3Model.from_pretrained(ckpt, pooling="mean", device="cpu")
    assert M3Model.from_pretrained(m.save_pretrained(tmp_path / "mean"), device="cpu").pooling == "mean"


def test_save_pretrained_is_atomic(model, tmp_path, monkeypatch):
    target = tmp_path / "model"
    model.save_pretrained(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    other = M3Model.from_pretrained(target, device="cpu")
    with torch.no_grad():
        other.sparse_linear.bias.add_(1.0)
    real_save, calls = torch.save, []

    def failing_save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        other.save_pretrained(target)
    monkeypatch.undo()

    assert len(calls) == 2
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # the old directory, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary or backup directory left
    reloaded = M3Model.from_pretrained(target, device="cpu")
    assert torch.equal(reloaded.sparse_linear.bias, model.sparse_linear.bias)


# ----------------------------------------------------------------------------- score

def test_score_texts_and_encoded(model):
    queries, passages = TEXTS[:2], TEXTS[1:]
    q, p = model.encode(queries), model.encode(passages)
    weights = (0.4, 0.2, 0.4)
    from_texts = model.score(queries, passages, weights=weights)
    from_encoded = model.score(q, p, weights=weights)
    for s in (from_texts, from_encoded):
        assert s.scores.shape == (2, len(passages)) and s.weights == weights
        np.testing.assert_allclose(s.dense, scoring.dense_scores(q.dense, p.dense), atol=ATOL)
        np.testing.assert_allclose(s.sparse, scoring.sparse_scores(q.sparse_csr, p.sparse_csr), atol=ATOL)
        np.testing.assert_allclose(s.colbert, scoring.colbert_scores_chunked(q.colbert, p.colbert), atol=ATOL)
        np.testing.assert_allclose(s.scores, 0.4 * s.dense + 0.2 * s.sparse + 0.4 * s.colbert, atol=ATOL)
    # the paper's lexical score by hand for one pair
    qi, pi = 1, 0
    hand = sum(w * p.sparse[pi][t] for t, w in q.sparse[qi].items() if t in p.sparse[pi])
    assert from_encoded.sparse[qi, pi] == pytest.approx(hand, abs=ATOL)


def test_score_skips_functions_with_zero_weight(model, monkeypatch):
    """Item 5 of issue 12: only the weighted functions are encoded and scored; all-zero weights are an error."""
    encoded_with, scored = [], []
    real_encode = model.encode

    def spy_encode(texts, **kw):
        encoded_with.append({f: kw.get(f"return_{f}", True) for f in scoring.FUNCTIONS})
        return real_encode(texts, **kw)

    monkeypatch.setattr(model, "encode", spy_encode)
    for name in ("dense_scores", "sparse_scores", "colbert_scores_chunked"):
        real = getattr(scoring, name)
        monkeypatch.setattr(scoring, name, lambda *a, _n=name, _r=real, **k: (scored.append(_n), _r(*a, **k))[1])
    s = model.score(TEXTS[:2], TEXTS[2:], weights=(0, 1, 0))
    assert encoded_with == [{"dense": False, "sparse": True, "colbert": False}] * 2
    assert scored == ["sparse_scores"]
    assert s.dense is None and s.colbert is None
    np.testing.assert_allclose(s.scores, s.sparse, rtol=1e-6)

    q = real_encode(TEXTS[:2], return_colbert=False)
    p = real_encode(TEXTS[2:], return_colbert=False)
    s = score_encoded(q, p, weights=(1.0, 0.3, 0.0))
    assert s.colbert is None
    np.testing.assert_allclose(s.scores, s.dense + 0.3 * s.sparse, atol=ATOL)
    with pytest.raises(ValueError, match="return_colbert"):
        score_encoded(q, p, weights=(1.0, 0.3, 1.0))
    for call in (lambda: model.score(TEXTS[:1], TEXTS[1:], weights=(0, 0, 0)),
                 lambda: score_encoded(q, p, weights=(0.0, 0.0, 0.0)),
                 lambda: scoring.combine_scores(s.dense, s.sparse, None, (0, 0, 0))):
        with pytest.raises(ValueError, match="all weights are zero"):
            call()


def test_prompts_and_max_lengths_are_saved_and_applied(model, tmp_path):
    """Item 4 of issue 12: encode_queries / encode_corpus add the saved prompts and cut at the saved lengths."""
    model.prompts = {"query": "what is ", "passage": "the "}
    model.max_lengths = {"query": 6, "passage": 9}
    try:
        saved = model.save_pretrained(tmp_path / "with-prompts")
    finally:
        model.prompts = {"query": "", "passage": ""}
        model.max_lengths = {"query": 512, "passage": 512}
    cfg = json.loads((saved / "m3lab_config.json").read_text())
    assert cfg["prompts"] == {"query": "what is ", "passage": "the "} and cfg["max_lengths"] == {"query": 6, "passage": 9}
    again = M3Model.from_pretrained(saved, device="cpu", dtype=torch.float32)
    assert again.prompts == {"query": "what is ", "passage": "the "}
    q = again.encode_queries(["paris france"])
    manual = again.encode(["what is paris france"], max_length=6)
    np.testing.assert_array_equal(q.input_ids[0], manual.input_ids[0])
    np.testing.assert_allclose(q.dense, manual.dense, rtol=1e-6, atol=1e-7)
    assert len(again.encode_corpus([TEXTS[4]]).input_ids[0]) == 9
    assert len(again.encode([TEXTS[4]]).input_ids[0]) > 9              # plain encode adds and cuts nothing
    # the pairwise scores use them too: query prompt on the query, passage prompt on the passage
    s = again.score(["paris"], ["tower"], weights=(1, 0, 0))
    ref = scoring.dense_scores(again.encode(["what is paris"], max_length=6).dense,
                               again.encode(["the tower"], max_length=9).dense)
    np.testing.assert_allclose(s.scores, ref, rtol=1e-6)


def test_sentence_transformers_prompts_are_read(tiny_bert_dir, tmp_path):
    path = tmp_path / "st"
    shutil.copytree(tiny_bert_dir, path)
    (path / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "query: ", "passage": "passage: "}}))
    assert M3Model.from_pretrained(path, device="cpu").prompts == {"query": "query: ", "passage": "passage: "}


def test_flagembedding_output_form(model):
    """Item 6 of issue 12: BGEM3FlagModel's dict (str token ids) and compute_score's per-mode lists."""
    out = model.encode(TEXTS[:3])
    flag = out.as_flagembedding()
    assert set(flag) == {"dense_vecs", "lexical_weights", "colbert_vecs"}
    assert flag["lexical_weights"][1] == {str(k): v for k, v in out.sparse[1].items()}
    assert flag["dense_vecs"] is out.dense and flag["colbert_vecs"] is out.colbert
    assert model.encode(TEXTS[:1], return_sparse=False).as_flagembedding()["lexical_weights"] is None

    pairs = [(TEXTS[0], TEXTS[1]), (TEXTS[2], TEXTS[4]), (TEXTS[5], TEXTS[0])]
    r = model.compute_score(pairs, weights_for_different_modes=[0.4, 0.2, 0.4])
    full = model.score([a for a, _ in pairs], [b for _, b in pairs], weights=(1, 1, 1))
    for i in range(len(pairs)):
        d, sp_, c = full.dense[i, i], full.sparse[i, i], full.colbert[i, i]
        assert r["dense"][i] == pytest.approx(d, rel=1e-5) and r["sparse"][i] == pytest.approx(sp_, rel=1e-5, abs=1e-7)
        assert r["colbert"][i] == pytest.approx(c, rel=1e-5)
        assert r["sparse+dense"][i] == pytest.approx((0.4 * d + 0.2 * sp_) / 0.6, rel=1e-5)
        assert r["colbert+sparse+dense"][i] == pytest.approx((0.4 * d + 0.2 * sp_ + 0.4 * c) / 1.0, rel=1e-5)
    one = model.compute_score(pairs[0])
    assert isinstance(one["dense"], float) and one["dense"] == pytest.approx(r["dense"][0], rel=1e-5)
    with pytest.raises(TypeError, match=r"sentence_pairs\[0\]"):
        model.compute_score([("only one",)])


def test_default_resolves_to_the_shipped_model():
    from m3lab.modeling import resolve_model_path
    from m3lab.modeling.hub import DELTA_FILE, saved_base

    shipped = Path(__file__).resolve().parents[1] / "data" / "models" / "m3lab-e5-small"
    assert Path(resolve_model_path("default")) == shipped
    # stored as what training changed on top of the e5-small backbone (issue 13, item 4)
    assert saved_base(shipped) == "e5-small" and (shipped / DELTA_FILE).is_file()
    size = sum(p.stat().st_size for p in shipped.rglob("*") if p.is_file())
    assert size < 50 * 2**20, f"the shipped model takes {size / 2**20:.1f} MiB"


def test_saved_heads_say_whether_they_were_trained(tiny_bert_dir, tmp_path):
    """Head files alone do not make trained heads: m3lab records it when it saves, and a checkpoint
    without the record (FlagEmbedding's layout) is taken as trained and said to be unrecorded."""
    fresh = M3Model.from_pretrained(tiny_bert_dir, device="cpu", dtype=torch.float32)
    assert not fresh.heads_trained and "no head files" in fresh.heads_origin
    saved = fresh.save_pretrained(tmp_path / "initialised")
    assert (saved / COLBERT_FILE).is_file()
    assert json.loads((saved / "m3lab_config.json").read_text())["heads_trained"] is False
    again = M3Model.from_pretrained(saved, device="cpu", dtype=torch.float32)
    assert not again.heads_trained and "never trained" in again.heads_origin
    fresh.heads_trained = True  # as the trainer marks it after an optimizer step
    trained = M3Model.from_pretrained(fresh.save_pretrained(tmp_path / "trained"), device="cpu", dtype=torch.float32)
    assert trained.heads_trained and trained.heads_origin.startswith("trained")
    unrecorded = tmp_path / "flag-layout"
    shutil.copytree(tmp_path / "trained", unrecorded)
    (unrecorded / "m3lab_config.json").unlink()
    other = M3Model.from_pretrained(unrecorded, device="cpu", dtype=torch.float32)
    assert other.heads_trained and "no record" in other.heads_origin
