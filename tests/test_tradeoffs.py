"""m3lab.evaluation.tradeoffs (what benchmarks/index_tradeoffs.py and notebook 08 run): the records'
fields, exhaustive variants at recall 1, the recall definition by hand, the goals' logic, the Pareto front."""
from __future__ import annotations

import numpy as np
import pytest

from m3lab.evaluation.tradeoffs import VARIANTS, Variant, compare_variants, overlap_recall, tradeoff_goals
from m3lab.viz.plots import pareto_front, tradeoff_scatter
from test_index import mini, tiny_m3  # noqa: F401 - test_index's fixtures, shared

FIELDS = ("corpus", "variant", "recall@10", "recall@100", "ndcg@10", "p50_ms", "p95_ms", "bytes_per_doc", "build_s")


def test_compare_variants_on_the_mini_corpus(tiny_m3, mini):
    wanted = [v for v in VARIANTS if v.name in ("exhaustive-colbert", "exhaustive-hybrid", "colbert-int8",
                                                 "muvera-fp16-c100", "dense-binary", "sparse-top32")]
    queries = [(q.id, q.text) for q in mini.queries]
    records = compare_variants(tiny_m3, "mini", mini.corpus, queries, mini.qrels, variants=wanted, n_queries=10,
                               n_latency=2, log=lambda s: None)
    assert [r["variant"] for r in records] == [v.name for v in wanted]
    for r in records:
        assert all(f in r for f in FIELDS)
        assert 0 <= r["recall@10"] <= r["recall@100"] <= 1 and 0 <= r["ndcg@10"] <= 1
        assert r["p50_ms"] <= r["p95_ms"] and r["bytes_per_doc"] > 0
    by = {r["variant"]: r for r in records}
    assert by["exhaustive-colbert"]["recall@10"] == 1.0 and by["exhaustive-hybrid"]["recall@10"] == 1.0
    # int8 multi-vectors take about a quarter of float32 (d + 4 bytes per vector instead of 4d)
    d = tiny_m3.colbert_linear.out_features
    ratio = by["exhaustive-colbert"]["bytes_per_doc"] / by["colbert-int8"]["bytes_per_doc"]
    assert ratio == pytest.approx(4 * d / (d + 4), rel=0.02)
    # the mini corpus has fewer than 100 documents: MUVERA's 100 candidates are all of them
    assert by["muvera-fp16-c100"]["recall@100"] == 1.0


def test_overlap_recall_by_hand():
    ref = np.array([list(range(10)) + [50] * 5])
    got = np.array([[0, 1, 2, 99, 98, 97, 96, 95, 94, 93, 3, 4, 5, -1, -1]])
    assert overlap_recall(got, ref, 10) == pytest.approx(3 / 10)
    assert overlap_recall(got, ref, 100) == pytest.approx(6 / 10)


def _rec(corpus, variant, mode, **kw):
    return {"corpus": corpus, "variant": variant, "mode": mode, "recall@10": 1.0, "recall@100": 1.0,
            "ndcg@10": 0.9, "p50_ms": 100.0, "p95_ms": 100.0, "bytes_per_doc": 1000.0,
            "bytes_per_doc_by_function": {"colbert": 1000.0}, **kw}


def test_goals_met_and_not_met():
    records = [
        _rec("haystack", "exhaustive-colbert", "colbert", p50_ms=1000.0),
        _rec("haystack", "muvera-a", "colbert", **{"recall@100": 0.96, "p50_ms": 50.0}),
        _rec("xquad", "exhaustive-colbert", "colbert", **{"ndcg@10": 0.90}),
        _rec("xquad", "colbert-small", "colbert", **{"ndcg@10": 0.893, "bytes_per_doc_by_function": {"colbert": 240.0}}),
        _rec("xquad", "dense-float32", "dense", **{"ndcg@10": 0.80}),
        _rec("xquad", "dense-binary", "dense", **{"ndcg@10": 0.70}),
    ]
    goals = {text.split(":")[0].split(" (")[0]: met for text, met, _ in tradeoff_goals(records)}
    assert goals["MUVERA first stage"] is True
    assert goals["multi-vector store >= 4x smaller than float32, nDCG@10 <= 1 point lower"] is True
    assert goals["binary dense with rescoring >= 95 % of float nDCG@10"] is False  # 0.70 / 0.80 = 87.5 %
    records[1]["p50_ms"] = 200.0  # only 5x faster
    assert tradeoff_goals(records)[0][1] is False
    assert isinstance(VARIANTS[0], Variant)


def test_pareto_front_and_scatter():
    pts = [(1.0, 0.5), (2.0, 0.7), (1.5, 0.4), (3.0, 0.7), (4.0, 0.9)]
    assert pareto_front(pts) == [0, 1, 4]
    fig = tradeoff_scatter([{"variant": f"v{i}", "mode": "colbert", "p50_ms": x, "ndcg@10": y}
                            for i, (x, y) in enumerate(pts)])
    assert list(fig.data[-1].x) == [1.0, 2.0, 4.0]
