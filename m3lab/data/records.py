"""Typed records shared by every loader: documents, queries, qrels, bitext and training examples."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Qrels = dict[str, dict[str, int]]  # query id -> {doc id: relevance}


class DataError(ValueError):
    """Bad input data. The message names the file, the 1-based line and the field where they apply.

    >>> str(DataError("expected a list of strings", path="train.jsonl", line=3, field="pos"))
    "train.jsonl:3: field 'pos': expected a list of strings"
    """

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None,
                 field: str | None = None):
        self.message, self.path, self.line, self.field = message, path, line, field
        where = "" if path is None else f"{path}" + ("" if line is None else f":{line}") + ": "
        what = "" if field is None else f"field {field!r}: "
        super().__init__(f"{where}{what}{message}")

    def at(self, path: str | Path | None = None, line: int | None = None) -> DataError:
        """The same error located in a file (keeps a location that is already set)."""
        return DataError(self.message, path=self.path or path, line=self.line or line, field=self.field)

    def __reduce__(self):  # keyword-only arguments need this to survive pickling (worker processes)
        return _rebuild_error, (self.message, self.path, self.line, self.field)


def _rebuild_error(message, path, line, field) -> DataError:
    return DataError(message, path=path, line=line, field=field)


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    language: str | None = None
    title: str | None = None


@dataclass(frozen=True)
class Query:
    id: str
    text: str
    language: str | None = None


@dataclass
class RetrievalDataset:
    """A corpus, its queries and the relevance judgements between them.

    Validated on construction: a non-empty corpus, unique document and query ids, and
    qrels that only name queries and documents that exist (``DataError`` otherwise).
    """

    name: str
    corpus: list[Document]
    queries: list[Query]
    qrels: Qrels
    query_language: str | None = None
    corpus_language: str | None = None

    def __post_init__(self) -> None:
        if not self.corpus:
            raise DataError(f"dataset {self.name!r}: the corpus is empty")
        doc_ids = unique_ids(self.corpus, f"dataset {self.name!r}: duplicate document id")
        query_ids = unique_ids(self.queries, f"dataset {self.name!r}: duplicate query id")
        for qid, rels in self.qrels.items():
            if qid not in query_ids:
                raise DataError(f"dataset {self.name!r}: qrels name query {qid!r}, which is not among the queries")
            for did in rels:
                if did not in doc_ids:
                    raise DataError(f"dataset {self.name!r}: qrels of query {qid!r} name document {did!r}, "
                                    "which is not in the corpus")

    def __repr__(self) -> str:  # the default repr would print the whole corpus
        return (f"RetrievalDataset(name={self.name!r}, corpus={len(self.corpus)} docs, queries={len(self.queries)}, "
                f"qrels={len(self.qrels)}, query_language={self.query_language!r}, "
                f"corpus_language={self.corpus_language!r})")


def unique_ids(records: list, message: str) -> set[str]:
    """The records' ids; a repeated id raises :class:`DataError` (a ``ValueError``) ``message`` + the id."""
    seen: set[str] = set()
    for r in records:
        if r.id in seen:
            raise DataError(f"{message} {r.id!r}")
        seen.add(r.id)
    return seen


@dataclass
class BitextDataset:
    """Line-aligned sentence pairs: ``source[i]`` (in ``language``) translates ``target[i]`` (English)."""

    name: str
    language: str
    source: list[str]
    target: list[str]

    def __post_init__(self) -> None:
        if len(self.source) != len(self.target):
            raise DataError(f"bitext {self.name!r}: {len(self.source)} source but {len(self.target)} target sentences")

    def __len__(self) -> int:
        return len(self.source)

    def __repr__(self) -> str:
        return f"BitextDataset(name={self.name!r}, language={self.language!r}, pairs={len(self)})"


@dataclass
class TrainingExample:
    """One line of a FlagEmbedding training file: a query, its positives and its hard negatives.

    ``pos_scores``/``neg_scores`` are optional teacher scores (one per passage) for
    distillation; ``prompt`` an optional instruction prepended to the query.
    Invalid values raise ``DataError`` naming the field.
    """

    query: str
    pos: list[str]
    neg: list[str]
    pos_scores: list[float] | None = None
    neg_scores: list[float] | None = None
    prompt: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.query, str) or not self.query.strip():
            raise DataError("expected a non-empty string", field="query")
        _check_texts(self.pos, "pos", allow_empty=False)
        _check_texts(self.neg, "neg", allow_empty=True)
        for name, texts in (("pos_scores", self.pos), ("neg_scores", self.neg)):
            scores = getattr(self, name)
            if scores is None:
                continue
            if not isinstance(scores, list) or not all(_is_number(s) for s in scores):
                raise DataError("expected a list of finite numbers", field=name)
            if len(scores) != len(texts):
                raise DataError(f"has {len(scores)} scores for {len(texts)} passages", field=name)
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise DataError("expected a string", field="prompt")

    @classmethod
    def from_dict(cls, obj: Any) -> TrainingExample:
        """Build from a parsed JSON object; extra keys (``type``, ``id``, ...) are ignored."""
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object, got {type(obj).__name__}")
        for key in ("query", "pos", "neg"):
            if key not in obj:
                raise DataError("missing", field=key)
        return cls(**{k: obj.get(k) for k in ("query", "pos", "neg", "pos_scores", "neg_scores", "prompt")})

    def to_dict(self) -> dict[str, Any]:
        """The JSON object FlagEmbedding reads (unset optional fields left out)."""
        out: dict[str, Any] = {"query": self.query, "pos": self.pos, "neg": self.neg}
        for key in ("pos_scores", "neg_scores", "prompt"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def _check_texts(texts: Any, field: str, *, allow_empty: bool) -> None:
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise DataError("expected a list of strings", field=field)
    if not texts and not allow_empty:
        raise DataError("expected at least one passage", field=field)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
