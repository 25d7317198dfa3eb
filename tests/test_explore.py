"""The Evaluate view's analysis (m3lab.evaluation.explore) against m3lab eval's own numbers and rankings."""
from __future__ import annotations

import numpy as np
import pytest

from m3lab.data import load_mini
from m3lab.evaluation import evaluate_retrieval
from m3lab.evaluation.explore import EXPLORE_MODES, explore_retrieval, fusion_sweep
from m3lab.retrieval import CorpusIndex
from test_index import tiny_m3  # noqa: F401 - test_index's fixture, shared

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset():
    return load_mini(languages=["en", "de"])


@pytest.fixture(scope="module")
def index(tiny_m3, dataset):
    return CorpusIndex.build(tiny_m3, dataset.corpus, colbert_dtype="float32", show_progress=False)


@pytest.fixture(scope="module")
def report(index, dataset):
    return explore_retrieval(index, dataset)


def test_the_table_is_m3lab_evals_numbers_per_language(report, index, dataset):
    rows = {(r["language"], r["mode"]): r for r in report.table}
    assert {lang for lang, _ in rows} == {"en", "de", "all"} and {m for _, m in rows} == set(EXPLORE_MODES)
    reference = {r["mode"]: r for r in evaluate_retrieval(index, dataset, list(EXPLORE_MODES), show_progress=False)}
    for mode in EXPLORE_MODES:
        for metric in ("ndcg@10", "mrr@10", "recall@10", "recall@100"):
            assert rows[("all", mode)][metric] == pytest.approx(reference[mode][metric], abs=1e-12), (mode, metric)
            # the overall mean is the query-weighted mean of the languages'
            parts = [rows[(lang, mode)] for lang in ("en", "de")]
            pooled = sum(p[metric] * p["n_queries"] for p in parts) / sum(p["n_queries"] for p in parts)
            assert pooled == pytest.approx(rows[("all", mode)][metric], abs=1e-12)


def test_gold_ranks_are_where_search_puts_the_relevant_document(report, index, dataset):
    rows = report.gold_ranks[:12]
    for row in rows:
        relevant = {d for d, v in dataset.qrels[row["query_id"]].items() if v > 0}
        for mode in ("dense", "sparse", "colbert", "hybrid"):
            ids = [r.doc_id for r in index.search(row["query"], mode=mode, top_k=100)]
            expected = next((i + 1 for i, d in enumerate(ids) if d in relevant), None)
            assert row[mode] == expected, (row["query_id"], mode)


def test_overlap_of_the_modes_top_k(report):
    m = report.overlap(k=10)
    assert m.shape == (5, 5) and np.allclose(np.diag(m), 1) and np.allclose(m, m.T)
    a, b = report.modes.index("dense"), report.modes.index("hybrid")
    by_hand = np.mean([len(set(report.rankings["dense"][q][:10]) & set(report.rankings["hybrid"][q][:10])) / 10
                       for q in report.query_ids])
    assert m[a, b] == pytest.approx(by_hand) and 0 <= m.min() <= m.max() <= 1


def test_fusion_sweep_points_are_hybrid_evaluations(index, dataset):
    sweep = fusion_sweep(index, dataset, w_sparse=[0.0, 0.3], w_colbert=[0.0, 1.0])
    reference = lambda w: evaluate_retrieval(index, dataset, ["hybrid"], weights=w,  # noqa: E731
                                             show_progress=False)[0]["ndcg@10"]
    assert sweep.ndcg[1, 1] == pytest.approx(reference((1.0, 0.3, 1.0)), abs=1e-12)
    assert sweep.ndcg[0, 1] == pytest.approx(reference((1.0, 0.0, 1.0)), abs=1e-12)
    w_s, w_c, best = sweep.best
    assert best == pytest.approx(np.nanmax(sweep.ndcg)) and (w_s, w_c) in [(s, c) for s in (0, 0.3) for c in (0, 1)]


def test_hybrid_grid_rankings_equal_one_rank_per_weight_setting(index, dataset):
    """rank_hybrid_grid shares candidates and score matrices across weights; each ranking must be exactly
    rank()'s, including settings that draw candidates from dense alone (w_sparse = 0) or skip MaxSim."""
    q = index.encode_queries([x.text for x in dataset.queries], components=index.stored, show_progress=False)
    grid = [(1.0, 0.3, 1.0), (1.0, 0.0, 1.0), (1.0, 0.5, 0.0), (0.0, 1.0, 0.5), (1.0, 0.0, 0.0)]
    for w, got in zip(grid, index.rank_hybrid_grid(q, grid, top_k=10, candidates=20)):
        ref = index.rank(q, ["hybrid"], top_k=10, weights=w, candidates=20)["hybrid"]
        np.testing.assert_array_equal(got.indices, ref.indices)
        np.testing.assert_array_equal(got.scores, ref.scores)


def test_bad_requests_are_refused(index, dataset):
    with pytest.raises(ValueError, match="unknown mode"):
        explore_retrieval(index, dataset, ["bm42"])
    with pytest.raises(ValueError, match="another corpus"):
        explore_retrieval(index, load_mini(languages=["en"]))


def test_compare_rankings_lists_both_top_k_and_their_agreement():
    from m3lab.evaluation.explore import compare_rankings

    c = compare_rankings(["a", "b", "c", "d"], ["c", "a", "e", "b"])
    assert [(x.doc_id, x.rank_a, x.rank_b, x.moved) for x in c.changes] == [
        ("c", 3, 1, 2), ("a", 1, 2, -1), ("e", None, 3, None), ("b", 2, 4, -2), ("d", 4, None, None)]
    assert c.overlap == 0.75
    from scipy.stats import spearmanr

    assert c.rank_correlation == pytest.approx(spearmanr([3, 1, 2], [1, 2, 4]).statistic)
    assert compare_rankings(["a"], ["a"]).rank_correlation is None
    with pytest.raises(ValueError, match="twice"):
        compare_rankings(["a", "a"], ["b"])
