"""Figures the notebooks draw that are not part of :mod:`m3lab.viz.plots`."""
from __future__ import annotations

from typing import Any

import torch


def score_matrix_figure(scores, group_size: int, *, title: str | None = None, max_queries: int = 8):
    """Heatmap of a training batch's scores: queries × passages, each query's own group outlined
    and its positive (the group's first passage) marked; everything else is an in-batch negative."""
    import numpy as np
    import plotly.graph_objects as go

    s = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=float)[:max_queries]
    n_q, n_p = s.shape
    fig = go.Figure(go.Heatmap(z=s, x=[f"p{j}" for j in range(n_p)], y=[f"q{i}" for i in range(n_q)],
                               colorscale="Viridis", colorbar=dict(title="score"),
                               hovertemplate="%{y} · %{x}: %{z:.3f}<extra></extra>"))
    for i in range(n_q):
        fig.add_shape(type="rect", x0=i * group_size - 0.5, x1=(i + 1) * group_size - 0.5, y0=i - 0.5, y1=i + 0.5,
                      line=dict(color="white", width=2))
    fig.add_trace(go.Scatter(x=[f"p{i * group_size}" for i in range(n_q)], y=[f"q{i}" for i in range(n_q)],
                             mode="markers", marker=dict(symbol="star", size=12, color="#E45756"), name="positive",
                             hovertemplate="positive of %{y}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title, template="plotly_white", height=120 + 32 * n_q, showlegend=False,
                      margin=dict(l=10, r=10, t=50 if title else 20, b=10))
    return fig


def distributions_figure(distributions: dict[str, Any], *, labels: list[str] | None = None, title: str | None = None):
    """Grouped bars of probability distributions over the same candidates (e.g. softmax of each
    function's scores and of the teacher's, for one query)."""
    import numpy as np
    import plotly.graph_objects as go

    from ..viz.plots import COLORS

    fig = go.Figure()
    for name, probs in distributions.items():
        probs = np.asarray(probs.detach().cpu() if isinstance(probs, torch.Tensor) else probs, dtype=float)
        x = labels or [f"p{j}" for j in range(len(probs))]
        fig.add_trace(go.Bar(x=x, y=probs, name=name, marker_color=COLORS.get(name.split()[0]),
                             hovertemplate=f"{name} %{{x}}: %{{y:.3f}}<extra></extra>"))
    fig.update_layout(barmode="group", title=title, template="plotly_white", height=360,
                      yaxis_title="probability", margin=dict(l=10, r=10, t=50 if title else 20, b=10),
                      legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0))
    return fig


def heatmap_figure(rows: list[dict[str, Any]], *, index: str, columns: list[str], title: str | None = None,
                   fmt: str = ".3g", colorscale: str = "Blues"):
    """A labelled heatmap of a small table: one row per record (named by ``index``), the given columns."""
    import numpy as np
    import plotly.graph_objects as go

    z = np.array([[float(r[c]) for c in columns] for r in rows])
    text = [[format(v, fmt) for v in row] for row in z]
    fig = go.Figure(go.Heatmap(z=z, x=columns, y=[str(r[index]) for r in rows], text=text, texttemplate="%{text}",
                               colorscale=colorscale, showscale=False,
                               hovertemplate="%{y} → %{x}: %{z:.4g}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title, template="plotly_white", height=100 + 36 * len(rows),
                      margin=dict(l=10, r=10, t=50 if title else 20, b=10))
    return fig
