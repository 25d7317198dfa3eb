"""Token-level views (m3lab.viz.inspect): every number is a term of a score in m3lab.scoring."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from m3lab import M3Model, scoring
from m3lab.viz.inspect import lexical_match, maxsim_alignment, token_weights

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


def test_lexical_match_sums_to_s_lex(model, encoded):
    q, p = encoded
    s_lex = scoring.sparse_scores(q.sparse_csr, p.sparse_csr)
    for qi in range(len(QUERIES)):
        for pi in range(len(PASSAGES)):
            m = lexical_match(model, q, p, qi, pi)
            assert m.total == pytest.approx(float(s_lex[qi, pi]), rel=1e-5, abs=1e-6)
            assert float(m.contributions.sum()) == pytest.approx(m.total, rel=1e-6, abs=1e-7)
            np.testing.assert_allclose(m.contributions, m.query_weights * m.passage_weights, rtol=1e-6)
            assert set(m.token_ids) == set(q.sparse[qi]) & set(p.sparse[pi])
            assert m.tokens == model.tokenizer.convert_ids_to_tokens(m.token_ids)
            assert list(m.contributions) == sorted(m.contributions, reverse=True)
    shared = lexical_match(model, q, p, 0, 0)
    assert {"capital", "france"} <= set(shared.tokens)
    with pytest.raises(ValueError, match="return_sparse"):
        lexical_match(model, model.encode(QUERIES, return_sparse=False), p)


def test_maxsim_alignment_sums_to_s_mul(model, encoded):
    q, p = encoded
    s_mul = scoring.colbert_scores_chunked(q.colbert, p.colbert)
    for qi in range(len(QUERIES)):
        for pi in range(len(PASSAGES)):
            a = maxsim_alignment(model, q, p, qi, pi)
            assert a.similarity.shape == (len(q.colbert[qi]), len(p.colbert[pi]))
            np.testing.assert_allclose(a.similarity, q.colbert[qi] @ p.colbert[pi].T, atol=1e-6)
            np.testing.assert_array_equal(a.best, a.similarity.argmax(axis=1))
            np.testing.assert_allclose(a.contributions, a.similarity.max(axis=1) / len(q.colbert[qi]), atol=1e-6)
            assert float(a.contributions.sum()) == pytest.approx(float(s_mul[qi, pi]), abs=1e-5)
            assert a.total == pytest.approx(float(s_mul[qi, pi]), abs=1e-5)
            assert len(a.query_tokens) == len(q.colbert[qi]) and len(a.passage_tokens) == len(p.colbert[pi])
    a = maxsim_alignment(model, q, p, 0, 0)
    assert a.query_tokens[0] == "what" and a.query_tokens[-1] == "[SEP]"  # [CLS] is not a multi-vector position
    with pytest.raises(ValueError, match="return_colbert"):
        maxsim_alignment(model, model.encode(QUERIES, return_colbert=False), p)
