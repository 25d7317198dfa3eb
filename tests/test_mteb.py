"""The MTEB wrappers (issue 15, part 3): MTEB's own XQuADRetrieval evaluation (its task, evaluator and
pytrec_eval scoring) through m3lab's wrappers gives ``m3lab eval``'s numbers, mode by mode, offline on
the local XQuAD files.

MTEB reports every metric rounded to 5 decimals, so "equal" is within 5e-6 (``ROUNDED``). The
search model ranks with the same CorpusIndex as ``m3lab eval`` (only the document ids differ,
MTEB's being the SHA-256 of each paragraph), so its metrics must be equal. The dense encoder is
searched by MTEB's own code (torch matrix product and top-k), whose scores differ from m3lab's
faiss ones by float32 rounding; that could swap two documents whose scores tie to ~1e-7 and move
a metric by up to 1/n_queries, so those are compared to 1e-3 (~1 query of ~1,190). Through Qdrant
the same holds for the engine's float32 sums.
"""
from __future__ import annotations

import pytest

import mteb  # noqa: F401 - fail loudly when the extra is missing: CI installs it

from m3lab.data import load_xquad
from m3lab.evaluation import evaluate_retrieval
from m3lab.evaluation.mteb import M3DenseEncoder, M3SearchModel, local_xquad_task, mteb_xquad
from test_index import make_tiny_m3

pytestmark = pytest.mark.usefixtures("one_thread")

LANGUAGES = ("en", "de")
METRICS = {"ndcg@10": "ndcg_at_10", "recall@10": "recall_at_10", "recall@100": "recall_at_100", "mrr@10": "mrr_at_10"}
MAX_LENGTH = 128
ROUNDED = 5e-6  # MTEB's 5-decimal rounding


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_xlmr_dir):
    return make_tiny_m3(tmp_path_factory.mktemp("tiny-xlmr-m3"), tiny_xlmr_dir, seed=2)


@pytest.fixture(scope="module")
def m3lab_numbers(model, data_dir):
    out = {}
    for lang in LANGUAGES:
        rows = evaluate_retrieval(model, load_xquad(lang, data_dir=data_dir), ["dense", "sparse", "colbert", "hybrid"],
                                  max_length=MAX_LENGTH, show_progress=False)
        out[lang] = {r["mode"]: r for r in rows}
    return out


def run_mteb(wrapper, data_dir) -> dict[str, dict]:
    result = mteb.evaluate(wrapper, local_xquad_task(data_dir, LANGUAGES), cache=None, show_progress_bar=False)
    return {s["hf_subset"]: s for s in result.task_results[0].scores["validation"]}


def test_mteb_construction_is_m3labs_xquad(data_dir):
    """Same paragraphs, questions and judgements as m3lab's loader (ids aside): the numbers compare like with like."""
    for lang in LANGUAGES:
        ds = load_xquad(lang, data_dir=data_dir)
        corpus, queries, qrels = mteb_xquad(data_dir / "xquad" / f"xquad.{lang}.json")
        assert sorted(d.text for d in ds.corpus) == sorted(v["text"] for v in corpus.values())
        text_of = {d.id: d.text for d in ds.corpus}
        ours = {q.text: {text_of[d] for d in ds.qrels[q.id]} for q in ds.queries}
        theirs = {queries[q]: {corpus[d]["text"] for d in rel} for q, rel in qrels.items()}
        assert ours == theirs


@pytest.mark.parametrize("mode", ["dense", "sparse", "colbert", "hybrid"])
def test_search_model_gives_m3lab_evals_numbers(model, data_dir, m3lab_numbers, mode):
    theirs = run_mteb(M3SearchModel(model, mode=mode, max_length=MAX_LENGTH), data_dir)
    for lang in LANGUAGES:
        for ours_key, mteb_key in METRICS.items():
            assert theirs[lang][mteb_key] == pytest.approx(m3lab_numbers[lang][mode][ours_key], abs=ROUNDED), \
                (lang, mode, ours_key)


def test_dense_encoder_gives_m3lab_evals_numbers(model, data_dir, m3lab_numbers):
    theirs = run_mteb(M3DenseEncoder(model, max_length=MAX_LENGTH), data_dir)
    for lang in LANGUAGES:
        for ours_key, mteb_key in METRICS.items():
            assert theirs[lang][mteb_key] == pytest.approx(m3lab_numbers[lang]["dense"][ours_key], abs=1e-3), \
                (lang, ours_key)


def test_search_model_through_qdrant(model, data_dir, m3lab_numbers, tmp_path):
    theirs = run_mteb(M3SearchModel(model, mode="hybrid", max_length=MAX_LENGTH, backend="qdrant",
                                    qdrant_path=tmp_path), data_dir)
    for lang in LANGUAGES:
        assert theirs[lang]["ndcg_at_10"] == pytest.approx(m3lab_numbers[lang]["hybrid"]["ndcg@10"], abs=1e-3)


def test_bad_wrapper_arguments_are_refused(model):
    with pytest.raises(ValueError, match="unknown mode"):
        M3SearchModel(model, mode="bm25")
    with pytest.raises(ValueError, match="backend"):
        M3SearchModel(model, backend="milvus")
