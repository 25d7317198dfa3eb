"""BM25 baselines: scores vs Lucene's BM25 computed by hand, the two analyzers, bad input, XQuAD sanity."""
from __future__ import annotations

import math

import numpy as np
import pytest

from m3lab.retrieval.bm25 import BM25Index, model_tokenizer_analyzer, standard_analyzer
from m3lab.data import load_xquad

CORPUS = ["the cat sat on the mat", "a cat and a dog and a cat", "dogs bark loudly at night", "quantum physics"]


def lucene_bm25(query: list[str], docs: list[list[str]], k1: float, b: float) -> np.ndarray:
    """Lucene's BM25 by hand: idf = ln(1 + (N - df + .5)/(df + .5)), tf part tf/(tf + k1(1 - b + b dl/avgdl)).

    (Lucene 8+ drops the constant (k1 + 1) factor of the textbook formula; rankings are the same.)
    """
    n = len(docs)
    avgdl = sum(len(d) for d in docs) / n
    out = np.zeros(n)
    for t in query:  # a repeated query term counts each time, as in a Lucene BooleanQuery
        df = sum(t in d for d in docs)
        if df == 0:
            continue
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        for i, d in enumerate(docs):
            tf = d.count(t)
            out[i] += idf * tf / (tf + k1 * (1 - b + b * len(d) / avgdl))
    return out


@pytest.mark.parametrize("k1,b", [(1.2, 0.75), (0.9, 0.4)])
def test_scores_equal_lucene_bm25(k1, b):
    analyzer = standard_analyzer()  # no stopwords: every word counts
    index = BM25Index(CORPUS, analyzer=analyzer, k1=k1, b=b)
    docs = [analyzer(t) for t in CORPUS]
    for query in ["cat", "a cat dog", "night physics cat cat"]:
        expected = lucene_bm25(analyzer(query), docs, k1, b)
        idx, scores = index.search([query], top_k=4)
        matched = idx[0] >= 0
        assert set(idx[0][matched]) == set(np.flatnonzero(expected > 0))
        np.testing.assert_allclose(scores[0][matched], expected[idx[0][matched]], rtol=1e-5)
        assert list(scores[0][matched]) == sorted(scores[0][matched], reverse=True)


def test_standard_analyzer():
    assert standard_analyzer("en")("The Cats are on THE mat!") == ["cats", "mat"]  # stopwords, lower case
    assert standard_analyzer()("The Cats") == ["the", "cats"]
    assert standard_analyzer("zh")("北京是首都") == ["北京", "京是", "是首", "首都"]  # CJK bigrams
    assert standard_analyzer("hi")("नमस्ते दुनिया") == ["नमस्ते", "दुनिया"]  # vowel signs stay in the word


def test_model_tokenizer_analyzer(minilm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    terms = model_tokenizer_analyzer(tok)("Photosynthesis happens")
    assert terms == [str(i) for i in tok("Photosynthesis happens", add_special_tokens=False)["input_ids"]]
    assert str(tok.cls_token_id) not in terms and str(tok.sep_token_id) not in terms
    # subword terms match across inflections the word analyzer keeps apart
    index = BM25Index(["the photosynthetic process"], analyzer=model_tokenizer_analyzer(tok))
    assert index.search(["photosynthesis"], top_k=1)[0][0, 0] == 0
    assert BM25Index(["the photosynthetic process"]).search(["photosynthesis"], top_k=1)[0][0, 0] == -1


def test_unmatched_and_bad_input():
    index = BM25Index(CORPUS)
    idx, scores = index.search(["zebra", "cat"], top_k=10)
    assert idx.shape == (2, 4)  # top_k is capped at the corpus size
    assert (idx[0] == -1).all() and np.isnan(scores[0]).all()  # no shared term: nothing retrieved
    assert list(idx[1][:2]) == [1, 0] and (idx[1][2:] == -1).all()
    with pytest.raises(ValueError, match="query 1 is empty"):
        index.search(["cat", "  "])
    with pytest.raises(TypeError, match="list of strings"):
        index.search("cat")
    with pytest.raises(ValueError, match="empty corpus"):
        BM25Index([])
    assert BM25Index(["", "cat"]).search(["cat"], top_k=2)[0].tolist() == [[1, -1]]  # an empty document is fine


def test_bm25_on_xquad_finds_the_paragraph(data_dir):
    ds = load_xquad("en", data_dir=data_dir)
    index = BM25Index([d.text for d in ds.corpus], analyzer=standard_analyzer("en"))
    queries = ds.queries[:200]
    idx, _ = index.search([q.text for q in queries], top_k=10)
    doc_ids = [d.id for d in ds.corpus]
    hits = [any(j >= 0 and doc_ids[j] in ds.qrels[q.id] for j in row) for q, row in zip(queries, idx)]
    assert np.mean(hits) > 0.9  # XQuAD questions share many words with their paragraph
