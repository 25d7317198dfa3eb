"""m3lab.data file formats on fixtures written to tmp_path: records, plain corpora, BEIR, training files,
hard-negative mining and the download/cache path (file:// URLs, no network)."""
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from m3lab.data import (DataError, Document, Query, RetrievalDataset, TrainingExample, bm25_tokenize, download,
                        iter_training_file, load_beir, load_corpus, mine_hard_negatives, read_training_file,
                        resolve_data_file, write_training_file)
from m3lab.data import sources


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def jsonl(*objs) -> str:
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs)


# ----------------------------------------------------------------------------- records

def test_data_error_names_file_line_and_field():
    e = DataError("expected a list of strings", path="train.jsonl", line=3, field="pos")
    assert str(e) == "train.jsonl:3: field 'pos': expected a list of strings"
    assert isinstance(e, ValueError) and str(pickle.loads(pickle.dumps(e))) == str(e)
    assert str(DataError("bad", field="neg").at("f.jsonl", 7)) == "f.jsonl:7: field 'neg': bad"


def test_retrieval_dataset_validates():
    docs, queries = [Document("d1", "a"), Document("d2", "b")], [Query("q1", "x")]
    ds = RetrievalDataset("t", docs, queries, {"q1": {"d2": 1}})
    assert "2 docs" in repr(ds)
    with pytest.raises(DataError, match="corpus is empty"):
        RetrievalDataset("t", [], queries, {})
    with pytest.raises(DataError, match="duplicate document id 'd1'"):
        RetrievalDataset("t", [docs[0], docs[0]], queries, {})
    with pytest.raises(DataError, match="duplicate query id 'q1'"):
        RetrievalDataset("t", docs, queries * 2, {})
    with pytest.raises(DataError, match="query 'q9'"):
        RetrievalDataset("t", docs, queries, {"q9": {"d1": 1}})
    with pytest.raises(DataError, match="document 'd9'"):
        RetrievalDataset("t", docs, queries, {"q1": {"d9": 1}})


# ----------------------------------------------------------------------------- plain corpora

def test_load_corpus_txt_lines_and_paragraphs(tmp_path):
    lines = load_corpus(write(tmp_path / "a.txt", "first doc\nsecond doc\r\n  \nthird\n"), format="lines")
    assert [d.text for d in lines] == ["first doc", "second doc", "third"]
    docs = load_corpus(write(tmp_path / "b.txt", "\ufeffone line\nstill one\n\n  \ntwo\n"), language="en")
    assert [(d.id, d.text, d.language) for d in docs] == [("doc-0", "one line\nstill one", "en"),
                                                          ("doc-1", "two", "en")]
    assert [d.text for d in load_corpus(write(tmp_path / "c.txt", "x\ny\nz"))] == ["x", "y", "z"]


def test_load_corpus_jsonl_csv_tsv(tmp_path):
    docs = load_corpus(write(tmp_path / "c.jsonl", jsonl({"id": "a", "text": "Alpha", "title": "T", "lang": "de"},
                                                         {"text": "Beta"}, {"_id": 7, "text": "Gamma"})))
    assert docs == [Document("a", "Alpha", "de", "T"), Document("doc-1", "Beta"), Document("7", "Gamma")]
    csv_docs = load_corpus(write(tmp_path / "c.csv", 'id,body,language\nx,"Hello, world",en\ny,"multi\nline",\n'),
                           text_column="body", language="fr")
    assert csv_docs == [Document("x", "Hello, world", "en"), Document("y", "multi\nline", "fr")]
    tsv = load_corpus(write(tmp_path / "c.data", 'text\ttitle\n"foo" is\tF\n'), format="tsv")
    assert tsv == [Document("doc-0", '"foo" is', None, "F")]  # TSV quotes are text


@pytest.mark.parametrize("name, content, kwargs, message", [
    ("missing.txt", None, {}, r"missing.txt: file not found"),
    ("bad.jsonl", jsonl({"text": "ok"}) + '{"text": "no end"\n', {}, r"bad.jsonl:2: malformed JSON"),
    ("list.jsonl", "[1, 2]\n", {}, r"list.jsonl:1: expected a JSON object"),
    ("notext.jsonl", jsonl({"text": "ok"}, {"body": "x"}), {}, r"notext.jsonl:2: field 'text': missing"),
    ("blank.jsonl", jsonl({"text": "ok"}, {"text": "  "}), {}, r"blank.jsonl:2: field 'text': is empty"),
    ("num.jsonl", jsonl({"text": 5}), {}, r"num.jsonl:1: field 'text': expected a string, got int"),
    ("nocol.csv", "id,body\n1,x\n", {},
     r"nocol.csv:1: field 'text': no column 'text' in the header \(columns: id, body\)"),
    ("short.csv", "id,text\n1,x\n2\n", {}, r"short.csv:3: field 'text': is empty"),
    ("empty.txt", "\n  \n\n", {}, r"empty.txt: no documents"),
    ("empty.jsonl", "", {}, r"empty.jsonl: no documents"),
    ("dup.jsonl", jsonl({"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "a", "text": "z"}), {},
     r"dup.jsonl:3: field 'id': duplicate id 'a' \(first on line 1\)"),
    ("dup.csv", "id,text\na,x\na,y\n", {}, r"dup.csv:3: field 'id': duplicate id 'a'"),
    ("bytes.txt", b"fine\n\xff\xfe broken\n", {}, r"bytes.txt:2: not valid UTF-8 \(byte 0xff"),
    ("bytes.jsonl", b'{"text": "a"}\n{"text": "\xe9"}\n', {}, r"bytes.jsonl:2: not valid UTF-8"),
    ("corpus.xml", "<a/>", {}, r"corpus.xml: cannot tell the format from the suffix '.xml'"),
    ("c.txt", "x", {"format": "parquet"}, r"c.txt: cannot read format 'parquet'"),
    ("huge.csv", "text\n" + "x" * 200_000 + "\n", {}, r"huge.csv:2: malformed CSV \(field larger"),
])
def test_load_corpus_bad_input(tmp_path, name, content, kwargs, message):
    path = tmp_path / name if content is None else write(tmp_path / name, content)
    with pytest.raises(DataError, match=message):
        load_corpus(path, **kwargs)


# ----------------------------------------------------------------------------- BEIR

@pytest.fixture
def beir_dir(tmp_path) -> Path:
    root = tmp_path / "mybench"
    write(root / "corpus.jsonl", jsonl({"_id": "d1", "title": "Cats", "text": "Cats purr."},
                                       {"_id": "d2", "title": "", "text": "Dogs bark.", "metadata": {}},
                                       {"_id": "d3", "title": "Only a title", "text": ""}))
    write(root / "queries.jsonl", jsonl({"_id": "q1", "text": "purring animal"}, {"_id": "q2", "text": "barking"},
                                        {"_id": "q3", "text": "not judged"}))
    write(root / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq2\td1\t0\n")
    write(root / "qrels" / "dev.tsv", "q3\td3\t1\n")
    return root


def test_load_beir(beir_dir):
    ds = load_beir(beir_dir, language="en")
    assert ds.name == "mybench" and [d.id for d in ds.corpus] == ["d1", "d2", "d3"]
    assert ds.corpus[0].title == "Cats" and ds.corpus[1].title is None and ds.corpus[2].text == ""
    assert [q.id for q in ds.queries] == ["q1", "q2"]  # only judged queries, as in BEIR
    assert ds.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2, "d1": 0}}
    assert load_beir(beir_dir, split="dev").qrels == {"q3": {"d3": 1}}  # no header line


@pytest.mark.parametrize("path, content, message", [
    ("qrels/test.tsv", "q1\td9\t1\n", r"test.tsv:1: field 'corpus-id': document 'd9' is not in corpus.jsonl"),
    ("qrels/test.tsv", "h\th\th\nq9\td1\t1\n", r"test.tsv:2: field 'query-id': query 'q9'"),
    ("qrels/test.tsv", "q1\td1\t1\nq1\td1\tx\n", r"test.tsv:2: field 'score': expected an integer"),
    ("qrels/test.tsv", "q1\td1\n", r"test.tsv:1: expected 3 tab-separated columns"),
    ("corpus.jsonl", jsonl({"_id": "d1", "text": "a"}, {"text": "b"}), r"corpus.jsonl:2: field '_id': missing"),
    ("corpus.jsonl", jsonl({"_id": "d1", "text": "a"}, {"_id": "d1", "text": "b"}),
     r"corpus.jsonl:2: field 'id': duplicate"),
    ("queries.jsonl", "", r"queries.jsonl: no queries"),
])
def test_load_beir_bad_input(beir_dir, path, content, message):
    write(beir_dir / path, content)
    with pytest.raises(DataError, match=message):
        load_beir(beir_dir)


def test_load_beir_missing_parts(beir_dir, tmp_path):
    with pytest.raises(DataError, match=r"no qrels for split 'train' \(splits here: dev, test\)"):
        load_beir(beir_dir, split="train")
    with pytest.raises(DataError, match="BEIR folder not found"):
        load_beir(tmp_path / "nope")
    (beir_dir / "corpus.jsonl").unlink()
    with pytest.raises(DataError, match=r"corpus.jsonl: file not found"):
        load_beir(beir_dir)


# ----------------------------------------------------------------------------- training files

def test_training_file_round_trip(tmp_path):
    examples = [TrainingExample("was ist M3?", ["Ein Modell.", "多语言"], ["Eine Katze."]),
                TrainingExample("q", ["p"], [], pos_scores=[0.9], neg_scores=[], prompt="Represent: ")]
    path = tmp_path / "sub" / "train.jsonl"
    write_training_file(path, examples + [{"query": "d", "pos": ["x"], "neg": ["y"], "type": "normal"}])
    assert read_training_file(path) == examples + [TrainingExample("d", ["x"], ["y"])]
    assert list(iter_training_file(path)) == read_training_file(path)
    first = json.loads(path.read_text(encoding="utf-8").split("\n")[0])
    assert first == {"query": "was ist M3?", "pos": ["Ein Modell.", "多语言"], "neg": ["Eine Katze."]}
    assert "多语言" in path.read_text(encoding="utf-8")  # written as UTF-8, not \\u escapes


@pytest.mark.parametrize("line, message", [
    ('{"query": "q", "pos": ["p"], "neg": ["n"]', r"malformed JSON"),
    ('{"query": "q", "neg": ["n"]}', r"field 'pos': missing"),
    ('{"query": "q", "pos": [], "neg": []}', r"field 'pos': expected at least one passage"),
    ('{"query": "q", "pos": "p", "neg": []}', r"field 'pos': expected a list of strings"),
    ('{"query": "q", "pos": ["p"], "neg": [1]}', r"field 'neg': expected a list of strings"),
    ('{"query": "", "pos": ["p"], "neg": []}', r"field 'query': expected a non-empty string"),
    ('{"query": "q", "pos": ["p"], "neg": ["n"], "neg_scores": [1, 2]}', r"field 'neg_scores': has 2 scores for 1"),
    ('{"query": "q", "pos": ["p"], "neg": [], "pos_scores": [true]}', r"field 'pos_scores': expected a list of finite"),
    ('{"query": "q", "pos": ["p"], "neg": [], "prompt": 3}', r"field 'prompt': expected a string"),
    ('["q", ["p"], []]', r"expected a JSON object, got list"),
])
def test_training_file_validation_names_file_line_field(tmp_path, line, message):
    path = write(tmp_path / "train.jsonl", '{"query": "ok", "pos": ["p"], "neg": []}\n\n' + line + "\n")
    with pytest.raises(DataError, match=r"train.jsonl:3: " + message):
        read_training_file(path)
    streamed = iter_training_file(path)
    assert next(streamed).query == "ok"  # streaming reads the good line before failing on the bad one
    with pytest.raises(DataError, match=r"train.jsonl:3: "):
        next(streamed)


def test_training_file_missing_or_empty(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        read_training_file(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="empty.jsonl: no training examples"):
        read_training_file(write(tmp_path / "empty.jsonl", "\n"))


def test_write_training_file_is_atomic(tmp_path):
    path = tmp_path / "train.jsonl"
    write_training_file(path, [TrainingExample("old", ["p"], [])])
    before = path.read_bytes()
    bad = TrainingExample("q", ["p"], [])
    bad.pos = []  # broken after construction: caught when written
    with pytest.raises(DataError, match=r"train.jsonl: field 'pos': example 1: expected at least one passage"):
        write_training_file(path, [TrainingExample("new", ["p"], []), bad])

    def failing():
        yield TrainingExample("new", ["p"], [])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_training_file(path, failing())
    with pytest.raises(DataError, match="no training examples to write"):
        write_training_file(tmp_path / "none.jsonl", [])
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]


# ----------------------------------------------------------------------------- mining

def test_bm25_tokenize_handles_scripts_without_spaces():
    assert bm25_tokenize("Größe, 2024!") == ["größe", "2024"]
    assert bm25_tokenize("北京大学") == ["北京", "京大", "大学"] and bm25_tokenize("猫") == ["猫"]
    assert bm25_tokenize("हिन्दी भाषा") == ["हिन्दी", "भाषा"]  # vowel signs stay inside the word
    assert bm25_tokenize("ABC中文") == ["abc", "中文"]


def test_mine_hard_negatives_bm25():
    corpus = ["the cat sat on the mat", "a cat and a dog", "the cat sat on the mat", "dogs bark loudly",
              "stock markets fell", "the cat likes the mat", "rain in spain", "quantum physics"]
    negs = mine_hard_negatives(["cat sat on a mat", "unrelated zebra"], [0, [6, 7]], corpus, n_negatives=3)
    assert set(negs[0][:2]) == {1, 5}  # they share "cat", "mat" or "a"; index 2 repeats the positive's text
    assert 2 not in negs[0] and 0 not in negs[0] and len(negs[0]) == 3
    assert len(negs[1]) == 3 and not {6, 7} & set(negs[1])  # nothing shares a term: random fill
    assert mine_hard_negatives(["unrelated zebra"], [6], corpus, seed=1) == \
        mine_hard_negatives(["unrelated zebra"], [6], corpus, seed=1)
    assert len(mine_hard_negatives(["x"], [0], corpus[:3], n_negatives=5)[0]) == 1  # only 1 other distinct text
    with pytest.raises(ValueError, match="not indices"):
        mine_hard_negatives(["x"], [8], corpus)
    with pytest.raises(ValueError, match="unknown miner"):
        mine_hard_negatives(["x"], [0], corpus, miner="splade")


def test_mine_hard_negatives_callable_and_sample_range():
    corpus = [f"doc {i}" for i in range(30)]
    scores = lambda qs, ds: np.tile(-np.arange(len(ds), dtype=np.float32), (len(qs), 1))  # noqa: E731  doc 0 best
    assert mine_hard_negatives(["q"], [1], corpus, n_negatives=4, miner=scores) == [[0, 2, 3, 4]]
    sampled = mine_hard_negatives(["q"] * 2, [1, 1], corpus, n_negatives=4, miner=scores, sample_range=(5, 15), seed=0)
    candidates = [i for i in range(30) if i != 1][5:15]
    assert all(len(s) == 4 and set(s) <= set(candidates) for s in sampled)
    with pytest.raises(ValueError, match="shape"):
        mine_hard_negatives(["q"], [1], corpus, miner=lambda qs, ds: np.zeros((2, 2)))


# ----------------------------------------------------------------------------- sources and downloads

@pytest.fixture
def remote(tmp_path, monkeypatch):
    """A fake canonical source (a file:// folder) and an empty user cache."""
    src = tmp_path / "remote"
    data = b'{"data": []}\n' * 1000
    write(src / "xquad.en.json", data)
    table = {"xquad": {"url": src.as_uri() + "/{filename}",
                       "files": {"xquad.en.json": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}}}}
    monkeypatch.setattr(sources, "checksums", lambda: table)
    monkeypatch.delenv("M3LAB_DATA_DIR", raising=False)
    monkeypatch.setenv("M3LAB_CACHE_DIR", str(tmp_path / "cache"))
    return src, table, data


def test_resolve_downloads_once_into_the_cache(remote, tmp_path):
    src, _, data = remote
    path = resolve_data_file("xquad", "xquad.en.json")
    assert path == tmp_path / "cache" / "datasets" / "xquad" / "xquad.en.json" and path.read_bytes() == data
    (src / "xquad.en.json").unlink()
    assert resolve_data_file("xquad", "xquad.en.json") == path  # served from the cache now
    with pytest.raises(DataError, match="unknown xquad file 'xquad.xx.json'"):
        resolve_data_file("xquad", "xquad.xx.json")


@pytest.mark.parametrize("field, value, message", [("sha256", "0" * 64, "SHA-256 mismatch"),
                                                   ("size", 5, "expected 5")])
def test_bad_download_leaves_nothing_in_the_cache(remote, tmp_path, field, value, message):
    _, table, _ = remote
    table["xquad"]["files"]["xquad.en.json"][field] = value
    with pytest.raises(DataError, match=message):
        resolve_data_file("xquad", "xquad.en.json")
    cached = tmp_path / "cache" / "datasets" / "xquad"
    assert list(cached.iterdir()) == []  # no partial file, no corrupt file


def test_download_errors(tmp_path):
    with pytest.raises(DataError, match="could not download"):
        download((tmp_path / "absent.json").as_uri(), tmp_path / "out" / "x.json", progress=False)
    assert not (tmp_path / "out" / "x.json").exists()
    src = write(tmp_path / "f.bin", b"abc")
    out = download(src.as_uri(), tmp_path / "out" / "f.bin", expected_size=3,
                   sha256=hashlib.sha256(b"abc").hexdigest(), progress=False)
    assert out.read_bytes() == b"abc" and sorted(p.name for p in out.parent.iterdir()) == ["f.bin"]


def test_data_dir_env_is_final(tmp_path, monkeypatch):
    monkeypatch.setenv("M3LAB_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="not found in M3LAB_DATA_DIR"):
        resolve_data_file("xquad", "xquad.en.json")
