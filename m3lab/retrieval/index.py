"""A searchable corpus index: the dense, sparse and multi-vector embeddings of one model (paper section 3.2).

    index = CorpusIndex.build(model, documents)          # encodes the corpus once, with a progress bar
    index.search("who built the tower?", mode="hybrid")  # -> [SearchResult(doc_id, rank, score, dense, sparse, colbert, document)]
    index.save("my-index");  CorpusIndex.load("my-index", model)

Storage, one structure per function:

* dense: an (n, d) float32 matrix searched with faiss — exact inner product (``flat``, the default)
  or an approximate IVF / HNSW index for large corpora;
* sparse: the corpus lexical weights as an (n, vocab) CSR matrix and its transpose, the inverted
  index (vocab, n), so a batch of queries is scored by one sparse product;
* multi-vector: every document's vectors in one contiguous (total tokens, d') array with
  ``offsets`` (n + 1): document ``i`` owns rows ``offsets[i]:offsets[i+1]``; float16 by default,
  float32, or int8 codes with a per-vector scale, optionally token-pooled
  (:mod:`m3lab.retrieval.compression`);
* optionally, MUVERA fixed-dimensional encodings of the multi-vectors (:mod:`m3lab.retrieval.muvera`)
  searched by faiss's exact inner product (``faiss.knn``, on the array itself, no copy): the ``colbert`` mode's first stage, whose candidates exact
  MaxSim then reranks.

Retrieval modes: ``dense``, ``sparse``, ``colbert`` (exhaustive MaxSim, or MUVERA candidates reranked) and
``hybrid`` as the paper does it: candidates from dense top-k and sparse top-k, reranked by
s_rank = w1 s_dense + w2 s_lex + w3 s_mul. Every score is computed by :mod:`m3lab.scoring`.

On disk an index is a directory written atomically: ``manifest.json`` (m3lab version, the
model's name and weight fingerprint, its pooling, the index settings, the corpus hash, every
file's size and SHA-256), ``documents.jsonl`` and NumPy / scipy / faiss files — no pickle.
Loading it with another model is refused.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from .. import __version__, scoring
from .._io import atomic_directory, atomic_file, write_json
from ..data.records import Document, unique_ids
from ..modeling import EncodeOutput, M3Model, check_texts
from . import muvera as fde
from ..modeling.matryoshka import truncate_embeddings
from ..modeling.pool import EncodePool
from .compression import (
    COLBERT_DTYPES,
    POOL_METHODS,
    PRUNE_BY,
    FloatVectors,
    Int8Vectors,
    lexical_importance,
    prune_sparse,
    prune_tokens,
    quantize_int8,
    stop_token_ids,
)
from .dense_quantization import DENSE_QUANTIZATIONS, QuantizedDenseIndex
from .ranker import (
    Ranking,
    SearchResult,
    _BlockScorer,
    _concat_rankings,
    mode_functions,
)

logger = logging.getLogger("m3lab")


MODES = ("dense", "sparse", "colbert", "hybrid")


STORES = ("dense", "sparse", "colbert")


DENSE_INDEXES = ("flat", "ivf", "hnsw")


FORMAT = "m3lab-corpus-index"


FORMAT_VERSION = 1


MANIFEST = "manifest.json"


DOCUMENTS = "documents.jsonl"


_FILES = {"dense": "dense.npy", "faiss": "dense.faiss", "sparse": "sparse.npz",
          "colbert_vectors": "colbert_vectors.npy", "colbert_offsets": "colbert_offsets.npy",
          "colbert_scales": "colbert_scales.npy", "muvera": "muvera_fde.npy"}


_SCORE_BLOCK = 1 << 24  # floats per (queries x documents) block of dense/sparse scores (64 MB)


class BuildProgress(NamedTuple):
    """How far :meth:`CorpusIndex.build` is: documents encoded, and the same in tokens (as truncated
    for the model), which the encoding time follows; documents go longest first, so their count
    alone would promise too early an end."""

    documents: int
    total_documents: int
    tokens: int
    total_tokens: int

    @property
    def fraction(self) -> float:
        """The share of the work done (by tokens)."""
        return self.tokens / self.total_tokens if self.total_tokens else 1.0


class CorruptIndexError(ValueError):
    """An index directory that cannot be read: a missing, truncated or altered file (named in the message)."""


class ModelMismatchError(ValueError):
    """The index was built by another model (or with another pooling) than the one given."""


def model_fingerprint(model: M3Model) -> str:
    """A SHA-256 that changes when the encoder, its tokenizer or the heads change.

    It hashes the encoder config, the tokenisation of a probe text and, for every tensor of
    the encoder and the two heads, its name, shape and 1024 evenly spaced values rounded to
    float16 — so a float32 model and its float16 copy agree, and any training step differs.
    """
    h = hashlib.sha256()
    cfg = {k: v for k, v in model.encoder.config.to_dict().items()
           if k not in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "_attn_implementation")}
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    probe = model.tokenizer("m3lab probe: Ünïcode 北京 2024 naïve-tokenisation", add_special_tokens=True)["input_ids"]
    h.update(json.dumps([len(model.tokenizer), probe]).encode())
    # the prompts change every embedding encode_queries/encode_corpus make
    h.update(json.dumps({"prompts": model.prompts}, sort_keys=True).encode())
    tensors = [(f"encoder.{k}", v) for k, v in model.encoder.state_dict().items()]
    tensors += [(f"colbert_linear.{k}", v) for k, v in model.colbert_linear.state_dict().items()]
    tensors += [(f"sparse_linear.{k}", v) for k, v in model.sparse_linear.state_dict().items()]
    with torch.no_grad():
        for name, t in sorted(tensors, key=lambda kv: kv[0]):
            flat = t.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 1024)][:1024].to("cpu", torch.float32).to(torch.float16)
            h.update(f"{name}{tuple(t.shape)}".encode())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()


def corpus_fingerprint(documents: Sequence[Document]) -> str:
    """SHA-256 of the documents' ids, titles and texts, in order."""
    h = hashlib.sha256()
    for d in documents:
        h.update(json.dumps([d.id, d.title, d.text], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def as_documents(documents: Iterable[Document | str]) -> list[Document]:
    """Documents as records: strings get ids ``doc-{i}``. Empty corpora and duplicate ids are refused."""
    docs = []
    for i, d in enumerate(documents):
        if isinstance(d, str):
            d = Document(f"doc-{i}", d)
        elif not isinstance(d, Document):
            raise TypeError(f"documents[{i}] is {type(d).__name__}, expected a Document or str")
        docs.append(d)
    if not docs:
        raise ValueError("cannot index an empty corpus")
    unique_ids(docs, "duplicate document id")
    return docs


def document_text(doc: Document, with_titles: bool = True) -> str:
    """The text that is encoded: ``title + " " + text`` when the document has a title (as BEIR/MTEB do)."""
    return f"{doc.title} {doc.text}".strip() if with_titles and doc.title else doc.text


class CorpusIndex:
    """Dense, sparse and multi-vector embeddings of a corpus, searchable with one model.

    Build with :meth:`build`, read with :meth:`load`; search with :meth:`search` (texts) or
    :meth:`rank` (encoded queries, several modes at once — what evaluation uses).
    """

    def __init__(self, model: M3Model, documents: list[Document], *, settings: dict,
                 dense: np.ndarray | None = None, dense_index: faiss.Index | None = None,
                 sparse: sp.csr_matrix | None = None, colbert_vectors: np.ndarray | None = None,
                 colbert_offsets: np.ndarray | None = None, colbert_scales: np.ndarray | None = None,
                 muvera_fde: np.ndarray | None = None, dense_quantized: QuantizedDenseIndex | None = None,
                 fingerprint: str | None = None):
        self.model = model
        self.dense_quantized = dense_quantized  # dense_quantization int8/binary: codes instead of `dense`
        self.documents = documents
        self.settings = settings
        self.dense = dense
        self.dense_index = dense_index
        self.sparse = sparse
        # the inverted index: one row per token id, listing the documents that have it
        self.inverted = sparse.T.tocsr() if sparse is not None else None
        self.colbert_vectors = colbert_vectors
        self.colbert_offsets = colbert_offsets
        self.colbert_scales = colbert_scales  # int8 storage: one float32 scale per vector
        self.muvera_fde = muvera_fde
        self.muvera_config = fde.FDEConfig.from_dict(settings["muvera"]) if settings.get("muvera") else None
        self.fingerprint = fingerprint or model_fingerprint(model)
        self._doc_views: list[np.ndarray] | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, model: M3Model, documents: Iterable[Document | str], *, max_length: int | None = None,
              batch_size: int = 32, dense_index: str = "flat", store: Sequence[str] = STORES,
              colbert_dtype: str = "float16", pool_factor: int = 1, pool_method: str = "ward",
              prune: dict | None = None, muvera: bool | dict | fde.FDEConfig | None = None,
              dense_quantization: str = "float32", rescore_multiplier: int = 4,
              calibration: Sequence[str] | np.ndarray | None = None,
              dense_dim: int | None = None, colbert_dim: int | None = None,
              sparse_top_k: int | None = None, query_sparse_top_k: int | None = None,
              mcls: bool = False, with_titles: bool = True, encodings: EncodeOutput | None = None,
              ivf_nlist: int | None = None, nprobe: int = 16, hnsw_m: int = 32,
              show_progress: bool = True, pool: EncodePool | None = None, processes: int | None = None,
              devices: Sequence[str] | None = None,
              on_progress: Callable[[BuildProgress], None] | None = None) -> CorpusIndex:
        """Encode ``documents`` with ``model`` and index them.

        ``store``: which functions to keep (all three by default); ``dense_index``: ``"flat"``
        (exact inner product), ``"ivf"`` (inverted lists, ``ivf_nlist`` clusters, ``nprobe``
        probed) or ``"hnsw"`` (graph with ``hnsw_m`` links); ``colbert_dtype``: how multi-vectors
        are stored, ``"float16"`` (default, half of float32), ``"float32"`` or ``"int8"`` (a scale
        per vector, a quarter; scores are always computed in float32); ``pool_factor`` > 1 pools each
        document's vectors to 1/``pool_factor`` of their number (:func:`compression.pool_tokens`);
        ``muvera``: ``True`` (:func:`default_muvera_config`), a dict of :class:`muvera.FDEConfig`
        fields or a config makes MUVERA encodings of the (pooled, unquantised) multi-vectors the
        ``colbert`` mode's first stage. ``pool_method``: ``"ward"`` (hierarchical, PyLate) or
        ``"kmeans"`` (CRISP centroids). ``prune``: ``{"by": "stop_tokens"}`` drops the vectors of
        content-free tokens, ``{"by": "lexical", "keep_ratio": 0.5}`` keeps the half whose token the
        sparse head weighs most (:mod:`compression`; pruning comes before pooling).

        ``dense_quantization``: ``"int8"`` (faiss scalar quantiser, ranges from ``calibration``
        texts or vectors, else the corpus) or ``"binary"`` (Hamming search) keep only the codes;
        the first stage takes ``rescore_multiplier`` x k candidates that the float query then
        rescores (:mod:`dense_quantization`). ``dense_dim`` / ``colbert_dim`` truncate the dense and
        multi-vectors to their first dimensions, renormalised (Matryoshka; queries are truncated the
        same way at search). ``sparse_top_k`` keeps each document's largest lexical weights,
        ``query_sparse_top_k`` each query's (:func:`compression.prune_sparse`).

        Every option is recorded in the manifest's settings (:meth:`info`). ``encodings``: the
        documents already encoded (:meth:`M3Model.encode_corpus` with ``max_length``, in document
        order, with every function the options need), so several storage variants can be built from
        one encoding (the benchmarks and notebook 08 do). ``mcls`` encodes the
        documents with a [CLS] every 256 tokens (appendix B.2). Documents are encoded with
        :meth:`M3Model.encode_corpus` (the model's passage prompt; ``max_length`` defaults to
        its passage max length), longest first in chunks, under one progress bar; ``processes`` or
        ``devices`` (or a ``pool``) encode them in worker processes (:class:`m3lab.modeling.pool.EncodePool`),
        with the same result.

        ``on_progress`` is called with a :class:`BuildProgress` before the first chunk and after each
        one; it may raise (e.g. to cancel a build) and the build stops there, with nothing written.
        """
        if pool is None and (processes or devices) and encodings is None:
            with EncodePool(model, processes=processes, devices=devices) as own:
                args = {k: v for k, v in locals().items() if k not in ("cls", "own", "processes", "devices", "pool")}
                return cls.build(args.pop("model"), args.pop("documents"), pool=own, **args)
        docs = as_documents(documents)
        store = tuple(store)
        if not store or any(s not in STORES for s in store):
            raise ValueError(f"store must be a non-empty subset of {STORES}, got {store}")
        if dense_index not in DENSE_INDEXES:
            raise ValueError(f"dense_index must be one of {DENSE_INDEXES}, got {dense_index!r}")
        if colbert_dtype not in COLBERT_DTYPES:
            raise ValueError(f"colbert_dtype must be one of {COLBERT_DTYPES}, got {colbert_dtype!r}")
        if isinstance(pool_factor, bool) or not isinstance(pool_factor, (int, np.integer)) or pool_factor < 1:
            raise ValueError(f"pool_factor must be an integer >= 1, got {pool_factor!r}")
        if pool_method not in POOL_METHODS:
            raise ValueError(f"pool_method must be one of {tuple(POOL_METHODS)}, got {pool_method!r}")
        prune = _check_prune(prune)
        dense_dim = _check_dim("dense_dim", dense_dim, model.hidden_size)
        colbert_dim = _check_dim("colbert_dim", colbert_dim, model.colbert_linear.out_features)
        for name, k in (("sparse_top_k", sparse_top_k), ("query_sparse_top_k", query_sparse_top_k)):
            if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
                raise ValueError(f"{name} must be None or an integer >= 1, got {k!r}")
        if dense_quantization not in DENSE_QUANTIZATIONS:
            raise ValueError(f"dense_quantization must be one of {DENSE_QUANTIZATIONS}, got {dense_quantization!r}")
        if dense_quantization != "float32" and dense_index != "flat":
            raise ValueError("dense_quantization applies to the exact (flat) dense index: use dense_index='flat'")
        if isinstance(rescore_multiplier, bool) or not isinstance(rescore_multiplier, (int, np.integer)) \
                or rescore_multiplier < 1:
            raise ValueError(f"rescore_multiplier must be an integer >= 1, got {rescore_multiplier!r}")
        muvera_config = _muvera_config(muvera, colbert_dim or model.colbert_linear.out_features) if muvera else None
        if (pool_factor > 1 or muvera_config or prune or colbert_dim) and "colbert" not in store:
            raise ValueError("pool_factor, prune, colbert_dim and muvera apply to multi-vectors: add 'colbert' to store")
        if (dense_dim or dense_quantization != "float32") and "dense" not in store:
            raise ValueError("dense_dim and dense_quantization apply to dense vectors: add 'dense' to store")
        if (sparse_top_k or query_sparse_top_k) and "sparse" not in store:
            raise ValueError("sparse_top_k and query_sparse_top_k apply to lexical weights: add 'sparse' to store")
        stop_ids = stop_token_ids(model.tokenizer) if prune and prune["by"] == "stop_tokens" else None
        max_length = model.max_lengths["passage"] if max_length is None else max_length
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        if not model.heads_trained and ("sparse" in store or "colbert" in store):
            logger.warning("%s has untrained sparse/multi-vector heads: only its dense vectors are meaningful",
                           model.name_or_path)
        texts = [document_text(d, with_titles) for d in docs]
        n = len(docs)
        if encodings is not None and len(encodings) != n:
            raise ValueError(f"encodings hold {len(encodings)} texts for {n} documents")
        order = np.argsort([-len(t) for t in texts], kind="stable")  # long first: little padding per batch
        chunk = max(batch_size * 4, 64)  # the progress bar moves every few batches
        dense = np.zeros((n, dense_dim or model.hidden_size), dtype=np.float32) if "dense" in store else None
        sparse_parts: list[sp.csr_matrix] = []
        colbert: list[np.ndarray | None] = [None] * n
        muvera_fde = np.zeros((n, muvera_config.output_dimension), dtype=np.float32) if muvera_config else None
        bar = tqdm(total=n, desc="index", unit="doc", disable=not show_progress)
        if on_progress is not None:  # the work per document: its tokens as the model will see them
            lengths = np.array([len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=max_length)
                                ["input_ids"]], dtype=np.int64) if n else np.zeros(0, dtype=np.int64)
            done_tokens = 0
            on_progress(BuildProgress(0, n, 0, int(lengths.sum())))
        for start in range(0, n, chunk):
            idx = order[start:start + chunk]
            need = {"dense": "dense" in store, "colbert": "colbert" in store,
                    "sparse": "sparse" in store or (prune or {}).get("by") == "lexical"}
            if encodings is not None:
                out = encodings.select(idx)
                for f in (f for f, wanted in need.items() if wanted and getattr(out, f) is None):
                    raise ValueError(f"encodings lack the {f} embeddings this index needs (encode with return_{f}=True)")
            else:
                out = model.encode_corpus([texts[i] for i in idx], batch_size=batch_size, max_length=max_length,
                                          return_dense=need["dense"], return_sparse=need["sparse"],
                                          return_colbert=need["colbert"], mcls=mcls, show_progress=False, pool=pool)
            if dense is not None:
                dense[idx] = out.dense if dense_dim is None else truncate_embeddings(out.dense, dense_dim)
            if "sparse" in store:
                part = out.sparse_csr.astype(np.float32)
                sparse_parts.append(part if sparse_top_k is None else prune_sparse(part, int(sparse_top_k)))
            if "colbert" in store:
                vecs = [_reduce_vectors(v, out, row, colbert_dim, prune, stop_ids, pool_factor, pool_method)
                        for row, v in enumerate(out.colbert)]
                if muvera_fde is not None:
                    muvera_fde[idx] = fde.encode_documents(vecs, muvera_config)
                for row, i in enumerate(idx):
                    colbert[i] = vecs[row].astype(np.float32 if colbert_dtype == "int8" else colbert_dtype, copy=False)
            bar.update(len(idx))
            if on_progress is not None:
                done_tokens += int(lengths[idx].sum())
                on_progress(BuildProgress(min(start + chunk, n), n, done_tokens, int(lengths.sum())))
        bar.close()

        sparse = None
        if sparse_parts:
            stacked = sp.vstack(sparse_parts, format="csr")
            sparse = stacked[np.argsort(order, kind="stable")]  # back to document order
            sparse.sort_indices()
        vectors = offsets = scales = None
        if "colbert" in store:
            offsets = np.zeros(n + 1, dtype=np.int64)
            offsets[1:] = np.cumsum([len(c) for c in colbert])
            vectors = np.empty((int(offsets[-1]), colbert[0].shape[1] if n else 0), dtype=colbert_dtype)
            scales = np.empty(len(vectors), dtype=np.float32) if colbert_dtype == "int8" else None
            for i in range(n):  # copy into the contiguous array, freeing each piece as we go
                a, b = offsets[i], offsets[i + 1]
                if scales is None:
                    vectors[a:b] = colbert[i]
                else:
                    vectors[a:b], scales[a:b] = quantize_int8(colbert[i])
                colbert[i] = None

        settings = {"max_length": int(max_length), "mcls": bool(mcls), "with_titles": bool(with_titles),
                    "store": list(store), "dense_index": dense_index, "ivf_nlist": ivf_nlist, "nprobe": int(nprobe),
                    "hnsw_m": int(hnsw_m), "colbert_dtype": colbert_dtype, "pool_factor": int(pool_factor),
                    "pool_method": pool_method, "prune": prune,
                    "muvera": muvera_config.to_dict() if muvera_config else None,
                    "dense_quantization": dense_quantization, "rescore_multiplier": int(rescore_multiplier),
                    "dense_dim": dense_dim, "colbert_dim": colbert_dim,
                    "sparse_top_k": None if sparse_top_k is None else int(sparse_top_k),
                    "query_sparse_top_k": None if query_sparse_top_k is None else int(query_sparse_top_k)}
        faiss_index = quantized = None
        if dense is not None and dense_quantization != "float32":
            calib = _calibration_vectors(model, calibration, dense_dim, max_length, batch_size)
            quantized = QuantizedDenseIndex(dense, dense_quantization, calibration=calib)
            dense = None  # only the codes are kept: the point of quantising
        elif dense is not None:
            faiss_index, settings["ivf_nlist"] = _build_faiss(dense, dense_index, ivf_nlist, nprobe, hnsw_m)
        return cls(model, docs, settings=settings, dense=dense, dense_index=faiss_index, sparse=sparse,
                   colbert_vectors=vectors, colbert_offsets=offsets, colbert_scales=scales, muvera_fde=muvera_fde,
                   dense_quantized=quantized)

    @classmethod
    def build_on_disk(cls, model: M3Model, documents: Iterable[Document | str], path: str | Path, *,
                      chunk_size: int = 4096, show_progress: bool = True, **options) -> CorpusIndex:
        """:meth:`build` for a corpus whose multi-vectors do not fit in memory: written to ``path`` as
        they are encoded, memory-mapped when searched, resumable after an interruption.

        The corpus goes in chunks of ``chunk_size`` documents, in order. Each chunk's multi-vectors are
        appended to a :class:`~m3lab.retrieval.vector_store.MultiVectorStoreWriter` in
        ``path/multivectors`` (committed durably) after its dense / sparse / MUVERA rows are written
        to ``path/parts``; memory holds one chunk plus the small per-document arrays. Run again with
        the same model, corpus and options after an interruption, it continues with the first
        uncommitted chunk; with anything else it refuses (the store's spec names what differs). When
        every chunk is in, the dense, sparse and MUVERA arrays are assembled (and the dense codes
        trained), the manifest is written last, and the index is returned loaded, its multi-vectors
        an ``np.memmap``. ``options`` are :meth:`build`'s (``processes`` / ``devices``: one pool of
        encoding workers for the whole build).
        """
        from .vector_store import MultiVectorStoreWriter

        if options.get("pool") is None and (options.get("processes") or options.get("devices")):
            with EncodePool(model, processes=options.pop("processes", None), devices=options.pop("devices", None)) as own:
                return cls.build_on_disk(model, documents, path, chunk_size=chunk_size, show_progress=show_progress,
                                         pool=own, **options)
        options.pop("processes", None)
        options.pop("devices", None)

        docs = as_documents(documents)
        path = Path(path)
        if (path / MANIFEST).is_file():
            raise FileExistsError(f"{path} already holds a finished index: load it with CorpusIndex.load, or remove it")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if "encodings" in options:
            raise ValueError("build_on_disk encodes the corpus itself: it takes no encodings")
        store = tuple(options.pop("store", STORES))
        colbert_dtype = options.pop("colbert_dtype", "float16")
        dense_quantization = options.pop("dense_quantization", "float32")
        calibration = options.pop("calibration", None)
        # per chunk: float32 multi-vectors (the writer quantises them as build does) and float dense vectors
        chunk_options = dict(options, store=store, colbert_dtype="float32", show_progress=False)
        probe = cls.build(model, docs[:1], **chunk_options)  # validates the options before any long work
        settings = dict(probe.settings, colbert_dtype=colbert_dtype, dense_quantization=dense_quantization,
                        colbert_storage="memmap", chunk_size=int(chunk_size))
        if colbert_dtype not in COLBERT_DTYPES:
            raise ValueError(f"colbert_dtype must be one of {COLBERT_DTYPES}, got {colbert_dtype!r}")
        if dense_quantization not in DENSE_QUANTIZATIONS:
            raise ValueError(f"dense_quantization must be one of {DENSE_QUANTIZATIONS}, got {dense_quantization!r}")
        fingerprint = model_fingerprint(model)
        spec = {"model": fingerprint, "corpus": corpus_fingerprint(docs), "settings": settings}
        n, parts = len(docs), path / "parts"
        writer = None
        if "colbert" in store:
            writer = MultiVectorStoreWriter(path / "multivectors", dim=probe.colbert_vectors.shape[1],
                                            dtype=colbert_dtype, n_documents=n, spec=spec)
            done = writer.n_committed
        else:
            done = 0
        parts.mkdir(parents=True, exist_ok=True)
        write_json(path / "build.json", {"spec": spec, "n_documents": n})
        n_chunks = -(-n // chunk_size)
        if done % chunk_size and done != n:
            raise CorruptIndexError(f"{path / 'multivectors'}: {done} documents committed, not a multiple of the "
                                    f"chunk size {chunk_size}: was it built with another chunk_size?")
        bar = tqdm(total=n, initial=done, desc="index (on disk)", unit="doc", disable=not show_progress)
        try:
            for c in range(done // chunk_size, n_chunks):
                chunk = docs[c * chunk_size:(c + 1) * chunk_size]
                part = cls.build(model, chunk, **chunk_options)
                arrays = {}
                if part.dense is not None:
                    arrays["dense"] = part.dense
                if part.sparse is not None:
                    arrays.update(sp_data=part.sparse.data, sp_indices=part.sparse.indices, sp_indptr=part.sparse.indptr)
                if part.muvera_fde is not None:
                    arrays["muvera"] = part.muvera_fde
                with atomic_file(parts / f"part-{c:06d}.npz", "wb") as f:
                    np.savez(f, **arrays)
                if writer is not None:
                    writer.append([part.document_vectors(i) for i in range(len(chunk))])
                bar.update(len(chunk))
            bar.close()
            if writer is not None:
                mv = writer.finish()
        finally:
            if writer is not None:
                writer.close()

        # assemble the small arrays, then the index files; the manifest last
        dense_rows, sparse_rows, fde_rows = [], [], []
        for c in range(n_chunks):
            with np.load(parts / f"part-{c:06d}.npz") as z:
                rows = min(chunk_size, n - c * chunk_size)
                if "dense" in z:
                    dense_rows.append(z["dense"])
                if "sp_data" in z:
                    sparse_rows.append(sp.csr_matrix((z["sp_data"], z["sp_indices"], z["sp_indptr"]),
                                                     shape=(rows, model.vocab_size)))
                if "muvera" in z:
                    fde_rows.append(z["muvera"])
        dense = np.concatenate(dense_rows) if dense_rows else None
        quantized = None
        if dense is not None and dense_quantization != "float32":
            calib = _calibration_vectors(model, calibration, settings.get("dense_dim"), settings["max_length"], 32)
            quantized, dense = QuantizedDenseIndex(dense, dense_quantization, calibration=calib), None
        index = cls(model, docs, settings=settings, dense=dense,
                    dense_index=_build_faiss(dense, "flat", None, 0, 0)[0] if dense is not None else None,
                    sparse=sp.vstack(sparse_rows, format="csr") if sparse_rows else None,
                    colbert_vectors=mv.vectors if writer is not None else None,
                    colbert_offsets=mv.offsets if writer is not None else None,
                    colbert_scales=mv.scales if writer is not None else None,
                    muvera_fde=np.concatenate(fde_rows) if fde_rows else None, dense_quantized=quantized,
                    fingerprint=fingerprint)
        index._write(path, multivectors=path / "multivectors" if writer is not None else None)
        shutil.rmtree(parts, ignore_errors=True)
        (path / "build.json").unlink(missing_ok=True)
        return cls.load(path, model, verify=False)

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return len(self.documents)

    @property
    def doc_ids(self) -> list[str]:
        return [d.id for d in self.documents]

    @property
    def stored(self) -> tuple[str, ...]:
        return tuple(self.settings["store"])

    @property
    def max_length(self) -> int:
        return int(self.settings["max_length"])

    def __repr__(self) -> str:
        return (f"CorpusIndex({len(self)} documents, model={self.model.name_or_path!r}, store={self.stored}, "
                f"dense_index={self.settings['dense_index']!r}, max_length={self.max_length})")

    def nbytes(self) -> dict[str, int]:
        """Bytes each stored structure takes in memory (what :meth:`info` and the benchmarks report)."""
        out = {}
        if self.dense is not None:
            out["dense"] = int(self.dense.nbytes)
        if self.dense_quantized is not None:
            out["dense"] = int(self.dense_quantized.nbytes)
        if self.sparse is not None:
            out["sparse"] = int(self.sparse.data.nbytes + self.sparse.indices.nbytes + self.sparse.indptr.nbytes)
        if self.colbert_vectors is not None:
            out["colbert"] = int(self.colbert_vectors.nbytes + self.colbert_offsets.nbytes
                                 + (self.colbert_scales.nbytes if self.colbert_scales is not None else 0))
        if self.muvera_fde is not None:
            out["muvera"] = int(self.muvera_fde.nbytes)
        return out

    def info(self) -> dict:
        """The index spec and sizes: documents, stored functions, settings, bytes per structure and per document."""
        sizes = self.nbytes()
        out = {"documents": len(self), "model": self.model.name_or_path, "store": list(self.stored),
               "settings": dict(self.settings), "bytes": sizes,
               "bytes_per_document": {k: v / max(len(self), 1) for k, v in sizes.items()}}
        if self.colbert_offsets is not None:
            out["vectors_per_document"] = float(self.colbert_offsets[-1]) / max(len(self), 1)
        return out

    def dense_vectors(self) -> np.ndarray:
        """The (n, d) dense vectors: the stored float32 ones, or with ``dense_quantization`` the codes
        decoded (what rescoring scores against)."""
        self._require("dense")
        if self.dense is not None:
            return self.dense
        return self.dense_quantized.decode(np.arange(len(self)))

    def document_vectors(self, i: int) -> np.ndarray:
        """The multi-vector embedding of document ``i``: a view into the contiguous array, dequantised
        to float32 for an int8 index."""
        self._require("colbert")
        return self._views()[i]

    def _views(self) -> Sequence[np.ndarray]:
        if self._doc_views is None:
            o = self.colbert_offsets
            if self.colbert_scales is not None:
                self._doc_views = Int8Vectors(self.colbert_vectors, self.colbert_scales, o)
            else:
                self._doc_views = FloatVectors(self.colbert_vectors, o)
        return self._doc_views

    def _require(self, component: str) -> None:
        if component not in self.stored:
            raise ValueError(f"this index stores no {component} embeddings (built with store={self.stored}); "
                             f"rebuild it with store including {component!r}")

    # ------------------------------------------------------------------ search
    def encode_queries(self, queries: str | Sequence[str], *, components: Iterable[str] = STORES,
                       max_length: int | None = None, batch_size: int = 32,
                       show_progress: bool | None = None) -> EncodeOutput:
        """Encode queries with :meth:`M3Model.encode_queries` (only the ``components`` needed).

        The model's query prompt goes before each; ``max_length`` defaults to the model's query
        max length. Empty queries are refused.
        """
        texts = check_texts(queries)
        if not texts:
            raise ValueError("no queries given")
        for i, t in enumerate(texts):
            if not t.strip():
                raise ValueError("the query is empty" if len(texts) == 1 else f"query {i} is empty")
        components = set(components)
        return self.model.encode_queries(texts, batch_size=batch_size, max_length=max_length,
                                 return_dense="dense" in components, return_sparse="sparse" in components,
                                 return_colbert="colbert" in components, show_progress=show_progress)

    def search(self, query: str | Sequence[str], *, mode: str = "hybrid", top_k: int = 10,
               weights: Sequence[float] = scoring.DEFAULT_WEIGHTS, candidates: int = 100,
               max_length: int | None = None) -> list[SearchResult] | list[list[SearchResult]]:
        """Retrieve the ``top_k`` documents for one query (a list of results) or a batch (a list of lists).

        ``mode``: ``dense``, ``sparse``, ``colbert`` (exhaustive MaxSim; with a MUVERA index, MaxSim of
        the MUVERA top-``candidates``) or ``hybrid`` (candidates =
        dense top-``candidates`` ∪ sparse top-``candidates``, reranked by w1·dense + w2·sparse +
        w3·colbert with ``weights``). Queries are encoded with the index's ``max_length`` unless given.
        """
        self._check_mode(mode)
        single = isinstance(query, str)
        q = self.encode_queries(query, components=self.components_for(mode, weights), max_length=max_length)
        ranking = self.rank(q, [mode], top_k=top_k, weights=weights, candidates=candidates)[mode]
        results = [self._results(ranking, row) for row in range(len(q))]
        return results[0] if single else results

    def components_for(self, mode: str, weights: Sequence[float] = scoring.DEFAULT_WEIGHTS) -> tuple[str, ...]:
        """Which query embeddings ``mode`` needs (:func:`m3lab.retrieval.ranker.mode_functions`)."""
        return mode_functions(mode, weights, stored=self.stored)

    def score_documents(self, queries: EncodeOutput, documents: Sequence[int], row: int = 0) -> dict[str, np.ndarray]:
        """s_dense, s_lex and s_mul of query ``row`` with the documents at positions ``documents``.

        A function the index or the queries lack comes back as NaN (what the app shows as "—").
        """
        cand = np.asarray([list(documents)], dtype=np.int64)
        scorer = _BlockScorer(self, self.prepare_queries(queries.select([row])))
        nan = np.full(len(documents), np.nan, dtype=np.float32)
        return {f: scorer.pairs(f, cand)[0] if f in self.stored and getattr(queries, f) is not None else nan
                for f in STORES}

    def prepare_queries(self, queries: EncodeOutput) -> EncodeOutput:
        """Queries as this index's settings score them: dense and multi-vectors truncated to
        ``dense_dim`` / ``colbert_dim`` (Matryoshka), lexical weights cut to ``query_sparse_top_k``.
        Queries already in that form are returned as they are."""
        st = self.settings
        dd, cd, k = st.get("dense_dim"), st.get("colbert_dim"), st.get("query_sparse_top_k")
        dense, colbert, sparse = queries.dense, queries.colbert, queries.sparse
        if dd and dense is not None and dense.shape[1] != dd:
            dense = truncate_embeddings(dense, dd)
        if cd and colbert is not None and any(v.shape[1] != cd for v in colbert):
            colbert = [truncate_embeddings(v, cd) for v in colbert]
        if k and sparse is not None and any(len(w) > k for w in sparse):
            sparse = [dict(sorted(w.items(), key=lambda kv: (-kv[1], kv[0]))[:k]) for w in sparse]
        if dense is queries.dense and colbert is queries.colbert and sparse is queries.sparse:
            return queries
        return EncodeOutput(dense=dense, sparse=sparse, colbert=colbert, input_ids=queries.input_ids,
                            vocab_size=queries.vocab_size, colbert_token_ids=queries.colbert_token_ids)

    def rank(self, queries: EncodeOutput, modes: Sequence[str], *, top_k: int = 10,
             weights: Sequence[float] = scoring.DEFAULT_WEIGHTS, candidates: int = 100,
             query_block: int | None = None) -> dict[str, Ranking]:
        """Rank the whole corpus for encoded queries, in several modes at once.

        Queries go in blocks; within a block every score matrix is computed once and shared by
        the modes (e.g. the exhaustive MaxSim of ``colbert`` is reused by ``hybrid``'s rerank).
        """
        weights = tuple(float(w) for w in weights)
        self._check_request(queries, modes, [weights], top_k, candidates)
        queries = self.prepare_queries(queries)
        top_k = min(top_k, len(self))
        parts: dict[str, list[Ranking]] = {m: [] for m in modes}
        for scorer in self._block_scorers(queries, query_block):
            for mode in modes:
                parts[mode].append(scorer.rank(mode, top_k, weights, max(candidates, top_k)))
        return {m: _concat_rankings(p) for m, p in parts.items()}

    def rank_hybrid_grid(self, queries: EncodeOutput, weight_list: Sequence[Sequence[float]], *, top_k: int = 10,
                         candidates: int = 100) -> list[Ranking]:
        """``rank(queries, ["hybrid"], weights=w)["hybrid"]`` for every ``w`` of ``weight_list``, with equal
        results, each score matrix and candidate set computed once for all of them (a fusion-weight sweep)."""
        weight_list = [tuple(float(x) for x in w) for w in weight_list]
        self._check_request(queries, ["hybrid"], weight_list, top_k, candidates)
        queries = self.prepare_queries(queries)
        top_k = min(top_k, len(self))
        parts: list[list[Ranking]] = [[] for _ in weight_list]
        for scorer in self._block_scorers(queries):
            for k, r in enumerate(scorer.hybrid_grid(weight_list, top_k, max(candidates, top_k))):
                parts[k].append(r)
        return [_concat_rankings(p) for p in parts]

    def _check_request(self, queries: EncodeOutput, modes: Sequence[str], weight_list: Sequence[tuple[float, ...]],
                       top_k: int, candidates: int) -> None:
        """Refuse a ranking request the index or the queries cannot serve, naming what is missing."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        for weights in weight_list:
            if len(weights) != 3:
                raise ValueError(f"weights must be (w_dense, w_sparse, w_colbert), got {weights}")
        for mode in modes:
            self._check_mode(mode)
            for weights in weight_list:
                for c in self.components_for(mode, weights):
                    self._require(c)
                    if getattr(queries, c) is None:
                        raise ValueError(f"mode {mode!r} needs the queries' {c} embeddings; encode them with "
                                         f"return_{c}=True")

    def _block_scorers(self, queries: EncodeOutput, query_block: int | None = None) -> Iterator[_BlockScorer]:
        """One scorer per block of queries, a block's score matrices kept within ``_SCORE_BLOCK`` floats."""
        n_q = len(queries)
        block = query_block or max(1, min(n_q, _SCORE_BLOCK // max(len(self), 1)))
        for start in range(0, n_q, block):
            yield _BlockScorer(self, queries.select(range(start, min(start + block, n_q))))

    def _results(self, ranking: Ranking, row: int) -> list[SearchResult]:
        out = []
        for r, j in enumerate(ranking.indices[row]):
            if j < 0:
                break
            comp = {c: (None if getattr(ranking, c) is None or math.isnan(getattr(ranking, c)[row, r])
                        else float(getattr(ranking, c)[row, r])) for c in STORES}
            doc = self.documents[j]
            out.append(SearchResult(doc.id, r + 1, float(ranking.scores[row, r]), comp["dense"], comp["sparse"],
                                    comp["colbert"], doc))
        return out

    @staticmethod
    def _check_mode(mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; the modes are {', '.join(MODES)}")

    # ------------------------------------------------------------------ saving and loading
    def save(self, path: str | Path) -> Path:
        """Write the index to directory ``path`` atomically (a complete old version survives a failure)."""
        path = Path(path)
        if self.settings.get("colbert_storage") == "memmap":
            raise ValueError("an index built on disk lives where it was built: copy its directory to move it")
        with atomic_directory(path) as tmp:
            self._write(tmp)
        return path

    def _write(self, tmp: Path, multivectors: Path | None = None) -> None:
        """Write the index files and, last, the manifest into directory ``tmp``. ``multivectors``: a
        finished on-disk store already in ``tmp`` (its files are listed by size, not hashed, nor rewritten)."""
        with open(tmp / DOCUMENTS, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"id": d.id, "text": d.text, "title": d.title, "language": d.language},
                                   ensure_ascii=False) + "\n" for d in self.documents)
        arrays = {}
        if self.dense is not None:
            arrays["dense"] = self._save_array(tmp, "dense", self.dense)
            if self.settings["dense_index"] != "flat":  # a flat index is rebuilt from dense.npy on load
                faiss.write_index(self.dense_index, str(tmp / _FILES["faiss"]))
        if self.dense_quantized is not None:
            for key, array in self.dense_quantized.to_arrays().items():
                arrays[f"dense_{key}"] = self._save_array(tmp, f"dense_{key}", array)
        if self.sparse is not None:
            sp.save_npz(tmp / _FILES["sparse"], self.sparse, compressed=False)
            arrays["sparse"] = {"file": _FILES["sparse"], "shape": list(self.sparse.shape),
                                "dtype": str(self.sparse.dtype), "nnz": int(self.sparse.nnz)}
        if multivectors is not None:
            arrays["colbert_store"] = {"directory": multivectors.name}
        elif self.colbert_vectors is not None:
            arrays["colbert_vectors"] = self._save_array(tmp, "colbert_vectors", self.colbert_vectors)
            arrays["colbert_offsets"] = self._save_array(tmp, "colbert_offsets", self.colbert_offsets)
            if self.colbert_scales is not None:
                arrays["colbert_scales"] = self._save_array(tmp, "colbert_scales", self.colbert_scales)
        if self.muvera_fde is not None:
            arrays["muvera"] = self._save_array(tmp, "muvera", self.muvera_fde)
        files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256_file(p)} for p in sorted(tmp.iterdir())
                 if p.is_file() and p.name != "build.json"}
        if multivectors is not None:  # sizes only: hashing would read vectors larger than memory
            files.update({f"{multivectors.name}/{p.name}": {"bytes": p.stat().st_size}
                          for p in sorted(multivectors.iterdir()) if p.is_file() and not p.name.startswith(".")})
        write_json(tmp / MANIFEST, {
            "format": FORMAT, "format_version": FORMAT_VERSION, "m3lab_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": {"name_or_path": self.model.name_or_path, "fingerprint": self.fingerprint,
                      "pooling": self.model.pooling, "hidden_size": self.model.hidden_size,
                      "vocab_size": self.model.vocab_size, "heads_trained": self.model.heads_trained},
            "settings": self.settings,
            "corpus": {"n_documents": len(self), "sha256": corpus_fingerprint(self.documents)},
            "arrays": arrays, "files": files,
        })

    @staticmethod
    def _save_array(folder: Path, name: str, array: np.ndarray) -> dict:
        np.save(folder / _file(name), np.ascontiguousarray(array), allow_pickle=False)
        return {"file": _file(name), "shape": list(array.shape), "dtype": str(array.dtype)}

    @staticmethod
    def read_manifest(path: str | Path) -> dict:
        """The manifest of the index in ``path``, checked for the fields loading needs."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"index directory {path} does not exist")
        file = path / MANIFEST
        if not file.is_file():
            raise CorruptIndexError(f"{file}: missing — {path} is not an m3lab index (or its write was interrupted)")
        try:
            manifest = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            where = f":{err.lineno}" if isinstance(err, json.JSONDecodeError) else ""
            raise CorruptIndexError(f"{file}{where}: not valid JSON ({err})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise CorruptIndexError(f"{file}: not an m3lab corpus index manifest (field 'format' is not {FORMAT!r})")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise CorruptIndexError(f"{file}: format_version {manifest.get('format_version')!r} is not supported "
                                    f"(this m3lab reads version {FORMAT_VERSION})")
        for key, sub in (("model", ("name_or_path", "fingerprint", "pooling")), ("settings", ("store", "max_length")),
                         ("corpus", ("n_documents", "sha256")), ("arrays", ()), ("files", ())):
            if not isinstance(manifest.get(key), dict):
                raise CorruptIndexError(f"{file}: field {key!r} is missing or not an object")
            for k in sub:
                if k not in manifest[key]:
                    raise CorruptIndexError(f"{file}: field '{key}.{k}' is missing")
        return manifest

    @classmethod
    def load(cls, path: str | Path, model: M3Model | None = None, *, verify: bool = True) -> CorpusIndex:
        """Read an index written by :meth:`save`.

        ``model`` must be the model that built it (checked by weight fingerprint and pooling);
        ``None`` loads the model named in the manifest. ``verify`` checks every file's SHA-256.
        A missing or corrupt file raises :class:`CorruptIndexError` naming it; another model
        raises :class:`ModelMismatchError` naming both.
        """
        path = Path(path)
        manifest = cls.read_manifest(path)
        m = manifest["model"]
        if model is None:
            model = M3Model.from_pretrained(m["name_or_path"], pooling=m["pooling"])
        fingerprint = model_fingerprint(model)
        if fingerprint != m["fingerprint"]:
            raise ModelMismatchError(
                f"the index in {path} was built with model {m['name_or_path']!r} (fingerprint {m['fingerprint'][:12]}), "
                f"but the given model is {model.name_or_path!r} (fingerprint {fingerprint[:12]}); its vectors would be "
                "meaningless for this model: load it with the model that built it, or rebuild it with CorpusIndex.build")
        if model.pooling != m["pooling"]:
            raise ModelMismatchError(f"the index in {path} was built with pooling {m['pooling']!r}, but the given model "
                                     f"pools with {model.pooling!r}; load the model with pooling={m['pooling']!r}")
        for name, info in manifest["files"].items():
            file = path / name
            if not file.is_file():
                raise CorruptIndexError(f"{file}: missing (listed in {MANIFEST})")
            if file.stat().st_size != info.get("bytes"):
                raise CorruptIndexError(f"{file}: {file.stat().st_size} bytes, the manifest says {info.get('bytes')} "
                                        "(truncated or altered)")
            if verify and "sha256" in info and _sha256_file(file) != info.get("sha256"):
                raise CorruptIndexError(f"{file}: SHA-256 differs from the manifest (the file was altered)")

        documents = _read_documents(path / DOCUMENTS)
        corpus = manifest["corpus"]
        if len(documents) != corpus["n_documents"] or corpus_fingerprint(documents) != corpus["sha256"]:
            raise CorruptIndexError(f"{path / DOCUMENTS}: does not match the corpus in {MANIFEST} "
                                    f"({len(documents)} documents, expected {corpus['n_documents']})")
        arrays, settings = manifest["arrays"], manifest["settings"]
        store = tuple(settings["store"])
        n = len(documents)
        dense = faiss_index = sparse = vectors = offsets = scales = muvera_fde = None
        quantized = None
        if "dense" in store and settings.get("dense_quantization", "float32") != "float32":
            parts = {name[len("dense_"):]: _load_array(path, arrays, name, (None,) * len(info.get("shape", [])))
                     for name, info in arrays.items() if name.startswith("dense_")}
            try:
                quantized = QuantizedDenseIndex.from_arrays(settings["dense_quantization"], parts)
            except (KeyError, ValueError) as err:
                raise CorruptIndexError(f"{path / MANIFEST}: the dense codes cannot be read ({err})") from None
            if len(quantized) != n:
                raise CorruptIndexError(f"{path}: dense codes for {len(quantized)} documents, the corpus has {n}")
        elif "dense" in store:
            dense = _load_array(path, arrays, "dense", (n, None))
            if settings.get("dense_index", "flat") == "flat":
                faiss_index, _ = _build_faiss(dense, "flat", None, 0, 0)
            else:
                faiss_index = _read_faiss(path / _FILES["faiss"], n, settings)
        if "sparse" in store:
            file = path / _FILES["sparse"]
            try:
                sparse = sp.load_npz(file).tocsr()
            except Exception as err:  # noqa: BLE001 - any parse failure is a corrupt file
                raise CorruptIndexError(f"{file}: cannot be read ({type(err).__name__}: {err})") from None
            if sparse.shape[0] != n:
                raise CorruptIndexError(f"{file}: {sparse.shape[0]} rows for {n} documents")
        if "colbert" in store and settings.get("colbert_storage") == "memmap":
            from .vector_store import MultiVectorStore, StoreError

            try:
                mv = MultiVectorStore.open(path / arrays.get("colbert_store", {}).get("directory", "multivectors"))
            except (StoreError, FileNotFoundError) as err:
                raise CorruptIndexError(str(err)) from None
            if len(mv) != n or mv.manifest.get("spec", {}).get("model") != m["fingerprint"]:
                raise CorruptIndexError(f"{path / 'multivectors'}: holds {len(mv)} documents of another build "
                                        f"than {path / MANIFEST} ({n} documents)")
            vectors, offsets, scales = mv.vectors, mv.offsets, mv.scales
        elif "colbert" in store:
            vectors = _load_array(path, arrays, "colbert_vectors", (None, None))
            offsets = _load_array(path, arrays, "colbert_offsets", (n + 1,))
            if offsets[0] != 0 or offsets[-1] != len(vectors) or np.any(np.diff(offsets) < 0):
                raise CorruptIndexError(f"{path / _FILES['colbert_offsets']}: offsets do not partition the "
                                        f"{len(vectors)} multi-vector rows")
            if settings.get("colbert_dtype") == "int8":
                scales = _load_array(path, arrays, "colbert_scales", (len(vectors),))
        if "colbert" in store:
            if str(vectors.dtype) != settings.get("colbert_dtype", str(vectors.dtype)):
                raise CorruptIndexError(f"{path / _FILES['colbert_vectors']}: {vectors.dtype}, the manifest's "
                                        f"settings say colbert_dtype {settings.get('colbert_dtype')!r}")
            if settings.get("muvera"):
                try:
                    dim = fde.FDEConfig.from_dict(settings["muvera"]).output_dimension
                except (TypeError, ValueError) as err:
                    raise CorruptIndexError(f"{path / MANIFEST}: field 'settings.muvera' is not an FDE config "
                                            f"({err})") from None
                muvera_fde = _load_array(path, arrays, "muvera", (n, dim))
        return cls(model, documents, settings=settings, dense=dense, dense_index=faiss_index, sparse=sparse,
                   colbert_vectors=vectors, colbert_offsets=offsets, colbert_scales=scales, muvera_fde=muvera_fde,
                   dense_quantized=quantized, fingerprint=fingerprint)


def _reduce_vectors(vectors: np.ndarray, out: EncodeOutput, row: int, dim: int | None, prune: dict | None,
                    stop_ids: np.ndarray | None, pool_factor: int, pool_method: str) -> np.ndarray:
    """One document's multi-vectors as the index stores them: truncated (Matryoshka), pruned, then pooled."""
    v = vectors if dim is None else truncate_embeddings(vectors, dim)
    if prune is not None:
        token_ids = out.colbert_token_ids[row]
        if prune["by"] == "stop_tokens":
            v = prune_tokens(v, keep=~np.isin(token_ids, stop_ids))
        else:
            v = prune_tokens(v, importance=lexical_importance(token_ids, out.sparse[row]),
                             keep_ratio=prune["keep_ratio"])
    if pool_factor > 1:
        v = POOL_METHODS[pool_method](v, int(pool_factor))
    return v


def _check_prune(prune: dict | None) -> dict | None:
    if prune is None or prune is False:
        return None
    if not isinstance(prune, dict) or prune.get("by") not in PRUNE_BY or set(prune) - {"by", "keep_ratio"}:
        raise ValueError(f"prune must be None or {{'by': one of {PRUNE_BY}, 'keep_ratio': float}}, got {prune!r}")
    if prune["by"] == "stop_tokens":
        if prune.get("keep_ratio", 1.0) != 1.0:
            raise ValueError("prune by 'stop_tokens' drops a fixed set of tokens: it takes no keep_ratio")
        return {"by": "stop_tokens", "keep_ratio": 1.0}
    ratio = float(prune.get("keep_ratio", 0.5))
    if not 0 < ratio <= 1:
        raise ValueError(f"prune keep_ratio must be in (0, 1], got {ratio}")
    return {"by": prune["by"], "keep_ratio": ratio}


def _check_dim(name: str, dim: int | None, full: int) -> int | None:
    if dim is None:
        return None
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 1 <= dim <= full:
        raise ValueError(f"{name} must be None or an integer in [1, {full}] (the model's dimension), got {dim!r}")
    return None if dim == full else int(dim)


def _calibration_vectors(model: M3Model, calibration, dim: int | None, max_length: int,
                         batch_size: int) -> np.ndarray | None:
    """Dense vectors that set the int8 ranges: given as vectors, or texts encoded as passages."""
    if calibration is None:
        return None
    if isinstance(calibration, np.ndarray):
        x = np.asarray(calibration, dtype=np.float32)
    else:
        x = model.encode_corpus(check_texts(list(calibration)), batch_size=batch_size, max_length=max_length,
                                return_sparse=False, return_colbert=False, show_progress=False).dense
    return x if dim is None or x.shape[1] == dim else truncate_embeddings(x, dim)


def default_muvera_config(dimension: int, **changes) -> fde.FDEConfig:
    """The MUVERA paper's retrieval setting (section 4: k_sim = 5, d_proj = 16, R_reps = 20, fill of
    empty partitions, seed 42): ``20 x 32 x 16 = 10,240`` dimensions, for vectors of ``dimension``."""
    base = dict(dimension=dimension, num_repetitions=20, num_simhash_projections=5, projection_type="ams_sketch",
                projection_dimension=16, fill_empty_partitions=True, seed=42)
    return fde.FDEConfig(**{**base, **changes})


def _muvera_config(muvera: bool | dict | fde.FDEConfig, dimension: int) -> fde.FDEConfig:
    if muvera is True:
        return default_muvera_config(dimension)
    if isinstance(muvera, dict):
        return default_muvera_config(dimension, **muvera)
    if isinstance(muvera, fde.FDEConfig):
        if muvera.dimension != dimension:
            raise ValueError(f"muvera config has dimension {muvera.dimension}, the model's multi-vectors {dimension}")
        return muvera
    raise TypeError(f"muvera must be True, a dict of FDEConfig fields or an FDEConfig, got {type(muvera).__name__}")


def _build_faiss(dense: np.ndarray, kind: str, nlist: int | None, nprobe: int, hnsw_m: int
                 ) -> tuple[faiss.Index, int | None]:
    """A faiss inner-product index over the (normalised) dense vectors."""
    n, d = dense.shape
    x = np.ascontiguousarray(dense, dtype=np.float32)
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 128
    else:  # ivf: about 4 sqrt(n) lists, with >= 39 training points each as faiss recommends
        nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
        if nlist > n:
            raise ValueError(f"ivf_nlist={nlist} is larger than the corpus ({n} documents)")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.nprobe = max(1, min(nprobe, nlist))
    index.add(x)
    return index, nlist


def _read_faiss(file: Path, n: int, settings: dict) -> faiss.Index:
    try:
        index = faiss.read_index(str(file))
    except Exception as err:  # noqa: BLE001 - faiss raises RuntimeError with C++ text
        raise CorruptIndexError(f"{file}: cannot be read by faiss ({str(err).strip().splitlines()[-1]})") from None
    if index.ntotal != n:
        raise CorruptIndexError(f"{file}: holds {index.ntotal} vectors for {n} documents")
    if settings.get("dense_index") == "ivf":
        faiss.extract_index_ivf(index).nprobe = max(1, min(settings.get("nprobe", 16), index.nlist))
    return index


def _file(name: str) -> str:
    """The file an array is saved in: the fixed names, and ``<name>.npy`` for the dense codes' arrays."""
    return _FILES.get(name, f"{name}.npy")


def _load_array(path: Path, arrays: dict, name: str, shape: tuple) -> np.ndarray:
    info = arrays.get(name)
    file = path / _file(name)
    if not isinstance(info, dict):
        raise CorruptIndexError(f"{path / MANIFEST}: field 'arrays.{name}' is missing")
    try:
        array = np.load(file, allow_pickle=False)
    except FileNotFoundError:
        raise CorruptIndexError(f"{file}: missing") from None
    except Exception as err:  # noqa: BLE001 - truncated header, bad magic, pickled object...
        raise CorruptIndexError(f"{file}: cannot be read as a NumPy array ({type(err).__name__}: {err})") from None
    if list(array.shape) != list(info.get("shape", [])) or str(array.dtype) != info.get("dtype"):
        raise CorruptIndexError(f"{file}: shape {array.shape} {array.dtype}, the manifest says "
                                f"{tuple(info.get('shape', []))} {info.get('dtype')}")
    if any(s is not None and s != a for s, a in zip(shape, array.shape)) or len(shape) != array.ndim:
        raise CorruptIndexError(f"{file}: shape {array.shape} does not fit the corpus (expected {shape})")
    return array


def _read_documents(file: Path) -> list[Document]:
    if not file.is_file():
        raise CorruptIndexError(f"{file}: missing")
    docs = []
    with open(file, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            try:
                obj = json.loads(line)
                docs.append(Document(obj["id"], obj["text"], obj.get("language"), obj.get("title")))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise CorruptIndexError(f"{file}:{number}: not a document record ({type(err).__name__}: {err})") from None
    return docs
