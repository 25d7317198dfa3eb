"""The embedded mini corpus: short encyclopedic passages on everyday topics, parallel in six languages.

It ships with m3lab (``data/mini/topics-*.jsonl``, CC BY 4.0) so that the demo app, the
notebooks and the tests have multilingual retrieval data with no download. Each line is
one topic::

    {"id": "science-photosynthesis", "category": "science",
     "title": {"en": ..., "de": ..., ...}, "passages": {"en": ..., ...}, "questions": {"en": [q1, q2], ...}}

Ids: document ``{topic}/{lang}``, query ``{topic}/{lang}/q{k}`` (``k`` = 0-based position in
the topic's question list).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ._files import iter_jsonl
from .records import DataError, Document, Qrels, Query, RetrievalDataset

MINI_LANGUAGES: tuple[str, ...] = ("en", "de", "es", "zh", "ar", "ru")


def mini_dir(path: str | Path | None = None) -> Path:
    """The mini corpus folder (or file): ``path``, else ``$M3LAB_MINI_DIR``, else the copy shipped with m3lab."""
    if path is not None or os.environ.get("M3LAB_MINI_DIR"):
        return Path(path if path is not None else os.environ["M3LAB_MINI_DIR"])
    here = Path(__file__).resolve()
    # Inside the package when installed from a wheel, else at the root of a source checkout.
    candidates = (here.parent / "mini", here.parents[2] / "data" / "mini")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise DataError(f"mini corpus not found (looked in {candidates[0]} and {candidates[1]}); set M3LAB_MINI_DIR")


def mini_topics(path: str | Path | None = None) -> list[dict]:
    """The raw topic records of every ``topics-*.jsonl`` file (in file-name order), validated.

    ``path`` may be a folder or a single ``.jsonl`` file. A bad record raises ``DataError``
    naming the file, the line and the field (e.g. ``questions.zh``).
    """
    root = mini_dir(path)
    files = [root] if root.is_file() else sorted(root.glob("topics-*.jsonl"))
    if not files:
        raise DataError("no topics-*.jsonl files here" if root.is_dir() else "mini corpus not found", path=root)
    topics: list[dict] = []
    first: dict[str, str] = {}
    for file in files:
        for number, topic in iter_jsonl(file):
            try:
                _check_topic(topic)
            except DataError as e:
                raise e.at(file, number) from None
            if topic["id"] in first:
                raise DataError(f"duplicate topic id {topic['id']!r} (first at {first[topic['id']]})",
                                path=file, line=number, field="id")
            first[topic["id"]] = f"{file.name}:{number}"
            topics.append(topic)
    if not topics:
        raise DataError("no topics: the files are empty", path=root)
    return topics


def _check_topic(topic: object) -> None:
    if not isinstance(topic, dict):
        raise DataError(f"expected a JSON object, got {type(topic).__name__}")
    for key in ("id", "category"):
        if not isinstance(topic.get(key), str) or not topic[key].strip():
            raise DataError("expected a non-empty string", field=key)
    for key in ("title", "passages", "questions"):
        if not isinstance(topic.get(key), dict):
            raise DataError("expected an object {language: ...}", field=key)
    languages = set(topic["title"]) | set(topic["passages"]) | set(topic["questions"])
    for lang in [*MINI_LANGUAGES, *sorted(languages - set(MINI_LANGUAGES))]:  # extra languages are fine when complete
        for key in ("title", "passages"):
            value = topic[key].get(lang)
            if not isinstance(value, str) or not value.strip():
                raise DataError("missing" if value is None else "expected a non-empty string", field=f"{key}.{lang}")
        questions = topic["questions"].get(lang)
        if not isinstance(questions, list) or not questions or \
                not all(isinstance(q, str) and q.strip() for q in questions):
            raise DataError("missing" if questions is None else "expected a non-empty list of non-empty strings",
                            field=f"questions.{lang}")


def load_mini(language: str = "en", *, corpus_language: str | None = None, languages: Sequence[str] | None = None,
              path: str | Path | None = None) -> RetrievalDataset:
    """The mini corpus as a retrieval data set.

    * default: questions and passages in ``language``;
    * ``corpus_language``: questions in ``language`` against passages in ``corpus_language``;
    * ``languages`` (e.g. ``MINI_LANGUAGES``): one multilingual corpus with every listed
      language's passages and questions; each question is relevant to its topic's passage
      *in its own language* only (``language``/``corpus_language`` are then ignored).

    Documents carry their language and title.
    """
    topics = mini_topics(path)
    if languages is not None:
        languages = [languages] if isinstance(languages, str) else list(languages)
        pairs = [(lang, lang) for lang in languages]
        label = "all" if sorted(languages) == sorted(MINI_LANGUAGES) else "+".join(languages)
    else:
        pairs = [(language, corpus_language or language)]
        label = "-".join(dict.fromkeys(pairs[0]))
    available = set.intersection(*(set(t["passages"]) for t in topics))
    for lang in dict.fromkeys(lang for pair in pairs for lang in pair):
        if lang not in available:
            raise DataError(f"the mini corpus has no language {lang!r}; it has {', '.join(sorted(available))}",
                            path=mini_dir(path))

    corpus = [Document(f"{t['id']}/{lang}", t["passages"][lang], lang, t["title"][lang])
              for lang in dict.fromkeys(c for _, c in pairs) for t in topics]
    queries: list[Query] = []
    qrels: Qrels = {}
    for query_lang, corpus_lang in pairs:
        for t in topics:
            for k, text in enumerate(t["questions"][query_lang]):
                queries.append(Query(f"{t['id']}/{query_lang}/q{k}", text, query_lang))
                qrels[queries[-1].id] = {f"{t['id']}/{corpus_lang}": 1}
    single = languages is None
    return RetrievalDataset(f"mini-{label}", corpus, queries, qrels,
                            query_language=pairs[0][0] if single else None,
                            corpus_language=pairs[0][1] if single else None)
