"""What the app serves: per session, a model, a corpus and its index (a :class:`Workspace`), cached on disk.

Each session chooses its own workspace (:class:`AppState`): switching the model or the corpus in
one browser tab builds a workspace and moves that session to it when it is complete, so a failed
load leaves the session's previous one serving, and other sessions are not touched.

Index cache: ``<cache root>/indexes/<model fingerprint>-<corpus hash>-<settings>/`` holds a
:class:`m3lab.retrieval.CorpusIndex` (built once, loaded on the next start), and
``<cache root>/projections/<same key>.npz`` its 2-D map. The cache root is
``$M3LAB_CACHE_DIR`` or the platform's user cache for m3lab. The cache is capped
(:func:`cache_limit_bytes`, ``$M3LAB_CACHE_MAX_MB``, 2,000 MB by default): after each new index
is saved the least recently used ones are deleted until the rest fit (never one in use).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import platformdirs

from m3lab.data import DataError, Document
from m3lab.retrieval import (BuildProgress, CorpusIndex, CorruptIndexError, ModelMismatchError, corpus_fingerprint,
                             document_text, model_fingerprint)
from m3lab.retrieval.bm25 import BM25Index, standard_analyzer
from m3lab.retrieval.spec import parse_index_spec
from m3lab.modeling import M3Model
from m3lab.viz.projection import Projection, fit_projection

from .corpora import Corpus

logger = logging.getLogger("m3lab.app")

#: index settings of the app (part of the cache key)
INDEX_SETTINGS = {"max_length": 512, "batch_size": 16}

Progress = Callable[..., object] | None


def cache_root() -> Path:
    """``$M3LAB_CACHE_DIR`` if set, else the user cache directory of m3lab."""
    return Path(os.environ.get("M3LAB_CACHE_DIR") or platformdirs.user_cache_dir("m3lab"))


def cache_limit_bytes() -> int:
    """The index cache's cap: ``$M3LAB_CACHE_MAX_MB`` megabytes (default 2,000)."""
    raw = os.environ.get("M3LAB_CACHE_MAX_MB", "2000")
    try:
        mb = float(raw)
    except ValueError:
        raise ValueError(f"M3LAB_CACHE_MAX_MB must be a number of megabytes, got {raw!r}") from None
    return int(mb * 1e6)


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def enforce_cache_limit(keep: Sequence[Path | None] = (), limit: int | None = None) -> list[Path]:
    """Delete cached indexes (and their maps), least recently used first, until the cache holds at most
    ``limit`` bytes (:func:`cache_limit_bytes`); never those in ``keep`` (the ones in use). Returns what
    was deleted. "Used" is the folder's modification time, which loading and saving set."""
    limit = cache_limit_bytes() if limit is None else limit
    root = cache_root() / "indexes"
    if not root.is_dir():
        return []
    folders = [f for f in root.iterdir() if f.is_dir() and not f.name.startswith(".")]
    sizes = {f: _folder_bytes(f) for f in folders}
    total = sum(sizes.values())
    kept = {Path(k).resolve() for k in keep if k is not None}
    removed = []
    for folder in sorted(folders, key=lambda f: f.stat().st_mtime):
        if total <= limit:
            break
        if folder.resolve() in kept:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        for projection in (cache_root() / "projections").glob(f"{folder.name}*.npz"):
            projection.unlink(missing_ok=True)
        total -= sizes[folder]
        removed.append(folder)
        logger.info("index cache over %.0f MB: deleted %s (%.1f MB)", limit / 1e6, folder.name, sizes[folder] / 1e6)
    return removed


def index_key(model: M3Model, documents: Sequence[Document], spec: str = "default") -> str:
    """The cache folder name (and workspace key) of ``model``'s index of ``documents`` with storage ``spec``:
    model fingerprint, corpus hash, settings hash."""
    fingerprint = model_fingerprint(model)
    settings = INDEX_SETTINGS if spec == "default" else {**INDEX_SETTINGS, "spec": spec}
    s = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return f"{fingerprint[:16]}-{corpus_fingerprint(documents)[:16]}-{s[:8]}"


@dataclass
class Workspace:
    """A model, a corpus and the corpus index built with that model."""

    model: M3Model
    model_name: str
    corpus: Corpus
    index: CorpusIndex
    key: str
    from_cache: bool
    cache_dir: Path | None
    spec: str = "default"  # the index storage (m3lab.retrieval.spec)
    _projections: dict[bool, Projection] = field(default_factory=dict, repr=False)
    _positions: dict[str, int] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _bm25: BM25Index | None = field(default=None, repr=False)
    _scores: OrderedDict[str, dict[str, np.ndarray]] = field(default_factory=OrderedDict, repr=False)
    _scores_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # not _lock: a map fit holds it

    @property
    def documents(self) -> list[Document]:
        return self.index.documents

    def position(self, doc_id: str) -> int | None:
        """The index position of a document id (``None`` if it is not in this corpus)."""
        if self._positions is None:
            self._positions = {d.id: i for i, d in enumerate(self.index.documents)}
        return self._positions.get(doc_id)

    def bm25(self) -> BM25Index:
        """BM25 over the corpus texts as they are encoded (title and text), built on first use."""
        with self._lock:
            if self._bm25 is None:
                with_titles = self.index.settings.get("with_titles", True)
                self._bm25 = BM25Index([document_text(d, with_titles) for d in self.documents],
                                       analyzer=standard_analyzer(None))
            return self._bm25

    def corpus_scores(self, query: str, keep: int = 16) -> dict[str, np.ndarray]:
        """Every document's s_dense, s_lex and s_mul for ``query`` (:meth:`CorpusIndex.score_documents`),
        the last ``keep`` queries' kept: what the Sparse view's score distribution draws."""
        with self._scores_lock:
            if query in self._scores:
                self._scores.move_to_end(query)
                return self._scores[query]
        with MODEL_LOCK:
            q = self.index.encode_queries(query, components=self.index.stored)
        scores = {k: np.asarray(v, dtype=np.float64) for k, v in
                  self.index.score_documents(q, list(range(len(self.index)))).items()}
        with self._scores_lock:
            self._scores[query] = scores
            while len(self._scores) > keep:
                self._scores.popitem(last=False)
        return scores

    @property
    def languages(self) -> list[str]:
        """The corpus's document languages, sorted."""
        return sorted({d.language for d in self.documents if d.language})

    @property
    def multilingual(self) -> bool:
        return len(set(self.corpus.labels["language"])) > 1

    def projection(self, align_languages: bool = False, progress: Progress = None) -> Projection:
        """The corpus map (UMAP, or PCA below 30 documents), fitted once, cached on disk.

        ``align_languages`` (multilingual corpora only) removes each language's mean vector first,
        so that translations can sit together (see :mod:`m3lab.viz.projection`).
        """
        centred = bool(align_languages and self.multilingual)
        with self._lock:
            if centred in self._projections:
                return self._projections[centred]
            name = f"{self.key}{'-aligned' if centred else ''}.npz"
            file = self.cache_dir.parent.parent / "projections" / name if self.cache_dir else None
            if file is not None and file.is_file():
                try:
                    proj = Projection.load(file)
                    if len(proj) == len(self.index) and proj.centred == centred:
                        self._projections[centred] = proj
                        return proj
                except ValueError as err:
                    logger.warning("ignoring a damaged projection cache: %s", err)
            if progress is not None:
                progress(0.1, desc=f"fitting the map of {len(self.index)} documents")
            logger.info("fitting the 2-D map of %d documents%s", len(self.index),
                        " (language means removed)" if centred else "")
            proj = fit_projection(self.index.dense_vectors(), centre_by=self.corpus.labels["language"] if centred else None)
            if file is not None:
                try:
                    proj.save(file)
                except OSError as err:
                    logger.warning("could not cache the projection in %s: %s", file, err)
            self._projections[centred] = proj
            return proj

    def describe(self) -> str:
        """Markdown status: the model, the corpus, the cache, and a warning when the heads are untrained."""
        m = self.model
        langs = sorted(set(self.corpus.labels["language"]))
        text = (f"**Model** `{self.model_name}` ({m.hidden_size}-d, {m.pooling} pooling, "
                f"{'trained heads' if m.heads_trained else 'untrained heads'}) · "
                f"**Corpus** {self.corpus.name}: {len(self.index)} documents in {len(langs)} language(s) · "
                f"index `{self.spec}` ({index_size(self.index)}), "
                f"{'loaded from cache' if self.from_cache else 'built'}")
        if not m.heads_trained:
            text += ("\n\n⚠️ **untrained heads**: this model has no trained sparse and multi-vector heads yet "
                     "(W_lex random, W_mul = identity), so only its dense scores are meaningful.")
        return text


class BuildCancelled(Exception):
    """The user cancelled an index build; nothing of it was saved."""

    def __init__(self, done: int, total: int, seconds: float):
        super().__init__(f"indexing cancelled after {seconds:.0f} s ({done:,} of {total:,} documents encoded)")
        self.done, self.total, self.seconds = done, total, seconds


def duration(seconds: float) -> str:
    """``seconds`` for a person: ``"45 s"``, ``"3 min 05 s"``."""
    seconds = max(0, round(seconds))
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


class BuildReporter:
    """The ``on_progress`` of :meth:`CorpusIndex.build` for the app: one bar whose share is the tokens
    encoded so far (what the time follows), an estimate of the time left from the rate so far, and
    the cancel check: if ``cancel`` is set the build stops at the next chunk (:class:`BuildCancelled`)."""

    def __init__(self, progress: Progress, cancel: threading.Event | None, clock: Callable[[], float] = time.monotonic):
        self.progress, self.cancel, self.clock = progress, cancel, clock
        self.start = clock()
        self.last: BuildProgress | None = None

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            done, total = (self.last.documents, self.last.total_documents) if self.last else (0, 0)
            raise BuildCancelled(done, total, self.clock() - self.start)

    def describe(self, p: BuildProgress) -> str:
        text = f"indexing: {p.documents:,} of {p.total_documents:,} documents encoded"
        elapsed = self.clock() - self.start
        if 0 < p.fraction < 1 and elapsed > 0:
            text += f", about {duration(elapsed * (1 - p.fraction) / p.fraction)} left"
        return text

    def __call__(self, p: BuildProgress) -> None:
        self.last = p
        self.check()
        if self.progress is not None:
            self.progress(p.fraction, desc=self.describe(p))


def index_size(index: CorpusIndex) -> str:
    """The index's size in memory, e.g. ``"12.3 MB, 4.1 kB per document"``."""
    total = sum(index.nbytes().values())
    return f"{total / 1e6:.1f} MB, {total / max(len(index), 1) / 1e3:.1f} kB per document"


def build_workspace(model: M3Model, model_name: str, corpus: Corpus, *, use_cache: bool = True,
                    progress: Progress = None, show_progress: bool = True, spec: str = "default",
                    cancel: threading.Event | None = None) -> Workspace:
    """Load the corpus index of ``model`` from the cache, or build it (``progress`` gets the share done
    and a description with the time left, :class:`BuildReporter`) and cache it.

    ``spec``: the index storage, a preset or options of :mod:`m3lab.retrieval.spec`. Setting ``cancel``
    stops a build at its next chunk with :class:`BuildCancelled`; nothing is written to the cache
    (an index is saved only when complete, and atomically)."""
    if not corpus.documents:
        raise DataError(f"corpus {corpus.name!r} has no documents")
    options = parse_index_spec(spec)  # a bad spec fails before any work
    key = index_key(model, corpus.documents, spec)
    folder = cache_root() / "indexes" / key if use_cache else None
    if folder is not None and folder.is_dir():
        try:
            if progress is not None:
                progress(0.0, desc="loading the cached index")
            index = CorpusIndex.load(folder, model)
            os.utime(folder)  # used now: the cache evicts the least recently used first
            logger.info("loaded the index of %s from %s", corpus.name, folder)
            return Workspace(model, model_name, corpus, index, key, True, folder, spec)
        except (CorruptIndexError, ModelMismatchError, OSError) as err:
            logger.warning("rebuilding the cached index (%s)", err)
    logger.info("indexing %d documents of %s with %s", len(corpus.documents), corpus.name, model_name)
    reporter = BuildReporter(progress, cancel)
    try:
        index = CorpusIndex.build(model, corpus.documents, max_length=INDEX_SETTINGS["max_length"],
                                  batch_size=INDEX_SETTINGS["batch_size"], show_progress=show_progress,
                                  on_progress=reporter, **options)
        reporter.check()  # a cancel during the last chunk or the dense index build: still nothing saved
    except BuildCancelled as err:
        logger.info("%s; nothing saved", err)
        raise
    if folder is not None:
        try:
            index.save(folder)
        except OSError as err:
            logger.warning("could not cache the index in %s: %s", folder, err)
            folder = None
    return Workspace(model, model_name, corpus, index, key, False, folder, spec)


def qdrant_workspace(model: M3Model, model_name: str, path: str | Path) -> Workspace:
    """A workspace on an embedded Qdrant index (:class:`m3lab.retrieval.QdrantIndex`): the corpus is what
    it holds; searches run in the engine. Refused with a message if another model built it."""
    from m3lab.retrieval import QdrantIndex

    index = QdrantIndex.open(model, path=path)
    corpus = Corpus(f"Qdrant index {Path(path).name}", index.documents)
    key = f"qdrant-{index.corpus_fingerprint[:16]}-{model_fingerprint(model)[:16]}"
    return Workspace(model, model_name, corpus, index, key, True, None, "qdrant")


class AppState:
    """Every session's workspace, shared in a bounded cache.

    Each browser session (or API caller) holds the key of the workspace it chose; choosing another
    corpus, model or index storage adds a workspace here and moves that session alone to it.
    Loaded workspaces are shared by key (two sessions on the same corpus and model share one
    index) and at most ``max_workspaces`` stay in memory besides the starting one, least recently
    used out; an evicted one is loaded again from the disk cache when its session comes back.
    Models are shared by name the same way. Builds are serialised by ``switch_lock``.
    """

    def __init__(self, workspace: Workspace, *, max_workspaces: int | None = None):
        self.default_key = workspace.key
        self.max_workspaces = max_workspaces or int(os.environ.get("M3LAB_APP_MAX_WORKSPACES", "4"))
        if self.max_workspaces < 1:
            raise ValueError(f"max_workspaces must be >= 1, got {self.max_workspaces}")
        self._loaded: OrderedDict[str, Workspace] = OrderedDict({workspace.key: workspace})
        self._recipes: dict[str, tuple[str, Corpus, str]] = {workspace.key: (workspace.model_name, workspace.corpus,
                                                                             workspace.spec)}
        self._lock = threading.RLock()
        self.switch_lock = threading.RLock()  # get() may rebuild while a switch holds it
        self._cancels: dict[str, threading.Event] = {}  # session -> the cancel flag of its latest build
        enforce_cache_limit(keep=[workspace.cache_dir])

    def begin_build(self, session: str | None) -> threading.Event | None:
        """A fresh cancel flag for the build ``session`` starts now (what :meth:`cancel` sets)."""
        if not session:
            return None
        with self._lock:
            self._cancels[session] = flag = threading.Event()
            return flag

    def end_build(self, session: str | None, flag: threading.Event | None) -> None:
        with self._lock:
            if session and self._cancels.get(session) is flag:
                del self._cancels[session]

    def cancel(self, session: str | None) -> bool:
        """Ask ``session``'s running build to stop; ``False`` if it has none."""
        with self._lock:
            flag = self._cancels.get(session) if session else None
        if flag is None:
            return False
        flag.set()
        return True

    @property
    def workspace(self) -> Workspace:
        """The starting workspace: what a new session sees."""
        return self._loaded[self.default_key]

    def get(self, key: str | None) -> Workspace:
        """The workspace of a session's ``key`` (the starting one for ``None`` or an unknown key); one
        evicted from memory is loaded again from the disk cache (or rebuilt, if that was evicted too)."""
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            recipe = self._recipes.get(key) if key else None
        if recipe is None:
            return self.workspace
        model_name, corpus, spec = recipe
        with self.switch_lock:
            with self._lock:
                if key in self._loaded:
                    return self._loaded[key]
            ws = build_workspace(self.model(model_name), model_name, corpus, spec=spec, show_progress=False)
            return self.add(ws)[1]

    def add(self, workspace: Workspace) -> tuple[str, Workspace]:
        """Keep ``workspace`` (or the equal one already loaded) and evict the least recently used ones
        beyond ``max_workspaces``; returns its key and the workspace kept."""
        with self._lock:
            key = workspace.key
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return key, self._loaded[key]
            self._loaded[key] = workspace
            self._recipes[key] = (workspace.model_name, workspace.corpus, workspace.spec)
            others = [k for k in self._loaded if k != self.default_key]
            for old in others[: max(0, len(others) - self.max_workspaces)]:
                if old != key:
                    logger.info("unloading workspace %s (least recently used)", old)
                    del self._loaded[old]
            in_use = [ws.cache_dir for ws in self._loaded.values()]
        enforce_cache_limit(keep=in_use)
        return key, workspace

    def workspace_for(self, model_name: str, corpus: Corpus, spec: str = "default", *, progress: Progress = None,
                      cancel: threading.Event | None = None) -> Workspace:
        """The workspace of ``model_name`` on ``corpus`` (loaded, from the disk cache, or built), kept in the
        shared cache without moving any session to it: what a comparison of two models reads."""
        with self.switch_lock:
            model = self.model(model_name)
            key = index_key(model, corpus.documents, spec)
            with self._lock:
                if key in self._loaded:
                    self._loaded.move_to_end(key)
                    return self._loaded[key]
            ws = build_workspace(model, model_name, corpus, spec=spec, progress=progress, cancel=cancel,
                                 show_progress=False)
            return self.add(ws)[1]

    def loaded_keys(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def model(self, name: str) -> M3Model:
        """A loaded workspace's model of this name, else the model loaded now."""
        with self._lock:
            for ws in reversed(self._loaded.values()):
                if ws.model_name == name:
                    return ws.model
        return load_model(name)

    def warm_up(self, key: str | None = None) -> threading.Thread:
        """Fit a workspace's corpus map in the background, so the Projection view opens at once."""
        ws = self.get(key)

        def run() -> None:
            try:
                ws.projection(align_languages=True)
            except Exception as err:  # noqa: BLE001 - the view reports it when opened
                logger.warning("projection warm-up failed: %s", err)

        thread = threading.Thread(target=run, name="m3lab-projection", daemon=True)
        thread.start()
        return thread


#: Hugging Face fast tokenizers are not safe to call from two threads when their truncation settings
#: change ("Already borrowed"); every use of the served model's tokenizer and encoder goes through this lock.
MODEL_LOCK = threading.Lock()


def load_model(name: str) -> M3Model:
    """A model by short name, local directory or hub id, on CPU unless CUDA is there."""
    return M3Model.from_pretrained(name)


def dense_of(ws: Workspace, texts: Sequence[str]) -> np.ndarray:
    """Dense vectors of texts with the workspace's model (for placing queries in the map)."""
    with MODEL_LOCK:
        return ws.model.encode_queries(list(texts), return_sparse=False, return_colbert=False,
                                       show_progress=False).dense
