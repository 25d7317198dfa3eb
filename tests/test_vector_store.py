"""The on-disk multi-vector store (m3lab.retrieval.vector_store): round trips in every storage dtype,
resume after a crash (byte-identical to a build in one go), refusals (spec mismatch, partial store,
truncated file, second writer), the scorer's view, and a store larger than the memory cap of the
process that builds and scans it."""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from m3lab.retrieval import vector_store as vs
from m3lab.retrieval.compression import dequantize_int8, quantize_int8
from m3lab.retrieval.vector_store import (
    CorruptStoreError,
    IncompleteStoreError,
    MultiVectorStore,
    MultiVectorStoreWriter,
    SpecMismatchError,
    StoreError,
)

ROOT = Path(__file__).resolve().parents[1]
DIM = 16
SPEC = {"model": "sha256:abc", "corpus": "sha256:def", "pooling": "cls", "pool_factor": 1}
DTYPES = ("float16", "float32", "int8")


def make_docs(n=23, seed=0, dim=DIM):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 9, size=n)
    lengths[0] = 5  # the first batch has rows whatever the draw
    return [rng.standard_normal((int(k), dim)).astype(np.float32) for k in lengths]


def expected(doc, dtype):
    if dtype == "int8":
        return dequantize_int8(*quantize_int8(doc))
    return doc.astype(dtype).astype(np.float32)


def build(path, docs, dtype, batches=(4, 7, 100), spec=SPEC):
    w = MultiVectorStoreWriter(path, dim=DIM, dtype=dtype, n_documents=len(docs), spec=spec)
    start = 0
    for size in batches:
        if start >= len(docs):
            break
        w.append(docs[start:start + size])
        start += size
    return w.finish()


def store_files(path):
    return {p.name: p.read_bytes() for p in sorted(Path(path).iterdir()) if not p.name.startswith(".")}


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip(tmp_path, dtype):
    docs = make_docs()
    store = build(tmp_path / "s", docs, dtype)
    assert len(store) == len(docs)
    assert isinstance(store.vectors, np.memmap) and store.vectors.mode == "r"
    assert store.vectors.dtype == np.dtype(dtype) and store.vectors.shape == (sum(map(len, docs)), DIM)
    assert (store.scales is not None) == (dtype == "int8")
    if dtype == "int8":
        assert isinstance(store.scales, np.memmap) and store.scales.dtype == np.float32
    np.testing.assert_array_equal(store.lengths, [len(d) for d in docs])
    np.testing.assert_array_equal(store.offsets, np.concatenate([[0], np.cumsum([len(d) for d in docs])]))
    assert store.offsets.dtype == np.int64
    for i, d in enumerate(docs):
        got = store[i]
        assert got.dtype == np.float32 and got.shape == d.shape and not isinstance(got, np.memmap)
        np.testing.assert_array_equal(got, expected(d, dtype))
    np.testing.assert_array_equal(store[-1], expected(docs[-1], dtype))
    assert [g.shape for g in store[2:5]] == [d.shape for d in docs[2:5]]
    with pytest.raises(IndexError):
        store[len(docs)]
    assert store.nbytes_on_disk == sum(p.stat().st_size for p in (tmp_path / "s").iterdir()
                                       if p.name not in (vs.JOURNAL, vs.LOCK))
    reopened = MultiVectorStore.open(tmp_path / "s", spec=SPEC)
    np.testing.assert_array_equal(reopened[3], store[3])
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["spec"] == SPEC and manifest["total_vectors"] == len(store.vectors)


def test_documents_view_feeds_the_scorer(tmp_path):
    from m3lab import scoring

    docs = make_docs(n=12)
    store = build(tmp_path / "s", docs, "float32")
    view = store.documents()
    np.testing.assert_array_equal(view.lengths, store.lengths)
    queries = make_docs(n=3, seed=1)
    np.testing.assert_allclose(scoring.colbert_scores_chunked(queries, view),
                               scoring.colbert_scores_chunked(queries, docs), rtol=1e-6, atol=1e-6)
    sub = store.documents([5, 0, -1])
    assert len(sub) == 3 and list(sub.lengths) == [len(docs[5]), len(docs[0]), len(docs[-1])]
    np.testing.assert_array_equal(sub[2], docs[-1])


def test_empty_store(tmp_path):
    w = MultiVectorStoreWriter(tmp_path / "e", dim=DIM, dtype="int8", n_documents=0, spec=SPEC)
    store = w.finish()
    assert len(store) == 0 and store.vectors.shape == (0, DIM) and store.total_vectors == 0


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_resume_after_crash_is_byte_identical(tmp_path, dtype, monkeypatch):
    docs = make_docs()
    build(tmp_path / "ref", docs, dtype, batches=(len(docs),))  # in one go
    path = tmp_path / "s"
    w = MultiVectorStoreWriter(path, dim=DIM, dtype=dtype, n_documents=len(docs), spec=SPEC)
    w.append(docs[:3])
    w.append(docs[3:8])
    committed = {p.name: p.stat().st_size for p in path.iterdir() if p.suffix == ".bin"}
    # (a) a crash mid-append: rows (not a whole number of them) written, no journal update
    for name in committed:
        with open(path / name, "ab") as f:
            f.write(os.urandom(1000 + 3))
    # (b) the writer dropped without finish()
    del w
    gc.collect()
    with pytest.raises(IncompleteStoreError, match=r"partial.*8 of 23 documents.*resumes"):
        MultiVectorStore.open(path)
    w = MultiVectorStoreWriter(path, dim=DIM, dtype=dtype, n_documents=len(docs), spec=dict(SPEC))
    assert w.n_committed == 8
    assert {p.name: p.stat().st_size for p in path.iterdir() if p.suffix == ".bin"} == committed  # garbage cut
    w.append(docs[8:15])
    # a crash after the data is written but before the journal is replaced: that batch is not committed
    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(vs, "_write_json_durably", crash)
    with pytest.raises(KeyboardInterrupt):
        w.append(docs[15:20])
    monkeypatch.undo()
    w.close()
    w = MultiVectorStoreWriter(path, dim=DIM, dtype=dtype, n_documents=len(docs), spec=SPEC)
    assert w.n_committed == 15
    w.append(docs[w.n_committed:])
    store = w.finish()
    assert store_files(path) == store_files(tmp_path / "ref")
    for i, d in enumerate(docs):
        np.testing.assert_array_equal(store[i], expected(d, dtype))
    # a finished store reopens as complete: nothing to append, finish() just opens it
    w = MultiVectorStoreWriter(path, dim=DIM, dtype=dtype, n_documents=len(docs), spec=SPEC)
    assert w.complete and w.n_committed == len(docs)
    with pytest.raises(StoreError, match="complete"):
        w.append(docs[:1])
    assert len(w.finish()) == len(docs)
    assert store_files(path) == store_files(tmp_path / "ref")


def test_failed_append_commits_nothing(tmp_path):
    docs = make_docs()
    w = MultiVectorStoreWriter(tmp_path / "s", dim=DIM, dtype="float16", n_documents=len(docs), spec=SPEC)
    w.append(docs[:4])
    with pytest.raises(ValueError, match=r"\(L, 16\)"):
        w.append([docs[4], np.zeros((3, DIM + 1))])
    with pytest.raises(ValueError, match="non-finite"):
        w.append([docs[4], np.full((2, DIM), np.nan)])
    with pytest.raises(ValueError, match="range of float16"):
        w.append([np.full((2, DIM), 1e6)])
    with pytest.raises(ValueError, match="more than the store's n_documents"):
        w.append(docs[4:] + docs[:1])
    with pytest.raises(IncompleteStoreError, match="only 4 of 23"):
        w.finish()
    assert w.n_committed == 4
    w.append(docs[4:])
    store = w.finish()
    np.testing.assert_array_equal(store[4], expected(docs[4], "float16"))


def test_spec_mismatch_refused(tmp_path):
    docs = make_docs()
    path = tmp_path / "s"
    w = MultiVectorStoreWriter(path, dim=DIM, dtype="float16", n_documents=len(docs), spec=SPEC)
    w.append(docs[:5])
    w.close()
    other = {**SPEC, "model": "sha256:zzz", "extra": 1}
    with pytest.raises(SpecMismatchError, match=r"spec\.extra: stored absent, given 1.*spec\.model: stored "
                                                r"'sha256:abc', given 'sha256:zzz'") as err:
        MultiVectorStoreWriter(path, dim=DIM, dtype="float16", n_documents=len(docs), spec=other)
    assert "pooling" not in str(err.value)
    with pytest.raises(SpecMismatchError, match=r"dim: stored 16, given 8.*dtype: stored 'float16', given 'int8'"
                                                r".*n_documents: stored 23, given 24"):
        MultiVectorStoreWriter(path, dim=8, dtype="int8", n_documents=24, spec=SPEC)
    # refusals leave the partial store as it was
    w = MultiVectorStoreWriter(path, dim=DIM, dtype="float16", n_documents=len(docs), spec=SPEC)
    assert w.n_committed == 5
    w.append(docs[5:])
    w.finish()
    with pytest.raises(SpecMismatchError, match=r"spec\.pooling: stored 'cls', given 'mean'"):
        MultiVectorStore.open(path, spec={**SPEC, "pooling": "mean"})
    with pytest.raises(SpecMismatchError, match="spec.pool_factor"):
        MultiVectorStoreWriter(path, dim=DIM, dtype="float16", n_documents=len(docs), spec={**SPEC, "pool_factor": 2})
    assert len(MultiVectorStore.open(path)) == len(docs)  # no spec given: not checked


def test_partial_and_foreign_directories(tmp_path):
    docs = make_docs()
    path = tmp_path / "s"
    w = MultiVectorStoreWriter(path, dim=DIM, dtype="int8", n_documents=len(docs), spec=SPEC)
    with pytest.raises(IncompleteStoreError, match=r"partial.*0 of 23 documents done.*same spec resumes"):
        MultiVectorStore.open(path)
    with pytest.raises(StoreError, match="another MultiVectorStoreWriter"):
        MultiVectorStoreWriter(path, dim=DIM, dtype="int8", n_documents=len(docs), spec=SPEC)
    w.append(docs[:3])
    w.close()
    with pytest.raises(IncompleteStoreError, match="3 of 23"):
        MultiVectorStore.open(path, spec=SPEC)
    with pytest.raises(FileNotFoundError, match="not a multi-vector store"):
        MultiVectorStore.open(tmp_path / "nothing")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty and not a multi-vector store"):
        MultiVectorStoreWriter(tmp_path / "foreign", dim=DIM, dtype="int8", n_documents=1)


def test_committed_data_lost_is_refused(tmp_path):
    docs = make_docs()
    path = tmp_path / "s"
    w = MultiVectorStoreWriter(path, dim=DIM, dtype="float32", n_documents=len(docs), spec=SPEC)
    w.append(docs[:6])
    w.close()
    size = (path / "vectors.bin").stat().st_size
    os.truncate(path / "vectors.bin", size - 4)
    with pytest.raises(CorruptStoreError, match=r"vectors\.bin.*truncated after it was written"):
        MultiVectorStoreWriter(path, dim=DIM, dtype="float32", n_documents=len(docs), spec=SPEC)


@pytest.mark.parametrize("name", ["vectors.bin", "scales.bin", "lengths.bin", "offsets.npy"])
def test_truncated_file_after_finish_refused(tmp_path, name):
    build(tmp_path / "s", make_docs(), "int8").close()
    file = tmp_path / "s" / name
    os.truncate(file, file.stat().st_size - 1)
    with pytest.raises(CorruptStoreError, match=rf"{name.replace('.', '[.]')}: \d+ bytes, the manifest says"):
        MultiVectorStore.open(tmp_path / "s")
    file.unlink()
    with pytest.raises(CorruptStoreError, match=rf"{name.replace('.', '[.]')}: missing"):
        MultiVectorStore.open(tmp_path / "s")


# ---------------------------------------------------------------------- larger than the memory cap
# The batches of the big store, generated from a seed: the child process appends them, the parent
# recomputes the expected per-document scores from the same stream.
GEN = textwrap.dedent("""
    import numpy as np

    def batches(seed, n_batches, docs_per_batch, dim):
        rng = np.random.default_rng(seed)
        for _ in range(n_batches):
            lengths = rng.integers(100, 301, size=docs_per_batch)
            rows = rng.standard_normal((int(lengths.sum()), dim), dtype=np.float32)
            yield lengths, rows
""")

CHILD = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from m3lab.retrieval.vector_store import MultiVectorStore, MultiVectorStoreWriter
    from gen import batches

    path, out, headroom, seed, n_batches, per_batch, dim = sys.argv[1:8]
    headroom, seed, n_batches, per_batch, dim = map(int, (headroom, seed, n_batches, per_batch, dim))

    def vm_data():
        for line in open("/proc/self/status"):
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024

    # RLIMIT_DATA, not RLIMIT_AS: RLIMIT_AS caps address space, and a read-only map of a file counts in
    # full there, so under it a store larger than the cap could not even be opened (np.memmap fails
    # with ENOMEM; checked) - although mapping a file is what makes it fit. RLIMIT_DATA (Linux >= 4.7)
    # caps what a process allocates: heap and private writable maps, i.e. numpy arrays, but not shared
    # read-only file maps, whose pages the kernel reclaims at will. So it caps exactly the memory the
    # store must not need: any attempt to read the vectors into RAM fails with MemoryError.
    cap = vm_data() + headroom
    resource.setrlimit(resource.RLIMIT_DATA, (cap, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    try:  # the cap bites: an array a little larger than the headroom (10%: allocator slack) cannot be allocated
        np.ones(int(1.1 * headroom) // 8, dtype=np.float64)
        bites = False
    except MemoryError:
        bites = True

    q = np.random.default_rng(seed + 1).standard_normal(dim).astype(np.float32)
    n_docs = n_batches * per_batch
    w = MultiVectorStoreWriter(path, dim=dim, dtype="float16", n_documents=n_docs, spec={"seed": seed})
    for lengths, rows in batches(seed, n_batches, per_batch, dim):
        w.append(np.split(rows, np.cumsum(lengths)[:-1]))
        del lengths, rows
    store = w.finish()
    del w
    store = MultiVectorStore.open(path, spec={"seed": seed})
    best = np.array([(d @ q).max() for d in store.documents()], dtype=np.float32)
    np.save(out, best)
    print(json.dumps({"bites": bites, "cap": cap, "headroom": headroom, "vm_data_end": vm_data(),
                      "vectors_bytes": int(store.vectors.nbytes), "n_docs": len(store),
                      "memmap": isinstance(store.vectors, np.memmap)}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA counts private maps on Linux only")
def test_store_larger_than_the_memory_cap(tmp_path):
    headroom = 150 * 2**20
    seed, n_batches, per_batch, dim = 7, 26, 256, 128  # ~6,650 documents, ~1.33M float16 vectors: ~340 MB
    (tmp_path / "gen.py").write_text(GEN)
    (tmp_path / "child.py").write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = tmp_path / "best.npy"
    proc = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(tmp_path / "big"), str(out),
                           str(headroom), str(seed), str(n_batches), str(per_batch), str(dim)],
                          check=False, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["bites"], "the memory cap does not bite: the test would pass vacuously"
    assert report["memmap"]
    assert report["vectors_bytes"] > 2 * headroom  # the vectors exceed the memory the child may allocate
    assert report["vm_data_end"] <= report["cap"]

    namespace: dict = {}
    exec(GEN, namespace)  # noqa: S102 - the generator above, shared with the child
    q = np.random.default_rng(seed + 1).standard_normal(dim).astype(np.float32)
    want = []
    for lengths, rows in namespace["batches"](seed, n_batches, per_batch, dim):
        scores = rows.astype(np.float16).astype(np.float32) @ q
        want.append(np.maximum.reduceat(scores, np.concatenate([[0], np.cumsum(lengths)[:-1]])))
    want = np.concatenate(want)
    got = np.load(out)
    assert got.shape == want.shape == (report["n_docs"],)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
