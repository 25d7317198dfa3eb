"""The storage variants of issue 14 from CorpusIndex: CRISP k-means, stop-token and lexical pruning,
sparse top-k pruning, quantised dense (int8, binary) with float rescoring, Matryoshka truncation,
encodings reused across builds, index specs, `m3lab index info`; each against a hand computation
on the index's own stored data, plus save/load round trips of the manifest settings."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp

from m3lab import scoring
from m3lab.cli import main as cli_main
from m3lab.modeling.matryoshka import truncate_embeddings
from m3lab.retrieval import CorpusIndex
from m3lab.retrieval.compression import (
    kmeans_tokens,
    lexical_importance,
    prune_sparse,
    prune_tokens,
    stop_token_ids,
)
from m3lab.retrieval.dense_quantization import QuantizedDenseIndex
from m3lab.retrieval.spec import PRESETS, describe_spec, options_for_store, parse_index_spec
from test_index import QUERIES, mini, tiny_m3  # noqa: F401 - test_index's fixtures, shared

BUILD = dict(max_length=128, show_progress=False)


@pytest.fixture(scope="module")
def encodings(tiny_m3, mini):
    texts = [f"{d.title} {d.text}".strip() if d.title else d.text for d in mini.corpus]
    return tiny_m3.encode_corpus(texts, max_length=128, show_progress=False)


@pytest.fixture(scope="module")
def exact(tiny_m3, mini, encodings):
    return CorpusIndex.build(tiny_m3, mini.corpus, colbert_dtype="float32", encodings=encodings, **BUILD)


# ----------------------------------------------------------------------------- pure functions


def test_kmeans_centroids_of_separated_clusters_and_seeding():
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:4] * 5
    doc = np.concatenate([c + rng.normal(scale=0.01, size=(3, 8)) for c in centres])
    out = kmeans_tokens(doc, 3, seed=1)  # 12 // 3 = 4 clusters: the four groups' means
    means = doc.reshape(4, 3, 8).mean(1)
    order = [int(np.argmin(np.linalg.norm(means - c, axis=1))) for c in out]
    assert sorted(order) == [0, 1, 2, 3]
    np.testing.assert_allclose(out, means[order], rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(kmeans_tokens(doc, 3, seed=1), out)  # same seed, same centroids
    np.testing.assert_array_equal(kmeans_tokens(doc, 1), doc)
    assert kmeans_tokens(doc.astype(np.float16), 2).dtype == np.float16


def test_prune_tokens_keeps_the_most_important_in_order():
    v = np.arange(12, dtype=np.float32).reshape(6, 2)
    imp = np.array([0.1, 0.9, 0.5, 0.9, 0.0, 0.3])
    # top ceil(0.5 * 6) = 3: 0.9 (pos 1), 0.9 (pos 3), 0.5 (pos 2), kept in document order
    np.testing.assert_array_equal(prune_tokens(v, importance=imp, keep_ratio=0.5), v[[1, 2, 3]])
    mask = np.array([True, False, True, False, True, True])
    np.testing.assert_array_equal(prune_tokens(v, keep=mask), v[mask])
    # mask then ratio among what is left: of 0, 2, 4, 5 (0.1, 0.5, 0.0, 0.3) keep ceil(0.5 * 4) = 2
    np.testing.assert_array_equal(prune_tokens(v, keep=mask, importance=imp, keep_ratio=0.5), v[[2, 5]])
    # a mask dropping everything leaves the most important vector
    np.testing.assert_array_equal(prune_tokens(v, keep=np.zeros(6, bool), importance=imp), v[[1]])
    with pytest.raises(ValueError, match="keep_ratio"):
        prune_tokens(v, importance=imp, keep_ratio=0)


def test_lexical_importance_and_stop_tokens(tiny_m3):
    assert list(lexical_importance(np.array([5, 7, 5, 9]), {5: 0.25, 9: 1.5})) == [0.25, 0.0, 0.25, 1.5]
    stops = set(stop_token_ids(tiny_m3.tokenizer).tolist())
    vocab = tiny_m3.tokenizer.get_vocab()
    for token in (".", ",", "?", "[CLS]", "[SEP]", "[PAD]"):
        if token in vocab:
            assert vocab[token] in stops, token
    for token in ("the", "paris", "##s"):
        if token in vocab:
            assert vocab[token] not in stops, token


def test_prune_sparse_keeps_each_rows_top_k():
    rng = np.random.default_rng(3)
    m = sp.random(20, 300, density=0.1, format="csr", random_state=4, dtype=np.float32)
    m.data[:5] = 0.5  # ties: lower token id first
    out = prune_sparse(m, 4)
    dense, got = m.toarray(), out.toarray()
    for r in range(20):
        nz = np.flatnonzero(dense[r])
        keep = nz[np.lexsort((nz, -dense[r, nz]))][:4]
        expect = np.zeros(300, np.float32)
        expect[keep] = dense[r, keep]
        np.testing.assert_array_equal(got[r], expect)
    assert out.getnnz(axis=1).max() <= 4
    # the pruned s_lex is the full s_lex minus the dropped terms, by eq. 1 on the kept tokens
    q = sp.random(3, 300, density=0.2, format="csr", random_state=5, dtype=np.float32)
    np.testing.assert_allclose(scoring.sparse_scores(q, out), q.toarray() @ got.T, rtol=1e-6)
    with pytest.raises(ValueError, match="top_k"):
        prune_sparse(m, 0)
    del rng


# ----------------------------------------------------------------------------- specs


def test_index_spec_parsing_and_round_trip():
    assert parse_index_spec("compact") == PRESETS["compact"]
    assert parse_index_spec("muvera,colbert_dtype=int8") == {"muvera": True, "colbert_dtype": "int8"}
    assert parse_index_spec("prune=lexical:0.5,sparse_top_k=64") == {"prune": {"by": "lexical", "keep_ratio": 0.5},
                                                                    "sparse_top_k": 64}
    with pytest.raises(ValueError, match="unknown option 'pool'"):
        parse_index_spec("pool=2")
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        parse_index_spec("huge")
    assert options_for_store({"muvera": True, "dense_quantization": "binary"}, ["dense"]) == \
        {"dense_quantization": "binary"}


# ----------------------------------------------------------------------------- indexes


def test_encodings_give_the_same_index_as_encoding(tiny_m3, mini, exact):
    direct = CorpusIndex.build(tiny_m3, mini.corpus, colbert_dtype="float32", **BUILD)
    np.testing.assert_allclose(exact.dense, direct.dense, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(exact.colbert_offsets, direct.colbert_offsets)
    np.testing.assert_allclose(exact.colbert_vectors, direct.colbert_vectors, rtol=1e-5, atol=1e-6)
    assert (exact.sparse != direct.sparse).nnz == 0 or np.abs(exact.sparse - direct.sparse).max() < 1e-5


def test_encodings_missing_a_function_are_refused(tiny_m3, mini):
    dense_only = tiny_m3.encode_corpus([d.text for d in mini.corpus], max_length=128, return_sparse=False,
                                       return_colbert=False, show_progress=False)
    with pytest.raises(ValueError, match="lack the (colbert|sparse) embeddings"):
        CorpusIndex.build(tiny_m3, mini.corpus, encodings=dense_only, **BUILD)
    with pytest.raises(ValueError, match="encodings hold"):
        CorpusIndex.build(tiny_m3, mini.corpus[:5], encodings=dense_only, **BUILD)


def test_kmeans_and_pruned_indexes_store_what_the_functions_give(tiny_m3, mini, encodings, exact, tmp_path):
    km = CorpusIndex.build(tiny_m3, mini.corpus, store=("colbert",), colbert_dtype="float32", pool_factor=2,
                           pool_method="kmeans", encodings=encodings, **BUILD)
    for i in (0, 7):
        np.testing.assert_array_equal(km.document_vectors(i), kmeans_tokens(exact.document_vectors(i), 2))
    lex = CorpusIndex.build(tiny_m3, mini.corpus, store=("colbert",), colbert_dtype="float32",
                            prune={"by": "lexical", "keep_ratio": 0.5}, encodings=encodings, **BUILD)
    for i in (0, 7):
        ids = encodings.colbert_token_ids[i]
        expect = prune_tokens(exact.document_vectors(i), importance=lexical_importance(ids, encodings.sparse[i]),
                              keep_ratio=0.5)
        np.testing.assert_array_equal(lex.document_vectors(i), expect)
        assert len(expect) == math.ceil(len(ids) / 2)
    stop = CorpusIndex.build(tiny_m3, mini.corpus, store=("colbert",), colbert_dtype="float32",
                             prune={"by": "stop_tokens"}, encodings=encodings, **BUILD)
    stops = stop_token_ids(tiny_m3.tokenizer)
    ids = encodings.colbert_token_ids[0]
    np.testing.assert_array_equal(stop.document_vectors(0), exact.document_vectors(0)[~np.isin(ids, stops)])
    assert stop.colbert_offsets[-1] < exact.colbert_offsets[-1]
    loaded = CorpusIndex.load(lex.save(tmp_path / "lex"), tiny_m3)
    assert loaded.settings["prune"] == {"by": "lexical", "keep_ratio": 0.5}
    np.testing.assert_array_equal(loaded.colbert_vectors, lex.colbert_vectors)
    with pytest.raises(ValueError, match="pool_method"):
        CorpusIndex.build(tiny_m3, mini.corpus, pool_method="mean", **BUILD)
    with pytest.raises(ValueError, match="prune must be"):
        CorpusIndex.build(tiny_m3, mini.corpus, prune={"by": "norm"}, **BUILD)


@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_quantised_dense_index_rescoring(tiny_m3, mini, encodings, exact, kind, tmp_path):
    ix = CorpusIndex.build(tiny_m3, mini.corpus, store=("dense", "sparse"), dense_quantization=kind,
                           rescore_multiplier=3, encodings=encodings, **BUILD)
    assert ix.dense is None and ix.dense_quantized.kind == kind
    q = exact.encode_queries(QUERIES, components=("dense", "sparse"))
    got = ix.rank(q, ["dense"], top_k=5)["dense"]
    # by hand: the quantised first stage's 3 x 5 candidates, scored as float query . decoded document
    ref = QuantizedDenseIndex(exact.dense, kind)
    cand = ref.candidates(q.dense, 15)
    scores = q.dense @ ref.decode(np.arange(len(ix))).T
    for r in range(len(QUERIES)):
        c = cand[r]
        order = c[np.lexsort((c, -scores[r, c]))][:5]
        np.testing.assert_array_equal(got.indices[r], order)
        np.testing.assert_allclose(got.scores[r], scores[r, order], rtol=1e-5, atol=1e-6)
    # the hybrid's dense component is the same rescored score
    hyb = ix.rank(q, ["hybrid"], top_k=5, weights=(1, 0.3, 0))["hybrid"]
    np.testing.assert_allclose(hyb.dense, np.take_along_axis(scores, hyb.indices, 1), rtol=1e-5, atol=1e-6)
    assert ix.nbytes()["dense"] < exact.nbytes()["dense"] / (3.5 if kind == "int8" else 30)
    loaded = CorpusIndex.load(ix.save(tmp_path / kind), tiny_m3)
    np.testing.assert_array_equal(loaded.rank(q, ["dense"], top_k=5)["dense"].indices, got.indices)
    with pytest.raises(ValueError, match="flat"):
        CorpusIndex.build(tiny_m3, mini.corpus, dense_quantization=kind, dense_index="hnsw", **BUILD)


def test_matryoshka_truncation_of_documents_and_queries(tiny_m3, mini, encodings, exact, tmp_path):
    d = tiny_m3.hidden_size // 2
    c = tiny_m3.colbert_linear.out_features // 2
    ix = CorpusIndex.build(tiny_m3, mini.corpus, colbert_dtype="float32", dense_dim=d, colbert_dim=c,
                           encodings=encodings, **BUILD)
    np.testing.assert_allclose(ix.dense, truncate_embeddings(exact.dense, d), rtol=1e-6)
    np.testing.assert_allclose(ix.document_vectors(3), truncate_embeddings(exact.document_vectors(3), c), rtol=1e-6)
    q = exact.encode_queries(QUERIES)
    got = ix.rank(q, ["dense", "colbert"], top_k=len(ix))
    dense_ref = truncate_embeddings(q.dense, d) @ truncate_embeddings(exact.dense, d).T
    np.testing.assert_allclose(got["dense"].scores, np.take_along_axis(dense_ref, got["dense"].indices, 1),
                               rtol=1e-5, atol=1e-6)
    col_ref = scoring.colbert_scores_chunked([truncate_embeddings(v, c) for v in q.colbert],
                                             [truncate_embeddings(exact.document_vectors(i), c) for i in range(len(ix))])
    np.testing.assert_allclose(got["colbert"].scores, np.take_along_axis(col_ref, got["colbert"].indices, 1),
                               rtol=1e-5, atol=1e-6)
    loaded = CorpusIndex.load(ix.save(tmp_path / "mrl"), tiny_m3)
    assert (loaded.settings["dense_dim"], loaded.settings["colbert_dim"]) == (d, c)
    assert loaded.search(QUERIES[0], mode="dense", top_k=3)[0].doc_id == ix.search(QUERIES[0], mode="dense")[0].doc_id
    with pytest.raises(ValueError, match="dense_dim must be"):
        CorpusIndex.build(tiny_m3, mini.corpus, dense_dim=tiny_m3.hidden_size + 1, **BUILD)


def test_sparse_top_k_for_documents_and_queries(tiny_m3, mini, encodings, exact):
    ix = CorpusIndex.build(tiny_m3, mini.corpus, store=("sparse",), sparse_top_k=6, query_sparse_top_k=3,
                           encodings=encodings, **BUILD)
    np.testing.assert_array_equal(ix.sparse.toarray(), prune_sparse(exact.sparse, 6).toarray())
    q = exact.encode_queries(QUERIES, components=("sparse",))
    q_pruned = prune_sparse(q.sparse_csr, 3)
    got = ix.rank(q, ["sparse"], top_k=len(ix))["sparse"]
    ref = q_pruned.toarray() @ ix.sparse.toarray().T
    for r in range(len(QUERIES)):
        keep = got.indices[r] >= 0
        np.testing.assert_allclose(got.scores[r][keep], ref[r, got.indices[r][keep]], rtol=1e-5)
        assert keep.sum() == (ref[r] > 0).sum()


def test_info_spec_and_cli(tiny_m3, mini, encodings, tmp_path, capsys):
    ix = CorpusIndex.build(tiny_m3, mini.corpus, encodings=encodings,
                           **parse_index_spec("compact,dense_quantization=binary"), **BUILD)
    assert describe_spec(ix.settings) == "colbert_dtype=int8,pool_factor=2,dense_quantization=binary"
    assert parse_index_spec(describe_spec(ix.settings)) == {"colbert_dtype": "int8", "pool_factor": 2,
                                                            "dense_quantization": "binary"}
    ix.save(tmp_path / "ix")
    assert cli_main(["index", "info", str(tmp_path / "ix"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["spec"] == describe_spec(ix.settings) and record["documents"] == len(mini.corpus)
    on_disk = sum(p.stat().st_size for p in (tmp_path / "ix").iterdir() if p.name not in ("manifest.json",))
    assert record["total_bytes"] == on_disk - (tmp_path / "ix" / "documents.jsonl").stat().st_size \
        + record["bytes"].get("other", 0)
    assert cli_main(["index", "info", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
