"""An on-disk, memory-mapped multi-vector store (issue 14, item 5: an index larger than memory).

A corpus's multi-vectors (~150 vectors of d floats per passage) outgrow RAM long before its dense
vectors do. :class:`MultiVectorStoreWriter` writes them to a directory in batches of documents, in
bounded memory (one batch at a time), and survives an interruption: reopening the writer with the
same spec resumes after the last committed batch. :class:`MultiVectorStore` maps the finished
store read-only (``np.memmap``), so opening it reads no vectors and a scorer pages in only the
documents it touches::

    w = MultiVectorStoreWriter("mv", dim=1024, dtype="float16", n_documents=len(corpus),
                               spec={"model": model_fingerprint, "corpus": corpus_hash})
    for batch in batches(corpus[w.n_committed:]):      # resumes where an interrupted run stopped
        w.append([encode(doc) for doc in batch])       # a list of (L_i, dim) float arrays
    store = w.finish()                                 # == MultiVectorStore.open("mv", spec=...)
    scoring.colbert_scores_chunked(queries, store.documents())

Layout, the same conventions as :class:`m3lab.CorpusIndex` (one contiguous (total, dim) array
plus int64 offsets; storage dtypes of :mod:`m3lab.retrieval.compression`). All binary files are
raw little-endian C-order arrays without a header, appended to and never rewritten:

==================  ===================================================================
``vectors.bin``     (total_vectors, dim) rows of ``dtype``: ``<f2`` (float16), ``<f4``
                    (float32) or ``i1`` (int8 codes)
``scales.bin``      int8 only: (total_vectors,) ``<f4``, one scale per vector
                    (``vector ~= code * scale``, :func:`~m3lab.retrieval.compression.quantize_int8`)
``lengths.bin``     (n_documents,) ``<i8``: the number of vectors of each document, in order
``progress.json``   the journal, replaced atomically after every batch: ``format``
                    (``"m3lab-multivector-store"``), ``format_version``, ``dim``, ``dtype``,
                    ``n_documents``, ``spec`` (the caller's dict), ``n_committed`` (documents
                    whose lengths and rows are durable), ``rows_committed`` (their vectors)
``offsets.npy``     written by ``finish()``: (n_documents + 1,) int64, document ``i`` owns rows
                    ``offsets[i]:offsets[i+1]`` (NumPy ``.npy``, no pickle)
``manifest.json``   written last by ``finish()``: the journal's fields plus ``complete: true``,
                    ``total_vectors``, ``m3lab_version`` and every file's size in ``files``
``.writer.lock``    an advisory ``flock`` held while a writer is open (not part of the data)
==================  ===================================================================

Crash and resume. ``append`` truncates the data files to the committed sizes, writes the batch's
rows, scales and lengths at the end, flushes and ``fsync``\\ s them, and only then replaces
``progress.json`` (temporary file, ``fsync``, ``os.replace``, ``fsync`` of the directory). So the
journal never counts a row that is not on disk, and an interruption at any instant leaves either
the previous or the new journal, never a half-written one. Rows written after the last journal
entry (a crash mid-append) are garbage: reopening the writer truncates them, and
``writer.n_committed`` is the next document to append. A store is readable only once
``manifest.json`` exists, which ``finish()`` writes after ``offsets.npy``; :meth:`MultiVectorStore.open`
refuses a partial store (saying how many documents are done and that rebuilding resumes it), a
store whose spec differs from the one asked for, and a file whose size is not the manifest's.
Reopening the writer with a different ``dim``, ``dtype``, ``n_documents`` or any field of ``spec``
is refused with a ValueError naming the fields, so two builds are never mixed in one store.

Guarantees stop at what the OS promises for ``fsync`` and ``os.replace`` (POSIX); file sizes are
checked on open, contents are not hashed (the vectors may be larger than memory and than a
reasonable hashing time).
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_file, write_json
from .compression import COLBERT_DTYPES, dequantize_int8, quantize_int8

try:  # advisory lock against two writers on one directory (POSIX; skipped elsewhere)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

FORMAT = "m3lab-multivector-store"
FORMAT_VERSION = 1
JOURNAL = "progress.json"
MANIFEST = "manifest.json"
VECTORS = "vectors.bin"
SCALES = "scales.bin"
LENGTHS = "lengths.bin"
OFFSETS = "offsets.npy"
LOCK = ".writer.lock"
_DISK_DTYPES = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4"), "int8": np.dtype("i1")}
_SCALE_DTYPE = np.dtype("<f4")
_LENGTH_DTYPE = np.dtype("<i8")
_KNOWN = {JOURNAL, MANIFEST, VECTORS, SCALES, LENGTHS, OFFSETS, LOCK}


class StoreError(ValueError):
    """A multi-vector store that cannot be used as asked (base of the errors below)."""


class IncompleteStoreError(StoreError):
    """The store is partial: its build was interrupted (or is running) before ``finish()``."""


class SpecMismatchError(StoreError):
    """The store was built with another dim, dtype, document count or spec than the one given."""


class CorruptStoreError(StoreError):
    """A file of the store is missing, truncated or inconsistent (named in the message)."""


# ---------------------------------------------------------------------- helpers
def _check_dtype(dtype) -> str:
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in COLBERT_DTYPES:
        raise ValueError(f"dtype must be one of {COLBERT_DTYPES}, got {dtype!r}")
    return name


def _normalise_spec(spec) -> dict:
    """The spec as it reads back from JSON (tuples become lists), so a reopen compares like with like."""
    if spec is None:
        spec = {}
    if not isinstance(spec, dict) or not all(isinstance(k, str) for k in spec):
        raise TypeError(f"spec must be a dict with string keys, got {spec!r}")
    try:
        return json.loads(json.dumps(spec, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise TypeError(f"spec must be JSON-serialisable ({err})") from None


def _spec_differences(stored: dict, wanted: dict) -> list[str]:
    """``"field: stored X, given Y"`` for each differing field (nested under ``spec.`` for the caller's dict)."""
    out = []
    for key in ("dim", "dtype", "n_documents"):
        if key in wanted and stored.get(key) != wanted[key]:
            out.append(f"{key}: stored {stored.get(key)!r}, given {wanted[key]!r}")
    if "spec" in wanted:
        a, b = stored.get("spec") or {}, wanted["spec"]
        for key in sorted(set(a) | set(b)):
            if a.get(key, _MISSING) != b.get(key, _MISSING):
                sa = "absent" if key not in a else repr(a[key])
                sb = "absent" if key not in b else repr(b[key])
                out.append(f"spec.{key}: stored {sa}, given {sb}")
    return out


_MISSING = object()


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CorruptStoreError(f"{file}: cannot be read ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CorruptStoreError(f"{file}: not an m3lab multi-vector store file (field 'format' is not {FORMAT!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise CorruptStoreError(f"{file}: format_version {data.get('format_version')!r} is not supported "
                                f"(this m3lab reads {FORMAT_VERSION})")
    for key, kind in (("dim", int), ("dtype", str), ("n_documents", int), ("spec", dict)):
        if not isinstance(data.get(key), kind):
            raise CorruptStoreError(f"{file}: field {key!r} is missing or not a {kind.__name__}")
    if data["dtype"] not in COLBERT_DTYPES:
        raise CorruptStoreError(f"{file}: dtype {data['dtype']!r} is not one of {COLBERT_DTYPES}")
    return data


def _fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_json_durably(path: Path, obj: dict) -> None:
    write_json(path, obj)  # temporary file, flush + fsync, os.replace
    _fsync_dir(path.parent)


def _m3lab_version() -> str:
    try:
        from importlib.metadata import version

        return version("m3lab")
    except Exception:  # noqa: BLE001 - an uninstalled checkout
        return "unknown"


# ---------------------------------------------------------------------- writer
class MultiVectorStoreWriter:
    """Builds a :class:`MultiVectorStore` in ``path`` batch by batch; resumable after an interruption.

    ``dim``: vector dimension; ``dtype``: ``"float16"``, ``"float32"`` or ``"int8"`` (per-vector
    float32 scale, :func:`~m3lab.retrieval.compression.quantize_int8`); ``n_documents``: how many
    documents the finished store holds; ``spec``: whatever identifies the build (model fingerprint,
    corpus hash, pooling, ...), JSON-serialisable — a reopen must give the same, field for field.

    A new or empty directory starts a new store. A directory holding a partial store with the same
    dim, dtype, n_documents and spec resumes it: rows after the last committed batch are truncated
    and :attr:`n_committed` says which document comes next. A finished store opens as complete
    (``n_committed == n_documents``; ``finish()`` just opens it). Anything else is refused.
    Use as a context manager, or call :meth:`close`, to release the files without finishing.
    """

    def __init__(self, path: str | Path, *, dim: int, dtype: str, n_documents: int, spec: dict | None = None):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
        if isinstance(n_documents, bool) or not isinstance(n_documents, (int, np.integer)) or n_documents < 0:
            raise ValueError(f"n_documents must be an integer >= 0, got {n_documents!r}")
        self.path = Path(path)
        self.dim, self.dtype, self.n_documents = int(dim), _check_dtype(dtype), int(n_documents)
        self.spec = _normalise_spec(spec)
        self._disk_dtype = _DISK_DTYPES[self.dtype]
        self._row_bytes = self.dim * self._disk_dtype.itemsize
        self._files: dict[str, Any] = {}
        self._lock = None
        self.complete = False
        self.n_committed = 0
        self.rows_committed = 0
        self.path.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # -- opening
    def _header(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "dim": self.dim, "dtype": self.dtype,
                "n_documents": self.n_documents, "spec": self.spec}

    def _data_names(self) -> list[str]:
        return [VECTORS, LENGTHS] + ([SCALES] if self.dtype == "int8" else [])

    def _check_same(self, stored: dict) -> None:
        diff = _spec_differences(stored, self._header())
        if diff:
            raise SpecMismatchError(
                f"{self.path}: the store there was built with another spec ({'; '.join(diff)}); refusing to mix "
                f"two builds in one store. Give the same spec to resume it, or delete the directory to rebuild "
                f"from scratch.")

    def _acquire_lock(self) -> None:
        if fcntl is None:
            return
        self._lock = open(self.path / LOCK, "a+b")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise StoreError(f"{self.path}: another MultiVectorStoreWriter (in this or another process) has this "
                             f"store open; close() it first") from None

    def _open(self) -> None:
        manifest, journal = self.path / MANIFEST, self.path / JOURNAL
        if manifest.exists():
            stored = _read_json(manifest)
            self._check_same(stored)
            self.complete = True
            self.n_committed, self.rows_committed = self.n_documents, int(stored.get("total_vectors", 0))
            return
        if journal.exists():
            stored = _read_json(journal)
            self._check_same(stored)
            self.n_committed, self.rows_committed = int(stored["n_committed"]), int(stored["rows_committed"])
            if not 0 <= self.n_committed <= self.n_documents or self.rows_committed < 0:
                raise CorruptStoreError(f"{journal}: n_committed {self.n_committed} / rows_committed "
                                        f"{self.rows_committed} out of range for {self.n_documents} documents")
        else:
            foreign = sorted(p.name for p in self.path.iterdir()
                             if p.name not in _KNOWN and not (p.name.startswith(".") and p.name.endswith(".partial")))
            if foreign:
                raise StoreError(f"{self.path}: not empty and not a multi-vector store "
                                 f"(holds {', '.join(foreign[:5])})")
            # journal first: a crash before it leaves no journal, and the next open starts afresh
            _write_json_durably(journal, {**self._header(), "n_committed": 0, "rows_committed": 0})
        for name in self._data_names():
            file = self.path / name
            if not file.exists():
                if self._committed_bytes(name) > 0:
                    raise CorruptStoreError(f"{file}: missing, though {JOURNAL} records {self.n_committed} "
                                            f"committed documents; delete the directory to rebuild")
                file.touch()
            self._files[name] = open(file, "r+b")  # noqa: SIM115 - held until close()
        self._truncate_to_committed()
        _fsync_dir(self.path)
        lengths = np.fromfile(self.path / LENGTHS, dtype=_LENGTH_DTYPE, count=self.n_committed)
        if int(lengths.sum()) != self.rows_committed or (lengths < 0).any():
            raise CorruptStoreError(f"{self.path / LENGTHS}: the committed lengths sum to {int(lengths.sum())}, "
                                    f"{JOURNAL} records {self.rows_committed} rows")

    def _committed_bytes(self, name: str) -> int:
        if name == LENGTHS:
            return self.n_committed * _LENGTH_DTYPE.itemsize
        if name == SCALES:
            return self.rows_committed * _SCALE_DTYPE.itemsize
        return self.rows_committed * self._row_bytes

    def _truncate_to_committed(self) -> None:
        """Cut every data file to what the journal commits: rows of an interrupted append are dropped."""
        for name, f in self._files.items():
            want = self._committed_bytes(name)
            size = os.fstat(f.fileno()).st_size
            if size < want:
                raise CorruptStoreError(f"{self.path / name}: {size} bytes, but {JOURNAL} commits {want} "
                                        f"(the file was truncated after it was written); delete the directory to "
                                        f"rebuild")
            if size > want:
                f.truncate(want)
                os.fsync(f.fileno())
            f.seek(want)

    # -- writing
    def append(self, documents: Sequence[np.ndarray]) -> int:
        """Append the next documents (each an (L_i, dim) float array; L_i may be 0) and commit them.

        Returns the new :attr:`n_committed`. Nothing is committed if this raises; the next call
        (or a reopen) starts again from the last commit.
        """
        if self.complete:
            raise StoreError(f"{self.path}: the store is complete ({self.n_documents} documents); nothing to append")
        if not self._files:
            raise StoreError(f"{self.path}: the writer is closed")
        docs = []
        for k, d in enumerate(documents):
            a = np.asarray(d)
            if a.ndim != 2 or a.shape[1] != self.dim:
                raise ValueError(f"document {self.n_committed + k}: expected an (L, {self.dim}) array, "
                                 f"got shape {a.shape}")
            docs.append(a)
        if self.n_committed + len(docs) > self.n_documents:
            raise ValueError(f"{len(docs)} documents would make {self.n_committed + len(docs)}, more than the "
                             f"store's n_documents={self.n_documents}")
        if not docs:
            return self.n_committed
        lengths = np.array([len(a) for a in docs], dtype=_LENGTH_DTYPE)
        rows = np.concatenate(docs).astype(np.float32, copy=False) if len(docs) > 1 else docs[0].astype(np.float32)
        if not np.isfinite(rows).all():
            raise ValueError(f"documents {self.n_committed}..{self.n_committed + len(docs) - 1}: non-finite values "
                             f"(NaN or inf) cannot be stored")
        scales = None
        if self.dtype == "int8":
            codes, scales = quantize_int8(rows)
        else:
            with np.errstate(over="ignore"):  # an overflow to inf is refused just below
                codes = rows.astype(self._disk_dtype)
            if not np.isfinite(codes).all():
                raise ValueError(f"documents {self.n_committed}..{self.n_committed + len(docs) - 1}: values beyond the "
                                 f"range of {self.dtype}")
        del rows
        self._truncate_to_committed()  # after a failed append, drop whatever it left behind
        self._write(VECTORS, codes.astype(self._disk_dtype, copy=False))
        if scales is not None:
            self._write(SCALES, scales.astype(_SCALE_DTYPE, copy=False))
        self._write(LENGTHS, lengths)
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
        n, r = self.n_committed + len(docs), self.rows_committed + int(lengths.sum())
        _write_json_durably(self.path / JOURNAL, {**self._header(), "n_committed": n, "rows_committed": r})
        self.n_committed, self.rows_committed = n, r
        return n

    def _write(self, name: str, array: np.ndarray) -> None:
        f = self._files[name]
        if array.size:
            f.write(memoryview(np.ascontiguousarray(array)).cast("B"))

    def finish(self) -> MultiVectorStore:
        """Write ``offsets.npy`` and the manifest that marks the store complete; return it opened.

        Refused while fewer than ``n_documents`` documents are committed. On a complete store it
        only opens it.
        """
        if not self.complete:
            if self.n_committed < self.n_documents:
                raise IncompleteStoreError(f"{self.path}: only {self.n_committed} of {self.n_documents} documents "
                                           f"appended; append the rest before finish()")
            if not self._files:
                raise StoreError(f"{self.path}: the writer is closed")
            self._truncate_to_committed()
            lengths = np.fromfile(self.path / LENGTHS, dtype=_LENGTH_DTYPE, count=self.n_documents)
            offsets = np.zeros(self.n_documents + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            with atomic_file(self.path / OFFSETS, "wb") as f:
                np.save(f, offsets, allow_pickle=False)
            _fsync_dir(self.path)
            files = {name: (self.path / name).stat().st_size for name in self._data_names() + [OFFSETS]}
            _write_json_durably(self.path / MANIFEST, {
                **self._header(), "complete": True, "total_vectors": int(offsets[-1]),
                "m3lab_version": _m3lab_version(), "files": files})
            self.complete = True
        self.close()
        return MultiVectorStore.open(self.path, spec=self.spec)

    def close(self) -> None:
        """Release the files and the lock; committed batches stay (a later writer resumes them)."""
        for f in self._files.values():
            with contextlib.suppress(OSError):
                f.close()
        self._files = {}
        if self._lock is not None:
            with contextlib.suppress(OSError):
                self._lock.close()  # closing the descriptor releases the flock
            self._lock = None

    def __enter__(self) -> MultiVectorStoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # a dropped writer is a crash: committed batches stay
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"{self.n_committed}/{self.n_documents} documents committed"
        return f"MultiVectorStoreWriter({str(self.path)!r}, dim={self.dim}, dtype={self.dtype!r}, {state})"


# ---------------------------------------------------------------------- reader
class MultiVectorStore(Sequence):
    """A finished store, memory-mapped read-only: ``store[i]`` is document ``i``'s (L_i, dim) float32 vectors.

    ``vectors``: ``np.memmap`` (mode ``"r"``) of shape (total, dim) in the storage dtype (int8 codes
    for int8); ``scales``: (total,) float32 memmap for int8, else ``None``; ``offsets`` (n + 1) and
    ``lengths`` (n) int64 in memory. Opening reads only the manifest and the offsets; ``store[i]``
    reads (and for int8 dequantises, for float16 casts) only the rows of document ``i``, as a
    float32 copy. Use :meth:`open`.
    """

    def __init__(self, path: Path, manifest: dict, vectors: np.ndarray, scales: np.ndarray | None,
                 offsets: np.ndarray):
        self.path, self.manifest = path, manifest
        self.dim, self.dtype, self.spec = manifest["dim"], manifest["dtype"], manifest["spec"]
        self.vectors, self.scales, self.offsets = vectors, scales, offsets
        self.lengths = np.diff(offsets)

    @classmethod
    def open(cls, path: str | Path, spec: dict | None = None) -> MultiVectorStore:
        """Map the store in ``path``; with ``spec``, refuse one built with another spec (field for field).

        Refuses a partial store (:class:`IncompleteStoreError`), a spec mismatch
        (:class:`SpecMismatchError`) and a missing or wrongly sized file (:class:`CorruptStoreError`).
        """
        path = Path(path)
        manifest_file = path / MANIFEST
        if not manifest_file.exists():
            journal = path / JOURNAL
            if journal.exists():
                j = _read_json(journal)
                raise IncompleteStoreError(
                    f"{path}: a partial multi-vector store ({j.get('n_committed', 0)} of {j['n_documents']} documents "
                    f"done, no complete manifest): its build was interrupted or is still running; building it again "
                    f"with the same spec resumes it")
            raise FileNotFoundError(f"{path}: not a multi-vector store (no {MANIFEST})")
        manifest = _read_json(manifest_file)
        if manifest.get("complete") is not True:
            raise IncompleteStoreError(f"{manifest_file}: the store is not marked complete")
        if spec is not None:
            diff = _spec_differences(manifest, {"spec": _normalise_spec(spec)})
            if diff:
                raise SpecMismatchError(f"{path}: the store was built with another spec ({'; '.join(diff)})")
        dim, dtype, n = manifest["dim"], manifest["dtype"], manifest["n_documents"]
        total = manifest.get("total_vectors")
        files = manifest.get("files")
        if (not isinstance(total, int) or total < 0 or not isinstance(files, dict)
                or not isinstance(files.get(OFFSETS), int)):
            raise CorruptStoreError(f"{manifest_file}: fields 'total_vectors' and 'files' are missing or malformed")
        disk = _DISK_DTYPES[dtype]
        expected = {VECTORS: total * dim * disk.itemsize, LENGTHS: n * _LENGTH_DTYPE.itemsize}
        if dtype == "int8":
            expected[SCALES] = total * _SCALE_DTYPE.itemsize
        expected[OFFSETS] = files.get(OFFSETS)
        for name, want in expected.items():
            file = path / name
            if files.get(name) != want:
                raise CorruptStoreError(f"{manifest_file}: records {files.get(name)!r} bytes for {name}, "
                                        f"expected {want}")
            if not file.is_file():
                raise CorruptStoreError(f"{file}: missing")
            size = file.stat().st_size
            if size != want:
                raise CorruptStoreError(f"{file}: {size} bytes, the manifest says {want} (the file is truncated or "
                                        f"altered)")
        try:
            offsets = np.load(path / OFFSETS, allow_pickle=False)
        except Exception as err:  # noqa: BLE001 - a bad header, a pickled object...
            raise CorruptStoreError(f"{path / OFFSETS}: cannot be read as a NumPy array "
                                    f"({type(err).__name__}: {err})") from None
        if (offsets.shape != (n + 1,) or offsets.dtype != np.int64 or offsets[0] != 0 or offsets[-1] != total
                or np.any(np.diff(offsets) < 0)):
            raise CorruptStoreError(f"{path / OFFSETS}: shape {offsets.shape} {offsets.dtype} does not partition "
                                    f"{total} vectors into {n} documents")
        vectors = _map(path / VECTORS, disk, (total, dim))
        scales = _map(path / SCALES, _SCALE_DTYPE, (total,)) if dtype == "int8" else None
        return cls(path, manifest, vectors, scales, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"document index must be an integer or a slice, got {type(i).__name__}")
        if not -n <= i < n:
            raise IndexError(f"document {i} out of range for {n} documents")
        i = int(i) % n
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        if self.scales is not None:
            return dequantize_int8(self.vectors[a:b], self.scales[a:b])
        return np.array(self.vectors[a:b], dtype=np.float32)  # a copy: the caller holds no view of the map

    def documents(self, indices: Sequence[int] | np.ndarray | None = None) -> StoreDocuments:
        """A read-only sequence of documents (all, or those in ``indices``, in that order) with ``.lengths``.

        What the per-document scorers take (``scoring.colbert_scores_chunked`` reads ``.lengths`` to
        plan its chunks without touching the vectors); each item is read from the map on access.
        """
        return StoreDocuments(self, None if indices is None else np.asarray(indices, dtype=np.int64))

    @property
    def total_vectors(self) -> int:
        return int(self.offsets[-1])

    @property
    def nbytes_on_disk(self) -> int:
        """Bytes of the store's files (data, offsets, manifest; not the journal)."""
        names = [VECTORS, LENGTHS, OFFSETS, MANIFEST] + ([SCALES] if self.dtype == "int8" else [])
        return sum((self.path / name).stat().st_size for name in names)

    def close(self) -> None:
        """Drop this object's references to the maps (the files stay; a map is unmapped once no
        array derived from it is left). The store is unusable afterwards."""
        self.vectors = self.scales = None

    def __repr__(self) -> str:
        return (f"MultiVectorStore({str(self.path)!r}, {len(self)} documents, {self.total_vectors} vectors of "
                f"dim {self.dim}, {self.dtype})")


class StoreDocuments(Sequence):
    """Documents of a :class:`MultiVectorStore` as a sequence with ``lengths`` (:meth:`MultiVectorStore.documents`)."""

    def __init__(self, store: MultiVectorStore, indices: np.ndarray | None):
        n = len(store)
        if indices is not None and indices.size and (indices.min() < -n or indices.max() >= n):
            raise IndexError(f"document indices out of range for {n} documents")
        self.store = store
        self.indices = None if indices is None else np.where(indices < 0, indices + n, indices)
        self.lengths = store.lengths if indices is None else store.lengths[self.indices]

    def __len__(self) -> int:
        return len(self.store) if self.indices is None else len(self.indices)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self)))]
        return self.store[k if self.indices is None else int(self.indices[k])]


def _map(file: Path, dtype: np.dtype, shape: tuple) -> np.ndarray:
    """A read-only memmap of ``file``; an empty array for zero bytes (mmap cannot map an empty file)."""
    if int(np.prod(shape)) == 0:
        return np.empty(shape, dtype=dtype)
    return np.memmap(file, dtype=dtype, mode="r", shape=shape)
