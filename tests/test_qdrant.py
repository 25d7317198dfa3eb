"""QdrantIndex (issue 15): the engine's rankings against CorpusIndex's in every mode, for both backends
(qdrant-edge's embedded engine, qdrant-client's local mode), on the mini corpus and 12-language XQuAD;
reopening, resuming an interrupted build, refusing another model, and the cluster configuration a
URL backend is asked for.

Tolerances. Both indexes score the same float32 vectors (one shared encoding, multi-vectors stored
in float32), only the engines' summation orders differ: a dot product of unit vectors in d <= 384
float32 terms is off by at most ~d * 2^-24 ~ 2e-5 of the largest score, hence ``RTOL = 2e-5`` of the
largest score of a ranking (observed: ~2e-7). With float16 storage Qdrant rounds the query to float16 as
well (m3lab keeps it float32), at most 2^-11 ~ 5e-4 per unit-vector product: ``FP16_TOL = 1e-3``.
Rankings are compared position by position; two ids may trade places only where their scores tie
within that tolerance.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("qdrant_edge")
pytest.importorskip("qdrant_client")

from qdrant_client import QdrantClient  # noqa: E402

from m3lab import scoring  # noqa: E402
from m3lab.data import XQUAD_LANGUAGES, Document, load_xquad  # noqa: E402
from m3lab.evaluation.retrieval import evaluate_retrieval  # noqa: E402
from m3lab.modeling import M3Model  # noqa: E402
from m3lab.retrieval import CorpusIndex, ModelMismatchError, QdrantIndex  # noqa: E402
from m3lab.retrieval import qdrant as qdrant_module  # noqa: E402
from test_index import QUERIES, make_tiny_m3, mini, tiny_m3  # noqa: E402,F401 - test_index's fixtures, shared

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:Local mode performs exact:UserWarning")]

MODES = ("dense", "sparse", "colbert", "hybrid")
RTOL = 2e-5
FP16_TOL = 1e-3
WEIGHTS = [(1.0, 0.3, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.5), (0.0, 0.0, 1.0)]


def assert_same_ranking(expected, got, tol: float, context: str = "", *, reference=None, query=None,
                        mode=None, weights=scoring.DEFAULT_WEIGHTS) -> None:
    """Same length, scores equal within ``tol`` (absolute, already scaled), ids equal up to ties: where
    the ids differ, ``reference`` (a CorpusIndex) must score the engine's document as high as its own."""
    assert len(got) == len(expected), f"{context}: {len(got)} results, expected {len(expected)}"
    e_scores = np.array([r.score for r in expected])
    g_scores = np.array([r.score for r in got])
    np.testing.assert_allclose(g_scores, e_scores, rtol=0, atol=tol, err_msg=context)
    for rank, (e, g) in enumerate(zip(expected, got)):
        if e.doc_id != g.doc_id:  # allowed only between (near-)tied documents
            assert reference is not None, f"{context}: rank {rank + 1} is {g.doc_id}, expected {e.doc_id}"
            true = reference_score(reference, query, mode, weights, g.doc_id)
            assert abs(true - e.score) <= 2 * tol, \
                f"{context}: rank {rank + 1} is {g.doc_id} (score {true}), expected {e.doc_id} ({e.score}): no tie"
        for f in ("dense", "sparse", "colbert"):  # every function's score the result carries
            a, b = getattr(e, f), getattr(g, f)
            if e.doc_id == g.doc_id and a is not None and b is not None:
                assert abs(a - b) <= tol, f"{context}: {f} score of {e.doc_id}: {b} vs {a}"


def reference_score(reference: CorpusIndex, query: str, mode: str, weights, doc_id: str) -> float:
    """What ``reference`` scores one document for ``query`` in ``mode`` (m3lab.scoring, float32)."""
    position = reference.doc_ids.index(doc_id)
    encoded = reference.encode_queries(query, components=reference.components_for(mode, weights))
    scores = {f: float(v[0]) for f, v in reference.score_documents(encoded, [position]).items()}
    if mode != "hybrid":
        return scores[mode]
    return scoring.combine_scores(*(0.0 if np.isnan(scores[f]) else scores[f] for f in scoring.FUNCTIONS),
                                  weights=weights)


def tol_for(results, rtol: float) -> float:
    return rtol * max([abs(r.score) for r in results] + [1.0])


@pytest.fixture(scope="module")
def mini_encodings(tiny_m3, mini):
    return tiny_m3.encode_corpus([f"{d.title} {d.text}" for d in mini.corpus], max_length=128, show_progress=False)


@pytest.fixture(scope="module")
def reference(tiny_m3, mini, mini_encodings):
    return CorpusIndex.build(tiny_m3, mini.corpus, max_length=128, colbert_dtype="float32",
                             encodings=mini_encodings, show_progress=False)


@pytest.fixture(scope="module", params=["edge", "client"])
def qindex(request, tiny_m3, mini, mini_encodings, tmp_path_factory):
    where = ({"path": tmp_path_factory.mktemp("qdrant-edge")} if request.param == "edge"
             else {"client": QdrantClient(":memory:")})
    index = QdrantIndex.build(tiny_m3, mini.corpus, max_length=128, colbert_dtype="float32",
                              encodings=mini_encodings, show_progress=False, **where)
    yield index
    index.close()


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_ranks_as_corpus_index_does(qindex, reference, mode):
    for query in QUERIES + ["photosynthèse chlorophylle", "WTO 1995 Geneva"]:
        expected = reference.search(query, mode=mode, top_k=10)
        got = qindex.search(query, mode=mode, top_k=10, exact=True)
        assert_same_ranking(expected, got, tol_for(expected, RTOL), f"{qindex.backend.kind} {mode} {query!r}",
                            reference=reference, query=query, mode=mode)
        by_id = {d.id: d for d in reference.documents}
        assert all(r.document == by_id[r.doc_id] for r in got)  # the payload gives back the whole document


@pytest.mark.parametrize("weights", WEIGHTS)
def test_hybrid_formula_in_the_engine_is_m3s_weighted_sum(qindex, reference, weights):
    """Any weights: the engine's formula (w3 / n_q on its MaxSim sum) gives CorpusIndex's s_rank,
    and each result's score is combine_scores of the function scores it carries."""
    for query in QUERIES:
        expected = reference.search(query, mode="hybrid", top_k=10, weights=weights, candidates=20)
        got = qindex.search(query, mode="hybrid", top_k=10, weights=weights, candidates=20, exact=True)
        tol = tol_for(expected, RTOL)
        assert_same_ranking(expected, got, tol, f"{qindex.backend.kind} hybrid {weights} {query!r}",
                            reference=reference, query=query, mode="hybrid", weights=weights)
        for r in got:
            parts = [0.0 if getattr(r, f) is None else getattr(r, f) for f in scoring.FUNCTIONS]
            assert abs(scoring.combine_scores(*parts, weights=weights) - r.score) <= 4 * tol


def test_batch_search_and_evaluation_match(qindex, reference, tiny_m3, mini):
    batch = qindex.search(QUERIES, mode="hybrid", top_k=5, exact=True)
    assert [[r.doc_id for r in rows] for rows in batch] == \
           [[r.doc_id for r in rows] for rows in reference.search(QUERIES, mode="hybrid", top_k=5)]
    ours = evaluate_retrieval(qindex, mini, ["dense", "sparse", "colbert", "hybrid"], max_length=128,
                              show_progress=False)
    theirs = evaluate_retrieval(reference, mini, ["dense", "sparse", "colbert", "hybrid"], max_length=128,
                                show_progress=False)
    for a, b in zip(ours, theirs):
        assert a["mode"] == b["mode"]
        for metric in ("ndcg@10", "recall@100", "mrr@10"):
            assert a[metric] == pytest.approx(b[metric], abs=1e-9), (a["mode"], metric)
        assert a["index"].startswith("qdrant-")


def test_float16_storage_matches_within_its_rounding(tiny_m3, mini, mini_encodings, tmp_path):
    reference16 = CorpusIndex.build(tiny_m3, mini.corpus, max_length=128, encodings=mini_encodings,
                                    show_progress=False)  # float16 multi-vectors, m3lab's default
    q16 = QdrantIndex.build(tiny_m3, mini.corpus, path=tmp_path / "q16", max_length=128, encodings=mini_encodings,
                            show_progress=False)
    assert q16.settings["colbert_dtype"] == "float16"
    for mode in ("colbert", "hybrid"):
        for query in QUERIES:
            expected = reference16.search(query, mode=mode, top_k=10)
            assert_same_ranking(expected, q16.search(query, mode=mode, top_k=10, exact=True),
                                FP16_TOL * max(1.0, max(abs(r.score) for r in expected)), f"fp16 {mode} {query!r}",
                                reference=reference16, query=query, mode=mode)


def test_xquad_12_languages_every_mode_both_backends(data_dir, tiny_xlmr_dir, tmp_path_factory):
    """The issue's multilingual check: 2,880 XQuAD passages of 12 languages, questions of every language."""
    model = make_tiny_m3(tmp_path_factory.mktemp("tiny-xlmr-m3"), tiny_xlmr_dir, seed=1)
    docs, questions = [], []
    for lang in XQUAD_LANGUAGES:
        ds = load_xquad(lang, data_dir=data_dir)
        docs += [Document(f"{lang}/{d.id}", d.text, lang, d.title) for d in ds.corpus]
        questions += [q.text for q in ds.queries[:3]]
    assert len(docs) == 2880 and len(questions) == 36
    enc = model.encode_corpus([f"{d.title} {d.text}".strip() for d in docs], max_length=128, show_progress=False)
    reference = CorpusIndex.build(model, docs, max_length=128, colbert_dtype="float32", encodings=enc,
                                  show_progress=False)
    edge = QdrantIndex.build(model, docs, path=tmp_path_factory.mktemp("xquad-edge"), max_length=128,
                             colbert_dtype="float32", encodings=enc, show_progress=False, chunk_size=1024)
    client = QdrantIndex.build(model, docs, client=QdrantClient(":memory:"), max_length=128,
                               colbert_dtype="float32", encodings=enc, show_progress=False, chunk_size=1024)
    for index, queries in ((edge, questions), (client, questions[::6])):  # local mode is numpy: slower
        for mode in MODES:
            expected = reference.search(queries, mode=mode, top_k=10)
            got = index.search(queries, mode=mode, top_k=10, exact=True)
            for q, e, g in zip(queries, expected, got):
                assert_same_ranking(e, g, tol_for(e, RTOL), f"xquad {index.backend.kind} {mode} {q!r}",
                                    reference=reference, query=q, mode=mode)
    edge.close()


def test_reopen_gives_the_same_results_and_refuses_another_model(tiny_m3, mini, mini_encodings, tmp_path,
                                                                  tiny_bert_dir):
    path = tmp_path / "q"
    built = QdrantIndex.build(tiny_m3, mini.corpus, path=path, max_length=128, encodings=mini_encodings,
                              show_progress=False)
    before = built.search(QUERIES[0], mode="hybrid", exact=True)
    built.close()
    with QdrantIndex.open(tiny_m3, path=path) as reopened:
        assert len(reopened) == len(mini.corpus) and reopened.doc_ids == [d.id for d in mini.corpus]
        assert reopened.search(QUERIES[0], mode="hybrid", exact=True) == before
    other = make_tiny_m3(tmp_path / "other", tiny_bert_dir, seed=7)
    with pytest.raises(ModelMismatchError, match="built with model"):
        QdrantIndex.open(other, path=path)
    with pytest.raises(ModelMismatchError, match="built with model"):  # nor is it extended by another model
        QdrantIndex.build(other, mini.corpus, path=path, max_length=128, show_progress=False)
    with pytest.raises(ValueError, match="another corpus"):
        QdrantIndex.build(tiny_m3, mini.corpus[:10], path=path, max_length=128, show_progress=False)
    with pytest.raises(FileNotFoundError, match="no m3lab Qdrant index"):
        QdrantIndex.open(tiny_m3, path=tmp_path / "nothing-here")
    (path / "m3lab.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not an m3lab Qdrant index"):
        QdrantIndex.open(tiny_m3, path=path)


@pytest.mark.parametrize("backend", ["edge", "client"])
def test_an_interrupted_build_resumes_where_it_stopped(backend, tiny_m3, mini, tmp_path, monkeypatch):
    where = {"path": tmp_path / "q"} if backend == "edge" else {"client": QdrantClient(":memory:")}
    cls = qdrant_module._EdgeBackend if backend == "edge" else qdrant_module._ClientBackend
    real_upsert, calls = cls.upsert, {"n": 0}

    def failing_upsert(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the user stops the build during the third chunk
        return real_upsert(self, *args)

    monkeypatch.setattr(cls, "upsert", failing_upsert)
    with pytest.raises(KeyboardInterrupt):
        QdrantIndex.build(tiny_m3, mini.corpus, max_length=128, chunk_size=10, show_progress=False, **where)
    monkeypatch.setattr(cls, "upsert", real_upsert)
    with pytest.raises(ValueError, match="stopped after 20 of 63 documents"):
        QdrantIndex.open(tiny_m3, **where)

    encoded: list[int] = []
    real_encode = M3Model.encode_corpus
    monkeypatch.setattr(M3Model, "encode_corpus", lambda self, texts, **kw: (encoded.append(len(texts)),
                                                                              real_encode(self, texts, **kw))[1])
    resumed = QdrantIndex.build(tiny_m3, mini.corpus, max_length=128, chunk_size=10, show_progress=False, **where)
    assert sum(encoded) == len(mini.corpus) - 20  # only what was not written yet
    assert resumed.manifest["complete"] and resumed.backend.count() == len(mini.corpus)
    reference = CorpusIndex.build(tiny_m3, mini.corpus, max_length=128, show_progress=False)
    for mode in MODES:
        expected = reference.search(QUERIES[1], mode=mode)
        assert_same_ranking(expected, resumed.search(QUERIES[1], mode=mode, exact=True),
                            FP16_TOL * max(1.0, max(abs(r.score) for r in expected)), f"resumed {mode}",
                            reference=reference, query=QUERIES[1], mode=mode)


class RecordingClient(QdrantClient):
    """qdrant-client's local mode that records what the adapter asks a server for."""

    created: list[dict] = []

    def __init__(self, url=None, api_key=None, **kwargs):
        super().__init__(":memory:")
        RecordingClient.made_with = {"url": url, "api_key": api_key}

    def create_collection(self, collection_name, **kwargs):
        RecordingClient.created.append({"collection": collection_name, **kwargs})
        cluster = {k: kwargs.pop(k) for k in ("shard_number", "replication_factor", "write_consistency_factor")
                   if k in kwargs}
        assert cluster  # local mode has no shards: the request is what is checked
        return super().create_collection(collection_name, **kwargs)


def test_a_url_backend_is_asked_for_a_sharded_replicated_collection(tiny_m3, mini, mini_encodings, monkeypatch):
    import qdrant_client

    monkeypatch.setattr(qdrant_client, "QdrantClient", RecordingClient)
    RecordingClient.created.clear()
    index = QdrantIndex.build(tiny_m3, mini.corpus, url="http://qdrant-node-1:6333", api_key="secret",
                              collection="wiki", shards=6, replication_factor=2, write_consistency_factor=2,
                              max_length=128, encodings=mini_encodings, show_progress=False)
    assert RecordingClient.made_with == {"url": "http://qdrant-node-1:6333", "api_key": "secret"}
    (request,) = RecordingClient.created
    assert request["collection"] == "wiki"
    assert (request["shard_number"], request["replication_factor"], request["write_consistency_factor"]) == (6, 2, 2)
    vectors = request["vectors_config"]
    assert vectors["dense"].size == tiny_m3.hidden_size and vectors["dense"].distance.name == "DOT"
    assert vectors["colbert"].multivector_config.comparator.name == "MAX_SIM"
    assert vectors["colbert"].hnsw_config.m == 0  # multi-vectors are scored, never graph-searched
    assert set(request["sparse_vectors_config"]) == {"sparse"}
    assert "qdrant-node-1:6333" in index.backend.location
    assert index.search(QUERIES[0], mode="dense", top_k=3)


def test_bad_arguments_are_refused(tiny_m3, mini, tmp_path):
    with pytest.raises(ValueError, match="one of path="):
        QdrantIndex.build(tiny_m3, mini.corpus, path=tmp_path, url="http://x:6333", show_progress=False)
    with pytest.raises(ValueError, match="colbert_dtype"):
        QdrantIndex.build(tiny_m3, mini.corpus, path=tmp_path, colbert_dtype="int8", show_progress=False)
    with pytest.raises(ValueError, match="unknown mode"):
        QdrantIndex.build(tiny_m3, mini.corpus[:3], path=tmp_path / "q", show_progress=False).search("x", mode="bm")


def test_cli_builds_shows_and_evaluates_a_qdrant_index(tiny_m3, mini, tmp_path, capsys):
    from m3lab.cli import main

    model_dir = tmp_path / "model"
    tiny_m3.save_pretrained(model_dir)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": d.id, "title": d.title, "text": d.text}) + "\n"
                              for d in mini.corpus[:12]), encoding="utf-8")
    assert main(["index", "build", str(corpus), str(tmp_path / "q"), "--model", str(model_dir),
                 "--backend", "qdrant", "--max-length", "64"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["backend"] == "edge" and built["documents"] == 12
    assert main(["index", "info", str(tmp_path / "q")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["complete"] and info["corpus"]["n_documents"] == 12 and info["settings"]["max_length"] == 64
    with QdrantIndex.open(M3Model.from_pretrained(model_dir, device="cpu"), path=tmp_path / "q") as index:
        assert index.search(mini.queries[0].text, mode="sparse", top_k=3)

    runs = {}
    for backend in ("memory", "qdrant"):
        out_file = tmp_path / f"{backend}.json"
        assert main(["eval", "--model", str(model_dir), "--dataset", "mini", "--languages", "en", "--modes",
                     "dense,sparse,colbert,hybrid", "--max-length", "64", "--backend", backend,
                     "--json", str(out_file)]) == 0, capsys.readouterr().err
        runs[backend] = json.loads(out_file.read_text())["results"]
    for a, b in zip(runs["memory"], runs["qdrant"]):
        assert a["mode"] == b["mode"] and a["ndcg@10"] == pytest.approx(b["ndcg@10"], abs=1e-6), a["mode"]
    assert runs["qdrant"][0]["index"] == "qdrant-edge,colbert_dtype=float32"
    assert main(["eval", "--model", str(model_dir), "--dataset", "mini", "--backend", "qdrant", "--index-spec",
                 "compact"]) != 0
    assert "--backend qdrant stores every function" in capsys.readouterr().err


def test_the_app_searches_and_explains_a_qdrant_index(tiny_m3, tmp_path, monkeypatch):
    """`m3lab demo --qdrant DIR`: the app's views on an embedded Qdrant index give what they give on
    the in-memory index of the same corpus (search, per-function scores, Sparse, MaxSim, Projection)."""
    pytest.importorskip("gradio")
    from app import callbacks as cb
    from app.corpora import mini_corpus
    from app.state import build_workspace, qdrant_workspace

    monkeypatch.setenv("M3LAB_CACHE_DIR", str(tmp_path / "cache"))
    corpus = mini_corpus(["en", "de"])
    QdrantIndex.build(tiny_m3, corpus.documents, path=tmp_path / "q", colbert_dtype="float32",
                      show_progress=False).close()
    ours = qdrant_workspace(tiny_m3, "tiny", tmp_path / "q")
    reference = build_workspace(tiny_m3, "tiny", corpus, show_progress=False, spec="colbert_dtype=float32")
    assert "Qdrant index q" in ours.describe() and len(ours.index) == len(corpus.documents)
    query = "where is the tower of paris built"
    for mode in ("dense", "sparse", "multi-vector", "hybrid"):
        a, b = cb.search(reference, query, mode, top_k=5), cb.search(ours, query, mode, top_k=5)
        assert list(b.table["id"]) == list(a.table["id"]), mode
        for column in ("score", "dense", "sparse", "colbert"):
            np.testing.assert_allclose(b.table[column].astype(float), a.table[column].astype(float),
                                       rtol=0, atol=1e-4, err_msg=f"{mode} {column}")
    hybrid = cb.search(ours, query, "hybrid", top_k=5)
    doc = hybrid.session["doc_ids"][0]
    for view in (cb.sparse_view, cb.maxsim_view):  # each explains the same pair as on the in-memory index
        assert view(ours, hybrid.session, doc).message == view(reference, cb.search(reference, query, "hybrid",
                                                                                     top_k=5).session, doc).message
    np.testing.assert_allclose(ours.index.dense_vectors(), reference.index.dense_vectors(), rtol=0, atol=1e-6)
    assert cb.projection_view(ours, hybrid.session).figure is not None
