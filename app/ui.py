"""The Gradio layout of the explorer and its wiring to :mod:`app.callbacks` (no computation here)."""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry, no version check

import gradio as gr  # noqa: E402

from m3lab import plots  # noqa: E402
from m3lab.data import MINI_LANGUAGES  # noqa: E402
from m3lab.retrieval.spec import PRESETS  # noqa: E402

from . import callbacks as cb  # noqa: E402
from .corpora import (MAX_UPLOAD_BYTES, MAX_UPLOAD_DOCUMENTS, UPLOAD_SUFFIXES, builtin_choices,  # noqa: E402
                      evaluation_choices)
from .state import AppState, cache_limit_bytes  # noqa: E402

EXAMPLES = ["How do plants turn sunlight into energy?", "Wann wurde die Chinesische Mauer gebaut?",
            "¿Qué es la inflación?", "光合作用需要什么？", "what causes inflation"]
# system fonts only: the default theme would fetch Google Fonts, and the app must work offline
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "Consolas", "monospace"])
CSS = """
#status {font-size: 0.95em}
.m3-note {color: var(--body-text-color-subdued); font-size: 0.9em}
/* narrow screens (phones, 420 px): the results keep rank, id, lang, text and score; title and the
   three component scores (also in the breakdown figure below) give way so the text stays readable */
@media (max-width: 640px) {
  #results table th:nth-child(4), #results table th:nth-child(n+7),
  #results table td:nth-child(4), #results table td:nth-child(n+7),
  #results [role=gridcell][data-col="3"], #results [role=gridcell][data-col="6"],
  #results [role=gridcell][data-col="7"], #results [role=gridcell][data-col="8"] {display: none !important}
  #results [role=gridcell][data-col="0"], #results table th:nth-child(1) {flex: 0 0 2.4em !important; width: 2.4em !important; min-width: 2.4em !important; max-width: 2.4em !important}
  #results [role=gridcell][data-col="1"], #results table th:nth-child(2) {flex: 0 0 6em !important; width: 6em !important; min-width: 6em !important; max-width: 6em !important}
  #results [role=gridcell][data-col="2"], #results table th:nth-child(3) {flex: 0 0 2.5em !important; width: 2.5em !important; min-width: 2.5em !important; max-width: 2.5em !important}
  #results [role=gridcell][data-col="5"], #results table th:nth-child(6) {flex: 0 0 4.4em !important; width: 4.4em !important; min-width: 4.4em !important; max-width: 4.4em !important}
  #results [role=gridcell][data-col="4"] {flex: 1 1 0 !important; width: auto !important; min-width: 0; overflow: hidden}
  #results table th:nth-child(5) {width: calc(100vw - 66px - 15.3em) !important; min-width: calc(100vw - 66px - 15.3em) !important;
                                  max-width: calc(100vw - 66px - 15.3em) !important}
  #results table {table-layout: fixed !important; width: 100% !important}
}
"""


def _weights(prefix: str) -> tuple[gr.Slider, gr.Slider, gr.Slider]:
    with gr.Row():
        wd = gr.Slider(0, 2, value=1.0, step=0.05, label="w₁ dense", elem_id=f"{prefix}-w-dense")
        ws = gr.Slider(0, 2, value=0.3, step=0.05, label="w₂ sparse", elem_id=f"{prefix}-w-sparse")
        wc = gr.Slider(0, 2, value=1.0, step=0.05, label="w₃ multi-vector", elem_id=f"{prefix}-w-colbert")
    return wd, ws, wc


def _session_id(request: gr.Request | None) -> str | None:
    """The browser session (or API client) behind a call: whose build a cancel stops."""
    return getattr(request, "session_hash", None) if request is not None else None


def build_ui(state: AppState, *, mini_languages=MINI_LANGUAGES) -> gr.Blocks:
    """The explorer's Blocks: eight views, each acting on the calling session's workspace."""
    ws0 = state.workspace
    with gr.Blocks(title="m3lab explorer", analytics_enabled=False) as demo:
        session = gr.State({})
        wskey = gr.State(None)  # this session's workspace (AppState key): its own model, corpus and index
        gr.Markdown("# m3lab explorer\nOne encoder, three retrieval functions (M3-Embedding): **dense**, "
                    "**sparse** (lexical) and **multi-vector** (ColBERT MaxSim), and their **hybrid** sum.")
        header = gr.Markdown(ws0.describe(), elem_id="status")

        with gr.Tabs() as tabs:
            # ------------------------------------------------------------ Search
            with gr.Tab("Search", id="search", elem_id="tab-search"):
                with gr.Row(equal_height=True):
                    query = gr.Textbox(label="Query", placeholder="Ask something in any language…", scale=6,
                                       elem_id="query", max_lines=3)
                    search_btn = gr.Button("Search", variant="primary", scale=1, elem_id="search-btn")
                with gr.Row():
                    mode = gr.Radio(list(cb.MODES), value="hybrid", label="Mode", elem_id="mode", scale=3)
                    top_k = gr.Slider(1, 50, value=10, step=1, label="Top-k", elem_id="top-k", scale=2)
                    language = gr.Dropdown([cb.ALL_LANGUAGES] + ws0.languages, value=cb.ALL_LANGUAGES,
                                           label="Documents in", elem_id="language", scale=1)
                with gr.Accordion("Hybrid weights: s = w₁·dense + w₂·sparse + w₃·multi-vector", open=True):
                    w_dense, w_sparse, w_colbert = _weights("search")
                gr.Examples(EXAMPLES, inputs=query, label="Examples")
                search_msg = gr.Markdown(elem_id="search-msg")
                results = gr.Dataframe(headers=cb.RESULT_COLUMNS, interactive=False, wrap=True, elem_id="results",
                                       label="Results (click a row to see why it scores what it does)",
                                       max_height=820,
                                       column_widths=["5%", "17%", "5%", "11%", "38%", "6%", "6%", "6%", "6%"])
                breakdown = gr.Plot(label="Score breakdown", elem_id="breakdown")
                export = gr.File(label="Download the ranking (CSV, JSON)", file_count="multiple", interactive=False,
                                 elem_id="export")

            # ------------------------------------------------------------ Sparse
            with gr.Tab("Sparse", id="sparse", elem_id="tab-sparse") as sparse_tab:
                gr.Markdown("Lexical weights w_t = ReLU(W_lex·h_t) of the query and of a result; the shared tokens' "
                            "products w_q·w_p add up to s_lex.", elem_classes="m3-note")
                gr.Markdown(cb.SPECIAL_LEGEND + " bge-m3 gives cls/eos/pad/unk no lexical weight, so they seldom "
                            "appear here (a BERT tokenizer's `[SEP]` does).", elem_classes="m3-note",
                            elem_id="sparse-legend")
                with gr.Row(equal_height=True):
                    sparse_pick = gr.Dropdown(label="Result (from the last search)", choices=[], elem_id="sparse-pick",
                                              scale=4)
                    hide_special = gr.Checkbox(value=False, label="Leave special tokens out of the bars",
                                               elem_id="sparse-hide-special", scale=1)
                sparse_msg = gr.Markdown(elem_id="sparse-msg")
                with gr.Row():
                    with gr.Column():
                        gr.Markdown("**Query**, each token shaded by its weight")
                        q_text = gr.HTML(elem_id="sparse-query-text")
                    with gr.Column():
                        gr.Markdown("**Passage** (title and text, as encoded), each token shaded by its weight")
                        p_text = gr.HTML(elem_id="sparse-passage-text")
                with gr.Row():
                    q_bar = gr.Plot(label="Query token weights", elem_id="sparse-query-bar")
                    p_bar = gr.Plot(label="Passage token weights", elem_id="sparse-passage-bar")
                with gr.Row():
                    match_bar = gr.Plot(label="Shared tokens", elem_id="sparse-match-bar", scale=3)
                    match_table = gr.Dataframe(label="Shared tokens and their contributions", interactive=False,
                                               elem_id="sparse-table", scale=2)
                gr.Markdown("Where this result's three scores lie among every document's, for this query: a "
                            "function whose scores spread little moves a ranking little, whatever its weight.",
                            elem_classes="m3-note")
                distribution = gr.Plot(label="Score distribution over the corpus", elem_id="sparse-distribution")

            # ------------------------------------------------------------ MaxSim
            with gr.Tab("MaxSim", id="maxsim", elem_id="tab-maxsim") as maxsim_tab:
                gr.Markdown("Each query vector's best match among the passage vectors (□); the best similarities, "
                            "divided by the number of query vectors N, add up to s_mul.", elem_classes="m3-note")
                gr.Markdown(cb.SPECIAL_LEGEND + " MaxSim keeps them (only the first token, `<s>` / `[CLS]`, has no "
                            "vector), so a query token can best-match the passage's `</s>`: a match that says nothing "
                            "about its words.", elem_classes="m3-note", elem_id="maxsim-legend")
                with gr.Row(equal_height=True):
                    maxsim_pick = gr.Dropdown(label="Result (from the last search)", choices=[], elem_id="maxsim-pick",
                                              scale=3)
                    maxsim_columns = gr.Radio(list(cb.MAXSIM_COLUMNS), value="auto", label="Heatmap columns (auto: "
                                              f"all up to {cb.MAXSIM_SHORT} passage tokens, else the picked ones ± 1)",
                                              elem_id="maxsim-columns", scale=3)
                maxsim_msg = gr.Markdown(elem_id="maxsim-msg")
                gr.Markdown("**Passage**, each query token's best match highlighted in that token's colour "
                            "(hover a mark to see which query token picked it, and how similar they are)")
                maxsim_text = gr.HTML(elem_id="maxsim-text")
                heatmap = gr.Plot(label="MaxSim", elem_id="maxsim-heatmap")
                maxsim_table = gr.Dataframe(label="Per query token", interactive=False, elem_id="maxsim-table")

            # ------------------------------------------------------------ Projection
            with gr.Tab("Projection", id="projection", elem_id="tab-projection") as projection_tab:
                with gr.Row(equal_height=True):
                    color_by = gr.Radio(ws0.corpus.groupings, value="language", label="Colour by",
                                        elem_id="color-by", scale=3)
                    align = gr.Checkbox(value=True, label="Remove each language's mean vector (multilingual "
                                        "corpora): shows whether translations meet", elem_id="align", scale=2)
                    draw_btn = gr.Button("Redraw", scale=1)
                with gr.Row(equal_height=True):
                    focus = gr.Dropdown(cb.focus_choices(ws0), value=cb.NO_FOCUS, label="Highlight (one "
                                        "value of the colouring, or one passage)", elem_id="projection-focus",
                                        scale=3, filterable=True)
                    links = gr.Checkbox(value=False, label="Join translations of a passage with lines",
                                        elem_id="projection-links", scale=2)
                projection_msg = gr.Markdown(elem_id="projection-msg")
                projection_plot = gr.Plot(label="Map of the dense vectors", elem_id="projection-plot")

            # ------------------------------------------------------------ Compare
            with gr.Tab("Compare", id="compare", elem_id="tab-compare"):
                with gr.Row():
                    text_a = gr.Textbox(label="Text A (query)", lines=3, elem_id="text-a",
                                        value="Where does photosynthesis take place?")
                    text_b = gr.Textbox(label="Text B (passage)", lines=3, elem_id="text-b",
                                        value="Photosynthesis takes place mainly in the chloroplasts of plant cells.")
                cw_dense, cw_sparse, cw_colbert = _weights("compare")
                compare_btn = gr.Button("Compare", variant="primary", elem_id="compare-btn")
                compare_msg = gr.Markdown(elem_id="compare-msg")
                with gr.Row():
                    compare_table = gr.Dataframe(label="Scores", interactive=False, wrap=True, elem_id="compare-table",
                                                 scale=3, column_widths=["20%", "12%", "68%"])
                    compare_bars = gr.Plot(label="Scores", elem_id="compare-bars", scale=2)
                compare_lex = gr.Plot(label="Lexical matches", elem_id="compare-lexical")
                compare_maxsim = gr.Plot(label="MaxSim", elem_id="compare-maxsim")

            # ------------------------------------------------------------ Models
            with gr.Tab("Models", id="models", elem_id="tab-models"):
                gr.Markdown("Two models on the same query and this session's corpus: both rankings, how each "
                            "document moved, and every function's score under each. For example the base "
                            "`e5-small` (untrained heads) against the trained `default`, or a checkpoint before "
                            "and after fine-tuning (local directories). A model not loaded yet indexes the corpus "
                            "first (cached).", elem_classes="m3-note")
                with gr.Row(equal_height=True):
                    model_a = gr.Textbox(label="Model A (empty: this session's model)", elem_id="models-a", scale=2)
                    model_b = gr.Textbox(label="Model B", value="e5-small", elem_id="models-b", scale=2)
                    models_query = gr.Textbox(label="Query", value=EXAMPLES[0], elem_id="models-query", scale=4)
                with gr.Row():
                    models_mode = gr.Radio(list(cb.COMPARE_MODES), value="hybrid", label="Mode", elem_id="models-mode",
                                           scale=3)
                    models_k = gr.Slider(1, 30, value=10, step=1, label="Top-k", elem_id="models-k", scale=2)
                mw_dense, mw_sparse, mw_colbert = _weights("models")
                with gr.Row(equal_height=True):
                    models_btn = gr.Button("Compare models", variant="primary", elem_id="models-btn", scale=3)
                    models_cancel_btn = gr.Button("Cancel indexing", variant="stop", elem_id="models-cancel-btn",
                                                  scale=1)
                models_msg = gr.Markdown(elem_id="models-msg")
                models_chart = gr.Plot(label="Rank changes", elem_id="models-chart")
                models_table = gr.Dataframe(label="Both rankings: ranks, change, and each function's score under A and B",
                                            interactive=False, wrap=True, elem_id="models-table")

            # ------------------------------------------------------------ Evaluate
            with gr.Tab("Evaluate", id="evaluate", elem_id="tab-evaluate"):
                gr.Markdown("Score a data set with questions in every mode (dense, sparse, multi-vector, hybrid, "
                            "BM25) with this session's model: per language, per question (the rank of its relevant "
                            "passage), how much the modes' top 10 overlap, and nDCG@10 over a grid of hybrid "
                            "weights. XQuAD needs its files (`M3LAB_DATA_DIR`) or a connection.",
                            elem_classes="m3-note")
                with gr.Row(equal_height=True):
                    eval_choice = gr.Dropdown(evaluation_choices(mini_languages), label="Data set",
                                              value=evaluation_choices(mini_languages)[0], elem_id="eval-dataset",
                                              scale=3)
                    eval_w_dense = gr.Slider(0, 2, value=1.0, step=0.05, label="w₁ dense for the sweep",
                                             elem_id="eval-w-dense", scale=2)
                    eval_btn = gr.Button("Evaluate", variant="primary", elem_id="eval-btn", scale=1)
                eval_files = gr.File(label="…or your own questions: a BEIR folder as .zip (corpus.jsonl, "
                                     "queries.jsonl, qrels/test.tsv), or queries*.jsonl and a qrels .tsv (query-id, "
                                     "corpus-id, score) with corpus*.jsonl, or without it to judge this session's "
                                     f"corpus. At most {MAX_UPLOAD_BYTES // 2**20} MB.", file_count="multiple",
                                     file_types=[".zip", ".jsonl", ".tsv"], elem_id="eval-files", height=120)
                eval_msg = gr.Markdown(elem_id="eval-msg")
                eval_table = gr.Dataframe(label="Language × mode (× 100)", interactive=False, elem_id="eval-table")
                with gr.Row():
                    eval_overlap = gr.Plot(label="Top-10 overlap", elem_id="eval-overlap")
                    eval_fusion = gr.Plot(label="Fusion-weight sweep", elem_id="eval-fusion")
                eval_queries = gr.Dataframe(label="Per question: rank of the relevant passage", interactive=False,
                                            wrap=True, elem_id="eval-queries",
                                            column_widths=["20%", "5%", "45%"] + ["6%"] * 5)

            # ------------------------------------------------------------ Corpus
            with gr.Tab("Corpus", id="corpus", elem_id="tab-corpus"):
                with gr.Row():
                    with gr.Column():
                        gr.Markdown("**Built-in data sets** (XQuAD and Tatoeba need their files locally, via "
                                    "`M3LAB_DATA_DIR`, or a network connection).")
                        builtin = gr.Dropdown(builtin_choices(mini_languages), label="Data set",
                                              value=builtin_choices(mini_languages)[0], elem_id="builtin")
                        builtin_btn = gr.Button("Load data set", elem_id="builtin-btn")
                    with gr.Column():
                        gr.Markdown(f"**Upload** a {', '.join(UPLOAD_SUFFIXES)} file: at most "
                                    f"{MAX_UPLOAD_BYTES // 2**20} MB and {MAX_UPLOAD_DOCUMENTS:,} documents. "
                                    "`.txt`: one document per line (or per blank-line separated paragraph); "
                                    "`.jsonl`: objects with `text` and optional `id`, `title`, `lang`; "
                                    "`.csv`/`.tsv`: a header with a `text` column. What you load here is yours: "
                                    "other browser sessions keep their own corpus and model. Built indexes are "
                                    f"cached on disk, at most {cache_limit_bytes() / 1e6:,.0f} MB "
                                    "(`M3LAB_CACHE_MAX_MB`), least recently used deleted first.",
                                    elem_id="upload-limits")
                        upload = gr.File(label="Corpus file", file_types=list(UPLOAD_SUFFIXES), elem_id="upload")
                        upload_btn = gr.Button("Index uploaded file", elem_id="upload-btn")
                with gr.Row():
                    with gr.Column():
                        gr.Markdown("**Index storage**: how the corpus's embeddings are stored and searched "
                                    "(`default`: float16 multi-vectors, exhaustive MaxSim; `exact`: float32; "
                                    "`compact`: int8 multi-vectors pooled by 2; `muvera`: MUVERA candidates for "
                                    "MaxSim; `tiny`: binary dense + int8 pooled multi-vectors + MUVERA). Or options "
                                    "such as `pool_factor=3,colbert_dtype=int8`; see docs/evaluation.md.")
                        index_spec = gr.Dropdown(list(PRESETS), value=ws0.spec, allow_custom_value=True,
                                                 label="Index storage", elem_id="index-spec")
                        index_spec_btn = gr.Button("Re-index with this storage", elem_id="index-spec-btn")
                    with gr.Column():
                        index_table = gr.Dataframe(cb.index_spec_table(ws0), label="Current index", interactive=False,
                                                   elem_id="index-table")
                with gr.Row(equal_height=True):
                    cancel_btn = gr.Button("Cancel indexing", variant="stop", scale=1, elem_id="cancel-btn")
                    cancel_msg = gr.Markdown(elem_id="cancel-msg")
                corpus_msg = gr.Markdown(elem_id="corpus-msg")
                preview = gr.Dataframe(cb.corpus_preview(ws0), label="Documents (first 50)", interactive=False,
                                       wrap=True, elem_id="corpus-preview", column_widths=["22%", "6%", "17%", "55%"])

            # ------------------------------------------------------------ Model
            with gr.Tab("Model", id="model", elem_id="tab-model"):
                gr.Markdown("`default` (the shipped m3lab model: multilingual e5-small with trained M3 heads), "
                            "`e5-small` or `minilm` (backbones with untrained heads), a local model directory, or a "
                            "Hugging Face hub id such as `BAAI/bge-m3` (needs a connection). A model that fails to load leaves the current one serving.")
                with gr.Row(equal_height=True):
                    model_name = gr.Textbox(label="Model", value=ws0.model_name, scale=5, elem_id="model-name")
                    model_btn = gr.Button("Load model", scale=1, elem_id="model-btn")
                with gr.Row(equal_height=True):
                    model_cancel_btn = gr.Button("Cancel indexing", variant="stop", scale=1, elem_id="model-cancel-btn")
                    model_cancel_msg = gr.Markdown(elem_id="model-cancel-msg")
                model_msg = gr.Markdown(elem_id="model-msg")
                info = gr.Dataframe(cb.model_info(ws0), label="Current model", interactive=False, elem_id="model-info")

        # ---------------------------------------------------------------- wiring
        def on_search(query, mode, w_dense, w_sparse, w_colbert, top_k, language, sess, key):
            v = cb.search(state.get(key), query, mode, w_dense, w_sparse, w_colbert, top_k, sess, language=language)
            first = v.choices[0][1] if v.choices else None
            return (v.message, v.table, gr.Dropdown(choices=v.choices, value=first),
                    gr.Dropdown(choices=v.choices, value=first), v.session, v.figure, v.export or None)

        search_io = dict(inputs=[query, mode, w_dense, w_sparse, w_colbert, top_k, language, session, wskey],
                         outputs=[search_msg, results, sparse_pick, maxsim_pick, session, breakdown, export])
        search_btn.click(on_search, api_name="search", concurrency_limit=2, concurrency_id="search", **search_io)
        query.submit(on_search, api_visibility="private", concurrency_limit=2, concurrency_id="search", **search_io)

        def on_sparse(sess, doc_id, hide, key):
            v = cb.sparse_view(state.get(key), sess, doc_id, exclude_special=bool(hide))
            return (v.message, plots.weighted_text_html(v.query_spans), plots.weighted_text_html(v.passage_spans),
                    v.query_figure, v.passage_figure, v.match_figure, v.table, v.distribution_figure)

        sparse_outputs = [sparse_msg, q_text, p_text, q_bar, p_bar, match_bar, match_table, distribution]

        def on_result_click(sess, hide, key, evt: gr.SelectData):
            """A click on a result row opens its Sparse explanation (and selects it in MaxSim too)."""
            doc_ids = (sess or {}).get("doc_ids") or []
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            if not isinstance(row, int) or not 0 <= row < len(doc_ids):
                return (gr.Tabs(),) + (gr.skip(),) * (2 + len(sparse_outputs))
            doc_id = doc_ids[row]
            return (gr.Tabs(selected="sparse"), gr.Dropdown(value=doc_id), gr.Dropdown(value=doc_id),
                    *on_sparse(sess, doc_id, hide, key))

        results.select(on_result_click, inputs=[session, hide_special, wskey], api_visibility="private",
                       outputs=[tabs, sparse_pick, maxsim_pick, *sparse_outputs])

        # /explain(query, doc_id): both explanations of one pair, for scripts (hidden inputs, no search needed)
        explain_query = gr.Textbox(visible=False)
        explain_doc = gr.Textbox(visible=False)
        explain_btn = gr.Button(visible=False)

        def on_explain(query, doc_id, key):
            sv, mv = cb.explain(state.get(key), query, doc_id)
            return sv.message, sv.table, mv.message, mv.table

        explain_btn.click(on_explain, inputs=[explain_query, explain_doc, wskey],
                          outputs=[sparse_msg, match_table, maxsim_msg, maxsim_table], api_name="explain")

        sparse_io = dict(fn=on_sparse, inputs=[session, sparse_pick, hide_special, wskey], outputs=sparse_outputs)
        sparse_tab.select(api_visibility="private", **sparse_io)
        sparse_pick.input(api_visibility="private", **sparse_io)
        hide_special.input(api_visibility="private", **sparse_io)

        def on_maxsim(sess, doc_id, columns, key):
            v = cb.maxsim_view(state.get(key), sess, doc_id, columns=columns)
            return v.message, v.text_html, v.figure, v.table

        maxsim_io = dict(fn=on_maxsim, inputs=[session, maxsim_pick, maxsim_columns, wskey],
                         outputs=[maxsim_msg, maxsim_text, heatmap, maxsim_table])
        maxsim_tab.select(api_visibility="private", **maxsim_io)
        maxsim_pick.input(api_visibility="private", **maxsim_io)
        maxsim_columns.input(api_visibility="private", **maxsim_io)

        def on_projection(sess, colour, aligned, highlight, link_translations, key, progress=gr.Progress()):
            v = cb.projection_view(state.get(key), sess, colour, aligned, progress=progress, focus=highlight,
                                   link_translations=bool(link_translations))
            return v.message, v.figure

        projection_io = dict(fn=on_projection, inputs=[session, color_by, align, focus, links, wskey],
                             outputs=[projection_msg, projection_plot])
        projection_tab.select(api_visibility="private", **projection_io)
        align.input(api_visibility="private", **projection_io)
        focus.input(api_visibility="private", **projection_io)
        links.input(api_visibility="private", **projection_io)
        draw_btn.click(api_name="projection", **projection_io)

        def on_colour(sess, colour, aligned, linked, key, progress=gr.Progress()):
            """Another colouring: the highlight choices become its values (and nothing is highlighted)."""
            choices = cb.focus_choices(state.get(key), colour)
            return (gr.Dropdown(choices=choices, value=cb.NO_FOCUS),
                    *on_projection(sess, colour, aligned, cb.NO_FOCUS, linked, key, progress))

        color_by.input(on_colour, inputs=[session, color_by, align, links, wskey],
                       outputs=[focus, projection_msg, projection_plot], api_visibility="private")

        def on_compare(text_a, text_b, w_dense, w_sparse, w_colbert, key):
            v = cb.compare(state.get(key), text_a, text_b, w_dense, w_sparse, w_colbert)
            return v.message, v.scores, v.score_figure, v.lexical_figure, v.maxsim_figure

        compare_btn.click(on_compare, inputs=[text_a, text_b, cw_dense, cw_sparse, cw_colbert, wskey],
                          outputs=[compare_msg, compare_table, compare_bars, compare_lex, compare_maxsim],
                          api_name="compare")

        def on_evaluate(dataset, w_dense, files, key, progress=gr.Progress()):
            paths = [str(f) for f in files or []]
            names = [getattr(f, "orig_name", None) or os.path.basename(str(f)) for f in files or []]
            v = cb.evaluate_view(state.get(key), dataset, w_dense, progress=progress, files=paths or None,
                                 names=names or None)
            return v.message, v.table, v.overlap_figure, v.fusion_figure, v.queries

        def on_models(model_a, model_b, query, mode, w_dense, w_sparse, w_colbert, top_k, key, request: gr.Request,
                      progress=gr.Progress()):  # the parameter names are the API's (/compare_models)
            v = cb.compare_models(state, model_a, model_b, query, mode, w_dense, w_sparse, w_colbert, top_k, key=key,
                                  progress=progress, session=_session_id(request))
            return v.message, v.figure, v.table

        models_btn.click(on_models, inputs=[model_a, model_b, models_query, models_mode, mw_dense, mw_sparse,
                                            mw_colbert, models_k, wskey],
                         outputs=[models_msg, models_chart, models_table], api_name="compare_models",
                         concurrency_id="switch", concurrency_limit=1)

        eval_btn.click(on_evaluate, inputs=[eval_choice, eval_w_dense, eval_files, wskey],
                       outputs=[eval_msg, eval_table, eval_overlap, eval_fusion, eval_queries], api_name="evaluate",
                       concurrency_id="evaluate", concurrency_limit=1)

        switch_outputs = [header, preview, color_by, info, index_table, language, focus, wskey]

        def _languages(ws):
            return gr.Dropdown(choices=[cb.ALL_LANGUAGES] + ws.languages, value=cb.ALL_LANGUAGES)

        def _after(v: cb.SwitchView):
            ws = state.get(v.key)
            return (v.message, v.header, v.preview, gr.Radio(choices=v.groupings, value="language"),
                    cb.model_info(ws), cb.index_spec_table(ws), _languages(ws),
                    gr.Dropdown(choices=cb.focus_choices(ws), value=cb.NO_FOCUS), v.key)

        # builds report their own progress (tokens encoded, time left) and stop on the session's cancel
        def on_builtin(name, key, request: gr.Request, progress=gr.Progress()):
            return _after(cb.load_builtin_corpus(state, name, progress=progress, key=key,
                                                 session=_session_id(request)))

        def on_upload(file, key, request: gr.Request, progress=gr.Progress()):
            name = getattr(file, "orig_name", None) or (os.path.basename(file) if file else None)
            return _after(cb.load_uploaded_corpus(state, file, progress=progress, display_name=name, key=key,
                                                  session=_session_id(request)))

        def on_model(name, key, request: gr.Request, progress=gr.Progress()):
            return _after(cb.load_model_view(state, name, progress=progress, key=key, session=_session_id(request)))

        builtin_btn.click(on_builtin, inputs=[builtin, wskey], outputs=[corpus_msg, *switch_outputs],
                          api_name="load_corpus", concurrency_id="switch", concurrency_limit=1)
        upload_btn.click(on_upload, inputs=[upload, wskey], outputs=[corpus_msg, *switch_outputs],
                         api_name="upload_corpus", concurrency_id="switch", concurrency_limit=1)
        model_btn.click(on_model, inputs=[model_name, wskey], outputs=[model_msg, *switch_outputs],
                        api_name="load_model", concurrency_id="switch", concurrency_limit=1)

        def on_index_spec(spec, key, request: gr.Request, progress=gr.Progress()):
            return _after(cb.apply_index_spec(state, spec, progress=progress, key=key, session=_session_id(request)))

        index_spec_btn.click(on_index_spec, inputs=[index_spec, wskey], outputs=[corpus_msg, *switch_outputs],
                             api_name="index_spec", concurrency_id="switch", concurrency_limit=1)

        def on_cancel(request: gr.Request):
            return cb.cancel_build(state, _session_id(request))

        # not queued behind the build it cancels (the switch events run one at a time)
        cancel_btn.click(on_cancel, outputs=[cancel_msg], api_name="cancel_indexing", queue=False)
        model_cancel_btn.click(on_cancel, outputs=[model_cancel_msg], api_visibility="private", queue=False)
        models_cancel_btn.click(on_cancel, outputs=[models_msg], api_visibility="private", queue=False)

        def on_load():
            ws = state.workspace  # a new session starts on the starting workspace
            return ws.describe(), cb.corpus_preview(ws), gr.Radio(choices=ws.corpus.groupings, value="language"), \
                cb.model_info(ws), cb.index_spec_table(ws), _languages(ws), \
                gr.Dropdown(choices=cb.focus_choices(ws), value=cb.NO_FOCUS), ws.key

        demo.load(on_load, outputs=switch_outputs, api_visibility="private")
    return demo
