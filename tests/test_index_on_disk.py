"""CorpusIndex.build_on_disk: multi-vectors written chunk by chunk to a memory-mapped store, the same
index as an in-memory build, resumed after an interruption, refusing a mismatched resume or a partial
index. (The store's own memory-cap test is in test_vector_store.py.)"""
from __future__ import annotations

import numpy as np
import pytest

from m3lab.retrieval import CorpusIndex, CorruptIndexError
from test_index import QUERIES, mini, tiny_m3  # noqa: F401 - test_index's fixtures, shared

OPTIONS = dict(max_length=128, show_progress=False)


@pytest.mark.parametrize("colbert_dtype", ["float16", "int8"])
def test_on_disk_index_equals_the_in_memory_one(tiny_m3, mini, tmp_path, colbert_dtype):
    disk = CorpusIndex.build_on_disk(tiny_m3, mini.corpus, tmp_path / "ix", chunk_size=16,
                                     colbert_dtype=colbert_dtype, muvera={"num_repetitions": 2}, **OPTIONS)
    memory = CorpusIndex.build(tiny_m3, mini.corpus, colbert_dtype=colbert_dtype, muvera={"num_repetitions": 2},
                               **OPTIONS)
    assert isinstance(disk.colbert_vectors, np.memmap) and disk.settings["colbert_storage"] == "memmap"
    np.testing.assert_array_equal(disk.colbert_offsets, memory.colbert_offsets)
    # chunks are encoded in other batches than the whole corpus: equal up to float rounding of the
    # encoder (fp32 sums in another order, ~1e-6), which float16 storage rounds away in almost every
    # coordinate; int8 codes may move by one step where a value sits on a rounding boundary
    if colbert_dtype == "float16":
        assert np.mean(np.asarray(disk.colbert_vectors) == memory.colbert_vectors) > 0.999
    else:
        assert np.abs(np.asarray(disk.colbert_vectors, np.int16) - memory.colbert_vectors).max() <= 1
    np.testing.assert_allclose(disk.dense, memory.dense, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(disk.muvera_fde, memory.muvera_fde, rtol=1e-4, atol=1e-5)
    for mode in ("dense", "sparse", "colbert", "hybrid"):
        a = disk.search(QUERIES[0], mode=mode, top_k=5)
        b = memory.search(QUERIES[0], mode=mode, top_k=5)
        np.testing.assert_allclose([r.score for r in a], [r.score for r in b], rtol=1e-3, atol=1e-4)
    again = CorpusIndex.load(tmp_path / "ix", tiny_m3)  # verify=True: hashes the small files, sizes the store
    assert again.search(QUERIES[1], mode="colbert")[0].doc_id == disk.search(QUERIES[1], mode="colbert")[0].doc_id
    with pytest.raises(FileExistsError, match="already holds a finished index"):
        CorpusIndex.build_on_disk(tiny_m3, mini.corpus, tmp_path / "ix", chunk_size=16, **OPTIONS)
    with pytest.raises(ValueError, match="lives where it was built"):
        disk.save(tmp_path / "copy")


def test_an_interrupted_build_resumes_where_it_stopped(tiny_m3, mini, tmp_path, monkeypatch):
    path = tmp_path / "ix"
    real_build = CorpusIndex.build.__func__
    calls = []

    def failing_build(cls, model, docs, **kw):
        calls.append(len(docs))
        if len(calls) == 4:  # the probe, then chunks 0 and 1 succeed; chunk 2 "crashes"
            raise KeyboardInterrupt("simulated interruption")
        return real_build(cls, model, docs, **kw)

    monkeypatch.setattr(CorpusIndex, "build", classmethod(failing_build))
    with pytest.raises(KeyboardInterrupt):
        CorpusIndex.build_on_disk(tiny_m3, mini.corpus, path, chunk_size=16, **OPTIONS)
    with pytest.raises(CorruptIndexError, match="missing"):
        CorpusIndex.load(path, tiny_m3)  # no manifest yet: a partial index is refused
    # resumed with other options: refused, naming the differing field
    monkeypatch.setattr(CorpusIndex, "build", classmethod(real_build))
    with pytest.raises(ValueError, match="pool_factor"):
        CorpusIndex.build_on_disk(tiny_m3, mini.corpus, path, chunk_size=16, pool_factor=2, **OPTIONS)
    calls.clear()

    def counting_build(cls, model, docs, **kw):
        calls.append(len(docs))
        return real_build(cls, model, docs, **kw)

    monkeypatch.setattr(CorpusIndex, "build", classmethod(counting_build))
    resumed = CorpusIndex.build_on_disk(tiny_m3, mini.corpus, path, chunk_size=16, **OPTIONS)
    n = len(mini.corpus)
    n_chunks = -(-n // 16)
    assert len(calls) == 1 + n_chunks - 2  # the probe, then only the chunks not committed before
    monkeypatch.setattr(CorpusIndex, "build", classmethod(real_build))
    fresh = CorpusIndex.build_on_disk(tiny_m3, mini.corpus, tmp_path / "fresh", chunk_size=16, **OPTIONS)
    np.testing.assert_array_equal(np.asarray(resumed.colbert_vectors), np.asarray(fresh.colbert_vectors))
    np.testing.assert_array_equal(resumed.dense, fresh.dense)
    assert (resumed.sparse != fresh.sparse).nnz == 0
    assert not (path / "parts").exists()
