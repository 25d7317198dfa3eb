"""Evaluation: metrics vs hand computation, rankings vs CorpusIndex.search, bitext accuracy,
the ``m3lab eval`` contract (JSON schema, table, plain models) and its errors."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from m3lab.cli import main
from m3lab.data import BitextDataset, load_mini, load_tatoeba, load_xquad
from m3lab.evaluation import (
    DEFAULT_TATOEBA,
    METRICS,
    evaluate_bitext,
    evaluate_retrieval,
    format_table,
    load_dataset,
    retrieval_metrics,
)
from m3lab.retrieval import CorpusIndex
from m3lab.modeling import M3Model

RETRIEVAL_KEYS = {"dataset", "language", "mode", "ndcg@10", "recall@10", "recall@100", "mrr@10", "n_queries",
                  "n_documents", "seconds"}


@pytest.fixture(scope="module")
def tiny_m3_dir(tmp_path_factory, tiny_bert_dir):
    """A tiny BERT with saved (seeded random) M3 heads: a model that 'has' trained heads."""
    path = tmp_path_factory.mktemp("tiny-m3-eval")
    model = M3Model.from_pretrained(tiny_bert_dir, pooling="mean", device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.sparse_linear.weight.normal_(0, 0.3, generator=g)
        model.sparse_linear.bias.fill_(0.2)
    model.heads_trained = True  # the seeded heads stand in for trained ones (m3lab_config.json records it)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_m3(tiny_m3_dir):
    return M3Model.from_pretrained(tiny_m3_dir, device="cpu")


def test_metrics_equal_hand_computation():
    qrels = {"q1": {"d1": 1, "d2": 1}, "q2": {"d3": 1}, "q3": {"d9": 1}}
    run = {"q1": {"d5": 3.0, "d1": 2.0, "d4": 1.5, "d2": 1.0},  # relevant at ranks 2 and 4
           "q2": {"d3": 0.9},                                  # relevant at rank 1
           "q3": {}}                                           # nothing retrieved: counts as 0
    dcg1 = 1 / math.log2(3) + 1 / math.log2(5)
    idcg1 = 1 + 1 / math.log2(3)
    got = retrieval_metrics(qrels, run)
    assert got["ndcg@10"] == pytest.approx((dcg1 / idcg1 + 1 + 0) / 3)
    assert got["mrr@10"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert got["recall@10"] == pytest.approx((1 + 1 + 0) / 3)
    assert got["recall@100"] == pytest.approx(2 / 3)
    # a query missing from the run entirely also counts as 0
    assert retrieval_metrics(qrels, {k: v for k, v in run.items() if k != "q3"}) == got
    # a relevant document beyond rank 10 counts for Recall@100 only
    deep = {"q": {f"x{i}": 100.0 - i for i in range(20)} | {"d": 50.0}}
    got = retrieval_metrics({"q": {"d": 1}}, deep)
    assert got["recall@10"] == 0 and got["recall@100"] == 1 and got["mrr@10"] == 0
    assert set(got) == set(METRICS)


def test_evaluate_retrieval_scores_the_index_rankings(tiny_m3):
    ds = load_mini("en")
    modes = ["dense", "sparse", "colbert", "hybrid", "bm25", "bm25-model-tokenizer"]
    rows = evaluate_retrieval(tiny_m3, ds, modes, max_length=128, show_progress=False)
    assert [r["mode"] for r in rows] == modes
    for r in rows:
        # rows of an index mode also name the index storage they were computed on
        index_key = {"index"} if r["mode"] in ("dense", "sparse", "colbert", "hybrid") else set()
        assert set(r) == RETRIEVAL_KEYS | index_key and r["dataset"] == "mini-en" and r["language"] == "en"
        assert r["n_queries"] == len(ds.queries) and r["n_documents"] == len(ds.corpus)
        assert all(0 <= r[k] <= 1 for k in METRICS)
        assert r["recall@10"] <= r["recall@100"]
    # the same numbers from CorpusIndex.search, scored independently with ir_measures
    import ir_measures

    index = CorpusIndex.build(tiny_m3, ds.corpus, max_length=128, show_progress=False)
    for row in rows[:4]:
        results = index.search([q.text for q in ds.queries], mode=row["mode"], top_k=100)
        run = {q.id: {r.doc_id: r.score for r in res} for q, res in zip(ds.queries, results)}
        expected = ir_measures.calc_aggregate(list(METRICS.values()), ds.qrels, run)
        for name, measure in METRICS.items():
            assert row[name] == pytest.approx(expected[measure], abs=1e-6), (row["mode"], name)
    # the BM25 baselines find the mini corpus's answers (questions share words with their passage)
    assert rows[4]["mrr@10"] > 0.5 and rows[5]["mrr@10"] > 0.5
    # a prebuilt index of another corpus is refused
    with pytest.raises(ValueError, match="another corpus"):
        evaluate_retrieval(index, load_mini("de"), ["dense"], show_progress=False)
    with pytest.raises(ValueError, match="need a model"):
        evaluate_retrieval(None, ds, ["dense"], show_progress=False)
    assert evaluate_retrieval(None, ds, ["bm25"])[0]["mrr@10"] == rows[4]["mrr@10"]


def test_bitext_accuracy(tiny_m3):
    sents = ["the cat sat on the mat", "paris is the capital of france", "water boils at one hundred degrees",
             "the moon orbits the earth", "music and science", "who built the first tower"]
    same = BitextDataset("toy", "xxx", sents, list(sents))
    for row in evaluate_bitext(tiny_m3, same, ["dense", "sparse", "colbert", "hybrid"], show_progress=False):
        assert row["accuracy_xx_en"] == row["accuracy_en_xx"] == row["accuracy"] == 1.0, row["mode"]
    # hand check: dense nearest neighbours of a crafted pair list, accuracy both ways
    from m3lab import scoring

    src, tgt = sents[:4], [sents[1], sents[0], sents[3], sents[2]]  # every pair misaligned
    data = BitextDataset("toy", "xxx", src, tgt)
    row, = evaluate_bitext(tiny_m3, data, ["dense"], show_progress=False)
    s = scoring.dense_scores(tiny_m3.encode(src).dense, tiny_m3.encode(tgt).dense)
    assert row["accuracy_xx_en"] == pytest.approx(np.mean(s.argmax(1) == np.arange(4)))
    assert row["accuracy_en_xx"] == pytest.approx(np.mean(s.T.argmax(1) == np.arange(4)))
    assert row["accuracy_xx_en"] == 0.0  # identical texts are never aligned here
    with pytest.raises(ValueError, match="unknown mode 'bm25'"):
        evaluate_bitext(tiny_m3, data, ["bm25"])


def test_minilm_tatoeba(data_dir, minilm_dir):
    model = M3Model.from_pretrained(minilm_dir, pooling="mean", device="cpu")
    deu = load_tatoeba("deu", data_dir=data_dir)
    sample = BitextDataset("tatoeba-deu", "deu", deu.source[:60], deu.target[:60])
    row, = evaluate_bitext(model, sample, ["dense"], max_length=64, show_progress=False)
    # an English model still aligns some German sentences (names, numbers, shared words): far above chance (1/60)
    assert row["accuracy"] > 0.1


def test_load_dataset_names(data_dir):
    cross = load_dataset("xquad-cross", "de", data_dir=data_dir)
    assert cross.query_language == "de" and cross.corpus_language == "en"
    assert [d.text for d in cross.corpus] == [d.text for d in load_xquad("en", data_dir=data_dir).corpus]
    test = load_dataset("xquad", "es", split="test", data_dir=data_dir)
    assert len(test.corpus) == 120  # articles 25-48, 5 paragraphs each
    assert len(load_dataset("xquad-long", "en", data_dir=data_dir).corpus) == 48
    assert load_dataset("tatoeba", "deu", split="test", data_dir=data_dir).language == "deu"
    with pytest.raises(ValueError, match="no train/test split"):
        load_dataset("mini", "en", split="train")


def _eval(args, capsys):
    rc = main(["eval", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_contract(tiny_m3_dir, data_dir, tmp_path, capsys):
    out_file = tmp_path / "res" / "out.json"
    rc, out, err = _eval(["--model", str(tiny_m3_dir), "--dataset", "xquad", "--languages", "en,de",
                          "--modes", "dense,sparse,colbert,hybrid,bm25", "--pooling", "mean", "--max-length", "64",
                          "--split", "test", "--data-dir", str(data_dir), "--json", str(out_file)], capsys)
    assert rc == 0, err
    results = json.loads(out_file.read_text())["results"]
    assert [(r["dataset"], r["language"], r["mode"]) for r in results] == [
        ("xquad", lang, m) for lang in ("en", "de") for m in ("dense", "sparse", "colbert", "hybrid", "bm25")]
    for r in results:
        assert RETRIEVAL_KEYS <= set(r) and r["n_documents"] == 120 and 0 <= r["ndcg@10"] <= 1
    # the table: one row per language and an average, one column per mode x metric
    assert "| dataset | language | dense nDCG@10 | dense R@10 | dense R@100 | dense MRR@10 | sparse nDCG@10" in out
    avg = np.mean([r["ndcg@10"] for r in results if r["mode"] == "hybrid"])
    assert f"{100 * avg:.2f}" in out.split("**avg**")[1]
    assert "[1/2] xquad en" in err and "[2/2] xquad de" in err


def test_cli_index_spec(tiny_m3_dir, tmp_path, capsys):
    """--index-spec builds the evaluated index with those storage options (int8 pooled multi-vectors
    here), and each row names the index it was computed on."""
    runs = {}
    for spec in (None, "compact"):
        out_file = tmp_path / f"{spec}.json"
        rc, out, err = _eval(["--model", str(tiny_m3_dir), "--dataset", "mini", "--languages", "en",
                              "--modes", "dense,colbert", "--max-length", "64", "--json", str(out_file),
                              *(["--index-spec", spec] if spec else [])], capsys)
        assert rc == 0, err
        runs[spec] = json.loads(out_file.read_text())
    assert runs["compact"]["settings"]["index_spec"] == "compact"
    exact, compact = ({r["mode"]: r for r in runs[k]["results"]} for k in (None, "compact"))
    assert exact["colbert"]["index"] == "colbert_dtype=float32"  # evaluation's exact reference
    assert compact["colbert"]["index"] == "colbert_dtype=int8,pool_factor=2"
    assert exact["dense"]["ndcg@10"] == compact["dense"]["ndcg@10"]  # dense storage is the same


def test_cli_plain_model_is_dense_only(tiny_bert_dir, tmp_path, capsys):
    out_file = tmp_path / "plain.json"
    rc, out, err = _eval(["--model", str(tiny_bert_dir), "--dataset", "mini", "--languages", "en",
                          "--modes", "dense,sparse,hybrid", "--json", str(out_file)], capsys)
    assert rc == 0, err
    assert "no trained M3 heads" in err and "skipping sparse, hybrid" in err
    assert [r["mode"] for r in json.loads(out_file.read_text())["results"]] == ["dense"]
    rc, out, err = _eval(["--model", str(tiny_bert_dir), "--dataset", "mini", "--languages", "en",
                          "--modes", "dense,sparse", "--allow-untrained-heads", "--json", str(out_file)], capsys)
    assert rc == 0 and [r["mode"] for r in json.loads(out_file.read_text())["results"]] == ["dense", "sparse"]


def test_cli_cross_lingual_and_tatoeba(tiny_m3_dir, data_dir, tmp_path, capsys, monkeypatch):
    out_file = tmp_path / "cross.json"
    built = []
    real_build = CorpusIndex.build.__func__

    def counting_build(cls, model, documents, **kw):  # the real build, counted
        built.append(len(documents))
        return real_build(cls, model, documents, **kw)

    monkeypatch.setattr(CorpusIndex, "build", classmethod(counting_build))
    rc, out, err = _eval(["--model", str(tiny_m3_dir), "--dataset", "xquad-cross", "--languages", "de,es",
                          "--modes", "dense", "--max-length", "64", "--split", "test", "--data-dir", str(data_dir),
                          "--json", str(out_file)], capsys)
    assert rc == 0, err
    rows = json.loads(out_file.read_text())["results"]
    assert [(r["language"], r["corpus_language"]) for r in rows] == [("de", "en"), ("es", "en")]
    assert built == [120]  # the English corpus is indexed once for both languages
    rc, out, err = _eval(["--model", str(tiny_m3_dir), "--dataset", "tatoeba", "--languages", "de",
                          "--modes", "dense,sparse", "--max-length", "32", "--split", "test",
                          "--data-dir", str(data_dir), "--json", str(out_file)], capsys)
    assert rc == 0, err
    rows = json.loads(out_file.read_text())["results"]
    assert [(r["dataset"], r["language"], r["mode"]) for r in rows] == [("tatoeba", "deu", "dense"),
                                                                         ("tatoeba", "deu", "sparse")]
    assert all({"accuracy", "accuracy_xx_en", "accuracy_en_xx", "n_pairs"} <= set(r) for r in rows)
    assert "acc xx→en" in out
    assert len(DEFAULT_TATOEBA) == 11 and "deu" in DEFAULT_TATOEBA


@pytest.mark.parametrize("args,message", [
    (["--dataset", "msmarco"], "unknown dataset 'msmarco'; the datasets are xquad, xquad-cross, tatoeba, xquad-long, "
                               "mini, beir:PATH"),
    (["--dataset", "xquad", "--languages", "en,xx"], "unknown language 'xx' for xquad; the languages are ar, de, el"),
    (["--dataset", "mini", "--languages", "fr"], "unknown language 'fr' for mini; the languages are en, de, es"),
    (["--dataset", "tatoeba", "--languages", "en"], "unknown language 'en' for tatoeba"),
    (["--dataset", "mini", "--modes", "dense,bm42"], "unknown mode 'bm42'; the modes are dense, sparse, colbert, "
                                                     "hybrid, bm25, bm25-model-tokenizer"),
    (["--dataset", "tatoeba", "--languages", "de", "--modes", "bm25"], "unknown mode 'bm25'"),
    (["--dataset", "beir:"], "beir:PATH needs the path"),
    (["--dataset", "beir:/nonexistent/folder", "--modes", "bm25"], "BEIR folder not found"),
    (["--dataset", "mini", "--weights", "1,2"], "--weights must be three numbers"),
    (["--dataset", "mini", "--index-spec", "pool=2"], "index spec: unknown option 'pool'"),
])
def test_cli_bad_input(args, message, capsys):
    rc, out, err = _eval(["--model", "/nonexistent/never-loaded", *args], capsys)
    assert rc == 2
    assert message in err


def test_format_table():
    rows = [{"dataset": "xquad", "language": lang, "mode": "dense", "ndcg@10": v, "recall@10": v, "recall@100": 1.0,
             "mrr@10": v} for lang, v in (("en", 0.5), ("de", 0.25))]
    rows.append({"dataset": "tatoeba", "language": "deu", "mode": "dense", "accuracy": 0.75,
                 "accuracy_xx_en": 0.7, "accuracy_en_xx": 0.8})
    table = format_table(rows)
    assert "| xquad | en | 50.00 | 50.00 | 100.00 | 50.00 |" in table
    assert "| xquad | **avg** | 37.50 | 37.50 | 100.00 | 37.50 |" in table
    assert "| dataset | language | dense acc xx→en | dense acc en→xx |\n|---|---|---:|---:|\n" \
           "| tatoeba | deu | 70.00 | 80.00 |" in table
