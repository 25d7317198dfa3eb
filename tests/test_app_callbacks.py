"""The app's callbacks at function level: scores against the model's own scoring, explanations that
sum to the scores, bad input as messages, model/corpus switches that keep the previous state on failure,
and the on-disk index cache. A tiny random BERT keeps it fast; the numbers are checked, not the model."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("gradio")

from app import callbacks as cb  # noqa: E402
from app.corpora import (MAX_UPLOAD_BYTES, MAX_UPLOAD_DOCUMENTS, Corpus, builtin_choices, load_builtin,  # noqa: E402
                         mini_corpus)
from app.state import AppState, build_workspace, load_model  # noqa: E402
from m3lab.data import Document  # noqa: E402
from m3lab.retrieval import document_text  # noqa: E402
from m3lab.viz.inspect import UnknownShare  # noqa: E402

QUERY = "where is the tower of paris built"


@pytest.fixture(scope="module")
def tiny_model(tiny_bert_dir):
    return load_model(str(tiny_bert_dir))


@pytest.fixture(scope="module")
def corpus():
    return mini_corpus(["en", "de"])


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("M3LAB_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def workspace(tiny_model, tiny_bert_dir, corpus, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("M3LAB_CACHE_DIR", str(tmp_path_factory.mktemp("app-cache")))
        return build_workspace(tiny_model, str(tiny_bert_dir), corpus, show_progress=False)


@pytest.fixture
def state(workspace, cache):
    """A fresh server state on the shared workspace (switches swap in new workspaces, never mutate it)."""
    return AppState(workspace)


# ----------------------------------------------------------------------------- Search

@pytest.mark.parametrize("mode,column", [("dense", "dense"), ("sparse", "sparse"), ("multi-vector", "colbert")])
def test_search_single_mode_ranks_by_its_score(state, mode, column):
    v = cb.search(state.workspace, QUERY, mode, top_k=7)
    t = v.table
    assert "⚠️" not in v.message.split(".")[0], v.message
    assert list(t["rank"]) == list(range(1, len(t) + 1)) and 1 <= len(t) <= 7
    np.testing.assert_allclose(t["score"], t[column], atol=1e-4)
    assert list(t["score"]) == sorted(t["score"], reverse=True)
    assert [c[1] for c in v.choices] == list(t["id"]) == v.session["doc_ids"]
    assert v.session["query"] == QUERY and v.session["workspace"] == state.workspace.key


def test_search_components_match_the_models_own_scores(state, tiny_model):
    """Every component column equals M3Model.score on the raw texts (an independent path)."""
    ws = state.workspace
    v = cb.search(ws, QUERY, "hybrid", 1.0, 0.3, 1.0, top_k=5)
    docs = [ws.index.documents[ws.position(i)] for i in v.table["id"]]
    ref = tiny_model.score([QUERY], [document_text(d) for d in docs], weights=(1.0, 0.3, 1.0))
    np.testing.assert_allclose(v.table["dense"], ref.dense[0], atol=2e-4)
    np.testing.assert_allclose(v.table["sparse"], ref.sparse[0], atol=2e-4)
    np.testing.assert_allclose(v.table["colbert"], ref.colbert[0], atol=2e-4)
    # hybrid score = w1 s_dense + w2 s_lex + w3 s_mul, by hand
    hand = v.table["dense"] + 0.3 * v.table["sparse"] + v.table["colbert"]
    np.testing.assert_allclose(v.table["score"], hand, atol=5e-4)
    assert len(v.figure.data) == 3  # one stacked term per function


def test_search_weights_change_the_hybrid_score(state):
    a = cb.search(state.workspace, QUERY, "hybrid", 1.0, 0.0, 0.0, top_k=3)
    np.testing.assert_allclose(a.table["score"], a.table["dense"], atol=1e-4)
    b = cb.search(state.workspace, QUERY, "hybrid", 0.0, 0.0, 2.0, top_k=3)
    np.testing.assert_allclose(b.table["score"], 2 * b.table["colbert"], atol=3e-4)


@pytest.mark.parametrize("query,args,expected", [
    ("", (), "Type a query"),
    ("   \n ", (), "Type a query"),
    ("x" * (cb.MAX_QUERY_CHARS + 1), (), "limit"),
    (QUERY, ("hybrid", 0, 0, 0), "All weights are 0"),
    (QUERY, ("hybrid", -1, 0.3, 1), "≥ 0"),
    (QUERY, ("bm25",), "Unknown mode"),
])
def test_search_bad_input_gives_a_message(state, query, args, expected):
    v = cb.search(state.workspace, query, *args)
    assert expected in v.message and v.message.startswith("⚠️")
    assert v.table.empty and v.choices == []


def test_search_top_k_is_clamped(state):
    v = cb.search(state.workspace, QUERY, "dense", top_k=10_000)
    assert len(v.table) == min(cb.MAX_TOP_K, len(state.workspace.index))
    assert len(cb.search(state.workspace, QUERY, "dense", top_k=0).table) == 1


# ----------------------------------------------------------------------------- Sparse and MaxSim

def test_sparse_view_contributions_sum_to_the_sparse_score(state):
    ws = state.workspace
    s = cb.search(ws, QUERY, "sparse", top_k=3)
    doc_id = s.choices[1][1]
    v = cb.sparse_view(ws, s.session, doc_id)
    m = v.match
    assert m.total == pytest.approx(float(np.sum(m.contributions)), abs=1e-5)
    np.testing.assert_allclose(m.contributions, m.query_weights * m.passage_weights, rtol=1e-6)
    assert m.total == pytest.approx(float(s.table.loc[s.table["id"] == doc_id, "sparse"].iloc[0]), abs=2e-4)
    assert v.table["token"].iloc[-1] == "s_lex (sum)" and v.table["w_q·w_p"].iloc[-1] == round(m.total, 4)
    # highlighted text: the spans rebuild the text exactly, weights scaled to [0, 1] with the max at 1
    doc = ws.index.documents[ws.position(doc_id)]
    for spans, text in ((v.query_spans, QUERY), (v.passage_spans, document_text(doc))):
        assert "".join(p for p, _ in spans) == text
        weights = [w for _, w in spans if w is not None]
        assert weights and max(weights) == pytest.approx(1.0) and min(weights) > 0
    assert doc_id in v.message


def test_sparse_view_defaults_to_the_first_result(state):
    s = cb.search(state.workspace, QUERY, "dense", top_k=2)
    assert s.choices[0][1] in cb.sparse_view(state.workspace, s.session, None).message


def test_maxsim_view_contributions_sum_to_the_multivector_score(state):
    ws = state.workspace
    s = cb.search(ws, QUERY, "multi-vector", top_k=3)
    doc_id = s.choices[2][1]
    v = cb.maxsim_view(ws, s.session, doc_id)
    a = v.alignment
    np.testing.assert_array_equal(a.best, a.similarity.argmax(axis=1))
    np.testing.assert_allclose(a.contributions, a.similarity.max(axis=1) / len(a.query_tokens), rtol=1e-5)
    assert a.total == pytest.approx(float(a.contributions.sum()), abs=1e-5)
    assert a.total == pytest.approx(float(s.table.loc[s.table["id"] == doc_id, "colbert"].iloc[0]), abs=2e-4)
    assert v.table["query token"].iloc[-1] == "s_mul (sum)" and len(v.table) == len(a.query_tokens) + 1
    heat, marks, bars = v.figure.data
    assert heat.type == "heatmap" and len(marks.x) == len(a.query_tokens)
    assert sum(bars.x) == pytest.approx(a.total, abs=1e-5)


@pytest.mark.parametrize("view", [cb.sparse_view, cb.maxsim_view])
def test_result_views_without_a_valid_search_give_messages(state, view):
    ws = state.workspace
    assert "Run a search first" in view(ws, {}, None).message
    s = cb.search(ws, QUERY, "dense", top_k=2)
    assert "changed" in view(ws, dict(s.session, workspace="another"), None).message
    assert "not in the current corpus" in view(ws, s.session, "no/such/doc").message


# ----------------------------------------------------------------------------- unknown and special tokens

UNK_QUERY = "光合作用 paris"  # MiniLM's WordPiece: 光 合 [UNK] [UNK] paris
WARNING_2_OF_5 = ("⚠️ **2 of 5 tokens (40%) of this query are unknown to the model's vocabulary ([UNK])**: "
                  "its scores mean little for this language / script. Unknown: “作”, “用”.")
SCORES_MEAN_LITTLE = "its scores mean little"


@pytest.mark.parametrize("share,expected", [
    (UnknownShare(0.0, 0, 7), "Vocabulary: 0 of 7 tokens (0%) of this query are unknown to the model's vocabulary "
                              "(&lt;unk&gt;)."),
    (UnknownShare(0.1, 1, 10), "Vocabulary: 1 of 10 tokens (10%) of this query are unknown to the model's vocabulary "
                               "(&lt;unk&gt;)."),  # at the threshold: no warning
    (UnknownShare(2 / 11, 2, 11), "⚠️ **2 of 11 tokens (18%) of this query are unknown to the model's vocabulary "
                                  "(&lt;unk&gt;)**: its scores mean little for this language / script."),
    (UnknownShare(0.0, 0, 0), ""),  # no content token: nothing to say
])
def test_vocabulary_note_warns_above_the_threshold(share, expected):
    assert cb.UNKNOWN_WARN_SHARE == 0.10
    assert cb.vocabulary_note(share, unk_token="<unk>") == expected
    assert cb.vocabulary_note(share, unk_token=None) == ""


def test_vocabulary_note_escapes_the_unknown_text():
    note = cb.vocabulary_note(UnknownShare(0.75, 3, 4), ["<b>x</b>", "*y* [l](u)", "<b>x</b>", " "], "<unk>")
    assert note == ("⚠️ **3 of 4 tokens (75%) of this query are unknown to the model's vocabulary (&lt;unk&gt;)**: "
                    "its scores mean little for this language / script. "
                    "Unknown: “&lt;b&gt;x&lt;/b&gt;”, “\\*y\\* \\[l\\](u)”.")
    many = cb.vocabulary_note(UnknownShare(1.0, 10, 10), [f"w{i}" for i in range(10)], "[UNK]", limit=8)
    assert many.endswith("Unknown: “w0”, “w1”, “w2”, “w3”, “w4”, “w5”, “w6”, “w7” and 2 more.")


def test_every_view_of_a_query_reports_its_unknown_tokens(state):
    ws = state.workspace
    s = cb.search(ws, UNK_QUERY, "dense", top_k=2)
    assert s.message.endswith("\n\n" + WARNING_2_OF_5) and tuple(s.unknown) == (0.4, 2, 5)
    for view in (cb.sparse_view(ws, s.session, None), cb.maxsim_view(ws, s.session, None),
                 cb.compare(ws, UNK_QUERY, "paris is a city")):
        assert view.message.endswith("\n\n" + WARNING_2_OF_5) and tuple(view.unknown) == (0.4, 2, 5)
    # 1 of 10 unknown (10 %, not over): the counts without the warning
    below = cb.search(ws, "作 the tower of paris is built in the city", "dense", top_k=2)
    assert below.message.endswith("\n\nVocabulary: 1 of 10 tokens (10%) of this query are unknown to the model's "
                                  "vocabulary ([UNK]).") and SCORES_MEAN_LITTLE not in below.message
    ok = cb.search(ws, QUERY, "hybrid", top_k=2)
    assert ok.message.endswith("\n\nVocabulary: 0 of 7 tokens (0%) of this query are unknown to the model's "
                               "vocabulary ([UNK]).") and tuple(ok.unknown) == (0.0, 0, 7)
    assert cb.search(ws, "", "dense").unknown is None  # bad input: no note


def test_user_text_is_escaped_in_the_messages(state):
    ws = state.workspace
    query = "<img src=x onerror=alert(1)> **tower** [paris](javascript:x) 作"
    shown = "&lt;img src=x onerror=alert(1)&gt; \\*\\*tower\\*\\* \\[paris\\](javascript:x) 作"
    assert cb.md_text(query) == shown
    assert cb.md_text("line one\n# heading\r\n- item") == "line one # heading - item"
    s = cb.search(ws, query, "dense", top_k=2)
    views = [s, cb.sparse_view(ws, s.session, None), cb.maxsim_view(ws, s.session, None)]
    for v in views:
        assert f"**{shown}**" in v.message and "<img" not in v.message and "**tower**" not in v.message
    assert s.message.endswith("Vocabulary: 1 of 31 tokens (3%) of this query are unknown to the model's vocabulary "
                              "([UNK]).") and tuple(s.unknown)[1:] == (1, 31)


@pytest.fixture(scope="module")
def echo_workspace(tiny_model):
    """A corpus holding the query itself: each query vector's best match is its own copy (similarity 1),
    so the query's [SEP] best-matches the passage's [SEP]."""
    docs = [Document("same", QUERY, "en"), Document("d1", "the river of the city", "en"),
            Document("d2", "music and science", "en")]
    return build_workspace(tiny_model, "tiny", Corpus("echo", docs), use_cache=False, show_progress=False)


def test_maxsim_view_marks_special_tokens(echo_workspace):
    ws = echo_workspace
    s = cb.search(ws, QUERY, "dense", top_k=3)
    v = cb.maxsim_view(ws, s.session, "same")
    words = QUERY.split()
    assert v.alignment.query_tokens == words + ["[SEP]"] and v.alignment.query_is_special == [False] * 7 + [True]
    np.testing.assert_array_equal(v.alignment.best, np.arange(8))
    assert list(v.table["query token"]) == words + ["[SEP] (special)", "s_mul (sum)"]
    assert list(v.table["best passage token"]) == words + ["[SEP] (special)", ""]
    assert "\n\n1 of the 8 query vectors best-matches a special token of the passage ([SEP]): " in v.message
    assert cb.SPECIAL_LEGEND in v.message
    heat = v.figure.data[0]
    assert list(heat.y) == [f"{i}:{t}" for i, t in enumerate(words)] + ["7:[SEP] (special)"]
    assert list(heat.x) == list(heat.y)
    # another passage: no best match on its [SEP] is claimed unless there is one
    other = cb.maxsim_view(ws, s.session, "d2")
    n_special = sum(other.alignment.passage_is_special[j] for j in other.alignment.best)
    assert ("best-match" in other.message) == (n_special > 0)
    assert list(other.table["query token"])[-2] == "[SEP] (special)"


def test_sparse_view_marks_special_tokens(echo_workspace):
    ws = echo_workspace
    s = cb.search(ws, QUERY, "dense", top_k=3)
    v = cb.sparse_view(ws, s.session, "same")
    sep = ws.model.tokenizer.sep_token_id
    assert v.match.is_special == [t == sep for t in v.match.token_ids] and sum(v.match.is_special) == 1
    assert list(v.table["token"]) == [t + " (special)" if f else t for t, f in
                                      zip(v.match.tokens, v.match.is_special)] + ["s_lex (sum)"]
    assert "[SEP] (special)" in list(v.table["token"])
    assert "8 shared token(s) (1 of them special)" in v.message and cb.SPECIAL_LEGEND in v.message
    for fig in (v.query_figure, v.passage_figure, v.match_figure):
        labels = list(fig.data[0].y)
        assert "[SEP] (special)" in labels and "[SEP]" not in labels
        assert sum(lab.endswith(" (special)") for lab in labels) == 1


@pytest.fixture(scope="module")
def xlmr_workspace(tiny_xlmr_dir):
    docs = [Document("same", "who built the tower", "en"), Document("d1", "the river of the city", "en"),
            Document("d2", "music and science", "en")]
    return build_workspace(load_model(str(tiny_xlmr_dir)), "tiny-xlmr", Corpus("echo", docs), use_cache=False,
                           show_progress=False)


def test_xlmr_special_tokens_are_marked_and_escaped_in_figures(xlmr_workspace):
    """XLM-R's </s>: no lexical weight (bge-m3 drops eos), but a MaxSim position; Plotly would read
    "</s>" as a closing strikethrough tag, so the figures get it escaped."""
    ws = xlmr_workspace
    s = cb.search(ws, "who built the tower", "dense", top_k=3)
    m = cb.maxsim_view(ws, s.session, "same")
    assert list(m.table["query token"]) == ["▁who", "▁built", "▁the", "▁tower", "</s> (special)", "s_mul (sum)"]
    assert "\n\n1 of the 5 query vectors best-matches a special token of the passage (&lt;/s&gt;): " in m.message
    heat = m.figure.data[0]
    assert list(heat.y) == ["0:▁who", "1:▁built", "2:▁the", "3:▁tower", "4:&lt;/s&gt; (special)"]
    assert list(heat.x) == list(heat.y)
    sp = cb.sparse_view(ws, s.session, "same")
    assert sp.match.tokens == [t for t in sp.match.tokens if t != "</s>"] and not any(sp.match.is_special)
    assert not any(t.endswith("(special)") for t in sp.table["token"]) and cb.SPECIAL_LEGEND not in sp.message
    # an XLM-R query's unknown words, escaped
    u = cb.search(ws, "the <b>zebra</b>", "dense", top_k=2)
    assert u.message.endswith("⚠️ **1 of 2 tokens (50%) of this query are unknown to the model's vocabulary "
                              "(&lt;unk&gt;)**: its scores mean little for this language / script. "
                              "Unknown: “&lt;b&gt;zebra&lt;/b&gt;”.")
    c = cb.compare(ws, "who built the tower", "who built the tower")
    assert list(c.maxsim_figure.data[0].y)[-1] == "4:&lt;/s&gt; (special)" and cb.SPECIAL_LEGEND in c.message


# ----------------------------------------------------------------------------- Projection

def test_projection_view_places_the_query_and_rings_the_results(state, monkeypatch):
    # PCA here keeps this file fast (UMAP's first fit compiles for ~20 s); UMAP is tested in test_plots_projection.py
    monkeypatch.setattr("m3lab.viz.projection.MIN_UMAP_POINTS", 10_000)
    ws = build_workspace(state.workspace.model, state.workspace.model_name, state.workspace.corpus, show_progress=False)
    s = cb.search(ws, QUERY, "dense", top_k=4)
    v = cb.projection_view(ws, s.session, "language")
    names = [t.name for t in v.figure.data]
    assert names == ["de", "en", "retrieved", "query"]
    assert sum(len(t.x) for t in v.figure.data[:2]) == len(ws.index)
    assert len(v.figure.data[2].x) == 4 and len(v.figure.data[3].x) == 1
    assert "PCA map of 126" in v.message and "mean vector removed" in v.message  # en + de: languages aligned
    raw = cb.projection_view(ws, s.session, "language", align_languages=False)
    assert "removed" not in raw.message and "★" in raw.message
    by_topic = cb.projection_view(ws, {}, "category")
    assert {t.name for t in by_topic.figure.data} == set(ws.corpus.labels["category"])
    assert "search to place a query" in by_topic.message
    assert [t.name for t in cb.projection_view(ws, {}, "no-such-grouping").figure.data] == ["de", "en"]


def test_projection_is_cached_on_disk(workspace, cache, monkeypatch):
    monkeypatch.setattr("m3lab.viz.projection.MIN_UMAP_POINTS", 10_000)
    ws = build_workspace(workspace.model, workspace.model_name, workspace.corpus, show_progress=False)
    proj, aligned = ws.projection(), ws.projection(align_languages=True)
    assert not proj.centred and aligned.centred
    files = sorted(f.stem for f in (cache / "projections").glob("*.npz"))
    assert files == [ws.key, f"{ws.key}-aligned"]
    again = build_workspace(ws.model, ws.model_name, ws.corpus, show_progress=False)
    np.testing.assert_array_equal(again.projection().coords, proj.coords)
    np.testing.assert_array_equal(again.projection(align_languages=True).coords, aligned.coords)


# ----------------------------------------------------------------------------- Compare

def test_compare_scores_and_explanations(state, tiny_model):
    a, b = "the tower of paris", "paris has a tower built in the year of the world fair"
    v = cb.compare(state.workspace, a, b, 1.0, 0.3, 1.0)
    ref = tiny_model.score([a], [b], weights=(1.0, 0.3, 1.0))
    assert v.values["dense"] == pytest.approx(float(ref.dense[0, 0]), abs=1e-5)
    assert v.values["sparse"] == pytest.approx(float(ref.sparse[0, 0]), abs=1e-5)
    assert v.values["colbert"] == pytest.approx(float(ref.colbert[0, 0]), abs=1e-5)
    assert v.values["hybrid"] == pytest.approx(v.values["dense"] + 0.3 * v.values["sparse"] + v.values["colbert"],
                                               abs=1e-5)
    assert list(v.scores["function"]) == ["dense", "sparse (lexical)", "multi-vector", "hybrid"]
    # the explanations' figures carry the same totals
    assert sum(v.lexical_figure.data[0].x) == pytest.approx(v.values["sparse"], abs=1e-5)
    assert sum(v.maxsim_figure.data[2].x) == pytest.approx(v.values["colbert"], abs=1e-5)
    shared = len(set(tiny_model.encode([a]).sparse[0]) & set(tiny_model.encode([b]).sparse[0]))
    assert f"over {shared} shared tokens" in v.scores["how"].iloc[1]


@pytest.mark.parametrize("a,b", [("", "text"), ("text", "  "), (None, None)])
def test_compare_needs_two_texts(state, a, b):
    v = cb.compare(state.workspace, a, b)
    assert "Enter both texts" in v.message and v.values == {}


# ----------------------------------------------------------------------------- Corpus

def test_upload_jsonl_replaces_the_corpus(state, tmp_path):
    f = tmp_path / "mine.jsonl"
    texts = ["the tower of paris", "a river in the city", "music and science"]
    f.write_text("\n".join(json.dumps({"id": f"d{i}", "text": t, "lang": "en"}) for i, t in enumerate(texts)),
                 encoding="utf-8")
    before = state.workspace
    v = cb.load_uploaded_corpus(state, str(f))
    mine = state.get(v.key)  # the uploading session's workspace; every other session keeps the old one
    assert "Loaded" in v.message and mine is not before and state.workspace is before
    assert list(v.preview["id"]) == ["d0", "d1", "d2"] and "3 documents" in v.header
    s = cb.search(mine, "paris tower", "dense", top_k=3)
    assert set(s.table["id"]) == {"d0", "d1", "d2"}
    # a small corpus is mapped with PCA
    assert "PCA" in cb.projection_view(mine, s.session).message


def _bad_files(tmp_path):
    jsonl = tmp_path / "broken.jsonl"
    jsonl.write_text('{"text": "fine"}\n{"text": "no closing brace"\n', encoding="utf-8")
    missing = tmp_path / "fields.jsonl"
    missing.write_text('{"text": "fine"}\n{"title": "no text"}\n', encoding="utf-8")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café\nnaïve\n".encode("latin-1"))
    huge = tmp_path / "huge.txt"
    huge.write_bytes(b"word " * (MAX_UPLOAD_BYTES // 5 + 10))
    many = tmp_path / "many.txt"
    many.write_text("\n".join(f"doc {i}" for i in range(MAX_UPLOAD_DOCUMENTS + 1)), encoding="utf-8")
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    pdf = tmp_path / "paper.pdf"
    pdf.write_bytes(b"%PDF-1.4")
    nocol = tmp_path / "table.csv"
    nocol.write_text("id,body\n1,hello\n", encoding="utf-8")
    return [(jsonl, "broken.jsonl:2: malformed JSON"), (missing, "fields.jsonl:2: field 'text'"),
            (binary, "binary"), (latin, "latin.txt:1: not valid UTF-8"), (huge, "over the 5 MB upload limit"),
            (many, f"{MAX_UPLOAD_DOCUMENTS + 1} documents is over the limit"), (empty, "empty"),
            (pdf, "unsupported file type '.pdf'"), (nocol, "table.csv:1: field 'text': no column 'text'")]


def test_bad_uploads_give_messages_and_keep_the_corpus(state, tmp_path):
    before = state.workspace
    for path, expected in _bad_files(tmp_path):
        v = cb.load_uploaded_corpus(state, str(path))
        assert v.message.startswith("⚠️") and expected in v.message, (path.name, v.message)
        assert str(tmp_path) not in v.message  # the user's file name, not the server's temporary path
        assert "previous corpus is still loaded" in v.message
        assert state.workspace is before and v.key == before.key
    assert "Choose a file" in cb.load_uploaded_corpus(state, None).message


def test_builtin_corpora(state):
    choices = builtin_choices(["en", "de"])
    assert choices[0] == "mini corpus: en, de" and "mini corpus: all languages" in choices
    v = cb.load_builtin_corpus(state, "mini corpus: es")
    assert "Loaded" in v.message and set(state.get(v.key).corpus.labels["language"]) == {"es"}
    before = state.get(v.key)
    v = cb.load_builtin_corpus(state, "nonsense: xx", key=before.key)
    assert v.message.startswith("⚠️") and "unknown built-in corpus" in v.message and state.get(v.key) is before
    assert cb.load_builtin_corpus(state, "").message.startswith("⚠️")


def test_xquad_and_tatoeba_corpora(data_dir):
    x = load_builtin("XQuAD: parallel (en, de, es)")
    assert len(x.documents) == 3 * 240 and x.labels["topic"][:1] * 3 == [x.labels["topic"][i] for i in (0, 240, 480)]
    t = load_builtin("Tatoeba: de–en")
    assert t.documents[0].language == "de" and t.documents[1].language == "en"
    assert t.labels["topic"][0] == t.labels["topic"][1]


# ----------------------------------------------------------------------------- Model

@pytest.mark.parametrize("name", ["no-such-org/no-such-model-xyz", "/nonexistent/model/dir", "   "])
def test_unknown_model_keeps_the_previous_one(state, name):
    before = state.workspace
    v = cb.load_model_view(state, name)
    assert v.message.startswith("⚠️") and state.workspace is before
    if name.strip():
        assert name in v.message and f"Still serving `{before.model_name}`" in v.message


def test_a_broken_checkpoint_keeps_the_previous_model(state, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    before = state.workspace
    assert cb.load_model_view(state, str(broken)).message.startswith("⚠️") and state.workspace is before


def test_switching_model_reindexes_the_corpus(state, tiny_xlmr_dir):
    before = state.workspace
    v = cb.load_model_view(state, str(tiny_xlmr_dir))
    ws = state.get(v.key)
    assert "Loaded model" in v.message and ws is not before and ws.key != before.key
    assert state.workspace is before  # other sessions keep the model they had
    assert ws.corpus is before.corpus and len(ws.index) == len(before.index)
    assert str(tiny_xlmr_dir) in v.header and "untrained heads" in v.header
    info = dict(zip(cb.model_info(ws)["property"], cb.model_info(ws)["value"]))
    assert info["hidden size"] == "32" and info["heads"].startswith("untrained")
    # a session from the previous model is told to search again
    assert "changed" in cb.sparse_view(ws, {"query": "q", "workspace": before.key, "doc_ids": []}, None).message


# ----------------------------------------------------------------------------- cache

def test_index_cache_is_reused_and_rebuilt_when_damaged(tiny_model, tiny_bert_dir, cache):
    docs = [Document(f"d{i}", t, "en") for i, t in enumerate(["paris tower", "river city", "music science", "water"])]
    first = build_workspace(tiny_model, "tiny", Corpus("c", docs), show_progress=False)
    assert not first.from_cache and first.cache_dir.parent == cache / "indexes"
    second = build_workspace(tiny_model, "tiny", Corpus("c", docs), show_progress=False)
    assert second.from_cache and second.key == first.key
    np.testing.assert_array_equal(second.index.dense, first.index.dense)
    # another corpus is another key
    other = build_workspace(tiny_model, "tiny", Corpus("c", docs[:3]), show_progress=False)
    assert other.key != first.key and not other.from_cache
    # a damaged cache entry is rebuilt, not served
    (first.cache_dir / "dense.npy").write_bytes(b"garbage")
    third = build_workspace(tiny_model, "tiny", Corpus("c", docs), show_progress=False)
    assert not third.from_cache
    np.testing.assert_allclose(third.index.dense, first.index.dense, atol=1e-6)


# ----------------------------------------------------------------------------- sessions and the shared cache

def _corpus_file(tmp_path, name: str, texts: list[str]):
    f = tmp_path / f"{name}.jsonl"
    f.write_text("\n".join(json.dumps({"id": f"{name}-{i}", "text": t, "lang": "en"}) for i, t in enumerate(texts)),
                 encoding="utf-8")
    return f


def test_two_sessions_with_different_corpora_search_at_the_same_time(state, tmp_path):
    """Each session's choice is its own: A's upload does not change B's corpus, or a new session's."""
    from concurrent.futures import ThreadPoolExecutor

    a = cb.load_uploaded_corpus(state, str(_corpus_file(tmp_path, "alpha", ["the tower of paris", "a bridge"])))
    b = cb.load_uploaded_corpus(state, str(_corpus_file(tmp_path, "beta", ["rivers and lakes", "the sea", "rain"])))
    assert a.key != b.key and "2 documents" in a.header and "3 documents" in b.header
    with ThreadPoolExecutor(4) as pool:
        runs = [pool.submit(lambda k=key: cb.search(state.get(k), "paris water", "hybrid", top_k=5))
                for key in (a.key, b.key) * 4]
        tables = [r.result().table for r in runs]
    for i, t in enumerate(tables):
        prefix = "alpha-" if i % 2 == 0 else "beta-"
        assert len(t) and all(str(d).startswith(prefix) for d in t["id"]), (i, list(t["id"]))
    assert state.workspace.corpus.name == "mini corpus (en, de)"  # a new session still starts there
    # each session's own switch (index storage) moves only that session
    c = cb.apply_index_spec(state, "exact", key=a.key)
    assert state.get(c.key).corpus is state.get(a.key).corpus and state.get(b.key).spec == "default"


def test_least_recently_used_workspaces_leave_memory_and_come_back_from_the_disk_cache(workspace, cache, tmp_path):
    state = AppState(workspace, max_workspaces=1)
    first = cb.load_uploaded_corpus(state, str(_corpus_file(tmp_path, "one", ["paris", "london"])))
    second = cb.load_uploaded_corpus(state, str(_corpus_file(tmp_path, "two", ["rome", "madrid"])))
    assert state.loaded_keys() == [workspace.key, second.key]  # the starting workspace stays, "one" left
    back = state.get(first.key)  # its session comes back: loaded from the disk cache, not rebuilt
    assert back.key == first.key and back.from_cache and set(d.id for d in back.documents) == {"one-0", "one-1"}
    assert state.loaded_keys() == [workspace.key, first.key]
    assert state.get("no-such-key") is workspace


def test_the_disk_cache_is_capped_least_recently_used_first(workspace, cache, tmp_path, monkeypatch):
    from app.state import _folder_bytes, enforce_cache_limit

    state = AppState(workspace)
    keys = [cb.load_uploaded_corpus(state, str(_corpus_file(tmp_path, f"c{i}", [f"text {i}", f"more {i}"]))).key
            for i in range(3)]
    folders = {k: state.get(k).cache_dir for k in keys}
    sizes = {k: _folder_bytes(f) for k, f in folders.items()}
    # room for about two of them: the oldest goes, unless it is in use
    limit = sizes[keys[1]] + sizes[keys[2]] + 1
    removed = enforce_cache_limit(keep=[folders[keys[2]]], limit=limit)
    assert removed == [folders[keys[0]]] and not folders[keys[0]].exists()
    assert folders[keys[1]].exists() and folders[keys[2]].exists()
    assert enforce_cache_limit(keep=list(folders.values()), limit=0) == []  # nothing in use is deleted
    monkeypatch.setenv("M3LAB_CACHE_MAX_MB", "lots")
    with pytest.raises(ValueError, match="M3LAB_CACHE_MAX_MB"):
        enforce_cache_limit()


# ----------------------------------------------------------------------------- Evaluate

def test_evaluate_view_lays_out_m3lab_evals_numbers(state):
    from m3lab.data import load_mini
    from m3lab.evaluation import evaluate_retrieval

    ws = state.workspace
    v = cb.evaluate_view(ws, "mini corpus: en, de")
    assert v.message.startswith("**mini corpus") and "best of the sweep" in v.message
    t = v.table
    assert set(t["language"]) == {"en", "de", "all"} and set(t["mode"]) == set(cb.EVAL_MODES.values())
    dataset = load_mini(languages=["en", "de"])
    reference = evaluate_retrieval(ws.model, dataset, ["hybrid", "bm25"], show_progress=False)
    for row in reference:
        shown = t[(t["language"] == "all") & (t["mode"] == cb.EVAL_MODES[row["mode"]])]["nDCG@10"].item()
        assert shown == pytest.approx(round(100 * row["ndcg@10"], 2))
    assert len(v.queries) == len(dataset.queries) and list(v.queries.columns[:3]) == ["query", "lang", "text"]
    assert v.overlap_figure.data[0].z.shape == (5, 5) and v.fusion_figure.data[1].name.startswith("best")
    bad = cb.evaluate_view(ws, "XQuAD: xx")
    assert bad.message.startswith("⚠️") and bad.table.empty


# ----------------------------------------------------------------------------- Search: BM25, language filter, export

def test_bm25_mode_and_the_language_filter(state):
    ws = state.workspace
    b = cb.search(ws, "tower paris built", "BM25", top_k=5)
    positions, scores = ws.bm25().search(["tower paris built"], top_k=5)
    assert list(b.table["id"]) == [ws.documents[j].id for j in positions[0] if j >= 0]
    np.testing.assert_allclose(b.table["score"].astype(float), scores[0][: len(b.table)], rtol=0, atol=5e-5)  # shown to 4 decimals
    assert b.table["dense"].notna().all()  # each BM25 result still carries its M3 scores
    full = cb.search(ws, QUERY, "hybrid", top_k=cb.MAX_TOP_K)
    de = cb.search(ws, QUERY, "hybrid", top_k=5, language="de")
    assert set(de.table["lang"]) == {"de"} and "de documents only" in de.message
    # the filtered ranking is the exhaustive ranking's German part (hybrid over every document)
    exhaustive = ws.index.search(QUERY, mode="hybrid", top_k=len(ws.index), candidates=len(ws.index))
    assert list(de.table["id"]) == [r.doc_id for r in exhaustive if r.document.language == "de"][:5]
    assert len(full.table) == len(ws.index) or len(full.table) == cb.MAX_TOP_K
    assert cb.search(ws, QUERY, "dense", language=cb.ALL_LANGUAGES).table["lang"].nunique() == 2


def test_the_ranking_is_exported_as_csv_and_json(state):
    import pandas as pd

    v = cb.search(state.workspace, QUERY, "hybrid", top_k=4)
    csv_file, json_file = v.export
    assert list(pd.read_csv(csv_file)["id"]) == list(v.table["id"])
    data = json.loads(open(json_file, encoding="utf-8").read())
    assert data["query"] == QUERY and data["mode"] == "hybrid" and data["weights"] == [1.0, 0.3, 1.0]
    assert [r["id"] for r in data["results"]] == list(v.table["id"]) and "colbert" in data["results"][0]


def test_explain_gives_the_views_of_one_pair_without_a_search(state):
    ws = state.workspace
    s = cb.search(ws, QUERY, "hybrid", top_k=3)
    doc = s.session["doc_ids"][1]
    sparse, maxsim = cb.explain(ws, QUERY, doc)
    assert sparse.message == cb.sparse_view(ws, s.session, doc).message and doc in sparse.message
    assert maxsim.message == cb.maxsim_view(ws, s.session, doc).message
    assert sparse.table.equals(cb.sparse_view(ws, s.session, doc).table)
    assert cb.explain(ws, QUERY, "no-such-doc")[0].message.startswith("⚠️")


# ----------------------------------------------------------------------------- progress and cancel

def _upload_file(tmp_path, n=300):
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": f"document {i} about topic {i % 17} " * (1 + i % 5)})
                            + "\n" for i in range(n)), encoding="utf-8")
    return path


def test_build_progress_is_by_tokens_and_ends_at_one(state, tmp_path):
    reports = []
    v = cb.load_uploaded_corpus(state, _upload_file(tmp_path), progress=lambda f, desc="": reports.append((f, desc)),
                                session="s1")
    assert v.message.startswith("Loaded"), v.message
    fractions = [f for f, _ in reports]
    assert fractions[0] == 0.0 and fractions[-1] == pytest.approx(1.0)
    assert fractions == sorted(fractions) and len(fractions) >= 3  # a chunk of 64 documents at a time
    assert "300 of 300 documents encoded" in reports[-1][1]
    assert any("left" in d for _, d in reports[1:-1]), reports  # an estimate while it runs


def test_build_reporter_estimates_the_time_left_from_the_rate_so_far():
    from app.state import BuildReporter, duration
    from m3lab.retrieval import BuildProgress

    now = [100.0]
    seen = []
    r = BuildReporter(lambda f, desc: seen.append((f, desc)), None, clock=lambda: now[0])
    now[0] = 130.0  # 30 s for a quarter of the tokens: 90 s left
    r(BuildProgress(10, 100, 250, 1000))
    assert seen == [(0.25, "indexing: 10 of 100 documents encoded, about 1 min 30 s left")]
    assert duration(59.4) == "59 s" and duration(3725) == "62 min 05 s"


def test_a_cancelled_build_keeps_the_session_and_saves_nothing(state, tmp_path, cache):
    """Cancel from the first progress report: the call reports it, the session keeps its corpus, and the
    index cache holds no trace of the build (no index folder, no temporary)."""
    before = sorted(p.name for p in (cache / "indexes").iterdir()) if (cache / "indexes").is_dir() else []
    key0 = state.workspace.key

    def progress(fraction, desc=""):
        if fraction > 0:
            assert state.cancel("s1")

    v = cb.load_uploaded_corpus(state, _upload_file(tmp_path), progress=progress, key=key0, session="s1")
    assert v.message.startswith("Cancelled: indexing cancelled after"), v.message
    # the flag is seen at the next chunk boundary: the chunk being encoded when it was set finishes
    assert "128 of 300 documents encoded" in v.message and "Nothing was saved" in v.message
    assert v.key == key0 and state.loaded_keys() == [key0]
    after = sorted(p.name for p in (cache / "indexes").iterdir()) if (cache / "indexes").is_dir() else []
    assert after == before
    assert not state.cancel("s1")  # the build is over: nothing left to cancel
    assert cb.cancel_build(state, "s1") == "No indexing is running in this session."
    # the next build of the same session is not cancelled by the old flag
    v = cb.load_uploaded_corpus(state, _upload_file(tmp_path), key=key0, session="s1")
    assert v.message.startswith("Loaded"), v.message


def test_a_cancel_stops_only_its_own_session(state, tmp_path):
    def progress(fraction, desc=""):
        assert not state.cancel("someone-else")

    v = cb.load_uploaded_corpus(state, _upload_file(tmp_path), progress=progress, session="s1")
    assert v.message.startswith("Loaded"), v.message


# ----------------------------------------------------------------------------- views for real passages

def test_maxsim_text_view_and_cropped_heatmap_keep_every_number(state):
    ws = state.workspace
    s = cb.search(ws, QUERY, "multi-vector", top_k=2)
    doc_id = s.choices[0][1]
    full = cb.maxsim_view(ws, s.session, doc_id, columns="all passage tokens")
    crop = cb.maxsim_view(ws, s.session, doc_id, columns="picked tokens only")
    a = full.alignment
    picked = sorted(set(int(j) for j in a.best))
    heat_full, heat_crop = full.figure.data[0], crop.figure.data[0]
    assert len(heat_full.x) == len(a.passage_tokens) and len(heat_crop.x) == len(picked)
    np.testing.assert_allclose(np.asarray(heat_crop.z), a.similarity[:, picked], rtol=1e-6)
    np.testing.assert_allclose(crop.figure.data[2].x, full.figure.data[2].x)  # contributions unchanged
    # auto: this passage is longer than MAXSIM_SHORT, so picked +- 1
    if len(a.passage_tokens) > cb.MAXSIM_SHORT:
        auto = cb.maxsim_view(ws, s.session, doc_id)
        assert len(auto.figure.data[0].x) < len(a.passage_tokens)
    # the text view marks one piece per picked non-special column, titled by the query token that picked it
    assert full.text_html.count("<mark") >= 1 and "picked by" in full.text_html
    # without its marks the text view is the passage as encoded (title and text), unescaped
    import html
    import re

    doc = ws.index.documents[ws.position(doc_id)]
    shown = html.unescape(re.sub(r"<[^>]+>", "", full.text_html.split("query tokens:")[0]))
    assert document_text(doc) in shown


def test_sparse_view_draws_the_corpus_score_distribution_and_can_hide_special_tokens(echo_workspace):
    ws = echo_workspace
    s = cb.search(ws, QUERY, "hybrid", 1.0, 0.3, 1.0, top_k=3)
    v = cb.sparse_view(ws, s.session, "same")
    scores = ws.corpus_scores(QUERY)
    assert set(scores) == {"dense", "sparse", "colbert"} and all(len(x) == len(ws.index) for x in scores.values())
    pos = ws.position("same")
    row = s.table[s.table["id"] == "same"].iloc[0]
    for k in ("dense", "sparse", "colbert"):  # the marked value is the result's own score in the table
        assert scores[k][pos] == pytest.approx(row[k], abs=2e-4)
    hists = [t for t in v.distribution_figure.data if t.type == "histogram"]
    assert len(hists) == 3 and sorted(len(h.x) for h in hists) == [len(ws.index)] * 3
    hidden = cb.sparse_view(ws, s.session, "same", exclude_special=True)
    labels = list(hidden.match_figure.data[0].y)
    assert "[SEP] (special)" not in labels and "special" in hidden.match_figure.layout.title.text
    assert "[SEP] (special)" in list(v.match_figure.data[0].y)
    assert hidden.match.total == v.match.total  # the numbers are the pair's, whatever is drawn


def test_projection_focus_and_translation_links(state, monkeypatch):
    monkeypatch.setattr("m3lab.viz.projection.MIN_UMAP_POINTS", 10_000)
    ws = build_workspace(state.workspace.model, state.workspace.model_name, state.workspace.corpus, show_progress=False)
    groups = cb.translation_groups(ws)
    assert len(groups) == len(ws.index) // 2 and all(len(g) == 2 for g in groups)  # en + de of every topic
    for g in groups:
        assert len({ws.corpus.labels["topic"][i] for i in g}) == 1
    choices = cb.focus_choices(ws, "topic")
    assert choices[0] == cb.NO_FOCUS and "science-photosynthesis" in choices
    assert cb.PASSAGE_FOCUS + "science-photosynthesis/de" in choices
    v = cb.projection_view(ws, None, "topic", focus="science-photosynthesis", link_translations=True)
    assert "highlighted: topic science-photosynthesis (2 documents)" in v.message
    lines = [t for t in v.figure.data if t.mode == "lines"]
    assert len(lines) == 1 and sum(x is None for x in lines[0].x) >= 1
    v = cb.projection_view(ws, None, "language", focus=cb.PASSAGE_FOCUS + "science-photosynthesis/en")
    assert "and its 1 translation(s)" in v.message
    v = cb.projection_view(ws, None, "language", link_translations=True)
    assert f"lines join the {len(groups)} passage(s)" in v.message


# ----------------------------------------------------------------------------- model vs model

def test_compare_models_ranks_with_each_model_and_scores_both(state, tiny_xlmr_dir):
    ws = state.workspace
    v = cb.compare_models(state, "", str(tiny_xlmr_dir), QUERY, "hybrid", 1.0, 0.3, 1.0, top_k=6, session="s1")
    assert "⚠️ Could not" not in v.message, v.message
    other = state.workspace_for(str(tiny_xlmr_dir), ws.corpus)
    assert state.get(None) is ws  # nobody moved to B's workspace
    ids_a = list(cb.search(ws, QUERY, "hybrid", top_k=6).table["id"])
    ids_b = list(cb.search(other, QUERY, "hybrid", top_k=6).table["id"])
    t = v.table
    assert [i for i, r in zip(t["id"], t["rank B"]) if r is not None and r == r] == ids_b
    assert sorted(int(r) for r in t["rank A"].dropna()) == list(range(1, 7))
    assert set(t["id"]) == set(ids_a) | set(ids_b)
    assert f"{len(set(ids_a) & set(ids_b)) / 6:.0%}" in v.message
    # each model's scores of every listed document are its own M3Model.score
    docs = [ws.index.documents[ws.position(i)] for i in t["id"]]
    for model, col in ((ws.model, "A"), (other.model, "B")):
        ref = model.score([QUERY], [document_text(d) for d in docs], weights=(1.0, 0.3, 1.0))
        np.testing.assert_allclose(t[f"dense {col}"], ref.dense[0], atol=2e-4)
        np.testing.assert_allclose(t[f"colbert {col}"], ref.colbert[0], atol=2e-4)
        np.testing.assert_allclose(t[f"score {col}"], ref.dense[0] + 0.3 * ref.sparse[0] + ref.colbert[0], atol=5e-4)
    moves = dict(zip(t["id"], t["change"]))
    for d in ids_b:
        if d in ids_a:
            delta = ids_a.index(d) - ids_b.index(d)
            assert moves[d] == ("=" if delta == 0 else f"↑{delta}" if delta > 0 else f"↓{-delta}")
        else:
            assert moves[d] == "new in B"
    assert len(v.figure.data) == len(t)  # one line per document


def test_compare_models_reports_bad_input(state, tmp_path):
    assert "Enter model B" in cb.compare_models(state, "", " ", QUERY).message
    assert "BM25 is the same" in cb.compare_models(state, "", "x", QUERY, mode="BM25").message
    msg = cb.compare_models(state, "", str(tmp_path / "missing" / "model"), QUERY).message
    assert "no such local directory" in msg


# ----------------------------------------------------------------------------- Evaluate on uploaded questions

def _beir_files(folder, docs, questions):
    """corpus.jsonl, queries.jsonl and a qrels .tsv in ``folder`` (questions: (query id, text, relevant doc id))."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": d.id, "text": d.text, "title": d.title or ""})
                                                 + "\n" for d in docs), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t, _ in questions),
                                          encoding="utf-8")
    (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, _, d in
                                                                              questions), encoding="utf-8")
    return folder


def test_evaluate_uploaded_questions_match_the_built_in_evaluation(state, tmp_path):
    """The mini corpus's own questions uploaded as BEIR files (a .zip, or queries + qrels on the session's
    corpus) score exactly what the built-in choice scores."""
    import zipfile

    from m3lab.data import load_mini

    ws = state.workspace
    mini = load_mini(languages=["en", "de"])
    questions = [(q.id, q.text, next(iter(mini.qrels[q.id]))) for q in mini.queries]
    files = _beir_files(tmp_path / "beir", mini.corpus, questions)
    archive = tmp_path / "mini-beir.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(files / "corpus.jsonl", "mini/corpus.jsonl")
        z.write(files / "queries.jsonl", "mini/queries.jsonl")
        z.write(files / "qrels.tsv", "mini/qrels/test.tsv")
    builtin = cb.evaluate_view(ws, "mini corpus: en, de")
    from_zip = cb.evaluate_view(ws, "", files=[str(archive)], names=["mini-beir.zip"])
    on_session = cb.evaluate_view(ws, "", files=[str(files / "queries.jsonl"), str(files / "qrels.tsv")],
                                  names=["queries.jsonl", "qrels.tsv"])
    assert "⚠️" not in from_zip.message and "⚠️" not in on_session.message, (from_zip.message, on_session.message)
    assert "on this session's corpus" in on_session.message
    cols = ["nDCG@10", "MRR@10", "R@10", "R@100"]
    all_rows = builtin.table[builtin.table["language"] == "all"][["mode"] + cols].reset_index(drop=True)
    for v in (from_zip, on_session):
        # the uploaded questions carry no language: one row per mode, equal to the built-in "all" rows
        got = v.table[["mode"] + cols].drop_duplicates("mode").reset_index(drop=True)
        assert list(got["mode"]) == list(all_rows["mode"])
        # the same rankings; both tables hold x100 values rounded to 2 decimals, so a float32 tie-break at a
        # rounding edge may move one by 0.01
        np.testing.assert_allclose(got[cols].to_numpy(float), all_rows[cols].to_numpy(float), atol=0.011)


def test_evaluate_upload_errors_name_the_file_line_and_field(state, tmp_path):
    import zipfile

    ws = state.workspace
    docs = ws.documents[:3]
    files = _beir_files(tmp_path / "b", docs, [("q1", "a question", docs[0].id)])
    (files / "qrels.tsv").write_text("q1\tnot-a-doc\t1\n", encoding="utf-8")
    v = cb.evaluate_view(ws, "", files=[str(files / "queries.jsonl"), str(files / "qrels.tsv"),
                                        str(files / "corpus.jsonl")], names=["queries.jsonl", "my-qrels.tsv",
                                                                             "corpus.jsonl"])
    assert "my-qrels.tsv:1: field 'corpus-id': document 'not-a-doc' is not in corpus.jsonl" in v.message
    v = cb.evaluate_view(ws, "", files=[str(files / "qrels.tsv")], names=["qrels.tsv"])
    assert "no queries file" in v.message
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../outside/queries.jsonl", "{}")
    assert "unsafe path" in cb.evaluate_view(ws, "", files=[str(evil)], names=["evil.zip"]).message
    assert not (tmp_path / "outside").exists()
    bad = tmp_path / "notes.txt"
    bad.write_text("x", encoding="utf-8")
    assert "unsupported file type '.txt'" in cb.evaluate_view(ws, "", files=[str(bad)], names=["notes.txt"]).message
