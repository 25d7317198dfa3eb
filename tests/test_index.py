"""CorpusIndex: storage vs the model's own embeddings, every mode vs brute force with m3lab.scoring,
save/load round trips, refusal of another model, corrupt directories, bad queries."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import make_tiny_bert
from m3lab import scoring
from m3lab.data import Document, load_mini, load_xquad
from m3lab.retrieval import CorpusIndex, CorruptIndexError, ModelMismatchError, model_fingerprint
from m3lab.modeling import M3Model

WEIGHTS = (1.0, 0.3, 1.0)


def make_tiny_m3(path, tiny_bert_dir, seed: int = 0) -> M3Model:
    """A tiny BERT with saved M3 heads (so ``heads_trained``), mean pooling.

    The heads get seeded random weights with a positive lexical bias, so that sparse weights are
    non-zero and every function ranks the documents differently.
    """
    model = M3Model.from_pretrained(tiny_bert_dir, pooling="mean", device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.sparse_linear.weight.normal_(0, 0.3, generator=g)
        model.sparse_linear.bias.fill_(0.2)
        model.colbert_linear.weight.normal_(0, 0.2, generator=g)
    model.heads_trained = True  # the seeded heads stand in for trained ones (m3lab_config.json records it)
    model.save_pretrained(path)
    return M3Model.from_pretrained(path, device="cpu")


@pytest.fixture(scope="module")
def tiny_m3(tmp_path_factory, tiny_bert_dir):
    return make_tiny_m3(tmp_path_factory.mktemp("tiny-m3"), tiny_bert_dir)


@pytest.fixture(scope="module")
def mini():
    return load_mini("en")


@pytest.fixture(scope="module")
def index(tiny_m3, mini):
    # float32 multi-vectors, so that every score can be compared with brute force at float32 rounding
    return CorpusIndex.build(tiny_m3, mini.corpus, max_length=128, colbert_dtype="float32", show_progress=False)


@pytest.fixture(scope="module")
def doc_enc(tiny_m3, mini):
    texts = [f"{d.title} {d.text}" for d in mini.corpus]  # titles are encoded with the text
    return tiny_m3.encode(texts, max_length=128)


QUERIES = ["Where does photosynthesis take place?", "the capital city of france", "what gas do plants release"]


def test_storage_matches_the_models_embeddings(index, doc_enc, mini):
    n = len(mini.corpus)
    assert index.dense.shape == (n, 32) and index.dense.dtype == np.float32
    np.testing.assert_allclose(index.dense, doc_enc.dense, atol=1e-5)
    assert index.sparse.shape == (n, index.model.vocab_size)
    np.testing.assert_allclose(index.sparse.toarray(), doc_enc.sparse_csr.toarray(), atol=1e-5)
    # the inverted index is the transpose
    assert (index.inverted != index.sparse.T.tocsr()).nnz == 0
    # multi-vector: one contiguous array, offsets delimit each document's rows
    assert index.colbert_vectors.flags["C_CONTIGUOUS"] and index.colbert_offsets.shape == (n + 1,)
    assert index.colbert_offsets[-1] == len(index.colbert_vectors) == sum(len(c) for c in doc_enc.colbert)
    for i in (0, n // 2, n - 1):
        np.testing.assert_allclose(index.document_vectors(i), doc_enc.colbert[i], atol=1e-5)


def _brute(index, query):
    """Every document's score with each function, by m3lab.scoring on the stored embeddings."""
    q = index.model.encode([query], max_length=128)
    return {"dense": scoring.dense_scores(q.dense, index.dense)[0],
            "sparse": scoring.sparse_scores(q.sparse_csr, index.sparse)[0],
            "colbert": scoring.colbert_scores_chunked(q.colbert, [index.document_vectors(i) for i in range(len(index))])[0]}


@pytest.mark.parametrize("mode", ["dense", "sparse", "colbert"])
def test_single_function_modes_equal_brute_force(index, mode):
    for query in QUERIES:
        s = _brute(index, query)[mode]
        results = index.search(query, mode=mode, top_k=10)
        assert len(results) >= 3  # not vacuous: the tiny model's sparse weights match a few documents
        expected = [j for j in np.argsort(-s, kind="stable") if mode != "sparse" or s[j] > 0][:10]
        assert [r.doc_id for r in results] == [index.documents[j].id for j in expected]
        for r in results:
            j = index.doc_ids.index(r.doc_id)
            assert r.score == pytest.approx(s[j], abs=1e-5)
            assert getattr(r, mode) == pytest.approx(s[j], abs=1e-5)
            assert all(getattr(r, c) is None for c in ("dense", "sparse", "colbert") if c != mode)
        assert [r.rank for r in results] == list(range(1, len(results) + 1))


def test_hybrid_candidates_and_components(index):
    cands = 5
    for query in QUERIES:
        s = _brute(index, query)
        pool = set(np.argsort(-s["dense"], kind="stable")[:cands])
        pool |= {j for j in np.argsort(-s["sparse"], kind="stable")[:cands] if s["sparse"][j] > 0}
        total = scoring.combine_scores(s["dense"], s["sparse"], s["colbert"], WEIGHTS)
        expected = sorted(pool, key=lambda j: (-total[j], j))[:4]
        results = index.search(query, mode="hybrid", top_k=4, candidates=cands, weights=WEIGHTS)
        assert [r.doc_id for r in results] == [index.documents[j].id for j in expected]
        for r in results:  # each candidate carries every function's score, equal to m3lab.scoring's
            j = index.doc_ids.index(r.doc_id)
            assert r.dense == pytest.approx(s["dense"][j], abs=1e-5)
            assert r.sparse == pytest.approx(s["sparse"][j], abs=1e-5)
            assert r.colbert == pytest.approx(s["colbert"][j], abs=1e-5)
            assert r.score == pytest.approx(WEIGHTS[0] * r.dense + WEIGHTS[1] * r.sparse + WEIGHTS[2] * r.colbert,
                                            abs=1e-5)
            assert r.document is index.documents[j]


def test_hybrid_weights_and_reranking_paths_agree(index):
    # colbert weight 0: no multi-vector computed; dense/sparse still reported
    res = index.search(QUERIES[0], mode="hybrid", weights=(1, 1, 0), top_k=5)
    assert all(r.colbert is None and r.dense is not None for r in res)
    assert all(r.score == pytest.approx(r.dense + r.sparse, abs=1e-6) for r in res)
    # few candidates (per-candidate MaxSim) and many (exhaustive MaxSim reused) give the same scores
    q = index.encode_queries(QUERIES)
    few = index.rank(q, ["hybrid"], top_k=3, candidates=3)["hybrid"]
    many = index.rank(q, ["colbert", "hybrid"], top_k=3, candidates=3)["hybrid"]
    np.testing.assert_array_equal(few.indices, many.indices)
    np.testing.assert_allclose(few.colbert, many.colbert, atol=1e-5)


def test_batch_search_equals_single_searches(index):
    batch = index.search(QUERIES, mode="hybrid", top_k=4)
    assert len(batch) == len(QUERIES)
    for query, results in zip(QUERIES, batch):
        single = index.search(query, mode="hybrid", top_k=4)
        assert [r.doc_id for r in results] == [r.doc_id for r in single]
        np.testing.assert_allclose([r.score for r in results], [r.score for r in single], atol=1e-5)
    # query blocks of one give the same ranking as one block
    q = index.encode_queries(QUERIES)
    a = index.rank(q, ["dense", "sparse"], top_k=5)
    b = index.rank(q, ["dense", "sparse"], top_k=5, query_block=1)
    for m in a:
        np.testing.assert_array_equal(a[m].indices, b[m].indices)


def test_save_load_round_trip(index, tiny_m3, tmp_path):
    path = index.save(tmp_path / "ix")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["model"]["fingerprint"] == model_fingerprint(tiny_m3)
    assert manifest["corpus"]["n_documents"] == len(index)
    assert manifest["arrays"]["colbert_vectors"]["shape"] == list(index.colbert_vectors.shape)
    assert not any(p.suffix in (".pkl", ".pickle") for p in path.iterdir())
    loaded = CorpusIndex.load(path, tiny_m3)
    assert loaded.documents == index.documents
    np.testing.assert_array_equal(loaded.dense, index.dense)
    assert (loaded.sparse != index.sparse).nnz == 0
    np.testing.assert_array_equal(loaded.colbert_vectors, index.colbert_vectors)
    np.testing.assert_array_equal(loaded.colbert_offsets, index.colbert_offsets)
    for mode in ("dense", "sparse", "colbert", "hybrid"):
        assert loaded.search(QUERIES[0], mode=mode) == index.search(QUERIES[0], mode=mode)
    # saving again over it replaces it atomically, leaving no temporary directories behind
    index.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]


def test_load_refuses_another_model(index, tiny_m3, tmp_path):
    path = index.save(tmp_path / "ix")
    other = M3Model.from_pretrained(make_tiny_bert(tmp_path / "other", seed=1), device="cpu")
    with pytest.raises(ModelMismatchError, match="built with model .*but the given model is") as err:
        CorpusIndex.load(path, other)
    assert str(tiny_m3.name_or_path) in str(err.value) and str(other.name_or_path) in str(err.value)
    same_weights_other_pooling = M3Model.from_pretrained(tiny_m3.name_or_path, pooling="cls", device="cpu")
    with pytest.raises(ModelMismatchError, match="pooling 'mean'"):
        CorpusIndex.load(path, same_weights_other_pooling)


def test_fingerprint_sees_a_changed_head(tiny_m3):
    before = model_fingerprint(tiny_m3)
    with torch.no_grad():
        tiny_m3.sparse_linear.bias += 1e-2
    try:
        assert model_fingerprint(tiny_m3) != before
    finally:
        with torch.no_grad():
            tiny_m3.sparse_linear.bias -= 1e-2
    assert model_fingerprint(tiny_m3) == before


def test_corrupt_index_directories(index, tiny_m3, tmp_path):
    good = index.save(tmp_path / "good")

    def copy(name):
        return shutil.copytree(good, tmp_path / name)

    with pytest.raises(FileNotFoundError, match="does not exist"):
        CorpusIndex.load(tmp_path / "nowhere", tiny_m3)
    bad = copy("no-manifest")
    (bad / "manifest.json").unlink()
    with pytest.raises(CorruptIndexError, match="manifest.json: missing"):
        CorpusIndex.load(bad, tiny_m3)
    bad = copy("bad-json")
    (bad / "manifest.json").write_text('{"format": "m3lab-corpus-index",\n  oops')
    with pytest.raises(CorruptIndexError, match=r"manifest.json:2: not valid JSON"):
        CorpusIndex.load(bad, tiny_m3)
    bad = copy("missing-field")
    m = json.loads((bad / "manifest.json").read_text())
    del m["model"]["fingerprint"]
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CorruptIndexError, match="'model.fingerprint' is missing"):
        CorpusIndex.load(bad, tiny_m3)
    bad = copy("missing-file")
    (bad / "sparse.npz").unlink()
    with pytest.raises(CorruptIndexError, match="sparse.npz: missing"):
        CorpusIndex.load(bad, tiny_m3)
    bad = copy("truncated")
    data = (bad / "colbert_vectors.npy").read_bytes()
    (bad / "colbert_vectors.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptIndexError, match="colbert_vectors.npy: .* bytes, the manifest says"):
        CorpusIndex.load(bad, tiny_m3)
    bad = copy("altered")
    data = bytearray((bad / "dense.npy").read_bytes())
    data[-1] ^= 0xFF
    (bad / "dense.npy").write_bytes(bytes(data))
    with pytest.raises(CorruptIndexError, match="dense.npy: SHA-256 differs"):
        CorpusIndex.load(bad, tiny_m3)
    # without the hash check, a file that no longer parses is still named
    bad = copy("garbage")
    size = (bad / "colbert_offsets.npy").stat().st_size
    (bad / "colbert_offsets.npy").write_bytes(b"\x00" * size)
    with pytest.raises(CorruptIndexError, match="colbert_offsets.npy: cannot be read"):
        CorpusIndex.load(bad, tiny_m3, verify=False)


def test_bad_queries_and_options(index, tiny_m3):
    with pytest.raises(ValueError, match="the query is empty"):
        index.search("   ")
    with pytest.raises(ValueError, match="query 1 is empty"):
        index.search(["fine", ""])
    with pytest.raises(TypeError, match=r"texts\[0\] is int"):
        index.search([3])
    with pytest.raises(ValueError, match="unknown mode 'bm42'; the modes are dense, sparse, colbert, hybrid"):
        index.search("x", mode="bm42")
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        index.search("x", top_k=0)
    with pytest.raises(ValueError, match="empty corpus"):
        CorpusIndex.build(tiny_m3, [], show_progress=False)
    with pytest.raises(ValueError, match="duplicate document id 'a'"):
        CorpusIndex.build(tiny_m3, [Document("a", "x"), Document("a", "y")], show_progress=False)
    with pytest.raises(ValueError, match="dense_index must be one of"):
        CorpusIndex.build(tiny_m3, ["x"], dense_index="annoy", show_progress=False)
    dense_only = CorpusIndex.build(tiny_m3, ["a cat", "a dog"], store=("dense",), show_progress=False)
    with pytest.raises(ValueError, match=r"stores no sparse embeddings \(built with store=\('dense',\)\)"):
        dense_only.search("cat", mode="sparse")
    # top_k beyond the corpus returns the whole corpus
    assert len(dense_only.search("cat", mode="dense", top_k=50)) == 2
    assert [d.id for d in dense_only.documents] == ["doc-0", "doc-1"]


def test_approximate_dense_indexes(tiny_m3, mini, index, tmp_path):
    q = index.encode_queries([d.text[:80] for d in mini.corpus[:20]])
    exact = index.rank(q, ["dense"], top_k=5)["dense"]
    # IVF probing every list is exact
    ivf = CorpusIndex.build(tiny_m3, mini.corpus, max_length=128, store=("dense",), dense_index="ivf",
                            ivf_nlist=4, nprobe=4, show_progress=False)
    np.testing.assert_array_equal(ivf.rank(q, ["dense"], top_k=5)["dense"].indices, exact.indices)
    loaded = CorpusIndex.load(ivf.save(tmp_path / "ivf"), tiny_m3)
    np.testing.assert_array_equal(loaded.rank(q, ["dense"], top_k=5)["dense"].indices, exact.indices)
    # HNSW on 63 vectors finds (nearly) the exact neighbours; its scores are still exact inner products
    hnsw = CorpusIndex.build(tiny_m3, mini.corpus, max_length=128, store=("dense",), dense_index="hnsw",
                             show_progress=False)
    got = hnsw.rank(q, ["dense"], top_k=5)["dense"]
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(got.indices, exact.indices)])
    assert overlap >= 0.9
    brute = scoring.dense_scores(q.dense, hnsw.dense)
    np.testing.assert_allclose(got.scores, np.take_along_axis(brute, got.indices, axis=1), atol=1e-6)
    loaded = CorpusIndex.load(hnsw.save(tmp_path / "hnsw"), tiny_m3)
    np.testing.assert_array_equal(loaded.rank(q, ["dense"], top_k=5)["dense"].indices, got.indices)


def test_float16_multivectors_are_the_default(tiny_m3, mini, index):
    half = CorpusIndex.build(tiny_m3, mini.corpus, max_length=128, store=("colbert",), show_progress=False)
    assert half.colbert_vectors.dtype == np.float16 and half.settings["colbert_dtype"] == "float16"
    assert half.nbytes()["colbert"] - 8 * (len(half) + 1) == index.nbytes()["colbert"] // 2 - 4 * (len(half) + 1)
    q = index.encode_queries(QUERIES)
    a = index.rank(q, ["colbert"], top_k=5)["colbert"]
    b = half.rank(q, ["colbert"], top_k=5)["colbert"]
    np.testing.assert_allclose(b.scores, a.scores, atol=2e-3)


def test_minilm_dense_retrieval_on_xquad(data_dir, minilm_dir):
    """A real model puts most questions' paragraph first: MRR@10 over 20 XQuAD-en paragraphs."""
    ds = load_xquad("en", data_dir=data_dir)
    corpus = ds.corpus[:20]
    keep = {d.id for d in corpus}
    queries = [q for q in ds.queries if set(ds.qrels[q.id]) <= keep][:60]
    model = M3Model.from_pretrained(minilm_dir, pooling="mean", device="cpu")
    ix = CorpusIndex.build(model, corpus, max_length=256, store=("dense",), show_progress=False)
    results = ix.search([q.text for q in queries], mode="dense", top_k=10)
    rr = []
    for q, res in zip(queries, results):
        ranks = [r.rank for r in res if r.doc_id in ds.qrels[q.id]]
        rr.append(1 / ranks[0] if ranks else 0.0)
    assert len(queries) >= 50
    assert np.mean(rr) > 0.5


def test_sparse_scores_inverted_equals_sparse_scores():
    """The inverted-index form of s_lex (added to m3lab.scoring for CorpusIndex) is the same formula."""
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    p = sp.random(40, 500, density=0.05, format="csr", dtype=np.float32, random_state=rng)
    q = sp.random(7, 500, density=0.05, format="csr", dtype=np.float32, random_state=rng)
    np.testing.assert_allclose(scoring.sparse_scores_inverted(q, p.T.tocsr()), scoring.sparse_scores(q, p), rtol=1e-6)
    # and by hand on one pair: sum over shared tokens of w_qt * w_pt
    i, j = 3, 11
    shared = set(q[i].indices) & set(p[j].indices)
    expected = sum(q[i, t] * p[j, t] for t in shared)
    assert scoring.sparse_scores_inverted(q, p.T.tocsr())[i, j] == pytest.approx(expected, rel=1e-6)
