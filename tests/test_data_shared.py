"""m3lab.data on the public data sets of ../shared/data (XQuAD, Tatoeba): loaders, splits, builders, checksums."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from m3lab.data import (TATOEBA_LANGUAGES, XQUAD_LANGUAGES, DataError, build_tatoeba_training, build_xquad_training,
                        load_tatoeba, load_xquad, load_xquad_long, mine_hard_negatives)
from m3lab.data.sources import checksums

# data_dir: the session fixture of tests/conftest.py (../shared/data or $M3LAB_DATA_DIR, else skip).


def raw_xquad(data_dir: Path, lang: str) -> list[dict]:
    return json.loads((data_dir / "xquad" / f"xquad.{lang}.json").read_text(encoding="utf-8"))["data"]


# ----------------------------------------------------------------------------- XQuAD

@pytest.mark.parametrize("lang", XQUAD_LANGUAGES)
def test_xquad_is_built_like_mteb(data_dir, lang):
    ds = load_xquad(lang)
    raw = raw_xquad(data_dir, lang)
    questions = [(a, p, qa) for a, art in enumerate(raw)
                 for p, para in enumerate(art["paragraphs"]) for qa in para["qas"]]
    assert len(ds.corpus) == len({d.text for d in ds.corpus}) == 240
    assert len(ds.queries) == len({qa["question"] for _, _, qa in questions})
    assert 1180 <= len(ds.queries) <= 1190 and len(ds.qrels) == len(ds.queries)
    assert {d.language for d in ds.corpus} == {q.language for q in ds.queries} == {lang}
    # Every question's paragraph is relevant to its (deduplicated) query and contains its answer.
    docs = {d.id: d.text for d in ds.corpus}
    query_of = {q.text: q.id for q in ds.queries}
    for a, p, qa in questions:
        rels = ds.qrels[query_of[qa["question"]]]
        assert rels[f"p{a}_{p}"] == 1
        assert any(ans["text"] in docs[f"p{a}_{p}"] for ans in qa["answers"])
    assert all(set(r.values()) == {1} for r in ds.qrels.values())


def test_xquad_deduplicates_questions_keeping_the_first_id(data_dir):
    ds = load_xquad("en")
    first_id, paragraphs = {}, {}
    for a, art in enumerate(raw_xquad(data_dir, "en")):
        for p, para in enumerate(art["paragraphs"]):
            for qa in para["qas"]:
                first_id.setdefault(qa["question"], qa["id"])
                paragraphs.setdefault(qa["question"], set()).add(f"p{a}_{p}")
    assert {q.text: q.id for q in ds.queries} == first_id
    assert {q.text: set(ds.qrels[q.id]) for q in ds.queries} == paragraphs
    assert len(ds.queries) < 1190  # repeated question strings exist (within one paragraph in the real files)


def test_xquad_question_asked_of_two_paragraphs_is_one_query(tmp_path):
    def para(context, *qas):
        return {"context": context, "qas": [{"id": i, "question": q, "answers": []} for i, q in qas]}
    data = {"data": [{"title": "A", "paragraphs": [para("one", ("q1", "Who?"), ("q2", "Why?")),
                                                   para("two", ("q3", "Who?"))]},
                     {"title": "B", "paragraphs": [para("three", ("q4", "When?"))]}]}
    (tmp_path / "xquad").mkdir()
    for lang in ("en", "de"):
        (tmp_path / "xquad" / f"xquad.{lang}.json").write_text(json.dumps(data), encoding="utf-8")
    ds = load_xquad("en", data_dir=tmp_path, n_train_articles=1)
    assert [(q.id, q.text) for q in ds.queries] == [("q1", "Who?"), ("q2", "Why?"), ("q4", "When?")]
    assert ds.qrels == {"q1": {"p0_0": 1, "p0_1": 1}, "q2": {"p0_0": 1}, "q4": {"p1_0": 1}}
    assert load_xquad_long("de", data_dir=tmp_path).qrels["q1"] == {"a0": 1}
    assert [d.id for d in load_xquad("en", split="test", data_dir=tmp_path, n_train_articles=1).corpus] == ["p1_0"]


def test_xquad_split_by_article_is_identical_across_languages(data_dir):
    train, test = load_xquad("en", split="train"), load_xquad("en", split="test")
    assert len(train.corpus) == len(test.corpus) == 120
    articles = lambda ds: {d.id.split("_")[0] for d in ds.corpus}  # noqa: E731
    assert articles(train) == {f"p{a}" for a in range(24)} and articles(test) == {f"p{a}" for a in range(24, 48)}
    assert not {q.text for q in train.queries} & {q.text for q in test.queries}
    for lang in ("zh", "ar"):
        assert [d.id for d in load_xquad(lang, split="train").corpus] == [d.id for d in train.corpus]
        assert [d.id for d in load_xquad(lang, split="test").corpus] == [d.id for d in test.corpus]
    assert len(load_xquad("en", split="train", n_train_articles=40).corpus) == 200
    with pytest.raises(ValueError, match="split"):
        load_xquad("en", split="dev")


def test_xquad_cross_lingual_points_into_the_corpus_language(data_dir):
    ds = load_xquad("de", corpus_language="en", split="test")
    en = load_xquad("en", split="test")
    assert ds.query_language == "de" and ds.corpus_language == "en"
    assert [d.text for d in ds.corpus] == [d.text for d in en.corpus] and {d.language for d in ds.corpus} == {"en"}
    assert {q.language for q in ds.queries} == {"de"}
    assert {q.id for q in ds.queries} == {q.id for q in load_xquad("de", split="test").queries}
    # A German question and its English original (same qas id) are relevant to the same English paragraph.
    shared = [q.id for q in ds.queries if q.id in en.qrels]
    assert len(shared) > 500
    assert sum(ds.qrels[qid] == en.qrels[qid] for qid in shared) >= len(shared) - 5


def test_xquad_long_documents(data_dir):
    ds = load_xquad_long("es")
    assert len(ds.corpus) == 48 and ds.corpus[0].title == "Super Bowl 50"
    paragraphs = load_xquad("es").corpus
    assert ds.corpus[0].text == "\n\n".join(d.text for d in paragraphs[:5])
    assert all(len(rels) >= 1 and all(doc.startswith("a") for doc in rels) for rels in ds.qrels.values())
    assert len(load_xquad_long("es", split="train").corpus) == len(load_xquad_long("es", split="test").corpus) == 24
    cross = load_xquad_long("th", corpus_language="en", split="test")
    assert [d.id for d in cross.corpus] == [f"a{a}" for a in range(24, 48)] and cross.corpus[0].language == "en"


def test_xquad_unknown_language_and_explicit_data_dir(data_dir, tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"no language 'xx'.*ar, de"):
        load_xquad("xx")
    with pytest.raises(DataError, match="no language 'fr'"):
        load_xquad("en", corpus_language="fr")
    monkeypatch.delenv("M3LAB_DATA_DIR", raising=False)
    assert len(load_xquad("vi", data_dir=data_dir).corpus) == 240
    assert len(load_xquad("vi", data_dir=data_dir / "xquad").corpus) == 240  # the data-set folder itself
    with pytest.raises(DataError, match=r"not found in data_dir"):  # an explicit folder never falls back online
        load_xquad("en", data_dir=tmp_path)


def test_xquad_malformed_file(data_dir, tmp_path):
    (tmp_path / "xquad").mkdir()
    (tmp_path / "xquad" / "xquad.en.json").write_text('{"data": [{"title": "x"}]}', encoding="utf-8")
    with pytest.raises(DataError, match=r"xquad.en.json: field 'data\[0\]'"):
        load_xquad("en", data_dir=tmp_path)
    (tmp_path / "xquad" / "xquad.en.json").write_text('{"data": [\n{"title": ', encoding="utf-8")
    with pytest.raises(DataError, match=r"xquad.en.json:2: malformed JSON"):
        load_xquad("en", data_dir=tmp_path)


# ----------------------------------------------------------------------------- Tatoeba

def test_tatoeba_languages_match_the_files(data_dir):
    codes = sorted({p.name.split(".")[1][:3] for p in (data_dir / "tatoeba").glob("tatoeba.*-eng.*")})
    assert list(TATOEBA_LANGUAGES) == codes and len(codes) == 112
    sizes = {lang: len(load_tatoeba(lang)) for lang in TATOEBA_LANGUAGES}
    assert max(sizes.values()) == 1000 and min(sizes.values()) >= 100


def test_tatoeba_is_line_aligned(data_dir):
    ds = load_tatoeba("deu")
    lines = lambda name: (data_dir / "tatoeba" / name).read_text(encoding="utf-8").rstrip("\n").split("\n")  # noqa
    assert ds.source == lines("tatoeba.deu-eng.deu") and ds.target == lines("tatoeba.deu-eng.eng")
    assert len(ds) == 1000 and ds.language == "deu"
    assert load_tatoeba("de").source == ds.source and load_tatoeba("zh").language == "cmn"


def test_tatoeba_split_is_deterministic_and_disjoint(data_dir):
    full = load_tatoeba("cmn")
    train, test = load_tatoeba("cmn", split="train"), load_tatoeba("cmn", split="test")
    pairs = lambda ds: set(zip(ds.source, ds.target))  # noqa: E731
    assert len(train) + len(test) == len(full) and len(test) == round(len(full) * 0.5)
    assert not pairs(train) & pairs(test) and pairs(train) | pairs(test) == pairs(full)
    assert load_tatoeba("cmn", split="test").source == test.source  # same call, same split
    assert load_tatoeba("cmn", split="test", seed=1).source != test.source
    assert len(load_tatoeba("cmn", split="test", test_fraction=0.2)) == 200
    order = {s: i for i, s in enumerate(full.source)}
    assert [order[s] for s in test.source] == sorted(order[s] for s in test.source)  # file order kept


def test_tatoeba_unknown_language(data_dir):
    with pytest.raises(DataError, match="English is the target"):
        load_tatoeba("eng")
    with pytest.raises(DataError, match="no language 'xyz'"):
        load_tatoeba("xyz")


# ----------------------------------------------------------------------------- training builders

def test_build_xquad_training_bm25(data_dir):
    examples = build_xquad_training(["en", "de"], n_negatives=7)
    train_en = {d.text for d in load_xquad("en", split="train").corpus}
    train_de = {d.text for d in load_xquad("de", split="train").corpus}
    n_en, n_de = len(load_xquad("en", split="train").queries), len(load_xquad("de", split="train").queries)
    assert len(examples) == 2 * (n_en + n_de)  # en->en, de->de, de->en, en->de
    for ex in examples:
        assert len(ex.neg) == 7 and not set(ex.neg) & set(ex.pos) and len(set(ex.neg)) == 7
        corpus = train_en if ex.pos[0] in train_en else train_de
        assert set(ex.pos) <= corpus and set(ex.neg) <= corpus  # negatives in the positive's language, train only
    de_queries = {q.text for q in load_xquad("de", split="train").queries}
    assert sum(ex.query in de_queries and ex.pos[0] in train_en for ex in examples) == n_de  # de -> en pairs
    assert build_xquad_training(["en", "de"], max_examples=30, seed=3) == \
        build_xquad_training(["en", "de"], max_examples=30, seed=3)


def test_build_xquad_training_with_a_scoring_callable(data_dir):
    calls = []

    def by_length(queries, docs):  # the longest paragraphs rank first, whatever the query
        calls.append((len(queries), len(docs)))
        return np.tile(np.array([len(d) for d in docs], dtype=np.float32), (len(queries), 1))

    examples = build_xquad_training(["ar"], cross_lingual=False, n_negatives=3, miner=by_length, max_examples=20)
    assert calls == [(len(load_xquad("ar", split="train").queries), 120)] and len(examples) == 20
    longest = sorted({d.text for d in load_xquad("ar", split="train").corpus}, key=len, reverse=True)
    for ex in examples:
        assert ex.neg == [t for t in longest if t not in ex.pos][:3]


def test_build_tatoeba_training(data_dir):
    examples = build_tatoeba_training(["de"], max_pairs_per_language=40, n_negatives=5)
    assert len(examples) == 80
    test = load_tatoeba("de", split="test")
    test_texts = set(test.source) | set(test.target)
    train = load_tatoeba("de", split="train")
    translation = dict(zip(train.source, train.target)) | dict(zip(train.target, train.source))
    for forward, backward in zip(examples[::2], examples[1::2]):
        assert forward.pos == [backward.query] and backward.pos == [forward.query]  # xxx->eng then eng->xxx
        assert translation[forward.query] == forward.pos[0]
        for ex in (forward, backward):
            assert len(ex.neg) == 5 and ex.pos[0] not in ex.neg
            assert not test_texts & {ex.query, *ex.pos, *ex.neg}
    assert all(n in train.target for n in examples[0].neg) and all(n in train.source for n in examples[1].neg)


def test_mine_hard_negatives_with_a_model(data_dir):
    class HashModel:  # a stand-in for M3Model: bag of character trigrams, L2-normalised
        def encode(self, texts, *, return_sparse=True, return_colbert=True):
            assert not return_sparse and not return_colbert  # the miner only asks for dense vectors
            vecs = np.zeros((len(texts), 512), dtype=np.float32)
            for i, t in enumerate(texts):
                for k in range(len(t) - 2):
                    vecs[i, int(hashlib.md5(t[k:k + 3].encode()).hexdigest(), 16) % 512] += 1
            return type("Out", (), {"dense": vecs / np.linalg.norm(vecs, axis=1, keepdims=True)})()

    ds = load_tatoeba("fra", split="train")
    negs = mine_hard_negatives(ds.target[:20], list(range(20)), ds.target, n_negatives=4, miner=HashModel())
    assert all(len(n) == 4 and i not in n for i, n in enumerate(negs))
    # The top negative shares more trigrams with the query than a random sentence does.
    m = HashModel()
    sim = lambda a, b: float(m.encode([a], return_sparse=False, return_colbert=False).dense[0]  # noqa: E731
                             @ m.encode([b], return_sparse=False, return_colbert=False).dense[0])
    assert np.mean([sim(ds.target[i], ds.target[n[0]]) for i, n in enumerate(negs)]) > \
        np.mean([sim(ds.target[i], ds.target[-1 - i]) for i in range(20)])


# ----------------------------------------------------------------------------- checksums

def test_checksums_table_matches_the_local_files(data_dir):
    table = checksums()
    assert table["xquad"]["url"].startswith("https://") and table["tatoeba"]["url"].startswith("https://")
    assert sorted(table["xquad"]["files"]) == sorted(f"xquad.{lang}.json" for lang in XQUAD_LANGUAGES)
    assert len(table["tatoeba"]["files"]) == 2 * len(TATOEBA_LANGUAGES)
    for dataset in ("xquad", "tatoeba"):
        for name, info in table[dataset]["files"].items():
            data = (data_dir / dataset / name).read_bytes()
            assert (len(data), hashlib.sha256(data).hexdigest()) == (info["size"], info["sha256"]), name
