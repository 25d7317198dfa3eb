"""Token-level views of the three scores, shared by the app, the notebooks and users' own analysis.

Every number here is a term of a formula computed in :mod:`m3lab.scoring`: the lexical
contributions sum to s_lex, the MaxSim contributions sum to s_mul.

Token records flag the tokenizer's special tokens (``is_special``: ``<s>``, ``</s>``, ``<pad>``,
``<unk>``, ``[CLS]``, ``[SEP]``, ...), and :func:`unknown_token_share` says how much of a text the
vocabulary does not cover (its ``<unk>`` tokens), so a view can tell a word from a marker.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ..modeling import EncodeOutput, M3Model


def _tokenizer(model_or_tokenizer: M3Model | Any) -> Any:
    return model_or_tokenizer.tokenizer if isinstance(model_or_tokenizer, M3Model) else model_or_tokenizer


def special_token_ids(model_or_tokenizer: M3Model | Any) -> frozenset[int]:
    """The ids of the tokenizer's special tokens: its ``all_special_ids`` (``<s>``, ``</s>``, ``<pad>``,
    ``<unk>``, ``<mask>``, ``[CLS]``, ``[SEP]``, ...), or for a tokenizer without that list its
    ``bos/eos/cls/sep/pad/unk/mask_token_id`` attributes."""
    tok = _tokenizer(model_or_tokenizer)
    ids = getattr(tok, "all_special_ids", None)
    if ids is None:
        ids = [getattr(tok, f"{n}_token_id", None) for n in ("bos", "eos", "cls", "sep", "pad", "unk", "mask")]
    return frozenset(int(i) for i in ids if i is not None)


class UnknownShare(NamedTuple):
    """How much of a text the vocabulary misses: ``n_unknown`` of its ``n_tokens`` content tokens are
    the unk token; ``share`` = n_unknown / n_tokens (0.0 for a text without content tokens)."""

    share: float
    n_unknown: int
    n_tokens: int


def _content_tokens(tok: Any, text: str) -> tuple[list[int], list[tuple[int, int]] | None, int | None]:
    """The text's token ids without special tokens (the unk token kept), their character offsets
    (``None`` without a fast tokenizer), and the unk id."""
    unk = getattr(tok, "unk_token_id", None)
    fast = bool(getattr(tok, "is_fast", False))
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=fast)
    ids = [int(i) for i in enc["input_ids"]]
    offsets = [tuple(o) for o in enc["offset_mapping"]] if fast else None
    # text can spell a special token ("<s>", "[SEP]"): the tokenizer maps it to that id; it is no content
    specials = special_token_ids(tok) - {unk}
    keep = [k for k, i in enumerate(ids) if i not in specials]
    return [ids[k] for k in keep], ([offsets[k] for k in keep] if offsets is not None else None), unk


def unknown_token_share(model_or_tokenizer: M3Model | Any, text: str) -> UnknownShare:
    """The share of ``text``'s content tokens (special tokens excluded) that are the tokenizer's unk token.

    The text is tokenized as typed: without the model's query prompt and without truncation.
    A high share means the vocabulary does not cover the text's language or script, so every
    score of it compares mostly ``<unk>`` vectors. The count is in tokens, not characters:
    WordPiece maps a whole unknown word to one ``[UNK]``, SentencePiece a run of unknown
    characters to one ``<unk>``. A tokenizer without an unk token gives 0 unknown tokens.
    """
    ids, _, unk = _content_tokens(_tokenizer(model_or_tokenizer), text)
    n_unknown = sum(i == unk for i in ids) if unk is not None else 0
    return UnknownShare(n_unknown / len(ids) if ids else 0.0, n_unknown, len(ids))


def unknown_pieces(model_or_tokenizer: M3Model | Any, text: str) -> list[str]:
    """The pieces of ``text`` that became the unk token, in order (repeats kept), as in
    :func:`unknown_token_share`; empty without a fast tokenizer (no character offsets)."""
    ids, offsets, unk = _content_tokens(_tokenizer(model_or_tokenizer), text)
    if unk is None or offsets is None:
        return []
    return [text[s:e] for i, (s, e) in zip(ids, offsets) if i == unk and e > s]


@dataclass
class TokenWeight:
    """A token's lexical weight w_t; ``is_special``: one of the tokenizer's special tokens."""

    token_id: int
    token: str
    weight: float
    is_special: bool = False


def token_weights(model: M3Model, encoded: EncodeOutput, i: int = 0) -> list[TokenWeight]:
    """Text ``i``'s lexical weights with their token strings, heaviest first, special tokens flagged."""
    if encoded.sparse is None:
        raise ValueError("encode with return_sparse=True to inspect token weights")
    items = sorted(encoded.sparse[i].items(), key=lambda kv: -kv[1])
    tokens = model.tokenizer.convert_ids_to_tokens([t for t, _ in items])
    special = special_token_ids(model)
    return [TokenWeight(t, s, float(w), t in special) for (t, w), s in zip(items, tokens)]


@dataclass
class LexicalMatch:
    """The shared tokens of a pair and their terms w_qt * w_pt; ``total`` is s_lex.
    ``is_special[k]``: token k is one of the tokenizer's special tokens."""

    tokens: list[str]
    token_ids: list[int]
    query_weights: np.ndarray
    passage_weights: np.ndarray
    contributions: np.ndarray
    total: float
    is_special: list[bool] = field(default_factory=list)


def lexical_match(model: M3Model, query: EncodeOutput, passage: EncodeOutput, qi: int = 0, pi: int = 0) -> LexicalMatch:
    """Which tokens the query and passage share, and how much each adds to s_lex (section 3.2)."""
    if query.sparse is None or passage.sparse is None:
        raise ValueError("encode with return_sparse=True to inspect lexical matches")
    qw, pw = query.sparse[qi], passage.sparse[pi]
    shared = [t for t in qw if t in pw]
    q = np.array([qw[t] for t in shared], dtype=np.float32)
    p = np.array([pw[t] for t in shared], dtype=np.float32)
    contrib = q * p
    order = np.argsort(-contrib, kind="stable")
    ids = [shared[k] for k in order]
    special = special_token_ids(model)
    return LexicalMatch(tokens=model.tokenizer.convert_ids_to_tokens(ids), token_ids=ids,
                        query_weights=q[order], passage_weights=p[order], contributions=contrib[order],
                        total=float(contrib.sum()), is_special=[t in special for t in ids])


@dataclass
class MaxSimAlignment:
    """The MaxSim of one pair: ``similarity`` (query tokens x passage tokens), each query token's
    ``best`` passage token, and its ``contributions`` max_j sim / N, which sum to ``total`` = s_mul.
    ``query_is_special`` / ``passage_is_special`` flag the tokenizer's special tokens (MaxSim keeps
    them: every vector but the first, so a query token can match a passage's ``</s>``)."""

    query_tokens: list[str]
    passage_tokens: list[str]
    similarity: np.ndarray
    best: np.ndarray
    contributions: np.ndarray
    total: float
    query_is_special: list[bool] = field(default_factory=list)
    passage_is_special: list[bool] = field(default_factory=list)


def maxsim_alignment(model: M3Model, query: EncodeOutput, passage: EncodeOutput, qi: int = 0, pi: int = 0) -> MaxSimAlignment:
    """Each query vector's best-matching passage vector (the MaxSim of section 3.2), with token strings."""
    if query.colbert is None or passage.colbert is None:
        raise ValueError("encode with return_colbert=True to inspect MaxSim alignments")
    from ..scoring import colbert_scores, pad_vectors

    q, p = query.colbert[qi], passage.colbert[pi]
    sim = q @ p.T
    best = sim.argmax(axis=1) if sim.size else np.zeros(len(q), dtype=int)
    contributions = (sim.max(axis=1) if sim.size else np.zeros(len(q))) / max(len(q), 1)
    # the total comes from the one s_mul implementation, so the view can never drift from the score
    qp, qm = pad_vectors([q])
    pp, pm = pad_vectors([p])
    total = float(colbert_scores(qp, qm, pp, pm)[0, 0])
    tok = model.tokenizer.convert_ids_to_tokens
    q_ids, p_ids = query.colbert_token_ids[qi].tolist(), passage.colbert_token_ids[pi].tolist()
    special = special_token_ids(model)
    return MaxSimAlignment(query_tokens=tok(q_ids), passage_tokens=tok(p_ids),
                           similarity=sim, best=best, contributions=contributions.astype(np.float32), total=total,
                           query_is_special=[t in special for t in q_ids],
                           passage_is_special=[t in special for t in p_ids])


def picked_columns(alignment: MaxSimAlignment, context: int = 0) -> np.ndarray:
    """The passage columns some query token picked (``alignment.best``), each with ``context``
    neighbours on either side: sorted, unique, within the passage.

    Cropping a MaxSim view to these columns hides only columns no query token picked, so every
    row's maximum, and with it every contribution and s_mul, is unchanged.
    """
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    n_p = len(alignment.passage_tokens)
    best = np.asarray(alignment.best, dtype=np.int64).reshape(-1)
    if not n_p or not best.size:
        return np.zeros(0, dtype=np.int64)
    cols = (best[:, None] + np.arange(-context, context + 1)[None]).reshape(-1)
    return np.unique(cols[(cols >= 0) & (cols < n_p)])


class MaxSimSpan(NamedTuple):
    """A piece of a passage for the MaxSim text view.

    ``text``: the piece as it stands in the passage (or, for ``kind="special"``, the token string);
    ``picked``: the (query token index, similarity) pairs whose best match lies in it, strongest first;
    ``columns``: the passage columns (MaxSim vectors) covering it, empty for text between tokens;
    ``kind``: ``"text"`` (passage text), ``"truncated"`` (text past the last encoded token: no vector)
    or ``"special"`` (a picked vector without passage text: a special token such as ``</s>``, a prompt
    token, or a token without characters; listed after the text).
    """

    text: str
    picked: list[tuple[int, float]]
    columns: tuple[int, ...] = ()
    kind: str = "text"


def _picks_by_column(alignment: MaxSimAlignment) -> dict[int, list[tuple[int, float]]]:
    sim = np.asarray(alignment.similarity)
    picks: dict[int, list[tuple[int, float]]] = {}
    for i, j in enumerate(np.asarray(alignment.best).tolist()):
        if sim.size:
            picks.setdefault(int(j), []).append((i, float(sim[i, j])))
    return picks


def _strongest(picks: list[tuple[int, float]]) -> list[tuple[int, float]]:
    return sorted(picks, key=lambda p: (-p[1], p[0]))


def maxsim_passage_spans(model_or_tokenizer: M3Model | Any, alignment: MaxSimAlignment, passage_text: str, *,
                         prompt: str | None = None) -> list[MaxSimSpan]:
    """``passage_text`` cut into :class:`MaxSimSpan` pieces, each passage vector's characters carrying the
    query tokens that picked it (the ColBERT-style view of MaxSim), from a fast tokenizer's offsets.

    The passage's multi-vector tokens (every token but the first) are matched in order to the text's
    tokens, so truncation and MCLS's inserted [CLS] (no vectors) need no settings; ``prompt`` is the
    text the passage was encoded behind (default: a model's ``prompts["passage"]``, as
    :meth:`M3Model.encode_corpus` encodes it; pass ``""`` for :meth:`M3Model.encode`). The text and
    truncated pieces concatenate back to ``passage_text``; picked vectors without passage text follow
    as ``"special"`` pieces. Without a fast tokenizer (no offsets) the pieces are the token strings,
    each followed by a space. Raises ``ValueError`` if the text does not give the alignment's tokens.
    """
    tok = _tokenizer(model_or_tokenizer)
    if prompt is None:
        prompt = model_or_tokenizer.prompts.get("passage", "") if isinstance(model_or_tokenizer, M3Model) else ""
    a = alignment
    picks = _picks_by_column(a)
    special = list(a.passage_is_special) if len(a.passage_is_special) == len(a.passage_tokens) \
        else [False] * len(a.passage_tokens)
    extras = [MaxSimSpan(a.passage_tokens[j], _strongest(picks[j]), (j,), "special") for j in sorted(picks)]
    if not getattr(tok, "is_fast", False):
        out: list[MaxSimSpan] = []
        for j, t in enumerate(a.passage_tokens):
            if special[j]:
                continue
            out += [MaxSimSpan(t, _strongest(picks.get(j, [])), (j,)), MaxSimSpan(" ", [])]
        return out + [s for s in extras if special[s.columns[0]]]

    full = prompt + passage_text
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = [int(i) for i in enc["input_ids"]]
    strings = tok.convert_ids_to_tokens(ids)
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    base = len(prompt)
    # walk the vectors in order: a vector is the text's next token, or a token the tokenizer added
    spans: dict[int, tuple[int, int]] = {}   # column -> character span in passage_text
    k = 0
    for j, t in enumerate(a.passage_tokens):
        if k < len(ids) and strings[k] == t:
            s, e = offsets[k]
            s, e = max(s - base, 0), e - base
            if e > s:
                spans[j] = (s, e)
            k += 1
        elif not special[j]:
            raise ValueError(f"passage token {j} ({t!r}) is not the text's next token "
                             f"({strings[k] if k < len(strings) else 'none'!r}): was the alignment made from this "
                             f"passage{' behind the prompt ' + repr(prompt) if prompt else ''}?")
    # tokens left over were cut by truncation: their text has no vector
    cut = next((offsets[m][0] - base for m in range(k, len(ids)) if offsets[m][1] > offsets[m][0]), None)
    end_encoded = len(passage_text) if cut is None else max(cut, max((e for _, e in spans.values()), default=0))

    # elementary pieces between all token boundaries: overlapping offsets share their pieces
    cuts = sorted({0, end_encoded, len(passage_text)} | {c for se in spans.values() for c in se})
    at = {c: k for k, c in enumerate(cuts)}
    covering: list[list[int]] = [[] for _ in cuts]
    for j, (s, e) in spans.items():
        for k in range(at[s], at[e]):
            covering[k].append(j)
    out = []
    for k, (s, e) in enumerate(zip(cuts, cuts[1:])):
        cols = tuple(covering[k])
        found = [p for j in cols for p in picks.get(j, [])]
        kind = "truncated" if s >= end_encoded else "text"
        prev = out[-1] if out else None
        if prev is not None and not cols and not prev.columns and prev.kind == kind:
            out[-1] = prev._replace(text=prev.text + passage_text[s:e])
        else:
            out.append(MaxSimSpan(passage_text[s:e], _strongest(found), cols, kind))
    return out + [s for s in extras if s.columns[0] not in spans]
