"""m3lab models in MTEB, every function (issue 15, part 3; ``pip install -e ".[mteb]"``).

MTEB evaluates encoders, which give it one vector per text; M3's sparse and multi-vector functions,
and its hybrid, are not one vector per text, so MTEB's own evaluation of bge-m3 is dense only. Two
wrappers cover all of it:

* :class:`M3DenseEncoder`: an MTEB encoder (``EncoderProtocol``) for the dense function; MTEB
  searches its vectors itself.
* :class:`M3SearchModel`: an MTEB search model (``SearchProtocol``) for ``dense``, ``sparse``,
  ``colbert`` or ``hybrid``: it indexes MTEB's corpus in a :class:`~m3lab.retrieval.CorpusIndex`
  (or a :class:`~m3lab.retrieval.QdrantIndex`) and ranks MTEB's queries with it, exactly as
  ``m3lab eval`` does.

::

    import mteb
    from m3lab.evaluation.mteb import M3DenseEncoder, M3SearchModel
    task = mteb.get_task("XQuADRetrieval")
    mteb.evaluate(M3DenseEncoder("default"), task)
    mteb.evaluate(M3SearchModel("default", mode="hybrid", weights=(1, 0.3, 1)), task)

Queries get the model's query prompt and max length, documents its passage prompt and
``max_length`` (512 by default, as ``m3lab eval``); MTEB's document text is its title and body
joined, as m3lab's :func:`~m3lab.retrieval.document_text` joins them.
"""
from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import scoring
from ..data.records import Document
from ..modeling import M3Model
from ..retrieval.index import MODES, CorpusIndex
from ..retrieval.ranker import mode_functions
from .retrieval import _run

try:
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta, ScoringFunction
    from mteb.types import PromptType
except ImportError as e:  # the module is only for people who have MTEB
    raise ImportError("m3lab.evaluation.mteb needs MTEB: pip install 'm3lab[mteb]'") from e


def _model(model: M3Model | str, device: str | None) -> M3Model:
    return model if isinstance(model, M3Model) else M3Model.from_pretrained(model, device=device)


def model_meta(model: M3Model, *, mode: str = "dense", weights: Sequence[float] | None = None) -> ModelMeta:
    """MTEB's description of an m3lab model (the name MTEB files its results under names the mode)."""
    name = str(model.name_or_path or "m3lab-model")
    if "/" not in name or Path(name).exists():
        name = f"m3lab/{Path(name).name or 'model'}"
    suffix = "" if mode == "dense" else f"-{mode}" + (f"-{'-'.join(f'{w:g}' for w in weights)}" if weights else "")
    return ModelMeta(
        loader=None, name=name + suffix, revision=None, release_date=None, languages=None,
        n_parameters=sum(p.numel() for p in model.parameters()), memory_usage_mb=None,
        max_tokens=float(model.max_positions), embed_dim=model.hidden_size, license=None, open_weights=True,
        public_training_code="https://github.com/FlagOpen/FlagEmbedding", public_training_data=None,
        similarity_fn_name=ScoringFunction.DOT_PRODUCT, framework=["PyTorch"], reference=None,
        use_instructions=bool(model.prompts.get("query") or model.prompts.get("passage")), training_datasets=None)


def _texts(inputs) -> list[str]:
    """The texts of an MTEB dataloader, in order (documents arrive as title + body, joined by MTEB)."""
    return [t for batch in inputs for t in batch["text"]]


class M3DenseEncoder(AbsEncoder):
    """The dense function of an m3lab model as an MTEB encoder (normalised vectors, dot product).

    ``model``: an :class:`M3Model` or what :meth:`M3Model.from_pretrained` takes. Queries are
    encoded with :meth:`M3Model.encode_queries`, documents with :meth:`M3Model.encode_corpus`, both
    cut at ``max_length`` as ``m3lab eval`` cuts them (``query_max_length`` to cut queries elsewhere).
    """

    def __init__(self, model: M3Model | str, revision: str | None = None, *, device: str | None = None,
                 max_length: int = 512, query_max_length: int | None = None, batch_size: int = 32,
                 **kwargs: Any):
        self.model = _model(model, device)
        self.max_length = max_length
        self.query_max_length = query_max_length or max_length
        self.batch_size = batch_size
        self.mteb_model_meta = model_meta(self.model)

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None,
               **kwargs: Any) -> np.ndarray:
        texts = _texts(inputs)
        if prompt_type == PromptType.query:
            out = self.model.encode_queries(texts, max_length=self.query_max_length, batch_size=self.batch_size,
                                            return_sparse=False, return_colbert=False, show_progress=False)
        else:
            out = self.model.encode_corpus(texts, max_length=self.max_length, batch_size=self.batch_size,
                                           return_sparse=False, return_colbert=False, show_progress=False)
        return out.dense


class M3SearchModel:
    """An m3lab model as an MTEB search model, in one retrieval ``mode``: ``dense``, ``sparse``,
    ``colbert`` (exhaustive MaxSim) or ``hybrid`` (section 3.2, ``weights`` and ``candidates`` as
    :meth:`CorpusIndex.search` takes them).

    :meth:`index` builds a :class:`CorpusIndex` of MTEB's corpus (float32, only the functions the
    mode needs, as ``m3lab eval``); ``backend="qdrant"`` builds a :class:`QdrantIndex` instead
    (embedded, under ``qdrant_path`` or a temporary folder). :meth:`search` returns MTEB's
    ``{query_id: {doc_id: score}}``, at most ``top_k`` documents per query (100, as ``m3lab eval``;
    MTEB asks for 1,000, and hybrid reranks max(candidates, depth) candidates of each source, so a
    deeper ranking would rerank more than ``m3lab eval`` does).
    """

    def __init__(self, model: M3Model | str, mode: str = "hybrid", *, weights: Sequence[float] = scoring.DEFAULT_WEIGHTS,
                 candidates: int = 100, top_k: int = 100, max_length: int = 512, batch_size: int = 32,
                 backend: str = "memory",
                 qdrant_path: str | Path | None = None, device: str | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; the modes are {', '.join(MODES)}")
        if backend not in ("memory", "qdrant"):
            raise ValueError(f"backend must be 'memory' or 'qdrant', got {backend!r}")
        self.model = _model(model, device)
        self.mode = mode
        self.weights = scoring.check_weights(weights)
        self.candidates = candidates
        self.top_k = top_k
        self.max_length = max_length
        self.batch_size = batch_size
        self.backend = backend
        self.qdrant_path = Path(qdrant_path) if qdrant_path else None
        self.mteb_model_meta = model_meta(self.model, mode=mode, weights=self.weights if mode == "hybrid" else None)
        self.corpus_index = None

    def index(self, corpus, *, task_metadata, hf_split: str, hf_subset: str, encode_kwargs=None, num_proc=None,
              **kwargs: Any) -> None:
        docs = [Document(str(row["id"]), row["text"], None, row.get("title") or None) for row in corpus]
        if self.corpus_index is not None and hasattr(self.corpus_index, "close"):
            self.corpus_index.close()
        if self.backend == "qdrant":
            from ..retrieval.qdrant import QdrantIndex

            root = self.qdrant_path or Path(tempfile.mkdtemp(prefix="m3lab-mteb-qdrant-"))
            self.corpus_index = QdrantIndex.build(self.model, docs, path=root / f"{task_metadata.name}-{hf_subset}-"
                                                                              f"{hf_split}", max_length=self.max_length,
                                                  batch_size=self.batch_size, colbert_dtype="float32",
                                                  overwrite=True, show_progress=False)
        else:
            store = mode_functions(self.mode, self.weights)
            self.corpus_index = CorpusIndex.build(self.model, docs, max_length=self.max_length,
                                                  batch_size=self.batch_size, store=store, colbert_dtype="float32",
                                                  show_progress=False)

    def search(self, queries, *, task_metadata, hf_split: str, hf_subset: str, top_k: int, encode_kwargs=None,
               top_ranked=None, num_proc=None, **kwargs: Any) -> dict[str, dict[str, float]]:
        if self.corpus_index is None:
            raise RuntimeError("index() the corpus before search()")
        if top_ranked is not None:
            raise NotImplementedError("M3SearchModel retrieves from the whole corpus; reranking tasks are not supported")
        ix = self.corpus_index
        ids, texts = [str(q) for q in queries["id"]], list(queries["text"])
        q = ix.encode_queries(texts, components=ix.components_for(self.mode, self.weights),
                              max_length=self.max_length, batch_size=self.batch_size, show_progress=False)
        ranking = ix.rank(q, [self.mode], top_k=min(top_k, self.top_k), weights=self.weights,
                          candidates=self.candidates)[self.mode]
        return _run(ids, ix.doc_ids, ranking.indices, ranking.scores)


def mteb_xquad(path: str | Path) -> tuple[dict, dict, dict]:
    """MTEB's XQuADRetrieval data (corpus, queries, qrels) built from a local SQuAD-format XQuAD file.

    This is mteb 1.x's construction (``tasks/Retrieval/multilingual/XQuADRetrieval.py``, the source
    of the ``mteb/XQuADRetrieval`` data mteb 2.x downloads), line for line: questions with a non-empty
    answer, document id = SHA-256 of the paragraph, query id = the question's id.
    """
    import hashlib
    import json

    rows = [{"id": qa["id"], "question": qa["question"], "context": p["context"], "answers": qa["answers"]}
            for a in json.loads(Path(path).read_text(encoding="utf-8"))["data"] for p in a["paragraphs"]
            for qa in p["qas"]]
    data = [r for r in rows if r["answers"] and r["answers"][0]["text"]]
    question_ids = {r["question"]: r["id"] for r in data}
    context_ids = {c: hashlib.sha256(c.encode("utf-8")).hexdigest() for c in {r["context"] for r in data}}
    corpus, queries, relevant = {}, {}, {}
    for row in data:
        query_id, doc_id = question_ids[row["question"]], context_ids[row["context"]]
        queries[query_id] = row["question"]
        corpus[doc_id] = {"text": row["context"]}
        relevant.setdefault(query_id, {})[doc_id] = 1
    return corpus, queries, relevant


def local_xquad_task(data_dir: str | Path, languages: Sequence[str]):
    """MTEB's own ``XQuADRetrieval`` task (its evaluator and pytrec_eval scoring), its data read from the
    local XQuAD files (``data_dir/xquad/xquad.{lang}.json``) instead of the Hugging Face Hub."""
    from mteb.tasks.retrieval.multilingual.x_qu_ad_retrieval import XQuADRetrieval

    class LocalXQuADRetrieval(XQuADRetrieval):
        def load_data(self, **kwargs):
            self.corpus, self.queries, self.relevant_docs = {}, {}, {}
            for lang in self.hf_subsets:
                c, q, r = mteb_xquad(Path(data_dir) / "xquad" / f"xquad.{lang}.json")
                self.corpus[lang], self.queries[lang], self.relevant_docs[lang] = \
                    {"validation": c}, {"validation": q}, {"validation": r}
            self.data_loaded = True

    return LocalXQuADRetrieval().filter_languages(None, hf_subsets=list(languages))
