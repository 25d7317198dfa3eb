"""The mini corpus loader: a small fixture in tmp_path, bad records, and the real data/mini files."""
import json
from pathlib import Path

import pytest

from m3lab.data import MINI_LANGUAGES, DataError, load_mini, mini_topics
from m3lab.data.mini import mini_dir

REAL_MINI = Path(__file__).resolve().parents[1] / "data" / "mini"


def topic(topic_id: str, n_questions: int = 2, **override) -> dict:
    record = {"id": topic_id, "category": topic_id.split("-")[0],
              "title": {lang: f"{topic_id} title {lang}" for lang in MINI_LANGUAGES},
              "passages": {lang: f"{topic_id} passage in {lang}" for lang in MINI_LANGUAGES},
              "questions": {lang: [f"{topic_id} {lang} question {k}?" for k in range(n_questions)]
                            for lang in MINI_LANGUAGES}}
    record.update(override)
    return record


def write_topics(folder: Path, name: str, *records) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records),
                    encoding="utf-8")
    return path


@pytest.fixture
def mini(tmp_path) -> Path:
    write_topics(tmp_path / "mini", "topics-a.jsonl", topic("science-a"), topic("history-b", 3))
    write_topics(tmp_path / "mini", "topics-b.jsonl", topic("sport-c"))
    (tmp_path / "mini" / "README.md").write_text("not a topics file")
    return tmp_path / "mini"


def test_mini_same_language(mini):
    ds = load_mini("de", path=mini)
    assert ds.name == "mini-de" and ds.query_language == ds.corpus_language == "de"
    assert [d.id for d in ds.corpus] == ["science-a/de", "history-b/de", "sport-c/de"]
    assert ds.corpus[1].title == "history-b title de" and ds.corpus[1].language == "de"
    assert len(ds.queries) == 7 and ds.queries[2].id == "history-b/de/q0"
    assert ds.qrels["history-b/de/q2"] == {"history-b/de": 1}


def test_mini_cross_lingual_and_multilingual(mini):
    cross = load_mini("zh", corpus_language="en", path=mini)
    assert cross.name == "mini-zh-en" and {d.language for d in cross.corpus} == {"en"}
    assert cross.qrels["sport-c/zh/q1"] == {"sport-c/en": 1}
    multi = load_mini(languages=MINI_LANGUAGES, path=mini)
    assert multi.name == "mini-all" and multi.query_language is None
    assert len(multi.corpus) == 3 * 6 and len(multi.queries) == 7 * 6
    assert all(list(rels) == [f"{qid.split('/')[0]}/{qid.split('/')[1]}"] for qid, rels in multi.qrels.items())
    assert load_mini(languages=["en", "ar"], path=mini).name == "mini-en+ar"


def test_mini_dir_from_env_and_default(mini, monkeypatch):
    monkeypatch.setenv("M3LAB_MINI_DIR", str(mini))
    assert len(mini_topics()) == 3 and mini_topics()[2]["id"] == "sport-c"
    assert len(mini_topics(mini / "topics-b.jsonl")) == 1  # a single file works too
    monkeypatch.delenv("M3LAB_MINI_DIR")
    assert mini_dir() == REAL_MINI


@pytest.mark.parametrize("record, message", [
    (topic("x", questions={lang: ["q?"] for lang in MINI_LANGUAGES if lang != "zh"}), r"field 'questions.zh': missing"),
    (topic("x", questions={lang: [] for lang in MINI_LANGUAGES}), r"field 'questions.en': expected a non-empty list"),
    (topic("x", passages={**topic("x")["passages"], "ar": ""}), r"field 'passages.ar': expected a non-empty string"),
    (topic("x", title={**topic("x")["title"], "fr": "Titre"}), r"field 'passages.fr': missing"),
    (topic("x", id=""), r"field 'id': expected a non-empty string"),
    ({**topic("x"), "title": "T"}, r"field 'title': expected an object"),
    (topic("science-a"), r"field 'id': duplicate topic id 'science-a' \(first at topics-a.jsonl:1\)"),
    ('{"id": "x", "category": ', r"malformed JSON"),
])
def test_mini_bad_records_name_file_line_field(mini, record, message):
    write_topics(mini, "topics-c.jsonl", topic("fine"), record)
    with pytest.raises(DataError, match=r"topics-c.jsonl:2: " + message):
        load_mini(path=mini)


def test_mini_unknown_language_and_empty(mini, tmp_path):
    with pytest.raises(DataError, match=r"no language 'fr'; it has ar, de, en, es, ru, zh"):
        load_mini("fr", path=mini)
    with pytest.raises(DataError, match="no language 'ja'"):
        load_mini("en", corpus_language="ja", path=mini)
    with pytest.raises(DataError, match="no topics-\\*.jsonl files here"):
        load_mini(path=tmp_path / "mini" / "..")
    write_topics(tmp_path / "blank", "topics-a.jsonl")
    with pytest.raises(DataError, match="no topics"):
        load_mini(path=tmp_path / "blank")


# Asserts the corpus's real minimums (>= 60 topics, 6 languages, >= 2 questions each): it fails, on purpose,
# until the mini corpus is complete.
def test_real_mini_corpus_meets_its_minimums():
    if not list(REAL_MINI.glob("topics-*.jsonl")):
        pytest.skip(f"no topics-*.jsonl in {REAL_MINI} yet")
    topics = mini_topics(REAL_MINI)
    for lang in MINI_LANGUAGES:
        ds = load_mini(lang)
        assert len(ds.corpus) == len(topics) and len(ds.queries) >= 2 * len(topics)
    assert all(len(t["questions"][lang]) >= 2 for t in topics for lang in MINI_LANGUAGES)
    assert len(load_mini(languages=MINI_LANGUAGES).corpus) == 6 * len(topics)
    n_topics = len(topics)
    assert n_topics >= 60, f"the mini corpus has {n_topics} topics, it needs at least 60"
