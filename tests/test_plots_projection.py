"""m3lab.viz.projection (PCA against scikit-learn, UMAP keeps clusters, placement of new points, files)
and m3lab.viz.plots (every figure draws exactly the numbers it is given)."""
from __future__ import annotations

import numpy as np
import pytest

from m3lab import plots
from m3lab.viz.inspect import LexicalMatch, MaxSimAlignment, TokenWeight
from m3lab.viz.projection import Projection, fit_projection


def clusters(n_per: int = 20, k: int = 3, d: int = 24, seed: int = 0, spread: float = 0.05):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    x = np.concatenate([c + spread * rng.normal(size=(n_per, d)) for c in centres])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), np.repeat(np.arange(k), n_per), centres


# ----------------------------------------------------------------------------- projection

def test_pca_matches_scikit_learn():
    from sklearn.decomposition import PCA

    x, _, _ = clusters(n_per=5)
    proj = fit_projection(x, method="pca")
    ref = PCA(n_components=2).fit_transform(x)
    signs = np.sign((proj.coords * ref).sum(axis=0))  # principal axes are defined up to sign
    np.testing.assert_allclose(proj.coords * signs, ref, atol=1e-4)
    np.testing.assert_allclose(proj.transform(x), proj.coords, atol=1e-5)
    assert proj.method == "pca"


def test_auto_picks_pca_for_tiny_sets_and_validates_input():
    x, _, _ = clusters(n_per=4)
    assert fit_projection(x).method == "pca"  # 12 < 30 points
    with pytest.raises(ValueError, match="at least 2"):
        fit_projection(x[:1])
    with pytest.raises(ValueError, match="method"):
        fit_projection(x, method="tsne")
    with pytest.raises(ValueError, match="NaN"):
        fit_projection(np.full((5, 3), np.nan))
    with pytest.raises(ValueError, match="dimension"):
        fit_projection(x, method="pca").transform(np.ones((1, 5)))


def test_umap_keeps_clusters_and_places_new_points_by_them():
    x, label, centres = clusters()
    proj = fit_projection(x)  # 60 points: UMAP
    assert proj.method == "umap" and proj.coords.shape == (60, 2)
    # every point's nearest neighbour in the map belongs to its own cluster
    d2 = ((proj.coords[:, None] - proj.coords[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    assert (label[d2.argmin(axis=1)] == label).all()
    # a new point near a cluster centre is placed among that cluster
    rng = np.random.default_rng(1)
    new = centres + 0.05 * rng.normal(size=centres.shape)
    xy = proj.transform(new)
    means = np.stack([proj.coords[label == c].mean(0) for c in range(3)])
    assert (np.linalg.norm(xy[:, None] - means[None], axis=-1).argmin(axis=1) == np.arange(3)).all()
    # corpus points land next to their own point (well inside the map's spread)
    own = np.linalg.norm(proj.transform(x) - proj.coords, axis=1)
    assert np.median(own) < 0.1 * np.ptp(proj.coords, axis=0).max()
    # the fit is reproducible
    np.testing.assert_array_equal(fit_projection(x).coords, proj.coords)


def test_a_query_between_two_clusters_lands_in_the_heavier_one():
    """Neighbours split 10/5 between two far-apart clusters: the placement is inside the 10, not between."""
    rng = np.random.default_rng(0)
    a, b = np.eye(8)[0], np.eye(8)[1]
    ref = np.concatenate([a + 0.01 * rng.normal(size=(10, 8)), b + 0.01 * rng.normal(size=(10, 8))])
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    coords = np.concatenate([rng.normal(scale=0.1, size=(10, 2)), [10.0, 0.0] + rng.normal(scale=0.1, size=(10, 2))])
    proj = Projection("umap", coords.astype(np.float32), ref.astype(np.float32), n_neighbors=15)
    q = 0.75 * a + 0.25 * b
    x, y = proj.transform(q)[0]
    assert abs(x) < 0.5 and abs(y) < 0.5  # the weighted mean would sit near x = 3, in empty space
    # a corpus vector of cluster B stays in cluster B
    assert np.linalg.norm(proj.transform(ref[13])[0] - [10.0, 0.0]) < 0.5


def parallel_corpus(n_topics: int = 12, d: int = 32, seed: int = 0):
    """Two 'languages' of the same topics: topic vector + a large language offset + noise."""
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(n_topics, d))
    offsets = 3 * rng.normal(size=(2, d))
    x = np.concatenate([topics + offsets[g] + 0.05 * rng.normal(size=(n_topics, d)) for g in (0, 1)])
    return x.astype(np.float32), ["xx"] * n_topics + ["yy"] * n_topics, topics, offsets


def translation_hits(coords: np.ndarray, n: int) -> float:
    """Fraction of points whose nearest point of the other language is their own translation."""
    d = ((coords[:n, None] - coords[None, n:]) ** 2).sum(-1)
    return float(np.mean(d.argmin(axis=1) == np.arange(n)))


def test_removing_language_means_brings_translations_together():
    x, langs, topics, offsets = parallel_corpus()
    n = len(topics)
    raw = fit_projection(x, method="pca")
    aligned = fit_projection(x, method="pca", centre_by=langs)
    assert aligned.centred and not raw.centred
    # without centring the first axis separates the languages; with it, each topic's pair coincides
    assert translation_hits(aligned.coords, n) == 1.0
    assert translation_hits(aligned.coords, n) > translation_hits(raw.coords, n)
    assert np.abs(aligned.coords[:n] - aligned.coords[n:]).max() < 0.1 * np.ptp(aligned.coords)
    # a new vector of language yy on topic 3 is centred by yy's mean (taken from its nearest corpus vector)
    new = topics[3] + offsets[1]
    np.testing.assert_array_equal(aligned.group_of(new[None] / np.linalg.norm(new)), [1])
    xy = aligned.transform(new)
    assert np.linalg.norm(aligned.coords - xy, axis=1).argmin() in (3, n + 3)
    # an explicit label wins; an unknown label falls back to the nearest vector's
    np.testing.assert_allclose(aligned.transform(new, labels=["yy"]), xy)
    np.testing.assert_allclose(aligned.transform(new, labels=["zz"]), xy)
    with pytest.raises(ValueError, match="labels"):
        fit_projection(x, method="pca", centre_by=["xx"])


def test_projection_files_round_trip_and_bad_files(tmp_path):
    x, _, _ = clusters(n_per=4)
    proj = fit_projection(x, method="pca")
    back = Projection.load(proj.save(tmp_path / "map.npz"))
    np.testing.assert_array_equal(back.coords, proj.coords)
    np.testing.assert_allclose(back.transform(x[:3]), proj.transform(x[:3]))
    px, langs, _, _ = parallel_corpus()
    centred = fit_projection(px, method="pca", centre_by=langs)
    back = Projection.load(centred.save(tmp_path / "centred.npz"))
    assert back.centred and list(back.group_names) == ["xx", "yy"]
    np.testing.assert_allclose(back.transform(px[:4]), centred.transform(px[:4]), atol=1e-6)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz: not a projection file"):
        Projection.load(bad)
    np.savez(tmp_path / "other.npz", a=np.ones(3))
    with pytest.raises(ValueError, match="other.npz"):
        Projection.load(tmp_path / "other.npz")


# ----------------------------------------------------------------------------- plots

def test_token_weight_bar_sorts_and_keeps_repeated_labels():
    fig = plots.token_weight_bar([TokenWeight(1, "a", 0.1), TokenWeight(2, "b", 0.5), TokenWeight(3, "a", 0.3)], top=2)
    bar = fig.data[0]
    assert list(bar.y) == ["a", "b"] and list(bar.x) == [0.3, 0.5]  # heaviest at the top (drawn last)
    fig = plots.token_weight_bar({"x": 0.2, "y": 0.2})
    assert sorted(fig.data[0].y) == ["x", "y"]
    assert plots.token_weight_bar([]).layout.annotations  # an empty figure with a message


def test_lexical_contribution_bar_sums_to_s_lex_even_when_cut():
    c = np.array([0.5, 0.2, 0.1, 0.05, 0.01], dtype=np.float32)
    m = LexicalMatch(tokens=["a", "b", "c", "d", "e"], token_ids=[1, 2, 3, 4, 5], query_weights=np.sqrt(c),
                     passage_weights=np.sqrt(c), contributions=c, total=float(c.sum()))
    for top in (10, 3):
        bar = plots.lexical_contribution_bar(m, top=top).data[0]
        assert sum(bar.x) == pytest.approx(m.total, abs=1e-6)
        assert len(bar.x) == min(top, 5)
    assert "(3 other tokens)" in plots.lexical_contribution_bar(m, top=3).data[0].y
    empty = LexicalMatch([], [], np.zeros(0), np.zeros(0), np.zeros(0), 0.0)
    assert "s_lex = 0.0000" in plots.lexical_contribution_bar(empty).layout.annotations[0].text


def test_maxsim_heatmap_marks_each_rows_best_match():
    sim = np.array([[0.1, 0.9, 0.2], [0.7, 0.3, 0.6]], dtype=np.float32)
    a = MaxSimAlignment(["q0", "q1"], ["p0", "p1", "p0"], sim, sim.argmax(1), sim.max(1) / 2, float(sim.max(1).mean()))
    heat, marks, bars = plots.maxsim_heatmap(a).data
    np.testing.assert_array_equal(np.asarray(heat.z), sim)
    assert list(marks.x) == ["1:p1", "0:p0"] and list(marks.y) == ["0:q0", "1:q1"]
    assert sum(bars.x) == pytest.approx(a.total)
    # long passages: only the first columns plus every best match are drawn
    wide = np.zeros((1, 400), dtype=np.float32)
    wide[0, 350] = 1.0
    b = MaxSimAlignment(["q"], [f"t{j}" for j in range(400)], wide, np.array([350]), np.array([1.0]), 1.0)
    assert len(plots.maxsim_heatmap(b, max_passage_tokens=100).data[0].x) == 101


def test_weighted_spans_rebuild_the_text():
    text = "Paris tower, built 1889"
    offsets = [(0, 0), (0, 5), (6, 11), (11, 12), (13, 18), (19, 23), (0, 0)]
    spans = plots.weighted_spans(text, offsets, [0.9, 0.4, 0.8, 0.0, 0.2, 0.1, 0.5])
    assert "".join(p for p, _ in spans) == text
    assert dict(spans)["tower"] == 1.0 and dict(spans)["Paris"] == 0.5 and dict(spans)[","] is None
    html = plots.weighted_text_html(spans + [("<b>", 0.5)])
    assert "&lt;b&gt;" in html and "rgba(245,133,24,1.000)" in html


def test_score_bars_stack_the_hybrid_terms():
    s = {"dense": 0.8, "sparse": 0.2, "colbert": 0.6, "hybrid": 0.8 + 0.3 * 0.2 + 0.6}
    fig = plots.score_bars(s, weights=(1, 0.3, 1))
    assert list(fig.data[0].y) == [0.8, 0.2, 0.6]
    assert sum(t.y[0] for t in fig.data[1:]) == pytest.approx(s["hybrid"])


def test_projection_scatter_one_trace_per_label():
    coords = np.arange(10, dtype=float).reshape(5, 2)
    fig = plots.projection_scatter(coords, ["en", "de", "en", "de", "zh"], [f"t{i}" for i in range(5)],
                                   query_coords=np.array([[1.0, 1.0]]), query_texts=["q"], highlight=[0, 4])
    assert [t.name for t in fig.data] == ["de", "en", "zh", "retrieved", "query"]
    assert list(fig.data[1].x) == [0.0, 4.0]
    with pytest.raises(ValueError, match="differ in length"):
        plots.projection_scatter(coords, ["en"], ["t"])


def test_training_and_evaluation_figures():
    log = [{"step": 1, "loss": 2.0, "loss_dense": 1.0}, {"step": 2, "loss": 1.5}, {"step": 3, "loss": 1.0, "lr": 1e-5}]
    fig = plots.loss_curves(log)
    assert {t.name: list(t.y) for t in fig.data} == {"loss": [2.0, 1.5, 1.0], "loss_dense": [1.0]}
    rows = [{"language": "en", "mode": "dense", "ndcg@10": 0.5}, {"language": "de", "mode": "dense", "ndcg@10": 0.4},
            {"language": "en", "mode": "sparse", "ndcg@10": 0.3}]
    fig = plots.metric_bars(rows)
    assert [(t.name, list(t.y)) for t in fig.data] == [("dense", [0.5, 0.4]), ("sparse", [0.3, None])]


def test_token_labels_are_escaped_so_xlmr_specials_show():
    """Plotly reads ``<s>`` as strike-through markup: every token label is HTML-escaped once."""
    from m3lab.viz import plots
    from m3lab.viz.inspect import TokenWeight

    fig = plots.token_weight_bar([TokenWeight(0, "<s>", 0.5), TokenWeight(2, "</s>", 0.2), TokenWeight(7, "a&b", 0.1)])
    assert list(fig.data[0].y) == ["a&amp;b", "&lt;/s&gt;", "&lt;s&gt;"]
