"""XQuAD as retrieval data: same-language (MTEB ``XQuADRetrieval``), cross-lingual and long-document.

XQuAD (Artetxe et al., 2020) is 240 SQuAD v1.1 paragraphs from 48 Wikipedia articles
(5 each) with 1190 questions, in English and 11 professional translations. Every
language has the same articles, paragraphs and question ids in the same order, so:

* document ids are language-independent: paragraph ``p{article}_{paragraph}`` and
  article ``a{article}`` (0-based positions), and a question in one language can be
  judged against the corpus of another (cross-lingual, MKQA-style);
* the split by article is identical across languages: ``train`` is the first
  ``n_train_articles`` (default 24) articles, ``test`` the rest.

The same-language set is built like MTEB's ``XQuADRetrieval``: the corpus is the
distinct paragraphs, the queries are the distinct question strings (a question text
asked of several paragraphs is one query, with the first question's id, relevant to
all of those paragraphs), relevance 1.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ._files import read_text
from .records import DataError, Document, Qrels, Query, RetrievalDataset
from .sources import resolve_data_file

XQUAD_LANGUAGES: tuple[str, ...] = ("ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh")
SPLITS = ("all", "train", "test")


@dataclass(frozen=True)
class XQuADParagraph:
    """One paragraph of one language, with its questions as ``(qas id, question)`` pairs."""

    article: int
    index: int
    title: str
    context: str
    questions: tuple[tuple[str, str], ...]

    @property
    def doc_id(self) -> str:
        return f"p{self.article}_{self.index}"


def xquad_paragraphs(language: str = "en", *, split: str = "all", data_dir: str | Path | None = None,
                     n_train_articles: int = 24) -> list[XQuADParagraph]:
    """The paragraphs of the chosen articles, in file order (position ``i`` is the same paragraph in every language)."""
    if language not in XQUAD_LANGUAGES:
        raise DataError(f"XQuAD has no language {language!r}; it has {', '.join(XQUAD_LANGUAGES)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = resolve_data_file("xquad", f"xquad.{language}.json", data_dir=data_dir)
    try:
        articles = json.loads(read_text(path))["data"]
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({e.msg} at column {e.colno})", path=path, line=e.lineno) from None
    except (KeyError, TypeError):
        raise DataError("expected a SQuAD-format object", path=path, field="data") from None
    if split != "all" and not 0 < n_train_articles < len(articles):
        raise ValueError(f"n_train_articles must be between 1 and {len(articles) - 1}, got {n_train_articles}")
    chosen = {"all": range(len(articles)), "train": range(n_train_articles),
              "test": range(n_train_articles, len(articles))}[split]
    out = []
    for a in chosen:
        field = f"data[{a}]"
        try:
            article = articles[a]
            for p, para in enumerate(article["paragraphs"]):
                field = f"data[{a}].paragraphs[{p}]"
                questions = tuple((str(qa["id"]), qa["question"]) for qa in para["qas"])
                out.append(XQuADParagraph(a, p, article["title"], para["context"], questions))
        except (KeyError, TypeError, IndexError) as e:
            raise DataError(f"malformed SQuAD record ({type(e).__name__}: {e})", path=path, field=field) from None
    return out


def question_groups(paragraphs: list[XQuADParagraph]) -> dict[str, tuple[list[str], list[int]]]:
    """Distinct question strings -> (their qas ids, the positions of their paragraphs), in first-seen order.

    A question string asked of several paragraphs is one query (MTEB ``XQuADRetrieval``):
    it keeps the first id and every one of those paragraphs is relevant.
    """
    groups: dict[str, tuple[list[str], list[int]]] = {}
    for i, p in enumerate(paragraphs):
        for qid, text in p.questions:
            qids, positions = groups.setdefault(text, ([], []))
            qids.append(qid)
            if i not in positions:
                positions.append(i)
    return groups


def load_xquad(language: str = "en", *, corpus_language: str | None = None, split: str = "all",
               data_dir: str | Path | None = None, n_train_articles: int = 24) -> RetrievalDataset:
    """XQuAD paragraph retrieval: questions in ``language`` against paragraphs in ``corpus_language``.

    ``corpus_language=None`` gives the same-language set (MTEB ``XQuADRetrieval``: 240
    documents and about 1180-1187 distinct questions per language with ``split="all"``).
    """
    return _retrieval(language, corpus_language, split, data_dir, n_train_articles, long=False)


def load_xquad_long(language: str = "en", *, corpus_language: str | None = None, split: str = "all",
                    data_dir: str | Path | None = None, n_train_articles: int = 24) -> RetrievalDataset:
    """XQuAD article retrieval, for MCLS and long inputs: one document per article.

    A document (id ``a{article}``) is the article's paragraphs joined by a blank line; its
    title is the Wikipedia title with spaces (``Super Bowl 50``). Each question is
    relevant to its article.
    """
    return _retrieval(language, corpus_language, split, data_dir, n_train_articles, long=True)


def _retrieval(language: str, corpus_language: str | None, split: str, data_dir, n_train_articles: int,
               *, long: bool) -> RetrievalDataset:
    corpus_language = corpus_language or language
    q_paras = xquad_paragraphs(language, split=split, data_dir=data_dir, n_train_articles=n_train_articles)
    c_paras = q_paras if corpus_language == language else xquad_paragraphs(
        corpus_language, split=split, data_dir=data_dir, n_train_articles=n_train_articles)
    if [(p.article, p.index) for p in q_paras] != [(p.article, p.index) for p in c_paras]:
        raise DataError(f"XQuAD files of {language!r} and {corpus_language!r} do not have the same paragraphs")

    if long:
        articles: dict[int, list[XQuADParagraph]] = {}
        for p in c_paras:
            articles.setdefault(p.article, []).append(p)
        corpus = [Document(f"a{a}", "\n\n".join(p.context for p in ps), corpus_language, ps[0].title.replace("_", " "))
                  for a, ps in articles.items()]
    else:
        corpus = [Document(p.doc_id, p.context, corpus_language) for p in c_paras]

    groups = question_groups(q_paras)
    queries = [Query(qids[0], text, language) for text, (qids, _) in groups.items()]
    qrels: Qrels = {qids[0]: {(f"a{c_paras[i].article}" if long else c_paras[i].doc_id): 1 for i in positions}
                    for qids, positions in groups.values()}
    name = "-".join(["xquad-long" if long else "xquad", language]
                    + ([corpus_language] if corpus_language != language else [])
                    + ([split] if split != "all" else []))
    return RetrievalDataset(name, corpus, queries, qrels, query_language=language, corpus_language=corpus_language)
