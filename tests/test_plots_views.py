"""The readable MaxSim, projection and sparse views: picked columns, cropped heatmaps, the passage text
with each query token's best match, focus and links on the map, score distributions, special tokens left out."""
from __future__ import annotations

import html
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from m3lab import M3Model, plots
from m3lab.viz.inspect import (LexicalMatch, MaxSimAlignment, TokenWeight, maxsim_alignment, maxsim_passage_spans,
                               picked_columns)

pytestmark = pytest.mark.usefixtures("one_thread")

QUERY = "who built the tower by the river"
PASSAGE = ("The Tower  by the river was built in the first year; <img src=x> ![x](http://evil.example/a.png) "
           "and the city of Paris is the capital of France, the largest city in the world.")


def _random_heads(m: M3Model, seed: int = 3) -> M3Model:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-identity heads, so best matches spread over the passage
        m.colbert_linear.weight.copy_(torch.randn(m.colbert_linear.weight.shape, generator=g) / m.hidden_size ** 0.5)
    return m


@pytest.fixture(scope="module")
def bert(tiny_bert_dir) -> M3Model:
    return _random_heads(M3Model.from_pretrained(tiny_bert_dir, device="cpu"))


@pytest.fixture(scope="module")
def xlmr(tiny_xlmr_dir) -> M3Model:
    return _random_heads(M3Model.from_pretrained(tiny_xlmr_dir, device="cpu"))


def _align(model: M3Model, query: str = QUERY, passage: str = PASSAGE, **kw) -> MaxSimAlignment:
    return maxsim_alignment(model, model.encode([query], return_sparse=False, **kw),
                            model.encode([passage], return_sparse=False, **kw))


def _hand_alignment(n_q: int = 3, n_p: int = 200, seed: int = 0) -> MaxSimAlignment:
    rng = np.random.default_rng(seed)
    sim = rng.uniform(-0.2, 0.8, size=(n_q, n_p)).astype(np.float32)
    sim[np.arange(n_q), [min(j, n_p - 1) for j in (5, 120, 121)][:n_q]] = 0.95
    return MaxSimAlignment([f"q{i}" for i in range(n_q)], [f"p{j}" for j in range(n_p)], sim, sim.argmax(1),
                           sim.max(1) / n_q, float(sim.max(1).mean()))


# ----------------------------------------------------------------------------- picked columns and the cropped heatmap

def test_picked_columns_are_the_argmax_columns(bert):
    a = _align(bert)
    assert len(a.passage_tokens) > 20
    np.testing.assert_array_equal(picked_columns(a), np.unique(a.similarity.argmax(axis=1)))
    with_ctx = picked_columns(a, context=2)
    expected = {j + d for j in a.similarity.argmax(axis=1) for d in range(-2, 3)} & set(range(len(a.passage_tokens)))
    assert with_ctx.tolist() == sorted(expected)
    b = _hand_alignment()
    assert picked_columns(b).tolist() == [5, 120, 121]
    assert picked_columns(b, context=1).tolist() == [4, 5, 6, 119, 120, 121, 122]
    assert picked_columns(_hand_alignment(n_p=6), context=3).max() == 5  # clipped to the passage
    with pytest.raises(ValueError, match="context"):
        picked_columns(b, context=-1)


def test_cropped_heatmap_keeps_every_max_and_labels_every_column(bert):
    a = _align(bert)
    cols = picked_columns(a, context=1)
    heat, marks, bars = plots.maxsim_heatmap(a, columns=cols).data
    z = np.asarray(heat.z)
    np.testing.assert_array_equal(z, a.similarity[:, cols])
    # the crop hides only unpicked columns: every row's max is the full row's max
    np.testing.assert_array_equal(z.max(axis=1), a.similarity.max(axis=1))
    assert float(np.sum(bars.x)) == pytest.approx(a.total, rel=1e-6)
    assert float(np.sum(bars.x)) == pytest.approx(float(a.contributions.sum()), rel=1e-6)
    assert len(heat.x) == len(cols) and len(set(heat.x)) == len(cols)  # one label per kept column
    assert set(marks.x) <= set(heat.x)


def test_cropped_heatmap_marks_gaps_and_adapts_width():
    b = _hand_alignment()
    fig = plots.maxsim_heatmap(b, columns=picked_columns(b, context=1))
    heat = fig.data[0]
    assert list(heat.x) == ["…4:p4", "5:p5", "6:p6", "…119:p119", "120:p120", "121:p121", "122:p122"]
    assert [s.x0 for s in fig.layout.shapes] == [2.5]  # one separator, between columns 6 and 119
    assert fig.layout.xaxis.tickmode == "linear" and fig.layout.xaxis.dtick == 1
    assert "7 of 200 passage tokens" in fig.layout.annotations[0].text
    assert f"{b.total:.4f}" in fig.layout.title.text
    # columns that miss a best match get it added, so the marks always land on a column
    fig = plots.maxsim_heatmap(b, columns=[0, 1])
    assert list(fig.data[0].x) == ["0:p0", "1:p1", "…5:p5", "…120:p120", "121:p121"]
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), b.similarity[:, [0, 1, 5, 120, 121]])
    # all 200 columns labelled: the figure widens instead of dropping labels
    full = plots.maxsim_heatmap(b, max_passage_tokens=None)
    assert len(full.data[0].x) == 200 and full.layout.width and full.layout.width >= 14 * 200
    assert plots.maxsim_heatmap(b, columns=[0, 1]).layout.width is None
    with pytest.raises(ValueError, match="columns"):
        plots.maxsim_heatmap(b, columns=[200])


# ----------------------------------------------------------------------------- the passage text view

@pytest.mark.parametrize("kind", ["bert", "xlmr"])
def test_passage_spans_rebuild_the_text_and_hold_every_pick(kind, bert, xlmr):
    model = bert if kind == "bert" else xlmr
    passage = PASSAGE if kind == "bert" else "the tower by the zebra river was built  in the first year </s> paris"
    a = _align(model, passage=passage)
    spans = maxsim_passage_spans(model, a, passage)
    assert "".join(s.text for s in spans if s.kind != "special") == passage
    picks = {i: (j, s) for sp in spans for i, s in sp.picked for j in sp.columns}
    assert sorted(picks) == list(range(len(a.query_tokens)))  # every query token's pick appears once
    for i, (j, s) in picks.items():
        assert j == a.best[i] and s == pytest.approx(float(a.similarity[i, j]))
    for sp in spans:
        assert [s for _, s in sp.picked] == sorted((s for _, s in sp.picked), reverse=True)
        if sp.kind == "text" and sp.columns:  # the piece is the passage text of that token
            assert sp.text.strip()
    # the passage's closing special token is a "special" piece when picked, never passage text
    end = len(a.passage_tokens) - 1
    assert a.passage_is_special[end]
    assert all(end not in sp.columns for sp in spans if sp.kind != "special")


def test_passage_spans_special_pick_truncation_and_wrong_text(bert):
    a = _align(bert, passage="paris tower")
    n = len(a.passage_tokens)  # paris tower [SEP]
    sim = np.full((2, n), 0.1, dtype=np.float32)
    sim[0, n - 1], sim[1, 1] = 0.9, 0.7   # q0 picks [SEP], q1 picks "tower"
    hand = MaxSimAlignment(["what", "tower"], a.passage_tokens, sim, sim.argmax(1), sim.max(1) / 2,
                           float(sim.max(1).mean()), [False, False], a.passage_is_special)
    spans = maxsim_passage_spans(bert, hand, "paris tower")
    assert [(s.text, s.kind, s.picked) for s in spans] == [
        ("paris", "text", []), (" ", "text", []), ("tower", "text", [(1, pytest.approx(0.7))]),
        ("[SEP]", "special", [(0, pytest.approx(0.9))])]
    page = plots.maxsim_text_html(spans, hand.query_tokens)
    assert "[SEP]" not in page and "&#91;SEP&#93; (special)" in page
    assert "picked by &#x27;tower&#x27; (sim 0.70)" in page
    # truncated encoding: the tail is a "truncated" piece, still part of the text
    long = " ".join(["the tower by the river"] * 10)
    t = maxsim_alignment(bert, bert.encode(["tower"], max_length=8), bert.encode([long], max_length=8))
    spans = maxsim_passage_spans(bert, t, long)
    assert "".join(s.text for s in spans if s.kind != "special") == long
    assert spans[-1].kind == "truncated" and spans[-1].text.endswith("river") and not spans[-1].columns
    assert max(j for s in spans for j in s.columns) == len(t.passage_tokens) - 2  # the last text vector
    with pytest.raises(ValueError, match="not the text's next token"):
        maxsim_passage_spans(bert, a, "music and science")


def test_passage_spans_behind_a_prompt(bert):
    prompt = "passage: "
    p = bert.encode([prompt + "paris tower"], return_sparse=False)
    a = maxsim_alignment(bert, bert.encode(["paris tower"], return_sparse=False), p)
    spans = maxsim_passage_spans(bert, a, "paris tower", prompt=prompt)
    assert "".join(s.text for s in spans if s.kind != "special") == "paris tower"
    assert sorted(i for s in spans for i, _ in s.picked) == list(range(len(a.query_tokens)))
    # prompt tokens have no passage text: picked ones are listed after it
    assert {a.passage_tokens[j] for s in spans if s.kind == "special" for j in s.columns} <= {"passage", ":", "[SEP]"}


def test_slow_tokenizer_falls_back_to_token_strings(bert):
    a = _align(bert, passage="paris tower")
    slow = SimpleNamespace(is_fast=False)
    spans = maxsim_passage_spans(slow, a, "paris tower")
    assert "".join(s.text for s in spans if s.kind != "special") == "paris tower "
    assert sorted(i for s in spans for i, _ in s.picked) == list(range(len(a.query_tokens)))


def test_maxsim_text_html_escapes_and_colours_by_the_strongest(bert):
    a = _align(bert)
    spans = maxsim_passage_spans(bert, a, PASSAGE)
    page = plots.maxsim_text_html(spans, a.query_tokens, query_is_special=a.query_is_special)
    assert "<img" not in page and "![x](" not in page and "](http" not in page
    text = re.sub(r"<[^>]+>", "", page.split("</div>")[0])  # the passage div without its tags
    assert html.unescape(text) == PASSAGE  # shown as typed
    plain = plots.maxsim_text_html([plots_span(PASSAGE, [], ())], [])
    assert "&lt;img src=x&gt;" in plain and "&#33;&#91;x&#93;&#40;http://evil.example/a.png&#41;" in plain
    assert page.count("<mark") == len([s for s in spans if s.picked])
    assert "[SEP] (special)" not in page and "&#91;SEP&#93; (special)" in page  # the query's [SEP] in the legend
    # several picks of one piece: the strongest colours it and leads the title
    two = [plots_span("tower", [(1, 0.9), (0, 0.4)], (0,)), plots_span(" <b>", [], ())]
    page = plots.maxsim_text_html(two, ["a", "b"])
    assert "border-bottom: 2px solid #F58518" in page.split("</mark>")[0]  # query token 1's colour
    assert "picked by &#x27;b&#x27; (sim 0.90), &#x27;a&#x27; (sim 0.40)" in page
    assert " &lt;b&gt;" in page and "<b>" not in page


def plots_span(text, picked, columns, kind="text"):
    from m3lab.viz.inspect import MaxSimSpan

    return MaxSimSpan(text, picked, columns, kind)


# ----------------------------------------------------------------------------- projection: focus, links, query hover

def _corpus(n_topics: int = 20, n_lang: int = 3):
    rng = np.random.default_rng(0)
    coords = rng.normal(size=(n_topics * n_lang, 2))
    topics = [f"topic{t}" for _ in range(n_lang) for t in range(n_topics)]
    texts = [f"text {i}" for i in range(len(coords))]
    return coords, topics, texts


def test_projection_focus_draws_the_focused_points_in_colour():
    coords, topics, texts = _corpus()
    fig = plots.projection_scatter(coords, topics, texts, focus="topic3")
    other, focused = fig.data
    assert other.name == "other" and not other.showlegend and other.marker.color == "#9E9E9E"
    assert focused.name == "topic3" and focused.showlegend and focused.marker.opacity == 1.0
    idx = [i for i, t in enumerate(topics) if t == "topic3"]
    np.testing.assert_array_equal(np.c_[focused.x, focused.y], coords[idx])
    assert len(other.x) == len(coords) - len(idx) and other.marker.size < focused.marker.size
    fig = plots.projection_scatter(coords, topics, texts, focus=[0, 1, 20])  # point indices
    assert sorted(t.name for t in fig.data[1:]) == ["topic0", "topic1"] and len(fig.data[0].x) == 57
    fig = plots.projection_scatter(coords, topics, texts, focus=["topic1", "topic2"])
    assert [t.name for t in fig.data[1:]] == ["topic1", "topic2"]
    with pytest.raises(ValueError, match="focus"):
        plots.projection_scatter(coords, topics, texts, focus=[60])


def test_projection_many_labels_hide_the_legend_but_hover_names_them():
    coords, topics, texts = _corpus()
    fig = plots.projection_scatter(coords, topics, texts)
    assert len(fig.data) == 20 and not any(t.showlegend for t in fig.data)
    assert all(f"<b>{t.name}</b>" in t.hovertemplate for t in fig.data)
    assert "20 labels" in fig.layout.annotations[0].text
    few = plots.projection_scatter(coords[:6], ["en", "de"] * 3, texts[:6])
    assert all(t.showlegend for t in few.data) and not few.layout.annotations


def test_projection_links_one_line_trace_under_the_markers():
    coords, topics, texts = _corpus(n_topics=4, n_lang=3)
    groups = [[t, t + 4, t + 8] for t in range(4)] + [[1]]  # a group of one has nothing to join
    fig = plots.projection_scatter(coords, topics, texts, links=groups, highlight=[2])
    lines = fig.data[0]
    assert lines.mode == "lines" and lines.hoverinfo == "skip" and not lines.showlegend
    assert sum(t.mode == "lines" for t in fig.data) == 1
    xs, ys = list(lines.x), list(lines.y)
    assert xs.count(None) == 4 and ys.count(None) == 4
    for g, group in enumerate(groups[:4]):
        seg = slice(4 * g, 4 * g + 3)
        np.testing.assert_array_equal(np.c_[xs[seg], ys[seg]], coords[group])
    assert all(t.mode == "markers" for t in fig.data[1:])  # markers drawn after (over) the lines


def test_projection_query_hover_shows_the_query_text():
    coords, topics, texts = _corpus(n_topics=3, n_lang=2)
    q = "where is the <b>tower</b> " + "word " * 30
    fig = plots.projection_scatter(coords, topics, texts, query_coords=np.array([[0.0, 0.0]]), query_texts=[q])
    star = fig.data[-1]
    assert star.name == "query" and star.marker.symbol == "star"
    assert "%{text}" in star.hovertemplate
    assert list(star.text) == [plots._wrap(q)]
    assert "&lt;b&gt;tower&lt;/b&gt;" in star.text[0] and "<b>tower" not in star.text[0] and "<br>" in star.text[0]


# ----------------------------------------------------------------------------- sparse: distributions, special tokens

def test_score_distribution_one_histogram_per_function_and_marked_values():
    rng = np.random.default_rng(0)
    scores = {"dense": rng.uniform(0.3, 0.8, 100), "sparse": rng.uniform(0.0, 0.2, 100),
              "colbert": np.r_[rng.uniform(0.4, 0.9, 99), np.nan]}
    marked = {"dense": 0.75, "sparse": 0.1, "colbert": 0.5}
    fig = plots.score_distribution(scores, marked=marked, weights={"dense": 1.0, "sparse": 0.3, "colbert": 1.0})
    assert [t.type for t in fig.data] == ["histogram"] * 3
    np.testing.assert_array_equal(fig.data[0].x, scores["dense"])
    assert len(fig.data[2].x) == 99  # NaN left out
    assert [s.x0 for s in fig.layout.shapes] == [0.75, 0.1, 0.5]
    assert [s.xref for s in fig.layout.shapes] == ["x", "x2", "x3"]
    notes = [a.text for a in fig.layout.annotations]
    rank = 1 + int((scores["dense"] > 0.75).sum())
    assert f"0.7500 (rank {rank} of 100)" in notes
    sd = scores["sparse"].std()
    assert any(f"0.3 × s: sd {0.3 * sd:.4f}" in n for n in notes)
    assert "0.3·sparse (lexical)" in fig.layout.title.text
    plain = plots.score_distribution({"dense": scores["dense"]})
    assert len(plain.data) == 1 and not plain.layout.shapes


def test_token_weight_bar_can_exclude_special_tokens():
    w = [TokenWeight(102, "[SEP]", 0.9, True), TokenWeight(1, "paris", 0.5), TokenWeight(100, "[UNK]", 0.2, True),
         TokenWeight(2, "tower", 0.3)]
    fig = plots.token_weight_bar(w, exclude_special=True, title="Query token weights")
    assert list(fig.data[0].y) == ["tower", "paris"]
    assert fig.layout.title.text == "Query token weights (2 special tokens excluded, total weight 1.1000)"
    assert list(plots.token_weight_bar(w).data[0].y) == ["[UNK]", "tower", "paris", "[SEP]"]
    with pytest.raises(ValueError, match="TokenWeight"):
        plots.token_weight_bar({"a": 1.0}, exclude_special=True)


def test_lexical_contribution_bar_can_exclude_special_tokens():
    c = np.array([0.5, 0.2, 0.1, 0.05], dtype=np.float32)
    m = LexicalMatch(["[SEP]", "paris", "</s>", "tower"], [102, 1, 2, 3], np.sqrt(c), np.sqrt(c), c, float(c.sum()),
                     [True, False, True, False])
    fig = plots.lexical_contribution_bar(m, exclude_special=True)
    bar = fig.data[0]
    assert list(bar.y) == ["tower", "paris"]
    assert sum(bar.x) + 0.6 == pytest.approx(m.total, abs=1e-6)
    assert "2 special tokens excluded, adding 0.6000: the bars sum to 0.2500" in fig.layout.title.text
    assert f"s_lex = {m.total:.4f}" in fig.layout.title.text
    assert len(plots.lexical_contribution_bar(m).data[0].y) == 4
    only = LexicalMatch(["[SEP]"], [102], np.ones(1), np.ones(1), np.ones(1), 1.0, [True])
    empty = plots.lexical_contribution_bar(only, exclude_special=True)
    assert "special tokens excluded" in empty.layout.annotations[0].text
