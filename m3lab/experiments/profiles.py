"""Notebook run helpers: the SMOKE switch and settings profiles, local data, the run record, figure display."""
from __future__ import annotations

import base64
import contextlib
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

PROFILES = ("smoke", "cpu", "gpu")


_TRUE = ("1", "true", "yes", "on")


ROOT = Path(__file__).resolve().parents[2]


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


def describe_model(model) -> str:
    """One line saying which model is loaded and whether its heads are trained (notebooks print it)."""
    n_params = sum(p.numel() for p in model.parameters())
    heads = "trained sparse and multi-vector heads"
    if not model.heads_trained:
        heads = "UNTRAINED sparse and multi-vector heads (as initialised by m3lab.modeling.init_heads)"
        if model.name_or_path in ("e5-small", "minilm"):
            heads += (": only its dense vectors are meaningful; the trained default model is "
                      "M3Model.from_pretrained('default')")
    where = model.encoder.config.name_or_path or model.name_or_path
    return (f"{model.name_or_path!r} -> {where} | {model.encoder.config.model_type}, d={model.hidden_size}, "
            f"{model.encoder.config.num_hidden_layers} layers, {n_params / 1e6:.1f}M parameters, "
            f"pooling={model.pooling!r}, {next(model.parameters()).dtype}, on {model.device} | {heads}")


def device_name(device: str | torch.device | None = None) -> str:
    """A readable name of the device: the GPU's name, else the CPU model and core count."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (CUDA {torch.version.cuda})"
    return f"CPU: {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


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

        from .. import __version__

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
