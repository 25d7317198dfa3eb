"""All three M3 functions in Qdrant, with M3's hybrid score computed inside the engine (issue 15).

    index = QdrantIndex.build(model, documents, path="my-qdrant")     # embedded (qdrant-edge), no server
    index = QdrantIndex.build(model, documents, url="http://localhost:6333", shards=6, replication_factor=2)
    index.search("who built the tower?", mode="hybrid")                # [SearchResult, ...] as CorpusIndex gives
    QdrantIndex.open(model, path="my-qdrant")

One collection, one point per document (its id is the document's position), three named vectors
and the document's fields (``doc_id``, ``text``, ``title``, ``language``) as payload:

* ``dense``: the dense embedding, Dot distance (= s_dense, section 3.2);
* ``sparse``: the lexical weights as a sparse vector over token ids; its dot product is s_lex (eq. 4);
* ``colbert``: the multi-vectors with Qdrant's MaxSim comparator, Dot distance. Qdrant *sums* the
  best match of each query vector where eq. 3 averages, so every MaxSim score from the engine is
  divided by the query's number of vectors. These vectors get no HNSW graph: they are scored
  exhaustively (``colbert`` mode) or on candidates (``hybrid``).

Modes as in :class:`~m3lab.retrieval.CorpusIndex`: ``dense`` and ``sparse`` are the engine's nearest
neighbours; ``colbert`` is MaxSim over every point; ``hybrid`` prefetches dense top-``candidates``
and sparse top-``candidates``, rescores their union by each weighted function in a second prefetch
stage, and ranks by the engine formula of :func:`hybrid_formula_terms` (section 3.2's s_rank).
``exact=True`` makes the candidate stages exact; otherwise dense search uses HNSW with ``hnsw_ef``.

Backends, one thin adapter each, the same query plan: the embedded Rust engine of ``qdrant-edge-py``
(``path=``, the default) and ``qdrant-client`` for a server or cluster (``url=``) or any client
you made (``client=``; ``QdrantClient(":memory:")`` is the client's local mode, which the tests use).
The m3lab manifest (model and corpus fingerprints, settings, documents written so far) lives in
``path/m3lab.json`` (edge) or in the collection's metadata (client); a build that stopped resumes
where it stopped, and a collection built by another model is refused.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .. import __version__, scoring
from .._io import write_json
from ..data.records import Document
from ..modeling import EncodeOutput, M3Model
from ..modeling.pool import EncodePool
from .index import (
    STORES,
    CorpusIndex,
    ModelMismatchError,
    as_documents,
    corpus_fingerprint,
    document_text,
    model_fingerprint,
)
from .ranker import Ranking, SearchResult

FORMAT = "m3lab-qdrant-index"

FORMAT_VERSION = 1

MANIFEST = "m3lab.json"  # beside the edge shard's folder

METADATA_KEY = "m3lab"  # the collection metadata key a server collection keeps the manifest under

COLBERT_DTYPES = ("float16", "float32")


def _require(module: str, extra: str = "qdrant"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"QdrantIndex needs {module!r}: pip install 'm3lab[{extra}]'") from e


def hybrid_formula_terms(weights: Sequence[float], n_query_vectors: int) -> list[tuple[str, float]]:
    """The engine-side form of s_rank = w1 s_dense + w2 s_lex + w3 s_mul (section 3.2,
    :func:`m3lab.scoring.combine_scores`): ``(function, coefficient)`` for each weighted function,
    in the order of the rescoring prefetches whose scores the formula reads as ``$score[i]``.

    The colbert coefficient is w3 / n_q because the engine's MaxSim is the sum over the query's
    ``n_query_vectors`` vectors (eq. 3 takes their mean).
    """
    weights = scoring.check_weights(weights)
    scale = {"dense": 1.0, "sparse": 1.0, "colbert": 1.0 / max(n_query_vectors, 1)}
    return [(f, w * scale[f]) for f, w in zip(scoring.FUNCTIONS, weights) if w != 0]


def candidate_sources(weights: Sequence[float]) -> list[str]:
    """Where hybrid draws candidates, as :class:`CorpusIndex` does: dense and/or sparse, those weighted (dense if neither)."""
    weights = scoring.check_weights(weights)
    return [c for c, w in zip(("dense", "sparse"), weights[:2]) if w != 0] or ["dense"]


# ---------------------------------------------------------------------------------------------- backends
class _Scrolling:
    """What both backends derive from ``scroll``: the payloads and the dense vectors of every point."""

    def scroll_payloads(self, n: int) -> list[dict]:
        records = self.scroll(n, payload=["doc_id", "text", "title", "language"])
        _check_complete(records, self.location)
        return [dict(r.payload or {}) for r in records]

    def scroll_dense(self, n: int) -> list[list[float]]:
        records = self.scroll(n, payload=False, vector=["dense"])
        _check_complete(records, self.location)
        return [r.vector["dense"] for r in records]


def _check_complete(records: list, location: str) -> None:
    missing = [i for i, r in enumerate(records) if r is None]
    if missing:
        raise ValueError(f"{location}: points {missing[:5]} are missing ({len(missing)} in all): rebuild the index")


class _EdgeBackend(_Scrolling):
    """qdrant-edge-py: Qdrant's own engine as one in-process shard under ``path/shard``."""

    kind = "edge"

    def __init__(self, path: str | Path):
        self.qe = _require("qdrant_edge")
        self.path = Path(path)
        self.shard_path = self.path / "shard"
        self._shard = None

    @property
    def shard(self):
        if self._shard is None:
            raise RuntimeError(f"{self.path}: the embedded shard is not open in this process (under torchrun "
                               "rank 0 alone opens it: search from rank 0, or open it after the build)")
        return self._shard

    @property
    def location(self) -> str:
        return str(self.path)

    def exists(self) -> bool:
        return (self.path / MANIFEST).is_file()

    def read_manifest(self) -> dict | None:
        file = self.path / MANIFEST
        if not file.is_file():
            return None
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}: not a readable m3lab manifest ({e})") from None

    def write_manifest(self, manifest: dict) -> None:
        write_json(self.path / MANIFEST, manifest)

    def create(self, dense_dim: int, colbert_dim: int, colbert_dtype: str, **_cluster) -> None:
        qe = self.qe
        if self.shard_path.exists():
            import shutil

            shutil.rmtree(self.shard_path)
        no_graph = qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000)
        dtype = qe.VectorStorageDatatype.Float16 if colbert_dtype == "float16" else qe.VectorStorageDatatype.Float32
        config = qe.EdgeConfig(
            vectors={"dense": qe.EdgeVectorParams(dense_dim, qe.Distance.Dot),
                     "colbert": qe.EdgeVectorParams(colbert_dim, qe.Distance.Dot, datatype=dtype, hnsw_config=no_graph,
                                                    multivector_config=qe.MultiVectorConfig(
                                                        qe.MultiVectorComparator.MaxSim))},
            sparse_vectors={"sparse": qe.EdgeSparseVectorParams()})
        self.path.mkdir(parents=True, exist_ok=True)
        self._shard = qe.EdgeShard.create(str(self.shard_path), config)

    def open(self) -> None:
        if self._shard is None:
            if not self.shard_path.is_dir():
                raise FileNotFoundError(f"{self.path}: no Qdrant shard in it (expected {self.shard_path})")
            self._shard = self.qe.EdgeShard.load(str(self.shard_path))

    def upsert(self, ids: Sequence[int], dense, sparse, colbert, payloads) -> None:
        qe = self.qe
        points = [qe.Point(int(i), {"dense": d.tolist(), "sparse": qe.SparseVector(*_sparse_lists(s)),
                                    "colbert": c.tolist()}, p)
                  for i, d, s, c, p in zip(ids, dense, sparse, colbert, payloads)]
        self.shard.update(qe.UpdateOperation.upsert_points(points))
        self.shard.flush()

    def finish(self) -> None:
        self.shard.optimize()  # builds the dense HNSW graph and the sparse index now, not at the first query
        self.shard.flush()

    def count(self) -> int:
        return int(self.shard.count(self.qe.CountRequest(exact=True)))

    def _vector(self, function: str, vector):
        if function == "sparse":
            return self.qe.SparseVector(*_sparse_lists(vector))
        return vector.tolist()

    def _params(self, exact: bool, hnsw_ef: int | None):
        return self.qe.SearchParams(exact=exact, hnsw_ef=None if exact else hnsw_ef)

    def nearest(self, function: str, vector, limit: int, *, exact: bool, hnsw_ef: int | None,
                ids: Sequence[int] | None = None) -> list[tuple[int, float]]:
        qe = self.qe
        flt = qe.Filter(must=[qe.HasIdCondition({int(i) for i in ids})]) if ids is not None else None
        req = qe.QueryRequest(limit=limit, query=qe.Query.Nearest(self._vector(function, vector), using=function),
                              params=self._params(exact, hnsw_ef), filter=flt)
        return [(int(p.id), float(p.score)) for p in self.shard.query(req)]

    def hybrid(self, vectors: dict, sources: Sequence[str], terms: Sequence[tuple[str, float]], candidates: int,
               limit: int, *, exact: bool, hnsw_ef: int | None) -> list[tuple[int, float]]:
        qe = self.qe
        params = self._params(exact, hnsw_ef)
        first = [qe.Prefetch(limit=candidates, query=qe.Query.Nearest(self._vector(f, vectors[f]), using=f),
                             params=params) for f in sources]
        rescore = [qe.Prefetch(limit=candidates * len(sources), prefetches=first, params=params,
                               query=qe.Query.Nearest(self._vector(f, vectors[f]), using=f)) for f, _ in terms]
        E = qe.Expression
        formula = qe.Formula(E.Sum([E.Mult([E.Constant(c), E.Variable(f"$score[{i}]")]) for i, (_, c) in enumerate(terms)]),
                             defaults={f"$score[{i}]": 0.0 for i in range(len(terms))})
        req = qe.QueryRequest(limit=limit, prefetches=rescore, query=formula, params=params)
        return [(int(p.id), float(p.score)) for p in self.shard.query(req)]

    def payloads(self, ids: Sequence[int]) -> dict[int, dict]:
        return {int(r.id): dict(r.payload or {}) for r in self.shard.retrieve([int(i) for i in ids], True, False)}

    def scroll(self, n: int, *, payload=True, vector=False) -> list:
        """Every point's payload or vector (or both) by id, ``n`` points in all."""
        out, offset = [None] * n, None
        while True:
            records, offset = self.shard.scroll(self.qe.ScrollRequest(offset=offset, limit=1024, with_payload=payload,
                                                                      with_vector=vector))
            for r in records:
                out[int(r.id)] = r
            if offset is None:
                return out

    def close(self) -> None:
        if self._shard is not None:
            self._shard.close()
            self._shard = None


class _ClientBackend(_Scrolling):
    """qdrant-client: a Qdrant server or cluster (``url``), or a client passed in (its local mode included)."""

    kind = "client"

    def __init__(self, client, collection: str, location: str):
        self.client = client
        self.collection = collection
        self._location = location
        self.m = _require("qdrant_client.models")

    @property
    def location(self) -> str:
        return f"{self._location} (collection {self.collection!r})"

    def exists(self) -> bool:
        return bool(self.client.collection_exists(self.collection))

    def read_manifest(self) -> dict | None:
        if not self.exists():
            return None
        meta = self.client.get_collection(self.collection).config.metadata or {}
        return meta.get(METADATA_KEY)

    def write_manifest(self, manifest: dict) -> None:
        self.client.update_collection(self.collection, metadata={METADATA_KEY: manifest})

    def collection_config(self, dense_dim: int, colbert_dim: int, colbert_dtype: str, *, shards: int | None = None,
                          replication_factor: int | None = None, write_consistency_factor: int | None = None) -> dict:
        """The ``create_collection`` arguments: three named vectors and, on a cluster, the sharding."""
        m = self.m
        dtype = m.Datatype.FLOAT16 if colbert_dtype == "float16" else m.Datatype.FLOAT32
        config = {"vectors_config": {
                      "dense": m.VectorParams(size=dense_dim, distance=m.Distance.DOT),
                      "colbert": m.VectorParams(size=colbert_dim, distance=m.Distance.DOT, datatype=dtype,
                                                multivector_config=m.MultiVectorConfig(
                                                    comparator=m.MultiVectorComparator.MAX_SIM),
                                                hnsw_config=m.HnswConfigDiff(m=0))},
                  "sparse_vectors_config": {"sparse": m.SparseVectorParams()}}
        cluster = {"shard_number": shards, "replication_factor": replication_factor,
                   "write_consistency_factor": write_consistency_factor}
        return config | {k: v for k, v in cluster.items() if v is not None}

    def create(self, dense_dim: int, colbert_dim: int, colbert_dtype: str, **cluster) -> None:
        if self.exists():
            self.client.delete_collection(self.collection)
        self.client.create_collection(self.collection, **self.collection_config(dense_dim, colbert_dim, colbert_dtype,
                                                                                **cluster))

    def open(self) -> None:
        if not self.exists():
            raise FileNotFoundError(f"{self.location}: no such collection")

    def upsert(self, ids, dense, sparse, colbert, payloads) -> None:
        m = self.m
        points = [m.PointStruct(id=int(i), payload=p,
                                vector={"dense": d.tolist(), "colbert": c.tolist(),
                                        "sparse": m.SparseVector(**dict(zip(("indices", "values"), _sparse_lists(s))))})
                  for i, d, s, c, p in zip(ids, dense, sparse, colbert, payloads)]
        self.client.upsert(self.collection, points=points, wait=True)

    def finish(self) -> None:
        pass  # a server optimises in the background

    def count(self) -> int:
        return int(self.client.count(self.collection, exact=True).count)

    def _vector(self, function: str, vector):
        if function == "sparse":
            indices, values = _sparse_lists(vector)
            return self.m.SparseVector(indices=indices, values=values)
        return vector.tolist()

    def _params(self, exact: bool, hnsw_ef: int | None):
        return self.m.SearchParams(exact=exact, hnsw_ef=None if exact else hnsw_ef)

    def nearest(self, function, vector, limit, *, exact, hnsw_ef, ids=None):
        m = self.m
        flt = m.Filter(must=[m.HasIdCondition(has_id=[int(i) for i in ids])]) if ids is not None else None
        res = self.client.query_points(self.collection, query=self._vector(function, vector), using=function,
                                       limit=limit, query_filter=flt, search_params=self._params(exact, hnsw_ef),
                                       with_payload=False)
        return [(int(p.id), float(p.score)) for p in res.points]

    def hybrid(self, vectors, sources, terms, candidates, limit, *, exact, hnsw_ef):
        m = self.m
        params = self._params(exact, hnsw_ef)
        first = [m.Prefetch(query=self._vector(f, vectors[f]), using=f, limit=candidates, params=params)
                 for f in sources]
        rescore = [m.Prefetch(prefetch=first, query=self._vector(f, vectors[f]), using=f,
                              limit=candidates * len(sources), params=params) for f, _ in terms]
        formula = m.FormulaQuery(formula=m.SumExpression(sum=[m.MultExpression(mult=[c, f"$score[{i}]"])
                                                              for i, (_, c) in enumerate(terms)]),
                                 defaults={f"$score[{i}]": 0.0 for i in range(len(terms))})
        res = self.client.query_points(self.collection, prefetch=rescore, query=formula, limit=limit,
                                       search_params=params, with_payload=False)
        return [(int(p.id), float(p.score)) for p in res.points]

    def payloads(self, ids):
        return {int(r.id): dict(r.payload or {}) for r in self.client.retrieve(self.collection, [int(i) for i in ids],
                                                                                with_payload=True)}

    def scroll(self, n: int, *, payload=True, vector=False) -> list:
        out, offset = [None] * n, None
        while True:
            records, offset = self.client.scroll(self.collection, limit=1024, offset=offset, with_payload=payload,
                                                 with_vectors=vector)
            for r in records:
                out[int(r.id)] = r
            if offset is None:
                return out

    def close(self) -> None:
        pass  # the caller owns the client


def _sparse_lists(weights: dict[int, float]) -> tuple[list[int], list[float]]:
    items = sorted((int(t), float(w)) for t, w in weights.items() if w > 0)
    return [t for t, _ in items], [w for _, w in items]


def _backend(path, url, client, collection: str, api_key: str | None):
    given = [x is not None for x in (path, url, client)]
    if sum(given) > 1:
        raise ValueError("give one of path= (embedded), url= (a Qdrant server or cluster) or client=")
    if url is not None or client is not None:
        if client is None:
            client = _require("qdrant_client").QdrantClient(url=url, api_key=api_key)
        return _ClientBackend(client, collection, url or type(client).__name__)
    return _EdgeBackend(path if path is not None else Path.home() / ".cache" / "m3lab" / "qdrant" / collection)


# ---------------------------------------------------------------------------------------------- the index
class QdrantIndex:
    """A corpus in one Qdrant collection, searched as :class:`CorpusIndex` is (same modes, same
    :class:`SearchResult`). Build with :meth:`build`, reopen with :meth:`open`."""

    def __init__(self, model: M3Model, backend, manifest: dict):
        self.model = model
        self.backend = backend
        self.manifest = manifest
        self.settings = dict(manifest["settings"])
        self._doc_ids: list[str] | None = None
        self._documents: list[Document] | None = None
        self.encoded_here = 0  # documents this process encoded in the build that returned it

    encode_queries = CorpusIndex.encode_queries  # the same query encoding (prompt, max length, checks)

    # ------------------------------------------------------------------ building and opening
    @classmethod
    def build(cls, model: M3Model, documents: Iterable[Document | str], *, path: str | Path | None = None,
              url: str | None = None, client=None, collection: str = "m3lab", api_key: str | None = None,
              max_length: int | None = None, batch_size: int = 32, chunk_size: int = 256,
              colbert_dtype: str = "float16", with_titles: bool = True, encodings: EncodeOutput | None = None,
              shards: int | None = None, replication_factor: int | None = None,
              write_consistency_factor: int | None = None, overwrite: bool = False,
              show_progress: bool = True, pool: EncodePool | None = None, processes: int | None = None,
              devices: Sequence[str] | None = None) -> QdrantIndex:
        """Encode ``documents`` and write them to a Qdrant collection, ``chunk_size`` at a time.

        Where: ``path`` (a folder; embedded qdrant-edge, the default, under ``~/.cache/m3lab/qdrant``
        when nothing is given), ``url`` (a server or cluster; ``api_key`` if it needs one) or
        ``client`` (a ``QdrantClient`` you made). On a cluster ``shards``, ``replication_factor`` and
        ``write_consistency_factor`` go to ``create_collection``. ``colbert_dtype``: how the engine
        stores multi-vectors (``float16``, half the bytes, or ``float32``).

        Each chunk is encoded (:meth:`M3Model.encode_corpus`), upserted and flushed, then the manifest
        records how many documents are in. Run the same build again after an interruption and it
        continues from there; a collection holding another corpus, model or settings is refused unless
        ``overwrite=True``. ``encodings``: the documents already encoded, in order (as
        :meth:`CorpusIndex.build` takes them). ``processes`` / ``devices`` (or a ``pool``): encode in
        worker processes (:class:`~m3lab.modeling.pool.EncodePool`), with the same result.

        Under ``torchrun`` (an initialised ``torch.distributed``) the ranks share the work: rank ``r``
        encodes every world-size-th chunk; with a server each rank upserts its own chunks, with the
        embedded engine (which one process opens) rank 0 gathers and writes them, and only rank 0's
        index can search. A round of chunks is recorded once every rank's
        chunk of it is in, so resuming works as in one process (with any number of ranks).
        """
        if pool is None and (processes or devices) and encodings is None:
            with EncodePool(model, processes=processes, devices=devices) as own:
                args = {k: v for k, v in locals().items() if k not in ("cls", "own", "processes", "devices", "pool")}
                return cls.build(args.pop("model"), args.pop("documents"), pool=own, **args)
        docs = as_documents(documents)
        if colbert_dtype not in COLBERT_DTYPES:
            raise ValueError(f"colbert_dtype must be one of {COLBERT_DTYPES}, got {colbert_dtype!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        max_length = model.max_lengths["passage"] if max_length is None else int(max_length)
        n = len(docs)
        if encodings is not None and len(encodings) != n:
            raise ValueError(f"encodings hold {len(encodings)} texts for {n} documents")
        backend = _backend(path, url, client, collection, api_key)
        settings = {"max_length": max_length, "with_titles": bool(with_titles), "colbert_dtype": colbert_dtype,
                    "store": list(STORES), "dense_dim": int(model.hidden_size),
                    "colbert_dim": int(model.colbert_linear.out_features)}
        corpus = {"n_documents": n, "sha256": corpus_fingerprint(docs)}
        rank, world = _rank_and_world()
        import torch.distributed as dist  # used only under torchrun (world > 1)

        # under torchrun rank 0 alone reads, checks and creates the collection; the others learn the outcome
        prepared = [None]
        if rank == 0:
            try:
                prepared = [_prepare(backend, model, settings, corpus, overwrite, shards, replication_factor,
                                     write_consistency_factor)]
            except Exception as e:
                if world == 1:
                    raise
                prepared = [e]
        if world > 1:
            dist.broadcast_object_list(prepared, src=0)
            if isinstance(prepared[0], Exception):
                raise prepared[0]
        manifest = prepared[0]
        done = int(manifest["documents_done"])
        # who writes: every rank to a server; to the embedded shard (one process may open it) only rank 0
        writer = world == 1 or backend.kind == "client" or rank == 0
        if writer and rank != 0:
            backend.open()
        texts = [document_text(d, with_titles) for d in docs]
        n_chunks = math.ceil(n / chunk_size)
        bar = tqdm(total=n, initial=done, desc=f"qdrant {backend.kind}", unit="doc",
                   disable=not show_progress or rank != 0)
        encoded_here = 0
        for first in range(done // chunk_size, n_chunks, world):  # a partly written chunk is redone (upserts are idempotent)
            chunk = first + rank  # with torchrun, rank r encodes every world-th chunk
            mine = None
            if chunk < n_chunks:
                ids = range(chunk * chunk_size, min((chunk + 1) * chunk_size, n))
                out = encodings.select(list(ids)) if encodings is not None else model.encode_corpus(
                    [texts[i] for i in ids], batch_size=batch_size, max_length=max_length, show_progress=False,
                    pool=pool)
                mine = (ids, out.dense, out.sparse, out.colbert, [_payload(docs[i]) for i in ids])
                encoded_here += len(ids)
            if world > 1 and backend.kind != "client":  # the embedded shard: rank 0 writes every rank's chunk
                gathered = [None] * world if rank == 0 else None
                dist.gather_object(mine, gathered, dst=0)
                parts = [g for g in gathered if g is not None] if rank == 0 else []
            else:
                parts = [mine] if mine is not None else []
            for part in parts:
                backend.upsert(*part)
            if world > 1:
                dist.barrier()  # this round is in the engine before rank 0 records it
            stop = min(n, (first + world) * chunk_size)
            if rank == 0:
                manifest["documents_done"] = stop
                backend.write_manifest(manifest)
            bar.update(stop - bar.n)
        bar.close()
        if rank == 0 and not manifest["complete"]:
            backend.finish()
            manifest["complete"] = True
            backend.write_manifest(manifest)
        if world > 1:
            dist.barrier()
            manifest["complete"] = True
        index = cls(model, backend, manifest)  # on a rank that did not open the embedded shard it cannot search
        index.encoded_here = encoded_here
        return index

    @classmethod
    def open(cls, model: M3Model, *, path: str | Path | None = None, url: str | None = None, client=None,
             collection: str = "m3lab", api_key: str | None = None) -> QdrantIndex:
        """Reopen a collection :meth:`build` wrote. Refused with a message when it was built by
        another model (:class:`ModelMismatchError`), is not an m3lab collection, or its build did not finish."""
        backend = _backend(path, url, client, collection, api_key)
        manifest = backend.read_manifest()
        if manifest is None:
            raise FileNotFoundError(f"{backend.location}: no m3lab Qdrant index there (build one with QdrantIndex.build)")
        _check_manifest(manifest, backend.location, model_fingerprint(model), model)
        if not manifest.get("complete"):
            raise ValueError(f"{backend.location}: the build stopped after {manifest['documents_done']:,} of "
                             f"{manifest['corpus']['n_documents']:,} documents; run QdrantIndex.build with the same "
                             "documents again to finish it")
        backend.open()
        return cls(model, backend, manifest)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> QdrantIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ what it holds
    def __len__(self) -> int:
        return int(self.manifest["corpus"]["n_documents"])

    def __repr__(self) -> str:
        return f"QdrantIndex({len(self):,} documents, {self.backend.kind}: {self.backend.location})"

    @property
    def stored(self) -> tuple[str, ...]:
        return STORES

    @property
    def corpus_fingerprint(self) -> str:
        return self.manifest["corpus"]["sha256"]

    @property
    def doc_ids(self) -> list[str]:
        """Every document's id, by position (read from the payloads once)."""
        if self._doc_ids is None:
            self._doc_ids = [d.id for d in self.documents]
        return self._doc_ids

    @property
    def documents(self) -> list[Document]:
        """Every document, by position (read from the payloads once)."""
        if self._documents is None:
            self._documents = [_document(p) for p in self.backend.scroll_payloads(len(self))]
        return self._documents

    @property
    def max_length(self) -> int:
        return int(self.settings["max_length"])

    def dense_vectors(self) -> np.ndarray:
        """The stored dense vectors, (n, d) float32 by position (read from the engine)."""
        return np.asarray(self.backend.scroll_dense(len(self)), dtype=np.float32)

    def nbytes(self) -> dict[str, int]:
        """Bytes on disk of an embedded collection (``{"qdrant": ...}``); ``{}`` for a server's."""
        if self.backend.kind != "edge":
            return {}
        return {"qdrant": sum(f.stat().st_size for f in Path(self.backend.path).rglob("*") if f.is_file())}

    def info(self) -> dict:
        n = max(len(self), 1)
        size = self.nbytes()
        return {"backend": self.backend.kind, "location": self.backend.location, "documents": len(self),
                "model": self.manifest["model"]["name_or_path"], "settings": self.settings,
                "created": self.manifest.get("created"),
                "bytes_per_document": {k: v / n for k, v in size.items()}}

    def score_documents(self, queries: EncodeOutput, documents: Sequence[int], row: int = 0) -> dict[str, np.ndarray]:
        """s_dense, s_lex and s_mul of query ``row`` with the documents at ``documents``, from the engine
        (:meth:`CorpusIndex.score_documents`; a function the queries lack is NaN, no shared token is 0)."""
        ids = [int(i) for i in documents]
        out = {}
        for f in STORES:
            if getattr(queries, f) is None:
                out[f] = np.full(len(ids), np.nan, dtype=np.float32)
                continue
            got = dict(self._function_scores(f, _query_vector(queries, f, row), ids)) if ids else {}
            out[f] = np.array([got.get(i, 0.0) for i in ids], dtype=np.float32)
        return out

    def components_for(self, mode: str, weights: Sequence[float] = scoring.DEFAULT_WEIGHTS) -> tuple[str, ...]:
        return CorpusIndex.components_for(self, mode, weights)

    # ------------------------------------------------------------------ search
    def search(self, query: str | Sequence[str], *, mode: str = "hybrid", top_k: int = 10,
               weights: Sequence[float] = scoring.DEFAULT_WEIGHTS, candidates: int = 100, exact: bool = False,
               hnsw_ef: int = 512, max_length: int | None = None) -> list[SearchResult] | list[list[SearchResult]]:
        """Retrieve the ``top_k`` documents for one query (a list of results) or a batch (a list of lists),
        in :meth:`CorpusIndex.search`'s modes; each result carries every function's score.

        ``exact``: exact candidate search (the results of :class:`CorpusIndex`); otherwise dense
        search walks HNSW with ``hnsw_ef`` (sparse search is exact either way, multi-vectors always).
        """
        single = isinstance(query, str)
        q = self.encode_queries(query, components=STORES, max_length=max_length)
        ranking = self.rank(q, [mode], top_k=top_k, weights=weights, candidates=candidates, exact=exact,
                            hnsw_ef=hnsw_ef, with_scores=True, show_progress=False)[mode]
        rows = [r for r in ranking.indices.ravel() if r >= 0]
        payloads = self.backend.payloads(sorted(set(int(r) for r in rows))) if rows else {}
        results = [[SearchResult(payloads[int(j)]["doc_id"], r + 1, float(ranking.scores[row, r]),
                                 *(None if getattr(ranking, f) is None or math.isnan(getattr(ranking, f)[row, r])
                                   else float(getattr(ranking, f)[row, r]) for f in STORES),
                                 _document(payloads[int(j)]))
                    for r, j in enumerate(ranking.indices[row]) if j >= 0]
                   for row in range(len(q))]
        return results[0] if single else results

    def rank(self, queries: EncodeOutput, modes: Sequence[str], *, top_k: int = 10,
             weights: Sequence[float] = scoring.DEFAULT_WEIGHTS, candidates: int = 100, exact: bool = False,
             hnsw_ef: int = 512, with_scores: bool = False, show_progress: bool | None = None) -> dict[str, Ranking]:
        """Rankings of encoded queries, one engine query per query and mode (:meth:`CorpusIndex.rank`'s form).

        ``with_scores``: also each function's score of every hybrid result (three more small
        queries each); single-function modes always carry their own.
        """
        if top_k < 1 or candidates < 1:
            raise ValueError(f"top_k and candidates must be >= 1, got {top_k} and {candidates}")
        weights = scoring.check_weights(weights)
        for mode in modes:
            CorpusIndex._check_mode(mode)
            for f in self.components_for(mode, weights):
                if getattr(queries, f) is None:
                    raise ValueError(f"mode {mode!r} needs the queries' {f} embeddings; encode them with return_{f}=True")
        n_q, k = len(queries), min(top_k, len(self))
        candidates = max(candidates, k)
        out = {}
        for mode in modes:
            idx = np.full((n_q, k), -1, dtype=np.int64)
            scores = np.full((n_q, k), np.nan, dtype=np.float32)
            parts = {f: np.full((n_q, k), np.nan, dtype=np.float32) for f in STORES}
            bar = tqdm(range(n_q), desc=f"qdrant {mode}", unit="query",
                       disable=not (show_progress if show_progress is not None else n_q > 100))
            for row in bar:
                vectors = {f: _query_vector(queries, f, row) for f in STORES if getattr(queries, f) is not None}
                hits = self._query(mode, vectors, k, weights, candidates, exact, hnsw_ef)
                for r, (i, s) in enumerate(hits):
                    idx[row, r], scores[row, r] = i, s
                if mode != "hybrid":
                    parts[mode][row, :len(hits)] = scores[row, :len(hits)]
                elif with_scores and hits:
                    ids = [i for i, _ in hits]
                    for f, v in vectors.items():
                        got = dict(self._function_scores(f, v, ids))
                        parts[f][row, :len(hits)] = [got.get(i, 0.0) for i in ids]  # sparse: no shared token = 0
            keep = (lambda f: parts[f]) if mode == "hybrid" and with_scores else \
                   (lambda f: parts[f] if f == mode else None)
            out[mode] = Ranking(idx, scores, dense=keep("dense"), sparse=keep("sparse"), colbert=keep("colbert"))
        return out

    def _query(self, mode, vectors, k, weights, candidates, exact, hnsw_ef) -> list[tuple[int, float]]:
        no_lexical = "sparse" in vectors and not any(w > 0 for w in vectors["sparse"].values())
        if mode in ("dense", "sparse"):
            if mode == "sparse" and no_lexical:
                return []  # no query token has a weight: nothing shares one (CorpusIndex retrieves nothing too)
            return self.backend.nearest(mode, vectors[mode], k, exact=exact, hnsw_ef=hnsw_ef)
        if mode == "colbert":
            return self._function_scores("colbert", vectors["colbert"], None, k)
        terms = hybrid_formula_terms(weights, len(vectors.get("colbert", ())))
        sources = candidate_sources(weights)
        if no_lexical:  # s_lex is 0 for every document: it adds nothing and finds no candidate
            terms = [t for t in terms if t[0] != "sparse"] or [("dense", 0.0)]
            sources = [s for s in sources if s != "sparse"] or ["dense"]
        return self.backend.hybrid(vectors, sources, terms, candidates, k, exact=exact, hnsw_ef=hnsw_ef)

    def _function_scores(self, function: str, vector, ids, limit: int | None = None) -> list[tuple[int, float]]:
        """One function's scores from the engine (of the points ``ids``, or the best ``limit``), MaxSim as eq. 3's mean."""
        if function == "sparse" and not any(w > 0 for w in vector.values()):
            return []
        hits = self.backend.nearest(function, vector, limit or len(ids), exact=True, hnsw_ef=None, ids=ids)
        if function == "colbert":
            hits = [(i, s / len(vector)) for i, s in hits]
        return hits


def _prepare(backend, model: M3Model, settings: dict, corpus: dict, overwrite: bool, shards, replication_factor,
             write_consistency_factor) -> dict:
    """The manifest of the build about to run: the stored one to resume (checked against this build),
    or a new one for a collection created now."""
    fingerprint = model_fingerprint(model)
    manifest = backend.read_manifest()
    if manifest is not None and not overwrite:
        _check_manifest(manifest, backend.location, fingerprint, model)
        if manifest["corpus"] != corpus or manifest["settings"] != settings:
            what = "another corpus" if manifest["corpus"] != corpus else "other settings"
            raise ValueError(f"{backend.location} holds an index of {what} ({manifest['corpus']['n_documents']:,} "
                             f"documents, {manifest['settings']}); pass overwrite=True to replace it, or use "
                             "another path or collection")
        backend.open()
        if manifest["documents_done"] < corpus["n_documents"]:  # what the engine holds, if behind the manifest
            manifest["documents_done"] = min(int(manifest["documents_done"]), backend.count())
        return manifest
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "m3lab_version": __version__,
                "model": {"name_or_path": model.name_or_path, "fingerprint": fingerprint},
                "settings": settings, "corpus": corpus, "documents_done": 0, "complete": False,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    backend.create(settings["dense_dim"], settings["colbert_dim"], settings["colbert_dtype"], shards=shards,
                   replication_factor=replication_factor, write_consistency_factor=write_consistency_factor)
    backend.write_manifest(manifest)
    return manifest


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size under torch.distributed (torchrun), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _check_manifest(manifest: dict, location: str, fingerprint: str, model: M3Model) -> None:
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{location}: not an m3lab Qdrant index (format {manifest.get('format')!r})")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{location}: written by a newer m3lab (format version {manifest['format_version']})")
    if manifest["model"]["fingerprint"] != fingerprint:
        raise ModelMismatchError(f"{location} was built with model {manifest['model']['name_or_path']!r}, not "
                                 f"{model.name_or_path!r} (the weights differ): its vectors would not match the "
                                 "queries. Open it with that model, or build a new index.")


def _payload(doc: Document) -> dict:
    return {"doc_id": doc.id, "text": doc.text, "title": doc.title, "language": doc.language}


def _document(payload: dict) -> Document:
    return Document(payload["doc_id"], payload["text"], payload.get("language"), payload.get("title"))


def _query_vector(queries: EncodeOutput, function: str, row: int):
    if function == "dense":
        return np.asarray(queries.dense[row], dtype=np.float32)
    if function == "sparse":
        return queries.sparse[row]
    return np.asarray(queries.colbert[row], dtype=np.float32)
