"""Token-level views (m3lab.viz.inspect): every number is a term of a score in m3lab.scoring."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from m3lab import EncodeOutput, M3Model, scoring
from m3lab.viz.inspect import (UnknownShare, lexical_match, maxsim_alignment, special_token_ids, token_weights,
                               unknown_pieces, unknown_token_share)

QUERIES = ["what is the capital of france", "who built the tower"]
PASSAGES = ["paris is the capital of france and the largest city of france",
            "the tower by the river was built in the first year", "music and science"]


@pytest.fixture(scope="module")
def model(tiny_bert_dir) -> M3Model:
    m = M3Model.from_pretrained(tiny_bert_dir, device="cpu")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # random (non-identity) heads with many positive lexical weights
        m.colbert_linear.weight.copy_(torch.randn(m.colbert_linear.weight.shape, generator=g) / m.hidden_size ** 0.5)
        m.sparse_linear.weight.copy_(torch.randn(m.sparse_linear.weight.shape, generator=g) / m.hidden_size ** 0.5)
        m.sparse_linear.bias.fill_(0.5)
    return m


@pytest.fixture(scope="module")
def encoded(model):
    return model.encode(QUERIES), model.encode(PASSAGES)


def test_token_weights_strings_and_order(model, encoded):
    q, _ = encoded
    tw = token_weights(model, q, 0)
    assert {t.token_id: t.weight for t in tw} == pytest.approx(q.sparse[0])
    assert [t.token for t in tw] == model.tokenizer.convert_ids_to_tokens([t.token_id for t in tw])
    assert "capital" in {t.token for t in tw} and "[CLS]" not in {t.token for t in tw}
    assert [t.weight for t in tw] == sorted((t.weight for t in tw), reverse=True)
    with pytest.raises(ValueError, match="return_sparse"):
        token_weights(model, model.encode(QUERIES, return_sparse=False))


def _hand_encoding(model, sparse=None, colbert=None, colbert_ids=None) -> EncodeOutput:
    n = len(sparse if sparse is not None else colbert)
    return EncodeOutput(dense=None, sparse=sparse, colbert=colbert, input_ids=[np.zeros(1, dtype=np.int64)] * n,
                        vocab_size=model.vocab_size, colbert_token_ids=colbert_ids)


def test_lexical_match_by_hand(model):
    """Weights chosen by hand: shared tokens, their products (heaviest first) and s_lex are known numbers."""
    cap, fr, paris, tower = model.tokenizer.convert_tokens_to_ids(["capital", "france", "paris", "tower"])
    q = _hand_encoding(model, sparse=[{cap: 0.5, fr: 2.0, tower: 1.0}])
    p = _hand_encoding(model, sparse=[{fr: 0.25, cap: 3.0, paris: 4.0}])
    m = lexical_match(model, q, p)
    assert m.tokens == ["capital", "france"] and m.token_ids == [cap, fr]      # 1.5 before 0.5
    np.testing.assert_array_equal(m.query_weights, [0.5, 2.0])
    np.testing.assert_array_equal(m.passage_weights, [3.0, 0.25])
    np.testing.assert_array_equal(m.contributions, [1.5, 0.5])
    assert m.total == 2.0
    none = lexical_match(model, q, _hand_encoding(model, sparse=[{paris: 1.0}]))
    assert none.tokens == [] and none.total == 0.0


def test_lexical_match_total_is_s_lex(model, encoded):
    q, p = encoded
    s_lex = scoring.sparse_scores(q.sparse_csr, p.sparse_csr)
    for qi in range(len(QUERIES)):
        for pi in range(len(PASSAGES)):
            m = lexical_match(model, q, p, qi, pi)
            assert m.total == pytest.approx(float(s_lex[qi, pi]), rel=1e-5, abs=1e-6)
            assert set(m.token_ids) == set(q.sparse[qi]) & set(p.sparse[pi])
    assert {"capital", "france"} <= set(lexical_match(model, q, p, 0, 0).tokens)
    with pytest.raises(ValueError, match="return_sparse"):
        lexical_match(model, model.encode(QUERIES, return_sparse=False), p)


def test_maxsim_alignment_by_hand(model):
    """Unit vectors chosen so each query token's best passage token and its similarity are known."""
    e = np.eye(4, dtype=np.float32)
    c = np.float32(np.sqrt(0.5))
    q_vecs = np.stack([e[0], e[1], np.array([c, 0, c, 0], dtype=np.float32)])      # 3 query tokens
    p_vecs = np.stack([e[2], e[0], np.array([0, 0.6, 0, 0.8], dtype=np.float32)])  # 3 passage tokens
    ids = model.tokenizer.convert_tokens_to_ids(["what", "tower", "paris", "river", "city", "[SEP]"])
    q = _hand_encoding(model, colbert=[q_vecs], colbert_ids=[np.array(ids[:3])])
    p = _hand_encoding(model, colbert=[p_vecs], colbert_ids=[np.array(ids[3:])])
    a = maxsim_alignment(model, q, p)
    assert a.query_tokens == ["what", "tower", "paris"] and a.passage_tokens == ["river", "city", "[SEP]"]
    assert a.query_is_special == [False, False, False] and a.passage_is_special == [False, False, True]
    np.testing.assert_array_equal(a.best, [1, 2, 0])        # e0 -> e0; e1 -> (0, .6, 0, .8); (c,0,c,0) -> first tie
    np.testing.assert_allclose(a.contributions, np.array([1.0, 0.6, c]) / 3, rtol=1e-6)
    assert a.total == pytest.approx((1.0 + 0.6 + c) / 3, rel=1e-6)


def test_maxsim_alignment_total_is_s_mul(model, encoded):
    q, p = encoded
    s_mul = scoring.colbert_scores_chunked(q.colbert, p.colbert)
    for qi in range(len(QUERIES)):
        for pi in range(len(PASSAGES)):
            a = maxsim_alignment(model, q, p, qi, pi)
            assert a.similarity.shape == (len(q.colbert[qi]), len(p.colbert[pi]))
            assert float(a.contributions.sum()) == pytest.approx(float(s_mul[qi, pi]), abs=1e-5)
            assert a.total == pytest.approx(float(s_mul[qi, pi]), abs=1e-5)
    a = maxsim_alignment(model, q, p, 0, 0)
    assert a.query_tokens[0] == "what" and a.query_tokens[-1] == "[SEP]"  # [CLS] is not a multi-vector position
    with pytest.raises(ValueError, match="return_colbert"):
        maxsim_alignment(model, model.encode(QUERIES, return_colbert=False), p)


# ----------------------------------------------------------------------------- unknown and special tokens

BERT_SPECIALS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
XLMR_SPECIALS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 60}


@pytest.fixture(scope="module")
def xlmr(tiny_xlmr_dir) -> M3Model:
    return M3Model.from_pretrained(tiny_xlmr_dir, device="cpu")


def test_special_token_ids(model, xlmr):
    assert special_token_ids(model) == special_token_ids(model.tokenizer) == set(BERT_SPECIALS.values())
    assert special_token_ids(xlmr) == set(XLMR_SPECIALS.values())
    assert xlmr.tokenizer.convert_ids_to_tokens(sorted(XLMR_SPECIALS.values())) == list(XLMR_SPECIALS)
    # a tokenizer without all_special_ids: its *_token_id attributes
    from types import SimpleNamespace
    assert special_token_ids(SimpleNamespace(cls_token_id=0, pad_token_id=1, eos_token_id=2, unk_token_id=3)) == {0, 1, 2, 3}


@pytest.mark.parametrize("text,expected,pieces", [
    # the tiny XLM-R vocabulary is its ~60 words: every other word is one <unk>
    ("the zebra of ulm paris", (0.4, 2, 5), ["zebra", "ulm"]),
    ("the tower of paris", (0.0, 0, 4), []),
    ("光合作用 paris", (0.5, 1, 2), ["光合作用"]),
    ("<s> paris </s>", (0.0, 0, 1), []),          # special tokens typed in the text are no content
    ("paris <unk>", (0.5, 1, 2), ["<unk>"]),       # ... but an unk is an unk
    ("zebra", (1.0, 1, 1), ["zebra"]),
    ("", (0.0, 0, 0), []),
    ("   ", (0.0, 0, 0), []),
])
def test_unknown_token_share_xlmr(xlmr, text, expected, pieces):
    got = unknown_token_share(xlmr, text)
    assert isinstance(got, UnknownShare) and tuple(got) == pytest.approx(expected) and got[1:] == expected[1:]
    assert unknown_token_share(xlmr.tokenizer, text) == got  # a model or its tokenizer
    assert unknown_pieces(xlmr, text) == pieces


def test_unknown_token_share_wordpiece(model):
    """MiniLM's WordPiece splits CJK into characters; 作 and 用 are not in its vocabulary, 光 and 合 are."""
    share, n_unknown, n_tokens = unknown_token_share(model, "光合作用 paris")
    assert (share, n_unknown, n_tokens) == (0.4, 2, 5)
    assert unknown_pieces(model, "光合作用 paris") == ["作", "用"]
    assert tuple(unknown_token_share(model, "作 the tower of paris is built in the city")) == (0.1, 1, 10)
    assert tuple(unknown_token_share(model, "paris [SEP] [CLS] tower")) == (0.0, 0, 2)
    assert tuple(unknown_token_share(model, "paris [UNK]")) == (0.5, 1, 2)


def test_token_records_flag_exactly_the_special_ids(model, xlmr):
    ids = set(BERT_SPECIALS.values())
    q = model.encode(QUERIES)
    tw = token_weights(model, q, 0)
    assert [t.is_special for t in tw] == [t.token_id in ids for t in tw]
    assert {t.token for t in tw if t.is_special} == {"[SEP]"}  # bge-m3 keeps [SEP] when there is no EOS
    a = maxsim_alignment(model, q, q, 0, 1)
    assert a.query_tokens[-1] == a.passage_tokens[-1] == "[SEP]"
    assert a.query_is_special == [False] * (len(a.query_tokens) - 1) + [True]
    assert a.passage_is_special == [False] * (len(a.passage_tokens) - 1) + [True]
    # XLM-R: </s> has no lexical weight (dropped as eos) but is a multi-vector position
    x = xlmr.encode(QUERIES)
    assert not any(t.is_special for t in token_weights(xlmr, x, 0))
    assert not set(x.sparse[0]) & set(XLMR_SPECIALS.values())
    a = maxsim_alignment(xlmr, x, x, 0, 1)
    assert a.query_tokens == ["▁what", "▁is", "▁the", "▁capital", "▁of", "▁france", "</s>"]
    assert a.query_is_special == [False] * 6 + [True]
    assert a.passage_tokens == ["▁who", "▁built", "▁the", "▁tower", "</s>"]
    assert a.passage_is_special == [False] * 4 + [True]


def test_lexical_match_flags_special_tokens(model):
    sep, unk, cap, fr = model.tokenizer.convert_tokens_to_ids(["[SEP]", "[UNK]", "capital", "france"])
    q = _hand_encoding(model, sparse=[{cap: 1.0, sep: 3.0, unk: 0.1, fr: 2.0}])
    p = _hand_encoding(model, sparse=[{sep: 1.0, fr: 1.0, unk: 1.0, cap: 0.5}])
    m = lexical_match(model, q, p)
    assert m.tokens == ["[SEP]", "france", "capital", "[UNK]"]
    assert m.is_special == [True, False, False, True]
    assert [t.is_special for t in token_weights(model, q)] == [True, False, False, True]  # [SEP] france capital [UNK]
