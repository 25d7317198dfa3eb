"""The app's callbacks as plain functions: inputs in, a view (a small dataclass of outputs) back.

Nothing here knows Gradio; :mod:`app.ui` wires these to components, and the tests call
them directly. Scores come from :class:`m3lab.retrieval.CorpusIndex` and :mod:`m3lab.scoring`,
token-level explanations from :mod:`m3lab.viz.inspect`, figures from :mod:`m3lab.viz.plots`.

Bad input never raises: every view carries a ``message`` (Markdown) that says what went
wrong, and keeps its other outputs empty.

User text put into a message goes through :func:`md_text` (shown as typed, never as markup);
token strings put into a figure through :func:`plot_label`. Every view of a query says how many
of its tokens the vocabulary misses (:func:`vocabulary_note`, a warning above
:data:`UNKNOWN_WARN_SHARE`), and tables and figures mark special tokens with :data:`SPECIAL_BADGE`.
"""
from __future__ import annotations

import html
import json
import logging
import os
import tempfile
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from m3lab import plots, scoring
from m3lab.data import DataError
from m3lab.retrieval import document_text
from m3lab.viz.inspect import (LexicalMatch, MaxSimAlignment, TokenWeight, UnknownShare, lexical_match,
                               maxsim_alignment, maxsim_passage_spans, picked_columns, special_token_ids, token_weights,
                               unknown_pieces, unknown_token_share)
from m3lab.modeling import EncodeOutput, resolve_model_path, score_encoded

from .corpora import (MAX_UPLOAD_BYTES, MAX_UPLOAD_DOCUMENTS, Corpus, UploadError, load_builtin,
                      load_evaluation_dataset, upload_corpus, upload_evaluation)
from m3lab.evaluation.explore import RankingComparison, compare_rankings, explore_retrieval, fusion_sweep
from m3lab.retrieval.spec import describe_spec

from .state import MODEL_LOCK, AppState, BuildCancelled, Workspace, build_workspace, dense_of, index_size

logger = logging.getLogger("m3lab.app")

#: the modes as the UI names them -> CorpusIndex modes
MODES = {"dense": "dense", "sparse": "sparse", "multi-vector": "colbert", "hybrid": "hybrid", "BM25": "bm25"}
ALL_LANGUAGES = "all languages"
MAX_QUERY_CHARS = 2000
MAX_TOP_K = 100
RESULT_COLUMNS = ["rank", "id", "lang", "title", "text", "score", "dense", "sparse", "colbert"]  # fixed: scripts read them
RESULT_SNIPPET = 160  # characters of each result's text in the table (the download has them all): ~10 rows in view
Session = dict[str, Any]  # per-browser state: the last search {"workspace", "query", "doc_ids"}
Progress = Callable[..., object] | None


_ALL_ZERO = "All weights are 0: give at least one of dense, sparse, multi-vector a weight above 0."

#: a query with more than this share of unknown (unk) tokens gets a warning: its scores mean little
UNKNOWN_WARN_SHARE = 0.10
#: how tables and figures mark a special token of the tokenizer (<s>, </s>, [CLS], [SEP], <pad>, <unk>, ...)
SPECIAL_BADGE = "(special)"
#: the legend of that mark (Markdown), in the Sparse and MaxSim tabs and in messages that show marked tokens
SPECIAL_LEGEND = (f"**{SPECIAL_BADGE}** marks the tokenizer's special tokens (`<s>`, `</s>`, `<pad>`, `<unk>`, "
                  "`[CLS]`, `[SEP]`, …): markers it adds or puts for text it does not know, not words of the text.")
_MD_INLINE = re.compile(r"([\\`*_\[\]~|$])")  # inline Markdown (emphasis, code, links, strikethrough, LaTeX)
_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


def _error(text: str) -> str:
    return f"⚠️ {text}"


def md_text(text: str) -> str:
    """User text for a Markdown message, shown as typed and never as markup: line breaks become spaces (as
    Markdown shows them, so no line can start a heading or list), inline Markdown characters are
    backslash-escaped, HTML is escaped."""
    return html.escape(_MD_INLINE.sub(r"\\\1", _LINE_BREAKS.sub(" ", str(text))), quote=False)


def md_code(text: str) -> str:
    """User text as a Markdown code span: shown literally (CommonMark reads neither markup nor entities
    there), so only backticks and line breaks, which would end or break the span, are replaced."""
    return "`" + _LINE_BREAKS.sub(" ", str(text)).replace("`", "'") + "`"


def plot_label(token: str, special: bool = False) -> str:
    """A token string for a figure, followed by :data:`SPECIAL_BADGE` if it is a special token
    (m3lab.viz.plots HTML-escapes every label it draws: Plotly would read ``</s>`` as markup)."""
    return token + (f" {SPECIAL_BADGE}" if special else "")


def _badge(token: str, special: bool) -> str:
    """A token string for a table cell (plain text), marked if special."""
    return f"{token} {SPECIAL_BADGE}" if special else token


def _flags(flags: Sequence[bool], n: int) -> list[bool]:
    """``is_special`` flags of n tokens (records built without flags: none special)."""
    return [bool(f) for f in flags] if len(flags) == n else [False] * n


def vocabulary_note(share: UnknownShare, pieces: Sequence[str] = (), unk_token: str | None = "<unk>",
                    limit: int = 8) -> str:
    """Markdown: how many of a query's tokens are the unk token; a warning above :data:`UNKNOWN_WARN_SHARE`.

    ``pieces`` (the query's text that became unk, user text: escaped here) are listed with the warning.
    Empty when the query has no content token or the tokenizer no unk token.
    """
    if not share.n_tokens or unk_token is None:
        return ""
    unk = html.escape(unk_token)
    counts = f"{share.n_unknown} of {share.n_tokens} tokens ({share.share:.0%})"
    if share.share <= UNKNOWN_WARN_SHARE:
        return f"Vocabulary: {counts} of this query are unknown to the model's vocabulary ({unk})."
    note = (f"⚠️ **{counts} of this query are unknown to the model's vocabulary ({unk})**: "
            "its scores mean little for this language / script.")
    distinct = list(dict.fromkeys(p for p in pieces if p.strip()))
    if distinct:
        note += " Unknown: " + ", ".join(f"“{md_text(p)}”" for p in distinct[:limit]) + \
            (f" and {len(distinct) - limit} more" if len(distinct) > limit else "") + "."
    return note


def _vocabulary(ws: Workspace, text: str) -> tuple[str, UnknownShare]:
    """The :func:`vocabulary_note` of a query with the workspace's tokenizer, and its counts."""
    with MODEL_LOCK:
        share = unknown_token_share(ws.model, text)
        pieces = unknown_pieces(ws.model, text) if share.n_unknown else []
    return vocabulary_note(share, pieces, getattr(ws.model.tokenizer, "unk_token", None)), share


def _with_note(message: str, note: str) -> str:
    return f"{message}\n\n{note}" if note else message


def _plot_weights(weights: Sequence[TokenWeight]) -> list[TokenWeight]:
    """Token weights with Plotly labels (:func:`plot_label`), for the weight bars."""
    return [replace(w, token=plot_label(w.token, w.is_special)) for w in weights]


def _plot_match(m: LexicalMatch) -> LexicalMatch:
    """A lexical match with Plotly labels, for the contribution bars."""
    return replace(m, tokens=[plot_label(t, f) for t, f in zip(m.tokens, _flags(m.is_special, len(m.tokens)))])


def _plot_alignment(a: MaxSimAlignment) -> MaxSimAlignment:
    """A MaxSim alignment with Plotly labels, for the heatmap."""
    return replace(a, query_tokens=[plot_label(t, f) for t, f in
                                    zip(a.query_tokens, _flags(a.query_is_special, len(a.query_tokens)))],
                   passage_tokens=[plot_label(t, f) for t, f in
                                   zip(a.passage_tokens, _flags(a.passage_is_special, len(a.passage_tokens)))])


def _fmt(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 4)


def _round(values) -> list[float]:
    """Python floats rounded to 4 places (float32 values would print as 0.54809999...)."""
    return [round(float(v), 4) for v in values]


# ----------------------------------------------------------------------------- Search

@dataclass
class SearchView:
    message: str
    table: pd.DataFrame
    choices: list[tuple[str, str]]  # (label, document id) of the results, for the Sparse and MaxSim views
    session: Session
    figure: go.Figure
    unknown: UnknownShare | None = None  # the query's unk tokens (its vocabulary note is in the message)
    export: list[str] = field(default_factory=list)  # the ranking as CSV and JSON files, for download


def search(ws: Workspace, query: str, mode: str = "hybrid", w_dense: float = 1.0, w_sparse: float = 0.3,
           w_colbert: float = 1.0, top_k: int = 10, session: Session | None = None,
           language: str | None = None) -> SearchView:
    """Retrieve ``top_k`` documents in ``mode`` and report every function's score of each result.

    The ranking is the index's (``CorpusIndex.rank``), or BM25's (``mode="BM25"``,
    :class:`m3lab.retrieval.bm25.BM25Index`); the component columns are the three scores of the
    same pairs from :mod:`m3lab.scoring`, whichever mode ranked them. ``language`` keeps only that
    language's documents (ranked among all of them: the whole corpus is ranked, then filtered).
    The message ends with the query's :func:`vocabulary_note`.
    """
    session = dict(session or {})

    def nothing(message: str) -> SearchView:  # built only when there is nothing to show (a figure costs ~10 ms)
        return SearchView(message, pd.DataFrame(columns=RESULT_COLUMNS), [], session,
                          plots.empty_figure("run a search to see the results' scores"))

    query = (query or "").strip()
    weights = tuple(float(w or 0.0) for w in (w_dense, w_sparse, w_colbert))
    problem = _bad_request(query, mode, weights)
    if problem:
        return nothing(_error(problem))
    top_k = _top_k(top_k, len(ws.index))
    index = ws.index
    language = None if language in (None, "", ALL_LANGUAGES) else str(language)
    try:
        q, kept = _ranked(ws, query, mode, weights, top_k, language)
    except ValueError as err:
        return nothing(_error(md_text(err)))
    vocab, unknown = _vocabulary(ws, query)
    idx = [j for j, _ in kept]
    if not idx:
        empty = nothing(_with_note(f"No document matches **{md_text(query)}** in {mode} mode" +
                                   (" (no token of the query has a positive weight in any document)."
                                    if mode == "sparse" else "."), vocab))
        empty.session = {"workspace": ws.key, "query": query, "doc_ids": []}
        empty.unknown = unknown
        return empty
    comps = index.score_documents(q, idx)
    rows = []
    for r, j in enumerate(idx):
        d = index.documents[j]
        rows.append([r + 1, d.id, d.language or "", d.title or "", d.text, _fmt(kept[r][1]),
                     _fmt(comps["dense"][r]), _fmt(comps["sparse"][r]), _fmt(comps["colbert"][r])])
    full = pd.DataFrame(rows, columns=RESULT_COLUMNS)  # the download keeps the whole texts
    table = full.assign(text=[_snippet(t, RESULT_SNIPPET) for t in full["text"]])
    choices = [(f"{r + 1}. {_label(index.documents[j])}", index.documents[j].id) for r, j in enumerate(idx)]
    if MODES[mode] == "bm25":
        fig = plots.empty_figure("BM25 ranks by its own score; the table shows each result's M3 scores")
    else:
        fig = plots.hybrid_breakdown([f"{r + 1}. {index.documents[j].id}" for r, j in enumerate(idx)],
                                     {k: list(v) for k, v in comps.items()}, weights if mode == "hybrid" else
                                     tuple(float(MODES[mode] == k) for k in ("dense", "sparse", "colbert")),
                                     title=f"{mode} score of each result" +
                                           (" = w1·dense + w2·sparse + w3·multi-vector" if mode == "hybrid" else ""))
    note = f"{len(idx)} results for **{md_text(query)}** in **{mode}** mode"
    if language:
        note += f", {md_text(language)} documents only"
    if mode == "hybrid":
        note += f" (weights dense {weights[0]:g}, sparse {weights[1]:g}, multi-vector {weights[2]:g})"
    if not ws.model.heads_trained:
        note += ". ⚠️ The model's sparse and multi-vector heads are untrained: only dense scores are meaningful."
    session = {"workspace": ws.key, "query": query, "doc_ids": [c[1] for c in choices], "mode": mode,
               "weights": list(weights)}
    return SearchView(_with_note(note, vocab), table, choices, session, fig, unknown,
                      export_ranking(full, {"query": query, "mode": mode, "weights": list(weights),
                                             "language": language or ALL_LANGUAGES, "corpus": ws.corpus.name,
                                             "model": ws.model_name}))


def _bad_request(query: str, mode: str, weights: tuple[float, float, float]) -> str | None:
    """What is wrong with a search request (a stripped query), or ``None``."""
    if not query:
        return "Type a query first."
    if len(query) > MAX_QUERY_CHARS:
        return f"The query is {len(query)} characters long; the limit is {MAX_QUERY_CHARS}."
    if mode not in MODES:
        return f"Unknown mode {mode!r}; choose one of {', '.join(MODES)}."
    if mode == "hybrid" and not any(weights):
        return _ALL_ZERO
    if any(w < 0 for w in weights):
        return "Weights must be ≥ 0."
    return None


def _top_k(top_k: int | None, n_documents: int) -> int:
    """The requested depth within 1 .. MAX_TOP_K and the corpus (10 when not given)."""
    return int(min(max(int(10 if top_k is None else top_k), 1), MAX_TOP_K, n_documents))


def _ranked(ws: Workspace, query: str, mode: str, weights: tuple[float, float, float], top_k: int,
            language: str | None = None) -> tuple[EncodeOutput, list[tuple[int, float]]]:
    """The query encoded as the index encodes queries, and its ``top_k`` (position, score) in ``mode``
    (``language``: the whole corpus is ranked, then that language's documents kept)."""
    index = ws.index
    depth = len(index) if language else top_k
    with MODEL_LOCK:
        q = index.encode_queries(query, components=index.stored)
    if MODES[mode] == "bm25":
        positions, scores = ws.bm25().search([query], top_k=depth)
    else:
        ranking = index.rank(q, [MODES[mode]], top_k=depth, weights=weights,
                             candidates=len(index) if language else 100)[MODES[mode]]
        positions, scores = ranking.indices, ranking.scores
    kept = [(int(j), float(x)) for j, x in zip(positions[0], scores[0]) if j >= 0 and
            (language is None or index.documents[int(j)].language == language)]
    return q, kept[:top_k]


def export_ranking(table: pd.DataFrame, meta: dict) -> list[str]:
    """The ranking as ``ranking.csv`` and ``ranking.json`` (the query and settings with the rows), in a
    fresh temporary folder that Gradio serves for download."""
    folder = Path(tempfile.mkdtemp(prefix="m3lab-ranking-"))
    table.to_csv(folder / "ranking.csv", index=False)
    rows = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
            for r in table.to_dict(orient="records")]
    (folder / "ranking.json").write_text(json.dumps({**meta, "results": rows}, ensure_ascii=False, indent=1,
                                                    default=str), encoding="utf-8")
    return [str(folder / "ranking.csv"), str(folder / "ranking.json")]


def _snippet(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _label(doc) -> str:
    head = doc.title or _snippet(doc.text, 60)
    return f"{head} ({doc.id})"


# ----------------------------------------------------------------------------- the chosen result

def _pair(ws: Workspace, session: Session | None, doc_id: str | None) -> tuple[str, Any, str] | str:
    """(query, document, passage text) for a result of the last search, or an error message."""
    if not session or not session.get("query"):
        return "Run a search first, then pick one of its results here."
    if session.get("workspace") != ws.key:
        return "The model or corpus changed since your last search: search again."
    doc_id = doc_id or (session.get("doc_ids") or [None])[0]
    if doc_id is None:
        return "The last search returned no results."
    pos = ws.position(doc_id)
    if pos is None:
        return f"Document {doc_id!r} is not in the current corpus."
    doc = ws.index.documents[pos]
    return session["query"], doc, document_text(doc, ws.index.settings.get("with_titles", True))


def _encode_pair(ws: Workspace, query: str, passage: str) -> tuple[EncodeOutput, EncodeOutput]:
    """The query as the index's queries are encoded, the passage as its documents were."""
    with MODEL_LOCK:
        q = ws.model.encode_queries([query], show_progress=False)
        p = ws.model.encode_corpus([passage], max_length=ws.index.max_length, show_progress=False)
    return q, p


def highlight(ws: Workspace, text: str, weights: dict[int, float]) -> list[tuple[str, float | None]]:
    """``text`` split into spans, each token's span carrying its lexical weight scaled to [0, 1]."""
    tok = ws.model.tokenizer
    max_length = min(ws.index.max_length, ws.model.max_positions)  # as the model truncated it
    if getattr(tok, "is_fast", False):
        with MODEL_LOCK:
            enc = tok(text, return_offsets_mapping=True, truncation=True, max_length=max_length)
        return plots.weighted_spans(text, enc["offset_mapping"], [weights.get(t, 0.0) for t in enc["input_ids"]])
    with MODEL_LOCK:
        ids = tok(text, truncation=True, max_length=max_length)["input_ids"]
    top = max(weights.values(), default=0.0) or 1.0
    special = special_token_ids(ws.model)
    return [(_badge(t, i in special) + " ", (weights.get(i, 0.0) / top) or None)
            for i, t in zip(ids, tok.convert_ids_to_tokens(ids))]


@dataclass
class SparseView:
    message: str
    query_spans: list = field(default_factory=list)
    passage_spans: list = field(default_factory=list)
    query_figure: go.Figure | None = None
    passage_figure: go.Figure | None = None
    match_figure: go.Figure | None = None
    table: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["token", "w_query", "w_passage", "w_q·w_p"]))
    match: LexicalMatch | None = None
    unknown: UnknownShare | None = None
    distribution_figure: go.Figure | None = None


def explain(ws: Workspace, query: str, doc_id: str) -> tuple[SparseView, MaxSimView]:
    """The Sparse and MaxSim explanations of one query and one document of the corpus (``/explain``),
    without a search first: what clicking a result shows."""
    session = {"workspace": ws.key, "query": (query or "").strip(), "doc_ids": [doc_id] if doc_id else []}
    return sparse_view(ws, session, doc_id), maxsim_view(ws, session, doc_id)


def sparse_view(ws: Workspace, session: Session | None, doc_id: str | None,
                exclude_special: bool = False) -> SparseView:
    """Token weights of the query and the chosen result, their shared tokens and contributions (sum = s_lex),
    and where this result's three scores lie among the whole corpus's for the query.

    Special tokens are marked (:data:`SPECIAL_BADGE`) in the table and the bars; ``exclude_special``
    leaves them out of the bars (their titles say how many and how much they add). The message ends
    with the query's :func:`vocabulary_note`.
    """
    pair = _pair(ws, session, doc_id)
    if isinstance(pair, str):
        blank = plots.empty_figure(pair)
        return SparseView(_error(pair), query_figure=blank, passage_figure=blank, match_figure=blank,
                          distribution_figure=blank)
    query, doc, passage = pair
    q, p = _encode_pair(ws, query, passage)
    match = lexical_match(ws.model, q, p)
    special = _flags(match.is_special, len(match.tokens))
    table = pd.DataFrame({"token": [_badge(t, f) for t, f in zip(match.tokens, special)],
                          "w_query": _round(match.query_weights),
                          "w_passage": _round(match.passage_weights), "w_q·w_p": _round(match.contributions)})
    table = pd.concat([table, pd.DataFrame([{"token": "s_lex (sum)", "w_query": None, "w_passage": None,
                                              "w_q·w_p": round(match.total, 4)}])], ignore_index=True)
    msg = (f"Query **{md_text(query)}** vs **{doc.id}**: {len(match.tokens)} shared token(s)" +
           (f" ({sum(special)} of them special)" if any(special) else "") +
           f", s_lex = Σ w_q·w_p = **{match.total:.4f}**")
    q_weights, p_weights = token_weights(ws.model, q, 0), token_weights(ws.model, p, 0)
    if not ws.model.heads_trained:
        msg += " ⚠️ untrained sparse head: these weights are not learned yet."
    if any(special) or any(w.is_special for w in q_weights + p_weights):
        msg += "\n\n" + SPECIAL_LEGEND
    vocab, unknown = _vocabulary(ws, query)
    scores = ws.corpus_scores(query)
    pos = ws.position(doc.id)
    weights = (session or {}).get("weights") or [1.0, 0.3, 1.0]
    distribution = plots.score_distribution(
        scores, marked={k: float(v[pos]) for k, v in scores.items()},
        weights=dict(zip(("dense", "sparse", "colbert"), map(float, weights))),
        title=f"Scores of every document for this query; the line marks {html.escape(doc.id)}")
    return SparseView(
        _with_note(msg, vocab), highlight(ws, query, q.sparse[0]), highlight(ws, passage, p.sparse[0]),
        plots.token_weight_bar(_plot_weights(q_weights), title="Query token weights", exclude_special=exclude_special),
        plots.token_weight_bar(_plot_weights(p_weights), title=f"Passage token weights ({html.escape(doc.id)})",
                               exclude_special=exclude_special),
        plots.lexical_contribution_bar(_plot_match(match), exclude_special=exclude_special), table, match, unknown,
        distribution)


@dataclass
class MaxSimView:
    message: str
    figure: go.Figure | None = None
    table: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["query token", "best passage token", "similarity", "contribution"]))
    alignment: MaxSimAlignment | None = None
    unknown: UnknownShare | None = None
    text_html: str = ""  # the passage with each query token's best match highlighted (the ColBERT-style view)


#: which passage columns the MaxSim heatmap draws: "auto" = all of a short passage, else the picked ones ± 1
MAXSIM_COLUMNS = {"auto": None, "all passage tokens": "all", "picked tokens only": 0, "picked tokens ± 2": 2}
MAXSIM_SHORT = 60  # passage vectors up to which "auto" draws them all


def _maxsim_columns(a: MaxSimAlignment, columns: str) -> np.ndarray | None:
    choice = MAXSIM_COLUMNS.get(columns, None)
    if choice is None:
        choice = "all" if len(a.passage_tokens) <= MAXSIM_SHORT else 1
    return None if choice == "all" else picked_columns(a, context=int(choice))


def maxsim_view(ws: Workspace, session: Session | None, doc_id: str | None, columns: str = "auto") -> MaxSimView:
    """Query × passage token similarities, each query token's best match and its share of s_mul, and
    the passage text with those best matches highlighted.

    ``columns`` (:data:`MAXSIM_COLUMNS`) crops the heatmap to the passage tokens some query token
    picked (± neighbours); the cropped columns are ones nobody picked, so no number changes.

    Special tokens are marked (:data:`SPECIAL_BADGE`) in the table and the heatmap, and the message
    counts the query tokens whose best match is one (e.g. the passage's ``</s>``); it ends with the
    query's :func:`vocabulary_note`.
    """
    pair = _pair(ws, session, doc_id)
    if isinstance(pair, str):
        return MaxSimView(_error(pair), plots.empty_figure(pair))
    query, doc, passage = pair
    a = maxsim_alignment(ws.model, *_encode_pair(ws, query, passage))
    msg = (f"Query **{md_text(query)}** vs **{doc.id}**: {len(a.query_tokens)} query vectors; "
           f"s_mul = (1/N) Σ_i max_j sim = **{a.total:.4f}**" +
           ("" if ws.model.heads_trained else " ⚠️ untrained multi-vector head (W_mul = identity)."))
    p_special = _flags(a.passage_is_special, len(a.passage_tokens))
    to_special = [int(j) for j in a.best if p_special[j]]
    if to_special:
        names = ", ".join(html.escape(t) for t in dict.fromkeys(a.passage_tokens[j] for j in to_special))
        verb = "best-matches" if len(to_special) == 1 else "best-match"
        msg += (f"\n\n{len(to_special)} of the {len(a.query_tokens)} query vectors {verb} a special token of "
                f"the passage ({names}): such a match says nothing about the passage's words.")
    if to_special or any(_flags(a.query_is_special, len(a.query_tokens))):
        msg += "\n\n" + SPECIAL_LEGEND
    vocab, unknown = _vocabulary(ws, query)
    try:
        spans = maxsim_passage_spans(ws.model, a, passage)
        text = plots.maxsim_text_html(spans, a.query_tokens,
                                      query_is_special=_flags(a.query_is_special, len(a.query_tokens)))
    except ValueError as err:  # a tokenizer whose offsets do not give the encoded tokens back
        logger.warning("no MaxSim text view for %s: %s", doc.id, err)
        text = f"<p>(no text view for this tokenizer: {html.escape(str(err))})</p>"
    cols = _maxsim_columns(a, columns)
    return MaxSimView(_with_note(msg, vocab), plots.maxsim_heatmap(_plot_alignment(a), columns=cols),
                      _alignment_table(a), a, unknown, text)


def _alignment_table(a: MaxSimAlignment) -> pd.DataFrame:
    sims = a.similarity[np.arange(len(a.best)), a.best] if len(a.best) else np.zeros(0)
    q_special = _flags(a.query_is_special, len(a.query_tokens))
    p_special = _flags(a.passage_is_special, len(a.passage_tokens))
    table = pd.DataFrame({"query token": [_badge(t, f) for t, f in zip(a.query_tokens, q_special)],
                          "best passage token": [_badge(a.passage_tokens[j], p_special[j]) for j in a.best],
                          "similarity": _round(sims), "contribution": _round(a.contributions)})
    return pd.concat([table, pd.DataFrame([{"query token": "s_mul (sum)", "best passage token": "", "similarity": None,
                                            "contribution": round(a.total, 4)}])], ignore_index=True)


# ----------------------------------------------------------------------------- Projection

@dataclass
class ProjectionView:
    message: str
    figure: go.Figure


NO_FOCUS = "(nothing)"
PASSAGE_FOCUS = "passage: "  # a focus choice naming one document: "passage: <id>"


def focus_choices(ws: Workspace, color_by: str = "language", limit: int = 5000) -> list[str]:
    """What the Projection view can highlight: nothing, one value of the colouring (e.g. one topic),
    or one passage (with its translations, when the corpus links them)."""
    labels = ws.corpus.labels.get(color_by) or ws.corpus.labels["language"]
    return [NO_FOCUS] + sorted(set(labels)) + [PASSAGE_FOCUS + d.id for d in ws.documents[:limit]]


def translation_groups(ws: Workspace) -> list[list[int]]:
    """The documents that translate one another (the same ``topic`` in two or more languages), each group
    in language order: what the Projection view joins with lines."""
    topics = ws.corpus.labels.get("topic")
    if topics is None:
        return []
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(topics):
        groups.setdefault(t, []).append(i)
    lang = ws.corpus.labels["language"]
    return [sorted(g, key=lambda i: lang[i]) for g in groups.values() if len({lang[i] for i in g}) > 1]


def projection_view(ws: Workspace, session: Session | None, color_by: str = "language",
                    align_languages: bool = True, progress: Progress = None, focus: str | None = None,
                    link_translations: bool = False) -> ProjectionView:
    """The corpus map coloured by ``color_by``, the last query as a star and its results ringed.

    ``align_languages`` removes each language's mean vector before mapping (multilingual corpora).
    ``focus`` (:func:`focus_choices`) draws one label's points, or one passage and its translations,
    in colour and the rest grey; ``link_translations`` joins translations of one passage by lines
    (:func:`translation_groups`; all of them, or the focused passage's).
    """
    labels = ws.corpus.labels.get(color_by)
    if labels is None:
        color_by = "language"
        labels = ws.corpus.labels["language"]
    try:
        proj = ws.projection(align_languages, progress)
    except ValueError as err:
        return ProjectionView(_error(f"No map: {err}"), plots.empty_figure(str(err)))
    texts = [f"{d.id}: {d.title + ' — ' if d.title else ''}{d.text}" for d in ws.documents]
    q_xy = q_text = highlight_idx = None
    msg = f"{proj.method.upper()} map of {len(proj)} dense vectors"
    if proj.centred:
        msg += ", each language's mean vector removed (so translations can meet)"
    msg += f", coloured by {color_by}"
    if session and session.get("query") and session.get("workspace") == ws.key:
        q_xy = proj.transform(dense_of(ws, [session["query"]]))
        q_text = [session["query"]]
        highlight_idx = [p for p in (ws.position(i) for i in session.get("doc_ids", [])) if p is not None]
        msg += f"; ★ = the query **{md_text(session['query'])}**, ringed = its results"
    else:
        msg += " (search to place a query in it)"
    focus_arg, links = None, None
    translations = translation_groups(ws)
    groups = translations if link_translations else []
    if focus and focus != NO_FOCUS:
        doc_id = focus[len(PASSAGE_FOCUS):] if focus.startswith(PASSAGE_FOCUS) else None
        pos = ws.position(doc_id) if doc_id is not None else None
        if pos is not None:
            group = next((g for g in translations if pos in g), [pos])
            focus_arg, groups = group, [g for g in groups if pos in g]
            msg += f"; highlighted: {md_text(doc_id)}" + (
                f" and its {len(group) - 1} translation(s)" if len(group) > 1 else "")
        elif focus in set(labels):
            focus_arg = focus
            msg += f"; highlighted: {color_by} {md_text(focus)} ({labels.count(focus)} documents)"
            if groups:
                members = {i for i, lab in enumerate(labels) if lab == focus}
                groups = [g for g in groups if members.intersection(g)]
    if link_translations:
        links = groups or None
        msg += (f"; lines join the {len(groups)} passage(s) with translations" if groups else
                "; this corpus links no translations (no topic shared across languages)")
    fig = plots.projection_scatter(proj.coords, labels, texts, query_coords=q_xy, query_texts=q_text,
                                   highlight=highlight_idx, legend_title=color_by, method=proj.method,
                                   focus=focus_arg, links=links)
    return ProjectionView(msg + ".", fig)


# ----------------------------------------------------------------------------- Compare

@dataclass
class CompareView:
    message: str
    scores: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["function", "score", "how"]))
    score_figure: go.Figure | None = None
    lexical_figure: go.Figure | None = None
    maxsim_figure: go.Figure | None = None
    values: dict[str, float] = field(default_factory=dict)
    unknown: UnknownShare | None = None  # text A's unk tokens


def compare(ws: Workspace, text_a: str, text_b: str, w_dense: float = 1.0, w_sparse: float = 0.3,
            w_colbert: float = 1.0) -> CompareView:
    """Score text A (as the query) against text B with the three functions and explain each score.

    The message ends with text A's :func:`vocabulary_note`; special tokens are marked in the figures.
    """
    text_a, text_b = (text_a or "").strip(), (text_b or "").strip()
    if not text_a or not text_b:
        blank = plots.empty_figure("enter two texts")
        return CompareView(_error("Enter both texts."), score_figure=blank, lexical_figure=blank, maxsim_figure=blank)
    too_long = [n for n, t in (("A", text_a), ("B", text_b)) if len(t) > 20 * MAX_QUERY_CHARS]
    if too_long:
        blank = plots.empty_figure("text too long")
        return CompareView(_error(f"Text {too_long[0]} is over {20 * MAX_QUERY_CHARS} characters."),
                           score_figure=blank, lexical_figure=blank, maxsim_figure=blank)
    weights = tuple(float(w or 0.0) for w in (w_dense, w_sparse, w_colbert))
    if not any(weights):
        blank = plots.empty_figure("all weights are 0")
        return CompareView(_error(_ALL_ZERO), score_figure=blank, lexical_figure=blank, maxsim_figure=blank)
    q, p = _encode_pair(ws, text_a, text_b)
    every = score_encoded(q, p, weights=(1.0, 1.0, 1.0))  # each function explained, whatever its weight
    match = lexical_match(ws.model, q, p)
    align = maxsim_alignment(ws.model, q, p)
    values = {"dense": float(every.dense[0, 0]), "sparse": float(every.sparse[0, 0]), "colbert": float(every.colbert[0, 0])}
    values["hybrid"] = float(scoring.combine_scores(values["dense"], values["sparse"], values["colbert"], weights))
    special = _flags(match.is_special, len(match.tokens))
    top_lex = ", ".join(f"{_badge(t, f)} ({c:.3f})" for t, f, c in
                        zip(match.tokens[:5], special[:5], match.contributions[:5])) or "none"
    pooled = "[CLS] vectors" if ws.model.pooling == "cls" else "mean-pooled vectors"
    rows = [["dense", round(values["dense"], 4), f"inner product of the two normalised {pooled}: <e_A, e_B>"],
            ["sparse (lexical)", round(values["sparse"], 4),
             f"Σ w_A·w_B over {len(match.tokens)} shared tokens; largest: {top_lex}"],
            ["multi-vector", round(values["colbert"], 4),
             f"mean over {len(align.query_tokens)} tokens of A of their best similarity in B (MaxSim)"],
            ["hybrid", round(values["hybrid"], 4),
             f"{weights[0]:g}·dense + {weights[1]:g}·sparse + {weights[2]:g}·multi-vector"]]
    msg = "Text A is scored as the query, text B as the passage."
    if not ws.model.heads_trained:
        msg += " ⚠️ Untrained heads: the sparse and multi-vector scores are not learned yet."
    if any(special) or any(_flags(align.query_is_special, len(align.query_tokens))) or \
            any(_flags(align.passage_is_special, len(align.passage_tokens))):
        msg += "\n\n" + SPECIAL_LEGEND
    vocab, unknown = _vocabulary(ws, text_a)
    return CompareView(_with_note(msg, vocab), pd.DataFrame(rows, columns=["function", "score", "how"]),
                       plots.score_bars(values, weights=weights), plots.lexical_contribution_bar(_plot_match(match)),
                       plots.maxsim_heatmap(_plot_alignment(align)), values, unknown)


# ----------------------------------------------------------------------------- Models (model vs model)

COMPARE_MODES = ("dense", "sparse", "multi-vector", "hybrid")  # BM25 does not depend on the model


@dataclass
class ModelsView:
    message: str
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    figure: go.Figure | None = None
    comparison: RankingComparison | None = None


def compare_models(state: AppState, model_a: str, model_b: str, query: str, mode: str = "hybrid",
                   w_dense: float = 1.0, w_sparse: float = 0.3, w_colbert: float = 1.0, top_k: int = 10,
                   key: str | None = None, progress: Progress = None, session: str | None = None) -> ModelsView:
    """Two models on the same query and the session's corpus: both rankings (each model's own
    :func:`search`), the rank changes (:func:`m3lab.evaluation.explore.compare_rankings`), and each
    function's score of every document either ranked, under both models.

    A model not loaded yet is loaded and indexes the corpus (cached on disk, cancellable like any build);
    the session's own workspace does not change.
    """
    current = state.get(key)
    names = [(model_a or "").strip() or current.model_name, (model_b or "").strip()]
    if not names[1]:
        return ModelsView(_error("Enter model B: `default`, `e5-small`, `minilm`, a local directory or a hub id."))
    if mode not in COMPARE_MODES:
        return ModelsView(_error(f"Compare models in one of {', '.join(COMPARE_MODES)} (BM25 is the same for "
                                 "every model)."))
    query = (query or "").strip()
    weights = tuple(float(w or 0.0) for w in (w_dense, w_sparse, w_colbert))
    problem = _bad_request(query, mode, weights)
    if problem:
        return ModelsView(_error(problem))
    spaces = []
    flag = state.begin_build(session)
    try:
        for name in names:
            if progress is not None:
                progress(0.0, desc=f"model {name}: loading it and its index of {current.corpus.name}")
            try:
                spaces.append(current if name == current.model_name else
                              state.workspace_for(name, current.corpus, current.spec, progress=progress, cancel=flag))
            except BuildCancelled as err:
                return ModelsView(f"Cancelled: {err}. Nothing was saved.")
            except Exception as err:  # noqa: BLE001 - whatever a checkpoint throws, the app keeps serving
                logger.warning("model %r failed to load: %s", name, err)
                return ModelsView(_error(f"Could not load model {md_text(name)}: {type(err).__name__}: "
                                         f"{md_text(_model_error(name, err))}."))
    finally:
        state.end_build(session, flag)
    top_k = _top_k(top_k, len(current.index))
    try:
        ranked = [_ranked(ws, query, mode, weights, top_k) for ws in spaces]  # (encoded query, top k) per model
    except ValueError as err:
        return ModelsView(_error(md_text(err)))
    ids = [[ws.documents[j].id for j, _ in kept] for ws, (_, kept) in zip(spaces, ranked)]
    comparison = compare_rankings(ids[0], ids[1], k=max(len(ids[0]), len(ids[1]), 1))
    union = [c.doc_id for c in comparison.changes]
    docs = [current.index.documents[current.position(d)] for d in union]
    # every function's score of each document of the union, under each model
    per_model = [ws.index.score_documents(q, [ws.position(d) for d in union]) for ws, (q, _) in zip(spaces, ranked)]
    rows = []
    for r, (c, doc) in enumerate(zip(comparison.changes, docs)):
        row = {"id": c.doc_id, "lang": doc.language or "", "rank A": c.rank_a, "rank B": c.rank_b,
               "change": ("new in B" if c.rank_a is None else "out of B" if c.rank_b is None else
                          "=" if c.moved == 0 else f"↑{c.moved}" if c.moved > 0 else f"↓{-c.moved}")}
        for m, comps in zip("AB", per_model):
            parts = {f: float(comps[f][r]) for f in ("dense", "sparse", "colbert")}
            row[f"score {m}"] = _fmt(scoring.combine_scores(parts["dense"], parts["sparse"], parts["colbert"], weights)
                                     if mode == "hybrid" else parts[MODES[mode]])
        for f in ("dense", "sparse", "colbert"):
            for m, comps in zip("AB", per_model):
                row[f"{f} {m}"] = _fmt(float(comps[f][r]))
        rows.append(row)
    table = pd.DataFrame(rows)
    rho = comparison.rank_correlation
    moved = sum(1 for c in comparison.changes if c.moved)
    message = (f"**{md_text(query)}** in **{mode}** mode on {md_text(current.corpus.name)}: A = "
               f"{md_code(names[0])}, B = {md_code(names[1])}. The top {comparison.k} share "
               f"{comparison.overlap:.0%}; {moved} shared document(s) changed rank"
               + (f", Spearman's ρ of the shared ranks {rho:.2f}" if rho is not None else "") + ".")
    for name, ws in zip(names, spaces):
        if not ws.model.heads_trained and mode != "dense":
            message += f" ⚠️ {md_code(name)} has untrained heads: only its dense scores are meaningful."
    figure = plots.rank_change_chart(comparison.changes, k=comparison.k, name_a=f"A: {names[0]}",
                                     name_b=f"B: {names[1]}",
                                     labels={d.id: _label(d) for d in docs})
    return ModelsView(message, table, figure, comparison)


# ----------------------------------------------------------------------------- Corpus and Model

@dataclass
class SwitchView:
    message: str
    header: str
    preview: pd.DataFrame
    groupings: list[str]
    key: str  # the workspace the calling session is on now (unchanged when the switch failed)


def corpus_preview(ws: Workspace, limit: int = 50) -> pd.DataFrame:
    rows = [[d.id, d.language or "", d.title or "", _snippet(d.text, 200)] for d in ws.documents[:limit]]
    return pd.DataFrame(rows, columns=["id", "lang", "title", "text"])


def _switched(state: AppState, message: str, key: str | None) -> SwitchView:
    ws = state.get(key)
    return SwitchView(message, ws.describe(), corpus_preview(ws), ws.corpus.groupings, ws.key)


def _swap_in(state: AppState, model, model_name: str, corpus, progress: Progress, spec: str,
             session: str | None = None) -> Workspace:
    """Build (or load from the cache) a workspace and keep it in the shared cache; only the calling
    session moves to it (its key goes back to that session). :func:`cancel_build` with the same
    ``session`` stops the build (:class:`BuildCancelled`)."""
    flag = state.begin_build(session)
    try:
        built = build_workspace(model, model_name, corpus, progress=progress, spec=spec, cancel=flag,
                                show_progress=False)
    finally:
        state.end_build(session, flag)
    _, ws = state.add(built)
    state.warm_up(ws.key)
    return ws


def _cancelled(state: AppState, err: BuildCancelled, what: str, key: str | None) -> SwitchView:
    return _switched(state, f"Cancelled: {err}. Nothing was saved; {what} is still loaded.", key)


def cancel_build(state: AppState, session: str | None) -> str:
    """Stop the calling session's running index build (the build reports it when it stops)."""
    if state.cancel(session):
        return "Cancelling: the build stops after the documents being encoded now; nothing will be saved."
    return "No indexing is running in this session."


def load_builtin_corpus(state: AppState, choice: str, progress: Progress = None, key: str | None = None,
                        session: str | None = None) -> SwitchView:
    """Index a built-in corpus with the session's model; on failure the session's corpus stays."""
    if not choice:
        return _switched(state, _error("Pick a data set first."), key)
    current = state.get(key)
    with state.switch_lock:
        try:
            corpus = load_builtin(choice)
            ws = _swap_in(state, current.model, current.model_name, corpus, progress, current.spec, session)
        except BuildCancelled as err:
            return _cancelled(state, err, "the previous corpus", key)
        except (DataError, OSError, ValueError) as err:
            return _switched(state, _error(f"Could not load {md_text(choice)}: {md_text(err)}. The previous corpus "
                                           "is still loaded."), key)
    return _switched(state, f"Loaded **{md_text(ws.corpus.name)}**: {len(ws.index)} documents "
                            f"({'index from cache' if ws.from_cache else 'index built'}).", ws.key)


def load_uploaded_corpus(state: AppState, file: str | Path | None, progress: Progress = None,
                         display_name: str | None = None, key: str | None = None,
                         session: str | None = None) -> SwitchView:
    """Index an uploaded file (limits: MAX_UPLOAD_BYTES, MAX_UPLOAD_DOCUMENTS) for the calling session; a
    bad file gives a message and nothing changes."""
    if not file:
        return _switched(state, _error("Choose a file to upload first."), key)
    path = Path(file)
    current = state.get(key)
    with state.switch_lock:
        try:
            corpus = upload_corpus(path, display_name=display_name or path.name,
                                   max_bytes=MAX_UPLOAD_BYTES, max_documents=MAX_UPLOAD_DOCUMENTS)
            ws = _swap_in(state, current.model, current.model_name, corpus, progress, current.spec, session)
        except BuildCancelled as err:
            return _cancelled(state, err, "the previous corpus", key)
        except (UploadError, DataError, OSError, ValueError, UnicodeError) as err:
            return _switched(state, _error(f"{md_text(err)}. The previous corpus is still loaded."), key)
    return _switched(state, f"Loaded **{md_text(ws.corpus.name)}**: {len(ws.index)} documents.", ws.key)


def apply_index_spec(state: AppState, spec: str, progress: Progress = None, key: str | None = None,
                     session: str | None = None) -> SwitchView:
    """Re-index the session's corpus with another index storage (:mod:`m3lab.retrieval.spec`); on
    failure the session's index stays."""
    spec = (spec or "").strip() or "default"
    current = state.get(key)
    with state.switch_lock:
        try:
            ws = _swap_in(state, current.model, current.model_name, current.corpus, progress, spec, session)
        except BuildCancelled as err:
            return _cancelled(state, err, "the previous index", key)
        except (DataError, OSError, ValueError) as err:
            return _switched(state, _error(f"Could not use index storage {md_text(spec)}: {md_text(err)}. The "
                                           "previous index is still loaded."), key)
    return _switched(state, f"Index storage **{md_text(spec)}**: {index_size(ws.index)} "
                            f"({'from cache' if ws.from_cache else 'built'}).", ws.key)


# ----------------------------------------------------------------------------- Evaluate

EVAL_MODES = {"dense": "dense", "sparse": "sparse", "colbert": "multi-vector", "hybrid": "hybrid", "bm25": "BM25"}


@dataclass
class EvaluateView:
    message: str
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    queries: pd.DataFrame = field(default_factory=pd.DataFrame)
    overlap_figure: go.Figure | None = None
    fusion_figure: go.Figure | None = None


def evaluate_view(ws: Workspace, choice: str, w_dense: float = 1.0, progress: Progress = None,
                  max_query_rows: int = 500, files: Sequence[str] | None = None,
                  names: Sequence[str] | None = None) -> EvaluateView:
    """Score a data set with questions (its own index, built with the session's model and cached) in
    every mode, per language and per query, and sweep the hybrid weights
    (:mod:`m3lab.evaluation.explore`; this only lays the results out).

    ``files`` (uploaded; ``names`` as the user knows them) replace ``choice``: a BEIR folder as .zip, or
    queries, qrels and optionally a corpus (:func:`app.corpora.upload_evaluation`; without a corpus
    the session's is judged)."""
    try:
        if files:
            dataset = upload_evaluation(files, corpus=ws.documents, names=names)
            choice = dataset.name
        else:
            dataset = load_evaluation_dataset(choice)
    except (DataError, OSError, ValueError) as err:
        what = ", ".join(names or []) if files else choice
        return EvaluateView(_error(f"Could not load {md_text(what)}: {md_text(err)}."))
    w_dense = float(w_dense if w_dense is not None else 1.0)
    if progress is not None:
        progress(0.05, desc=f"indexing {len(dataset.corpus)} documents")
    # the data set's own index (float32, exact scores), cached on disk like any other
    eval_ws = build_workspace(ws.model, ws.model_name, Corpus(dataset.name, dataset.corpus), spec="exact",
                              progress=progress, show_progress=False)
    if progress is not None:
        progress(0.5, desc=f"ranking {len(dataset.queries)} questions in every mode")
    with MODEL_LOCK:  # the model's tokenizer is not thread-safe; this encodes every question
        report = explore_retrieval(eval_ws.index, dataset, list(EVAL_MODES))
        sweep = fusion_sweep(eval_ws.index, dataset, w_dense=w_dense)
    table = pd.DataFrame([[r["language"], EVAL_MODES[r["mode"]], r["n_queries"]] +
                          [round(100 * r[m], 2) for m in ("ndcg@10", "mrr@10", "recall@10", "recall@100")]
                          for r in report.table],
                         columns=["language", "mode", "queries", "nDCG@10", "MRR@10", "R@10", "R@100"])
    ranks = report.gold_ranks
    queries = pd.DataFrame([[r["query_id"], r["language"], _snippet(r["query"], 120)] +
                            ["—" if r[m] is None else r[m] for m in EVAL_MODES] for r in ranks[:max_query_rows]],
                           columns=["query", "lang", "text"] + [f"rank: {v}" for v in EVAL_MODES.values()])
    w_s, w_c, best = sweep.best
    hybrid_all = [r for r in report.table if r["mode"] == "hybrid"][-1]  # the "all languages" row comes last
    message = (f"**{md_text(choice)}**: {len(ranks)} questions, {len(dataset.corpus)} documents, "
               f"model {md_code(ws.model_name)}. Hybrid (1, 0.3, 1): nDCG@10 {100 * hybrid_all['ndcg@10']:.2f}; "
               f"best of the sweep at w₁ = {w_dense:g}: w₂ sparse = {w_s:g}, w₃ multi-vector = {w_c:g}, "
               f"nDCG@10 {100 * best:.2f}. Ranks of each question's relevant passage"
               + (f" (first {max_query_rows} questions)" if len(ranks) > max_query_rows else "") + " below; "
               "— = not in the top 100.")
    return EvaluateView(message, table, queries,
                        plots.overlap_heatmap(list(EVAL_MODES), report.overlap(10), k=10),
                        plots.fusion_heatmap(sweep.w_sparse, sweep.w_colbert, sweep.ndcg, w_dense=w_dense))


def index_spec_table(ws: Workspace) -> pd.DataFrame:
    """The current index's storage, per function: what is stored and its bytes per document."""
    info = ws.index.info()
    rows = [["spec", describe_spec(ws.index.settings)], ["documents", f"{info['documents']:,}"]]
    rows += [[f"{k} bytes / document", f"{v:,.0f}"] for k, v in info["bytes_per_document"].items()]
    if "vectors_per_document" in info:
        rows.append(["multi-vectors / document", f"{info['vectors_per_document']:.1f}"])
    rows.append(["total", index_size(ws.index)])
    return pd.DataFrame(rows, columns=["property", "value"])


def load_model_view(state: AppState, name: str, progress: Progress = None, key: str | None = None,
                    session: str | None = None) -> SwitchView:
    """Load a model (``default``, a local directory or a hub id) and index the session's corpus with it.

    Any failure (unknown name, offline hub, broken checkpoint) leaves the session's model serving.
    """
    name = (name or "").strip()
    if not name:
        return _switched(state, _error("Enter a model: `default`, a local directory or a hub id."), key)
    current = state.get(key)
    with state.switch_lock:
        try:
            if progress is not None:
                progress(0.0, desc=f"loading model {name}")
            model = state.model(name)
            ws = _swap_in(state, model, name, current.corpus, progress, current.spec, session)
        except BuildCancelled as err:
            return _cancelled(state, err, f"the model {md_code(current.model_name)}", key)
        except Exception as err:  # noqa: BLE001 - whatever a checkpoint throws, the app keeps serving
            logger.warning("model %r failed to load: %s", name, err)
            return _switched(state, _error(f"Could not load model {md_text(name)}: {type(err).__name__}: "
                                           f"{md_text(_model_error(name, err))}. Still serving "
                                           f"{md_code(current.model_name)}."), key)
    return _switched(state, f"Loaded model **{md_text(name)}**" + ("" if ws.model.heads_trained else
                                                                     " (⚠️ untrained heads)") + ".", ws.key)


def _model_error(name: str, err: Exception) -> str:
    """What went wrong loading ``name``, in the user's terms: a path that does not exist is said so
    (not as the hub's complaint about repo ids)."""
    looks_local = name.startswith((".", os.sep, "~")) or name.count("/") > 1  # a hub id is "org/name"
    if looks_local and not Path(name).expanduser().exists():
        return f"no such local directory: {name}"
    return str(err)


def model_info(ws: Workspace) -> pd.DataFrame:
    m = ws.model
    rows = [["name", ws.model_name], ["path", resolve_model_path(m.name_or_path)], ["hidden size", m.hidden_size],
            ["pooling", m.pooling], ["vocabulary", m.vocab_size], ["max positions", m.max_positions],
            ["heads", m.heads_origin if m.heads_trained else f"untrained (W_mul = identity, W_lex random): {m.heads_origin}"],
            ["index fingerprint", ws.key], ["index", "loaded from cache" if ws.from_cache else "built"],
            ["cache", str(ws.cache_dir) if ws.cache_dir else "(not cached)"]]
    return pd.DataFrame([[k, str(v)] for k, v in rows], columns=["property", "value"])
