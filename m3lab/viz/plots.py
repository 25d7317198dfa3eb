"""Plotly figures of M3's scores, shared by the app and the notebooks.

Every builder returns a ``plotly.graph_objects.Figure`` and only draws numbers it is given:
the token weights, lexical matches and MaxSim alignments of :mod:`m3lab.viz.inspect`, score
tables, projections (:mod:`m3lab.viz.projection`) and training logs.
"""
from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .inspect import LexicalMatch, MaxSimAlignment, MaxSimSpan, TokenWeight

#: one colour per retrieval function, used by every figure
COLORS = {"dense": "#4C78A8", "sparse": "#F58518", "colbert": "#54A24B", "hybrid": "#B279A2", "query": "#E45756"}
NAMES = {"dense": "dense", "sparse": "sparse (lexical)", "colbert": "multi-vector", "hybrid": "hybrid"}
_PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC",
            "#EECA3B", "#1F77B4", "#8C564B", "#17BECF", "#BCBD22", "#7F7F7F", "#D62728")


def _layout(fig: go.Figure, title: str | None, height: int | None = None, **kw) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.01, xanchor="left") if title else None, template="plotly_white",
                      margin=dict(l=10, r=10, t=50 if title else 20, b=10), height=height, **kw)
    return fig


def empty_figure(message: str, height: int = 300) -> go.Figure:
    """A blank figure that shows ``message`` (for views with nothing to draw yet)."""
    fig = go.Figure()
    fig.add_annotation(text=html.escape(message), x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=14, color="#666"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, None, height)


# ----------------------------------------------------------------------------- lexical (sparse) weights

def token_weight_bar(weights: Sequence[TokenWeight] | Mapping[str, float], *, top: int = 30,
                     title: str | None = "Lexical token weights w_t", color: str = COLORS["sparse"],
                     exclude_special: bool = False) -> go.Figure:
    """Horizontal bars of the ``top`` heaviest lexical weights w_t = ReLU(W_lex^T H[t]) (section 3.2).

    ``weights``: :func:`m3lab.viz.inspect.token_weights` output or a ``{token: weight}`` mapping.
    ``exclude_special`` leaves out the special tokens (``TokenWeight.is_special``; a mapping has no
    flags, so it cannot), and the title says how many and their total weight.
    """
    if isinstance(weights, Mapping):
        if exclude_special:
            raise ValueError("exclude_special needs TokenWeight records (a mapping does not flag special tokens)")
        items = list(weights.items())
    else:
        items = [(w.token, w.weight) for w in weights if not (exclude_special and w.is_special)]
        if exclude_special:
            dropped = [w.weight for w in weights if w.is_special]
            title = _with_note(title, f"{len(dropped)} special token{'s' * (len(dropped) != 1)} excluded, "
                                      f"total weight {sum(dropped):.4f}")
    items = sorted(items, key=lambda kv: -kv[1])[:top]
    if not items:
        return empty_figure("no token has a positive weight" + " (special tokens excluded)" * exclude_special)
    tokens, values = zip(*items)
    fig = go.Figure(go.Bar(x=list(values)[::-1], y=_unique_labels(tokens)[::-1], orientation="h",
                           marker_color=color, hovertemplate="%{y}: %{x:.4f}<extra></extra>"))
    fig.update_xaxes(title="weight")
    fig.update_yaxes(tickmode="linear", automargin=True)  # every token labelled
    return _layout(fig, title, height=max(220, 22 * len(items) + 80))


def lexical_contribution_bar(match: LexicalMatch, *, top: int = 30, title: str | None = None,
                             exclude_special: bool = False) -> go.Figure:
    """The shared tokens of a pair and their terms w_qt * w_pt, which sum to s_lex (section 3.2).

    The hover shows both weights; the title the total s_lex of *all* shared tokens (bars beyond
    ``top`` are summed into one "other" bar so the bars always add up to it). ``exclude_special``
    leaves out the special tokens (``LexicalMatch.is_special``); the title then says how many and
    what they add, so the bars plus that still make s_lex.
    """
    title = title if title is not None else f"Shared tokens: contributions w_q·w_p sum to s_lex = {match.total:.4f}"
    tokens = _unique_labels(match.tokens)
    q, p, c = (np.asarray(a, dtype=float) for a in (match.query_weights, match.passage_weights, match.contributions))
    rows = list(zip(tokens, q, p, c))
    if exclude_special:
        flags = [bool(f) for f in match.is_special] if len(match.is_special) == len(rows) else [False] * len(rows)
        dropped = [r[3] for r, f in zip(rows, flags) if f]
        rows = [r for r, f in zip(rows, flags) if not f]
        title = _with_note(title, f"{len(dropped)} special token{'s' * (len(dropped) != 1)} excluded, adding "
                                  f"{sum(dropped):.4f}: the bars sum to {match.total - sum(dropped):.4f}")
    if not rows:
        return empty_figure(f"no shared token with a positive weight{' (special tokens excluded)' * exclude_special}: "
                            f"s_lex = {match.total:.4f}")
    if len(rows) > top:
        rest = rows[top - 1:]
        rows = rows[: top - 1] + [(f"({len(rest)} other tokens)", math.nan, math.nan, float(sum(r[3] for r in rest)))]
    labels, qw, pw, contrib = zip(*rows)
    custom = np.stack([qw, pw], axis=1)
    fig = go.Figure(go.Bar(x=list(contrib)[::-1], y=list(labels)[::-1], orientation="h", marker_color=COLORS["sparse"],
                           customdata=custom[::-1],
                           hovertemplate="%{y}: w_q=%{customdata[0]:.4f} × w_p=%{customdata[1]:.4f} = %{x:.4f}"
                                         "<extra></extra>"))
    fig.update_xaxes(title="w_q · w_p")
    fig.update_yaxes(tickmode="linear", automargin=True)
    return _layout(fig, title, height=max(220, 22 * len(rows) + 80))


def _with_note(title: str | None, note: str) -> str:
    """``title`` with a note after it (the note alone without a title)."""
    return f"{title} ({note})" if title else note


def weighted_spans(text: str, offsets: Sequence[tuple[int, int]], weights: Sequence[float], *,
                   normalize: bool = True) -> list[tuple[str, float | None]]:
    """Split ``text`` into (piece, weight) spans for highlighting (e.g. ``gradio.HighlightedText``).

    ``offsets`` are the character spans of the tokens (a fast tokenizer's ``offset_mapping``)
    and ``weights`` their weights; text between tokens gets ``None``. Overlapping sub-tokens
    of one span keep the largest weight. With ``normalize`` weights are divided by the
    largest, so they lie in [0, 1].
    """
    spans: dict[tuple[int, int], float] = {}
    for (start, end), w in zip(offsets, weights):
        if end > start:
            spans[(start, end)] = max(float(w), spans.get((start, end), 0.0))
    top = max(spans.values(), default=0.0)
    scale = top if normalize and top > 0 else 1.0
    out: list[tuple[str, float | None]] = []
    pos = 0
    for (start, end), w in sorted(spans.items()):
        if start < pos:  # overlapping offsets (rare): skip the overlap
            start = pos
            if start >= end:
                continue
        if start > pos:
            out.append((text[pos:start], None))
        out.append((text[start:end], round(w / scale, 4) if w > 0 else None))
        pos = end
    if pos < len(text):
        out.append((text[pos:], None))
    return out


def weighted_text_html(spans: Sequence[tuple[str, float | None]], color: str = "245,133,24") -> str:
    """HTML of :func:`weighted_spans`: each token's background opacity is its weight (for notebooks)."""
    parts = []
    for piece, w in spans:
        piece = html.escape(piece)
        if w:
            parts.append(f'<span style="background: rgba({color},{min(max(w, 0.0), 1.0):.3f}); border-radius: 3px" '
                         f'title="{w:.3f}">{piece}</span>')
        else:
            parts.append(piece)
    return '<div style="line-height: 1.9">' + "".join(parts) + "</div>"


# ----------------------------------------------------------------------------- multi-vector (MaxSim)

def maxsim_heatmap(alignment: MaxSimAlignment, *, columns: Sequence[int] | np.ndarray | None = None,
                   max_passage_tokens: int | None = 160, title: str | None = None) -> go.Figure:
    """Query tokens × passage tokens similarities <E_q[i], E_p[j]>, each row's best match marked,
    and beside it each query token's contribution max_j sim / N; they sum to s_mul (section 3.2).

    ``columns`` (passage column indices, e.g. :func:`m3lab.viz.inspect.picked_columns`) crops the
    heatmap to them plus every best match; without it all columns are drawn, or for passages longer
    than ``max_passage_tokens`` the first ones plus every best match. The contributions and the
    title always use all columns. Every drawn column is labelled (the figure widens beyond ~60);
    a "…" label and a dotted line mark where columns were left out.
    """
    a = alignment
    title = title if title is not None else f"MaxSim: contributions max_j sim / N sum to s_mul = {a.total:.4f}"
    if not len(a.query_tokens) or not len(a.passage_tokens):
        return empty_figure("nothing to align (an empty query or passage)")
    n_p = len(a.passage_tokens)
    best = np.asarray(a.best, dtype=np.int64)
    if columns is not None:
        cols = np.asarray(columns, dtype=np.int64).reshape(-1)
        if cols.size and (cols.min() < 0 or cols.max() >= n_p):
            raise ValueError(f"columns must lie in [0, {n_p}), got {cols.min()}..{cols.max()}")
        cols = np.union1d(cols, best)
    elif max_passage_tokens is not None and n_p > max_passage_tokens:
        cols = np.union1d(np.arange(max_passage_tokens), best)
    else:
        cols = np.arange(n_p)
    # a column after a gap (or the first, if the passage starts later) is labelled "…j:token"
    gap = np.diff(np.concatenate([[-1], cols])) > 1
    labels = {int(j): f"{'…' if g else ''}{j}:{token_label(a.passage_tokens[j])}" for j, g in zip(cols, gap)}
    x_labels = [labels[int(j)] for j in cols]
    y_labels = [f"{i}:{token_label(t)}" for i, t in enumerate(a.query_tokens)]
    sim = np.asarray(a.similarity)[:, cols]
    n = len(cols)
    heat_px = max(14 * n, 560)  # ~14 px per label at a 9 px font, tilted
    shown = f" ({n} of {n_p} passage tokens)" if n < n_p else ""
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, column_widths=[heat_px, 180], horizontal_spacing=0.02,
                        subplot_titles=(f"similarity of query and passage vectors{shown}", "contribution"))
    fig.add_trace(go.Heatmap(z=sim, x=x_labels, y=y_labels, colorscale="Viridis", zmin=float(min(0.0, sim.min())),
                             zmax=1.0, colorbar=dict(title="sim", x=1.0, xanchor="left", len=0.9, thickness=12),
                             hovertemplate="query %{y}<br>passage %{x}<br>sim %{z:.3f}<extra></extra>"), row=1, col=1)
    best_x = [labels[int(j)] for j in best]
    fig.add_trace(go.Scatter(x=best_x, y=y_labels, mode="markers", name="best match",
                             marker=dict(symbol="square-open", size=11, color="#E45756", line=dict(width=2)),
                             hovertemplate="best match of %{y}: %{x}<extra></extra>"), row=1, col=1)
    contrib = np.asarray(a.contributions, dtype=float)
    fig.add_trace(go.Bar(x=contrib, y=y_labels, orientation="h", marker_color=COLORS["colbert"], name="contribution",
                         hovertemplate="%{y}: %{x:.4f}<extra></extra>"), row=1, col=2)
    for k in np.flatnonzero(gap[1:]) + 1:  # between the kept columns k-1 and k (category positions)
        fig.add_shape(type="line", x0=k - 0.5, x1=k - 0.5, y0=0, y1=1, xref="x", yref="y domain",
                      line=dict(color="white", width=2, dash="dot"))
    fig.update_yaxes(autorange="reversed", tickmode="linear", automargin=True, row=1, col=1)
    fig.update_xaxes(tickmode="linear", tick0=0, dtick=1, tickangle=-60, automargin=True,
                     tickfont=dict(size=9 if n > 40 else 10), row=1, col=1)
    fig.update_layout(showlegend=False, width=None if n <= 60 else heat_px + 180 + 260)
    return _layout(fig, title, height=max(320, 20 * len(y_labels) + 200))


def maxsim_text_html(spans: Sequence[MaxSimSpan], query_tokens: Sequence[str], *,
                     query_is_special: Sequence[bool] = ()) -> str:
    """HTML of :func:`m3lab.viz.inspect.maxsim_passage_spans`: the passage with each query token's best
    match marked in that query token's colour (the strongest one where several picked a piece), its
    title naming who picked it, picked special tokens as "(special)" badges after the text, and a
    legend of the query tokens. All text is escaped, also against Markdown, so it shows as typed.
    """
    color = [_PALETTE[i % len(_PALETTE)] for i in range(len(query_tokens))]
    special = list(query_is_special) if len(query_is_special) == len(query_tokens) else [False] * len(query_tokens)

    def who(picked: Sequence[tuple[int, float]]) -> str:
        return "picked by " + ", ".join(f"'{query_tokens[i]}' (sim {s:.2f})" for i, s in picked)

    def mark(piece: str, picked: Sequence[tuple[int, float]], extra: str = "") -> str:
        c = color[picked[0][0]]
        return (f'<mark style="background: {_rgba(c, 0.35)}; border-bottom: 2px solid {c}; padding: 0 1px; '
                f'border-radius: 3px" title="{html.escape(who(picked))}">{_html_text(piece)}{extra}</mark>')

    parts, badges = [], []
    for sp in spans:
        if sp.kind == "special":
            if sp.picked:
                badges.append(mark(sp.text, sp.picked, " (special)"))
        elif sp.picked:
            parts.append(mark(sp.text, sp.picked))
        elif sp.kind == "truncated":
            parts.append(f'<span style="color: #999" title="not encoded: past the maximum length">'
                         f'{_html_text(sp.text)}</span>')
        else:
            parts.append(_html_text(sp.text))
    body = '<div style="line-height: 1.9; white-space: pre-wrap">' + "".join(parts) + "</div>"
    if badges:
        body += '<div style="margin-top: 4px">also picked: ' + " ".join(badges) + "</div>"
    legend = " ".join(
        f'<span style="background: {_rgba(c, 0.35)}; border-bottom: 2px solid {c}; padding: 0 3px; '
        f'border-radius: 3px; font-size: 0.85em">{i}:{_html_text(t)}{" (special)" if special[i] else ""}</span>'
        for i, (t, c) in enumerate(zip(query_tokens, color)))
    return body + f'<div style="margin-top: 6px; font-size: 0.9em">query tokens: {legend}</div>'


# ----------------------------------------------------------------------------- scores

def score_bars(scores: Mapping[str, float | None], *, weights: Sequence[float] | None = None,
               title: str | None = "Scores of the pair") -> go.Figure:
    """Bars of one pair's scores: ``{"dense": ..., "sparse": ..., "colbert": ..., "hybrid": ...}``.

    With ``weights`` = (w1, w2, w3) the hybrid bar is stacked from its terms w·s, so its
    height is s_rank = w1 s_dense + w2 s_lex + w3 s_mul (section 3.2).
    """
    fig = go.Figure()
    parts = [k for k in ("dense", "sparse", "colbert") if scores.get(k) is not None]
    fig.add_trace(go.Bar(x=[NAMES[k] for k in parts], y=[scores[k] for k in parts],
                         marker_color=[COLORS[k] for k in parts], text=[f"{scores[k]:.4f}" for k in parts],
                         textposition="outside", showlegend=False, hovertemplate="%{x}: %{y:.4f}<extra></extra>"))
    if scores.get("hybrid") is not None:
        if weights is not None:
            for k, w in zip(("dense", "sparse", "colbert"), weights):
                if w and scores.get(k) is not None:
                    fig.add_trace(go.Bar(x=[NAMES["hybrid"]], y=[w * scores[k]], name=f"{w:g} × {NAMES[k]}",
                                         marker_color=COLORS[k], opacity=0.75,
                                         hovertemplate=f"{w:g} × {NAMES[k]} = %{{y:.4f}}<extra></extra>"))
            fig.add_annotation(x=NAMES["hybrid"], y=scores["hybrid"], text=f"{scores['hybrid']:.4f}",
                               showarrow=False, yshift=10)
        else:
            fig.add_trace(go.Bar(x=[NAMES["hybrid"]], y=[scores["hybrid"]], marker_color=COLORS["hybrid"],
                                 showlegend=False, text=[f"{scores['hybrid']:.4f}"], textposition="outside"))
    fig.update_layout(barmode="relative", legend=dict(orientation="h", y=-0.15))
    fig.update_yaxes(title="score", zeroline=True)
    return _layout(fig, title, height=340)


def hybrid_breakdown(labels: Sequence[str], components: Mapping[str, Sequence[float | None]],
                     weights: Sequence[float], *, title: str | None = "Hybrid score of each result: w1·dense + "
                                                                            "w2·sparse + w3·multi-vector") -> go.Figure:
    """Stacked bars per result of the terms of s_rank = w1 s_dense + w2 s_lex + w3 s_mul (section 3.2).

    ``components`` maps ``dense``/``sparse``/``colbert`` to one score per label (``None`` skipped).
    """
    fig = go.Figure()
    labels = _unique_labels(labels)
    for k, w in zip(("dense", "sparse", "colbert"), weights):
        values = components.get(k)
        if not w or values is None:
            continue
        y = [None if v is None else w * v for v in values]
        fig.add_trace(go.Bar(x=labels, y=y, name=f"{w:g} × {NAMES[k]}", marker_color=COLORS[k],
                             hovertemplate=f"%{{x}}<br>{w:g} × {NAMES[k]} = %{{y:.4f}}<extra></extra>"))
    fig.update_layout(barmode="relative", legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0))
    fig.update_xaxes(tickangle=-30)
    return _layout(fig, title, height=360)


# ----------------------------------------------------------------------------- projection

def projection_scatter(coords: np.ndarray, labels: Sequence[str], texts: Sequence[str], *,
                       query_coords: np.ndarray | None = None, query_texts: Sequence[str] | None = None,
                       highlight: Sequence[int] | None = None, title: str | None = None,
                       legend_title: str = "", method: str | None = None,
                       focus: str | int | Sequence[int] | None = None,
                       links: Sequence[Sequence[int]] | None = None) -> go.Figure:
    """The corpus map coloured by ``labels`` (one trace per label, so the legend toggles them),
    hover showing each point's label and ``texts``; queries drawn as stars, hover showing their
    ``query_texts``; ``highlight`` rings the given points (e.g. the retrieved documents).

    ``focus`` (a label value, or point indices) draws those points large and in colour and the
    rest grey and faint, the legend listing only the focused labels: the way to find one label
    when there are more labels than colours (then the legend is off and only the hover names them).
    ``links`` joins each group of point indices (e.g. translations of one passage) by thin lines, in
    the given order, under the markers.
    """
    coords = np.asarray(coords, dtype=float)
    if len(coords) != len(labels) or len(coords) != len(texts):
        raise ValueError(f"coords ({len(coords)}), labels ({len(labels)}) and texts ({len(texts)}) differ in length")
    names = [str(lab) for lab in labels]
    fig = go.Figure()
    if links:
        xs: list[float | None] = []
        ys: list[float | None] = []
        for group in links:
            idx = [int(i) for i in group]
            if len(idx) > 1:
                xs += coords[idx, 0].tolist() + [None]
                ys += coords[idx, 1].tolist() + [None]
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="links", showlegend=False, hoverinfo="skip",
                                     line=dict(color="rgba(90,90,90,0.45)", width=1)))
    focused = None
    if focus is not None:
        if isinstance(focus, (str, int, np.integer)) and not isinstance(focus, bool):
            focused = {i for i, lab in enumerate(names) if lab == str(focus)}
        elif len(focus) and all(isinstance(f, str) for f in focus):  # several label values
            focused = {i for i, lab in enumerate(names) if lab in set(focus)}
        else:
            focused = {int(i) for i in focus}
            if focused and (min(focused) < 0 or max(focused) >= len(coords)):
                raise ValueError(f"focus indices must lie in [0, {len(coords)})")
        rest = [i for i in range(len(coords)) if i not in focused]
        if rest:
            fig.add_trace(go.Scatter(
                x=coords[rest, 0], y=coords[rest, 1], mode="markers", name="other", showlegend=False,
                text=[_wrap(texts[i]) for i in rest], customdata=[token_label(names[i]) for i in rest],
                marker=dict(size=6, opacity=0.25, color="#9E9E9E"),
                hovertemplate="<b>%{customdata}</b><br>%{text}<extra></extra>"))
    groups: dict[str, list[int]] = {}
    for i, lab in enumerate(names):
        if focused is None or i in focused:
            groups.setdefault(lab, []).append(i)
    many = len(groups) > len(_PALETTE)
    for g, (lab, idx) in enumerate(sorted(groups.items())):
        fig.add_trace(go.Scatter(
            x=coords[idx, 0], y=coords[idx, 1], mode="markers", name=token_label(lab),
            text=[_wrap(texts[i]) for i in idx], showlegend=not many,
            marker=dict(size=8 if focused is None else 12, opacity=0.8 if focused is None else 1.0,
                        color=_PALETTE[g % len(_PALETTE)],
                        line=None if focused is None else dict(color="#222", width=1)),
            hovertemplate=f"<b>{token_label(lab)}</b><br>%{{text}}<extra></extra>"))
    if highlight is not None and len(highlight):
        h = [int(i) for i in highlight]
        fig.add_trace(go.Scatter(x=coords[h, 0], y=coords[h, 1], mode="markers", name="retrieved",
                                 marker=dict(size=15, color="rgba(0,0,0,0)", line=dict(color="#222", width=2)),
                                 text=[_wrap(texts[i]) for i in h],
                                 hovertemplate="retrieved<br>%{text}<extra></extra>"))
    if query_coords is not None and len(query_coords):
        q = np.asarray(query_coords, dtype=float).reshape(-1, 2)
        qt = list(query_texts) if query_texts is not None else ["query"] * len(q)
        fig.add_trace(go.Scatter(x=q[:, 0], y=q[:, 1], mode="markers", name="query", text=[_wrap(t) for t in qt],
                                 marker=dict(symbol="star", size=20, color=COLORS["query"],
                                             line=dict(color="#000", width=1)),
                                 hovertemplate="<b>query</b><br>%{text}<extra></extra>"))
    if many:
        fig.add_annotation(text=f"{len(groups)} labels, more than the {len(_PALETTE)} colours: hover a point "
                                "for its label, or focus on one", x=0, y=1, xref="paper", yref="paper",
                           xanchor="left", yanchor="top", showarrow=False, font=dict(size=11, color="#666"))
    axis = (method or "").upper()
    fig.update_xaxes(title=f"{axis} 1" if axis else None, showticklabels=False)
    fig.update_yaxes(title=f"{axis} 2" if axis else None, showticklabels=False)
    fig.update_layout(legend=dict(title=legend_title))
    return _layout(fig, title, height=560)


def score_distribution(scores: Mapping[str, Sequence[float] | np.ndarray], *, marked: Mapping[str, float] | None = None,
                       weights: Mapping[str, float] | None = None, title: str | None = None) -> go.Figure:
    """One histogram per retrieval function (``{"dense": ..., "sparse": ..., "colbert": ...}``) of one
    query's scores over the corpus, ``marked`` values (e.g. the current result's) drawn as vertical
    lines with their rank.

    With ``weights`` each panel also gives the spread of its term w·s in s_rank (standard deviation
    and range): how far that term can move a document in the ranking, which is what a weight
    does (a weight of 0.3 on a score that spreads little moves almost nothing). NaNs are left out.
    """
    keys = [k for k in scores if scores[k] is not None]
    if not keys:
        return empty_figure("no scores")
    data = {k: np.asarray(scores[k], dtype=float).reshape(-1) for k in keys}
    data = {k: v[np.isfinite(v)] for k, v in data.items()}

    def subtitle(k: str) -> str:
        v, name = data[k], NAMES.get(k, k)
        if not v.size:
            return f"{html.escape(name)}: no scores"
        text = f"{html.escape(name)}: sd {v.std():.4f}, range {np.ptp(v):.4f}"
        if weights is not None and weights.get(k) is not None:
            w = float(weights[k])
            text += f"; {w:g} × s: sd {abs(w) * v.std():.4f}, range {abs(w) * np.ptp(v):.4f}"
        return text

    fig = make_subplots(rows=len(keys), cols=1, subplot_titles=[subtitle(k) for k in keys],
                        vertical_spacing=min(0.12, 0.3 / max(len(keys) - 1, 1)))
    for r, k in enumerate(keys, start=1):
        v, name = data[k], html.escape(NAMES.get(k, k))
        fig.add_trace(go.Histogram(x=v, name=name, marker_color=COLORS.get(k, _PALETTE[(r - 1) % len(_PALETTE)]),
                                   nbinsx=int(min(60, max(10, len(v) // 5))), showlegend=False,
                                   hovertemplate=f"{name} %{{x}}: %{{y}} documents<extra></extra>"), row=r, col=1)
        if marked is not None and marked.get(k) is not None and np.isfinite(marked[k]):
            m = float(marked[k])
            rank = 1 + int((v > m).sum())
            fig.add_vline(x=m, line=dict(color="#E45756", width=2), row=r, col=1,
                          annotation=dict(text=f"{m:.4f} (rank {rank} of {len(v)})", font=dict(size=10)),
                          annotation_position="top right")
        fig.update_yaxes(title="documents", row=r, col=1)
    if title is None:
        n = max(len(v) for v in data.values())
        title = f"Scores of the query over the {n} documents"
        if weights is not None:
            terms = " + ".join(f"{float(weights[k]):g}·{html.escape(NAMES.get(k, k))}" for k in keys
                               if weights.get(k) is not None)
            title += f"; s_rank = {terms}"
    return _layout(fig, title, height=170 * len(keys) + 110)


# ----------------------------------------------------------------------------- training and evaluation

def loss_curves(log_records: Sequence[Mapping[str, Any]], *, keys: Sequence[str] | None = None, x: str = "step",
                title: str | None = "Training losses", log_y: bool = False) -> go.Figure:
    """One line per numeric field of the training log records (e.g. ``loss``, ``loss_dense``, ...) against ``x``.

    ``keys`` picks the fields (default: every numeric field whose name starts with ``loss``).
    Records without a field are skipped for that line.
    """
    if keys is None:
        keys = sorted({k for r in log_records for k, v in r.items()
                       if k.startswith("loss") and isinstance(v, (int, float)) and not isinstance(v, bool)})
    if not log_records or not keys:
        return empty_figure("no loss values in the log")
    fig = go.Figure()
    for key in keys:
        pts = [(r.get(x, i), r[key]) for i, r in enumerate(log_records) if isinstance(r.get(key), (int, float))]
        if pts:
            xs, ys = zip(*pts)
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=key))
    fig.update_xaxes(title=x)
    fig.update_yaxes(title="loss", type="log" if log_y else "linear")
    return _layout(fig, title, height=380)


def metric_bars(rows: Sequence[Mapping[str, Any]], *, x: str = "language", y: str = "ndcg@10", color: str = "mode",
                title: str | None = None) -> go.Figure:
    """Grouped bars of an evaluation table: ``rows`` of ``{x: ..., color: ..., y: value}``
    (e.g. nDCG@10 by language and retrieval mode). A pandas DataFrame works via ``df.to_dict("records")``."""
    if hasattr(rows, "to_dict"):
        rows = rows.to_dict("records")
    if not rows:
        return empty_figure("no results")
    xs = list(dict.fromkeys(str(r[x]) for r in rows))
    fig = go.Figure()
    for g, group in enumerate(dict.fromkeys(str(r.get(color, "")) for r in rows)):
        vals = {str(r[x]): r[y] for r in rows if str(r.get(color, "")) == group}
        fig.add_trace(go.Bar(x=xs, y=[vals.get(v) for v in xs], name=group,
                             marker_color=COLORS.get(group, _PALETTE[g % len(_PALETTE)]),
                             hovertemplate=f"{html.escape(group)} %{{x}}: %{{y:.4f}}<extra></extra>"))
    fig.update_layout(barmode="group")
    fig.update_xaxes(title=x)
    fig.update_yaxes(title=y)
    return _layout(fig, title if title is not None else f"{y} by {x} and {color}", height=380)


# ----------------------------------------------------------------------------- helpers

def token_label(token: str) -> str:
    """A token as a Plotly label: HTML-escaped, since Plotly reads ``<s>``, ``<b>``, ... as markup
    (XLM-R's ``<s>`` / ``</s>`` would vanish or strike the rest through)."""
    return html.escape(str(token), quote=False)


#: Markdown's inline characters, written as entities so text in HTML shown through Markdown stays literal
_MD_ENTITIES = {c: f"&#{ord(c)};" for c in "\\`*_[]()!#~|$"}


def _html_text(text: str) -> str:
    """User text for HTML: escaped, and Markdown's characters as entities (``![x](url)`` stays text)."""
    return "".join(_MD_ENTITIES.get(c) or html.escape(c) for c in str(text))


def _rgba(color: str, alpha: float) -> str:
    """``#RRGGBB`` as a CSS ``rgba(...)`` with ``alpha``."""
    r, g, b = (int(color[k:k + 2], 16) for k in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha:g})"


def _unique_labels(labels: Sequence[str]) -> list[str]:
    """Plotly merges equal category labels; number repeats so every bar keeps its own row."""
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        lab = token_label(lab)
        n = seen.get(lab, 0)
        seen[lab] = n + 1
        out.append(lab if n == 0 else f"{lab} ({n + 1})")
    return out


def _wrap(text: str, width: int = 80, limit: int = 400) -> str:
    """Hover text: escaped, cut at ``limit`` characters, broken into lines of about ``width``."""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    words, lines, line = html.escape(text).split(), [], ""
    for w in words:
        if line and len(line) + len(w) + 1 > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}" if line else w
    lines.append(line)
    return "<br>".join(lines)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower x, higher y), by increasing x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def tradeoff_scatter(records: Sequence[Mapping[str, Any]], *, x: str = "p50_ms", y: str = "ndcg@10",
                     color: str = "mode", log_x: bool = True, title: str | None = None) -> go.Figure:
    """Quality against cost for index variants (:func:`m3lab.evaluation.tradeoffs.compare_variants`
    records): one point per variant, coloured by ``color``, the Pareto front (nothing both cheaper and
    better) joined by a line."""
    rows = [r for r in records if r.get(x) is not None and r.get(y) is not None]
    if not rows:
        return empty_figure("no results")
    fig = go.Figure()
    for g, group in enumerate(dict.fromkeys(str(r.get(color, "")) for r in rows)):
        sub = [r for r in rows if str(r.get(color, "")) == group]
        fig.add_trace(go.Scatter(
            x=[r[x] for r in sub], y=[r[y] for r in sub], mode="markers+text", name=group,
            text=[html.escape(str(r["variant"])) for r in sub], textposition="top center", textfont={"size": 9},
            marker={"size": 10, "color": COLORS.get(group, _PALETTE[g % len(_PALETTE)])},
            hovertemplate="%{text}<br>" + f"{x} %{{x:.4g}}<br>{y} %{{y:.4f}}<extra></extra>"))
    front = pareto_front([(float(r[x]), float(r[y])) for r in rows])
    fig.add_trace(go.Scatter(x=[rows[i][x] for i in front], y=[rows[i][y] for i in front], mode="lines",
                             name="Pareto front", line={"dash": "dot", "color": "#888"}, hoverinfo="skip"))
    fig.update_xaxes(title=x, type="log" if log_x else "linear")
    fig.update_yaxes(title=y)
    return _layout(fig, title if title is not None else f"{y} against {x}", height=460)


# ----------------------------------------------------------------------------- evaluation

def overlap_heatmap(modes: Sequence[str], overlap: np.ndarray, *, k: int = 10,
                    title: str | None = None) -> go.Figure:
    """How much the modes' top-k agree: the mean share of top-k two modes have in common (1 on the diagonal)."""
    names = [NAMES.get(m, m) for m in modes]
    fig = go.Figure(go.Heatmap(z=overlap, x=names, y=names, zmin=0, zmax=1, colorscale="Blues",
                               text=[[f"{v:.2f}" for v in row] for row in overlap], texttemplate="%{text}",
                               hovertemplate="%{y} ∩ %{x}: %{z:.3f} of the top " + str(k) + "<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title or f"Top-{k} overlap between modes", height=360)


def fusion_heatmap(w_sparse: Sequence[float], w_colbert: Sequence[float], ndcg: np.ndarray, *, w_dense: float = 1.0,
                   title: str | None = None) -> go.Figure:
    """Hybrid nDCG@10 over w_sparse (rows) x w_colbert (columns) at fixed w_dense, the best point marked."""
    z = 100 * np.asarray(ndcg, dtype=float)
    xs, ys = [f"{w:g}" for w in w_colbert], [f"{w:g}" for w in w_sparse]
    fig = go.Figure(go.Heatmap(z=z, x=xs, y=ys, colorscale="Viridis", colorbar=dict(title="nDCG@10"),
                               text=[["" if np.isnan(v) else f"{v:.1f}" for v in row] for row in z],
                               texttemplate="%{text}",
                               hovertemplate="w_sparse %{y}, w_colbert %{x}: nDCG@10 %{z:.2f}<extra></extra>"))
    if np.isfinite(z).any():
        i, j = np.unravel_index(int(np.nanargmax(z)), z.shape)
        fig.add_trace(go.Scatter(x=[xs[j]], y=[ys[i]], mode="markers", name=f"best: {z[i, j]:.2f}",
                                 marker=dict(symbol="star", size=18, color="white", line=dict(color="black", width=1))))
    fig.update_xaxes(title="w₃ multi-vector")
    fig.update_yaxes(title="w₂ sparse")
    return _layout(fig, title or f"Hybrid nDCG@10 at w₁ dense = {w_dense:g}", height=380)


def rank_change_chart(changes: Sequence[Any], *, k: int, name_a: str = "A", name_b: str = "B",
                      labels: Mapping[str, str] | None = None, title: str | None = None) -> go.Figure:
    """Two rankings of one query side by side (a slope chart): one line per document from its rank under
    A to its rank under B, green when B ranks it higher, red when lower, grey when equal; a document in
    only one top k ends at "out" (rank k + 1). ``changes``: :class:`m3lab.evaluation.explore.RankChange`
    records; ``labels`` the hover text per document id."""
    fig = go.Figure()
    out = k + 1
    colour = {"up": "#2E9E4F", "down": "#D62728", "same": "#9E9E9E", "new": "#4C78A8", "gone": "#BAB0AC"}
    for c in changes:
        ra, rb = c.rank_a or out, c.rank_b or out
        kind = ("new" if c.rank_a is None else "gone" if c.rank_b is None else
                "up" if rb < ra else "down" if rb > ra else "same")
        text = html.escape(labels.get(c.doc_id, c.doc_id) if labels else c.doc_id)
        how = {"new": f"new in {name_b}'s top {k}", "gone": f"out of {name_b}'s top {k}", "same": "same rank",
               "up": f"up {ra - rb}", "down": f"down {rb - ra}"}[kind]
        fig.add_trace(go.Scatter(
            x=[html.escape(name_a), html.escape(name_b)], y=[ra, rb], mode="lines+markers+text",
            line=dict(color=colour[kind], width=3 if kind in ("up", "down") else 2),
            marker=dict(size=9), text=[html.escape(c.doc_id) if c.rank_a else "", html.escape(c.doc_id) if c.rank_b
                                       else ""], textposition=["middle left", "middle right"], textfont=dict(size=10),
            hovertemplate=f"{text}<br>{how}<br>%{{x}}: rank %{{y}}<extra></extra>", showlegend=False))
    fig.update_yaxes(autorange="reversed", tickmode="array", tickvals=list(range(1, out + 1)),
                     ticktext=[str(r) for r in range(1, out)] + ["out"], title="rank")
    fig.update_xaxes(range=[-0.6, 1.6])
    return _layout(fig, title or f"Rank changes from {html.escape(name_a)} to {html.escape(name_b)} (top {k})",
                   height=max(360, 28 * out + 120))
