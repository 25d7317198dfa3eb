"""Encoding beyond one process (issue 15, part 4): EncodePool workers give the single-process output,
index builds take processes=, and a torchrun build fills one Qdrant collection from 2 ranks.

Tolerance: the workers run the same padded batches as one process does, so only float32 rounding
under a different thread split could differ (~1e-7 on unit vectors); 1e-6 absolute on normalised
embeddings and lexical weights of order 1 allows that and nothing else. The token sets must be equal.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from m3lab.data import load_mini
from m3lab.modeling import EncodePool
from m3lab.retrieval import CorpusIndex, QdrantIndex
from test_index import QUERIES, tiny_m3  # noqa: F401 - test_index's fixture, shared
from test_qdrant import FP16_TOL, assert_same_ranking

TOL = 1e-6


@pytest.fixture(scope="module")
def texts():
    return [d.text for d in load_mini().corpus]  # 378 passages in 6 languages


def assert_same_encoding(a, b) -> None:
    np.testing.assert_allclose(b.dense, a.dense, rtol=0, atol=TOL)
    for x, y in zip(a.sparse, b.sparse, strict=True):
        assert set(x) == set(y)
        np.testing.assert_allclose([y[t] for t in x], list(x.values()), rtol=0, atol=TOL)
    for x, y in zip(a.colbert, b.colbert, strict=True):
        assert x.shape == y.shape
        np.testing.assert_allclose(y, x, rtol=0, atol=TOL)
    assert all(np.array_equal(x, y) for x, y in zip(a.input_ids, b.input_ids, strict=True))


def test_two_worker_processes_encode_as_one_process(tiny_m3, texts):
    one = tiny_m3.encode_corpus(texts, batch_size=16, show_progress=False)
    with EncodePool(tiny_m3, processes=2) as pool:
        assert len(pool) == 2
        two = tiny_m3.encode_corpus(texts, batch_size=16, pool=pool, show_progress=False)
        assert_same_encoding(one, two)
        queries = tiny_m3.encode_queries(QUERIES, pool=pool, return_colbert=False)  # the pool is reused
        assert queries.colbert is None and queries.dense.shape == (len(QUERIES), tiny_m3.hidden_size)
        np.testing.assert_allclose(queries.dense, tiny_m3.encode_queries(QUERIES).dense, rtol=0, atol=TOL)
    # a pool for one call, by device list
    assert_same_encoding(one, tiny_m3.encode_corpus(texts, batch_size=16, devices=["cpu", "cpu"],
                                                    show_progress=False))


def test_index_builds_take_worker_processes(tiny_m3, tmp_path):
    docs = load_mini("en").corpus
    one = CorpusIndex.build(tiny_m3, docs, max_length=128, colbert_dtype="float32", show_progress=False)
    two = CorpusIndex.build(tiny_m3, docs, max_length=128, colbert_dtype="float32", processes=2,
                            show_progress=False)
    assert two.settings == one.settings  # the pool is not an index setting
    np.testing.assert_allclose(two.dense, one.dense, rtol=0, atol=TOL)
    for query in QUERIES:
        a, b = one.search(query, mode="hybrid"), two.search(query, mode="hybrid")
        assert [r.doc_id for r in a] == [r.doc_id for r in b]
    on_disk = CorpusIndex.build_on_disk(tiny_m3, docs, tmp_path / "disk", max_length=128, colbert_dtype="float32",
                                        chunk_size=20, processes=2, show_progress=False)
    assert [r.doc_id for r in on_disk.search(QUERIES[0], mode="colbert")] == \
           [r.doc_id for r in one.search(QUERIES[0], mode="colbert")]


def test_a_bad_pool_request_is_refused(tiny_m3):
    with pytest.raises(ValueError, match="processes >= 1"):
        EncodePool(tiny_m3, processes=0)
    with pytest.raises(ValueError, match="devices is empty"):
        EncodePool(tiny_m3, devices=[])


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_torchrun_ranks_encode_their_slices_into_one_qdrant_collection(tiny_m3, tmp_path):
    """2 CPU ranks (gloo): each encodes every other chunk; rank 0 writes them all to the embedded
    collection; the result searches as CorpusIndex does."""
    docs = load_mini("en").corpus
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": d.id, "title": d.title, "text": d.text}) + "\n" for d in docs),
                      encoding="utf-8")
    model_dir = tmp_path / "model"
    tiny_m3.save_pretrained(model_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "m3lab", "index", "build", str(corpus), str(tmp_path / "q"), "--backend", "qdrant",
                           "--model", str(model_dir), "--max-length", "128", "--chunk-size", "8"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # searched anywhere in stderr: the other rank's progress bars (\r, no newline) can share a line with it
    shares = {int(r): int(n) for r, n in re.findall(r"rank (\d+)/2: encoded (\d+) of", proc.stderr)}
    assert set(shares) == {0, 1} and all(v > 0 for v in shares.values()) and sum(shares.values()) == len(docs)
    assert json.loads(proc.stdout)["documents"] == len(docs)  # printed by rank 0 alone

    model = type(tiny_m3).from_pretrained(model_dir, device="cpu")
    reference = CorpusIndex.build(model, docs, max_length=128, show_progress=False)
    with QdrantIndex.open(model, path=tmp_path / "q") as index:
        assert index.doc_ids == [d.id for d in docs]
        for mode in ("dense", "sparse", "colbert", "hybrid"):
            expected = reference.search(QUERIES[0], mode=mode)
            assert_same_ranking(expected, index.search(QUERIES[0], mode=mode, exact=True),
                                FP16_TOL * max(1.0, max(abs(r.score) for r in expected)), f"torchrun {mode}",
                                reference=reference, query=QUERIES[0], mode=mode)
