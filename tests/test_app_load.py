"""Load: 20 concurrent searches through the running app's API, all answered without an error.

The app is started twice on the same cache: the first start builds the index, the second must load
it (a restart is fast). Latency percentiles are printed (``pytest -s``) for the record, never asserted.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from app_server import running_app  # noqa: E402

pytestmark = pytest.mark.slow

N_QUERIES = 20
QUERIES = ["How do plants turn sunlight into energy?", "Who built the Great Wall?", "What causes inflation?",
           "How do vaccines work?", "Wann wurde die Chinesische Mauer gebaut?"]
MODES = ["hybrid", "dense", "sparse", "multi-vector"]


def test_restart_loads_the_cached_index_and_serves_20_concurrent_queries(tmp_path):
    cache = tmp_path / "cache"
    with running_app(cache, tmp_path / "first.log", "--languages", "en", "--no-warm-up") as first:
        assert "indexing 63 documents" in first.output()
    with running_app(cache, tmp_path / "second.log", "--languages", "en", "--no-warm-up") as app:
        log = app.output()
        assert "loaded the index of mini corpus (en)" in log and "indexing" not in log
        client = gradio_client.Client(app.url + "/", verbose=False, analytics_enabled=False, download_files=False)

        def one(i: int) -> tuple[float, str]:
            start = time.perf_counter()
            msg, _table, *_ = client.predict(QUERIES[i % len(QUERIES)], MODES[i % len(MODES)], 1.0, 0.3, 1.0, 5,
                                            api_name="/search")
            return time.perf_counter() - start, msg

        with ThreadPoolExecutor(max_workers=N_QUERIES) as pool:
            answers = list(pool.map(one, range(N_QUERIES)))
        for i, (_, msg) in enumerate(answers):
            # an answer: results, or (sparse mode) the statement that no document shares a weighted token
            assert ("results for" in msg or "No document matches" in msg) and QUERIES[i % len(QUERIES)] in msg, msg
        assert sum("results for" in msg for _, msg in answers) >= N_QUERIES // 2
        latency = np.array([t for t, _ in answers])
        print(f"\n{N_QUERIES} concurrent queries: p50 {np.percentile(latency, 50):.2f} s, "
              f"p95 {np.percentile(latency, 95):.2f} s, max {latency.max():.2f} s")
        # a bad request through the API is a message too, and the server keeps serving
        msg, *_ = client.predict("", "hybrid", 1.0, 0.3, 1.0, 5, api_name="/search")
        assert "Type a query" in msg
        assert app.proc.poll() is None and "Traceback" not in app.output()


def test_the_named_api_acts_on_each_callers_own_session(tmp_path):
    """Scripts call the fixed names (docs/app.md): /search(query, mode, w_dense, w_sparse, w_colbert, top_k) and
    the others; a client that uploads a corpus searches it, while another client keeps the starting one."""
    with running_app(tmp_path / "cache", tmp_path / "app.log", "--languages", "en", "--no-warm-up") as app:
        new_client = lambda: gradio_client.Client(app.url + "/", verbose=False, analytics_enabled=False,  # noqa: E731
                                                  download_files=False)
        a, b = new_client(), new_client()
        api = a.view_api(return_format="dict", print_info=False)["named_endpoints"]
        assert {"/search", "/upload_corpus", "/load_model", "/load_corpus", "/compare", "/evaluate",
                "/projection", "/index_spec", "/explain", "/compare_models", "/cancel_indexing"} <= set(api)
        assert [p["parameter_name"] for p in api["/compare_models"]["parameters"]] == \
               ["model_a", "model_b", "query", "mode", "w_dense", "w_sparse", "w_colbert", "top_k"]
        assert [p["parameter_name"] for p in api["/explain"]["parameters"]] == ["query", "doc_id"]
        assert [p["parameter_name"] for p in api["/search"]["parameters"]] == \
               ["query", "mode", "w_dense", "w_sparse", "w_colbert", "top_k", "language"]  # language: optional
        assert [p["parameter_name"] for p in api["/upload_corpus"]["parameters"]] == ["file"]
        assert [p["parameter_name"] for p in api["/load_model"]["parameters"]] == ["name"]
        corpus = tmp_path / "mine.jsonl"
        corpus.write_text('{"id": "m0", "text": "The Eiffel Tower is in Paris."}\n'
                          '{"id": "m1", "text": "Bees make honey."}\n', encoding="utf-8")
        msg, *_ = a.predict(gradio_client.handle_file(str(corpus)), api_name="/upload_corpus")
        assert "2 documents" in msg
        _, table_a, *_ = a.predict("where is the tower?", "hybrid", 1.0, 0.3, 1.0, 5, api_name="/search")
        _, table_b, *_ = b.predict("where is the tower?", "hybrid", 1.0, 0.3, 1.0, 5, api_name="/search")
        ids = lambda t: [row[t["headers"].index("id")] for row in t["data"]]  # noqa: E731
        assert set(ids(table_a)) == {"m0", "m1"} and not set(ids(table_b)) & {"m0", "m1"}
        assert {"id", "lang", "score", "dense", "sparse", "colbert"} <= set(table_a["headers"])
        sparse_msg, _sparse_table, maxsim_msg, _maxsim_table = a.predict("where is the tower?", "m0",
                                                                          api_name="/explain")
        assert "m0" in sparse_msg and "s_lex" in sparse_msg and "s_mul" in maxsim_msg
        # model vs model on this client's corpus (the same model twice: the same ranking), and a cancel with no build
        models_msg, _chart, models_table = a.predict("", "default", "where is the tower?", "hybrid", 1.0, 0.3, 1.0, 2,
                                                     api_name="/compare_models")
        assert "The top 2 share 100%" in models_msg and "upload mine.jsonl" in models_msg
        assert models_table["headers"][:5] == ["id", "lang", "rank A", "rank B", "change"]
        assert b.predict(api_name="/cancel_indexing") == "No indexing is running in this session."
        assert app.proc.poll() is None and "Traceback" not in app.output()
