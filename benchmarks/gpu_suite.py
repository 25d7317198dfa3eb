"""Issue 17's prepared GPU run: batch capacity (Table 10), mixed precision, encoding throughput, notebooks.

One process, one time budget (``--time-budget``, default 420 s: the issue allows at most 8 minutes
on one GPU), four sections, each with its own time limit; work that does not fit is skipped and
says so. Writes ONE JSON (``gpu_suite.json``) and ONE markdown table (``gpu_suite.md``) into
``--out`` (rewritten after every section, so a killed run still leaves what it measured), plus the
executed notebooks when that section runs. Every row names the device it was measured on; with
``--dry-run`` that is the CPU and no figure is a GPU figure.

1. ``capacity``: the largest batch per passage length (1024, 4096, 8192) that one training step fits
   in a memory budget (``--budget-gib``, default 80 GiB, to compare with the paper's A800-80GB
   Table 10: 262/25/6 plain, 855/258/130 split-batch), with an encoder of XLM-RoBERTa-large's shape
   (bge-m3's: V = 250,002, h = 1024, 24 layers, 8194 positions) built from a config with random
   weights (:func:`m3lab.experiments.random_encoder_model`, no download). A step = b queries of
   ``--query-len`` tokens and b passages of L tokens (in-batch negatives), all three functions,
   M3Loss with self-distillation, backward, AdamW step, bf16 autocast. Modes: ``plain``;
   ``split-ref``, split-batch as the paper's code does it (sub-batches of ``--sub-batch-tokens``
   tokens with per-layer gradient checkpointing: the paper's "split-batch"); ``split``, m3lab's
   split-batch (each sub-batch's whole forward is one checkpoint,
   :func:`m3lab.experiments.training_step` ``mode="split"``); ``gradcache``. On CUDA the allocator
   is capped at the budget (``torch.cuda.set_per_process_memory_fraction``), a batch fits when the
   step raises no out-of-memory error and ``torch.cuda.max_memory_allocated()`` (weights, gradients
   and AdamW state included) stays within the budget. Search, sized to the time: the analytic
   estimate (:func:`m3lab.memory.estimate_step_bytes`) picks two cheap probes (1/8 and 1/4 of it);
   their peaks, affine in b, are extrapolated to the budget; that batch is probed, then one just
   above it (``--tolerance``); a failure brackets it. A probe predicted to overrun its cell's share
   of the section's time is not started: the row is then a lower bound (">=") with the fit's
   prediction beside it. Cells run cheapest first.
2. ``precision``: one training step (forward, M3Loss with self-distillation over dense, sparse and
   multi-vector, backward; dropout off) in fp32, bf16 autocast and fp16 autocast on the same weights
   and batch. Reports each loss, its parts, the gradient norm and the relative differences to fp32;
   passes when every loss is finite and |L - L_fp32| / |L_fp32| <= ``--loss-rtol`` (default 1e-2).
   It measures; whether M3Loss computes its scores in float32 under autocast is another issue's.
3. ``throughput``: tokens/s of ``M3Model.encode`` with all three outputs (dense, sparse, multi-vector)
   on the mini corpus's passages and questions (6 languages), repeated to ``--throughput-texts`` texts, for the
   default model (data/models/m3lab-e5-small, what ``M3Model.from_pretrained("default")`` loads) and
   for the bge-m3-shaped random model (with the default model's tokenizer: there is no XLM-R
   tokenizer offline; ids fall inside its vocabulary), in fp16 and bf16. FlagEmbedding's
   ``BGEM3FlagModel`` (``use_fp16`` / ``use_bf16``) on the same checkpoints when it imports, else the
   row says "not installed" (or why the import failed).
4. ``notebooks``: 03 and 04 executed with nbclient in the gpu profile (``M3LAB_PROFILE=gpu``),
   cell by cell until the time is spent, the executed copies written to ``--out``. Skipped in a dry
   run, with ``--no-notebooks``, or when a module they need is missing (the row lists which).

``--dry-run``: tiny shapes on the CPU (torch 1 thread), every section but the notebooks exercised,
the same JSON schema; about 15 s on a 2-core machine (8 s of CPU), most of it importing torch and
transformers' model code. ``--sections`` runs a subset (for a rerun).

How to run on a lent device
---------------------------
The device tool runs a bash command in the repository root of a copy of this working tree; ``$OUT``
is the folder whose files come back (at most 8). The H200 machine has no network, so nothing can be
``pip install``-ed from a registry there, and m3lab is not installed: the script puts the repository
on ``sys.path`` and runs under the image's own ``python3`` (Python 3.12, torch 2.11 + CUDA 13,
transformers 5.17, numpy, scipy, tokenizers, safetensors, numba; /work/.library/device/KINDS.md), so
no torch is installed or carried. Two of m3lab's import-time dependencies are missing from that image:
``m3lab.training`` (which ``experiments.training_step`` and split-batch import) imports ``m3lab.data``,
which imports ``bm25s`` and ``platformdirs`` (wheels of 76 KB and 94 KB, pure Python). They travel as
wheels in ``.whl/`` (git-ignored; the call's ``carry``). Here, once, in the repository root::

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl bm25s==0.3.16 platformdirs==4.14.9 \
        FlagEmbedding==1.4.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19   # this line: optional

then the call (the suite ends inside its 420 s budget; ``timeout_s=500`` leaves, of the 15 device minutes,
time for a machine start and one shorter rerun, e.g. ``--sections precision throughput --time-budget 150``)::

    run(command="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; set -o pipefail; PYTHONUNBUFFERED=1 python3 benchmarks/gpu_suite.py --out $OUT --time-budget 420 2>&1 | tee $OUT/gpu_suite.log",
        carry=[".whl"], timeout_s=500)

and copy ``gpu_suite.json``/``.md`` from the returned files into ``benchmarks/results/``; give the machine
back. FlagEmbedding: ``pip download --no-deps FlagEmbedding==1.4.2`` gives a 250,528-byte wheel
(flagembedding-1.4.2-py3-none-any.whl, 245 KiB), so it FITS the 64 MiB a call carries, beside this
working tree (~54 MB, 45 MB of it the default model's weights). Importing ``BGEM3FlagModel`` also
imports ``datasets`` (absent from the image), which needs ``dill`` and ``multiprocess`` (absent too):
datasets-5.2.0 608 KB, dill-0.4.1 120 KB, multiprocess-0.70.19 150 KB, so the four come to ~1.1 MB (the
optional line above). Its other needs (accelerate, peft, sentence-transformers, sentencepiece,
protobuf) are on the image; datasets 5.2 asks for pyarrow >= 24, and FlagEmbedding 1.4.2 imports
``transformers.modeling_attn_mask_utils``, which the transformers 5.24 of this machine no longer has
(README's encode benchmark ran FlagEmbedding 1.4.2 with 5.23; the image has 5.17): if either import
fails there, the FlagEmbedding rows record the error instead of figures.
The notebooks need nbclient, ipykernel/IPython with their ~30 dependencies, and plotly (a 9.7 MB
wheel), none of them on the image, and their data (XQuAD/Tatoeba, 21 MB, in ../shared/data, which does
not travel): more than the ~10 MB left beside the working tree. On the device that section therefore
records the missing modules and skips, unless the tree shrinks; elsewhere (any CUDA machine with
m3lab[notebooks]) it runs them.

    python benchmarks/gpu_suite.py --dry-run --out /tmp/gpu_suite      # CPU, seconds (CI runs this)
    python benchmarks/gpu_suite.py --out benchmarks/results/gpu_suite   # on a GPU
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import copy
import functools
import gc
import importlib.util
import json
import math
import os
import platform
import re
import subprocess
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

T0 = time.perf_counter()  # the suite's clock starts before the heavy imports: they count against its budget
os.environ.setdefault("TQDM_DISABLE", "1")  # FlagEmbedding's progress bars

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# --- m3lab imports ---
from m3lab import M3Model, __version__ as m3lab_version  # noqa: E402
from m3lab._io import atomic_file, write_json  # noqa: E402
from m3lab.experiments import ENCODER_SHAPES, cpu_model, peak_memory, random_batch, random_encoder_model, training_step  # noqa: E402
from m3lab.losses import M3Loss  # noqa: E402
from m3lab.memory import PAPER_TABLE10, SHAPES, estimate_step_bytes, max_batch  # noqa: E402

try:
    from m3lab.training.batching import split_encode  # noqa: E402  (imports m3lab.data: bm25s, platformdirs)
except ModuleNotFoundError as _exc:
    raise SystemExit(f"gpu_suite: importing m3lab.training needs {_exc.name!r}, which this Python lacks; "
                     "on the device, carry its wheel (see this script's docstring)") from _exc
# --- end of m3lab imports ---

SCHEMA = "m3lab.gpu_suite/1"
SECTIONS = ("capacity", "precision", "throughput", "notebooks")
MODES = ("plain", "split-ref", "split", "gradcache")
#: analytic memory model's name for each mode (m3lab.memory.MODES)
MEMORY_MODE = {"plain": "plain", "split-ref": "layer-checkpointing", "split": "split", "gradcache": "gradcache"}
MODE_LABEL = {"plain": "plain", "split-ref": "split-batch + per-layer checkpointing (paper's)",
              "split": "split-batch, sub-batch checkpoint (m3lab)", "gradcache": "GradCache"}
NOTEBOOKS = ("03_efficient_batching.ipynb", "04_train_small_model.ipynb")
#: modules the notebooks import beyond sections 1-3 (03: plotly, pandas, IPython; 04 also the trainer's and
#: the evaluation's: faiss, ir_measures, pytrec_eval, yaml)
NOTEBOOK_MODULES = ("nbclient", "nbformat", "ipykernel", "IPython", "plotly", "pandas", "yaml", "faiss",
                    "ir_measures", "pytrec_eval")
DEFAULT_MODEL_DIR = ROOT / "data" / "models" / "m3lab-e5-small"
#: dry-run encoder: tiny, with MiniLM's WordPiece vocabulary (30,522 ids): an XLM-R-sized embedding
#: (250,002 rows) would make the CPU dry run's backward passes slow
DRY_SHAPE = dict(ENCODER_SHAPES["tiny"], vocab_size=30_522)
GiB = 2**30


# ----------------------------------------------------------------------------- settings

def settings(args) -> dict[str, Any]:
    """Everything sized by the mode: GPU (bge-m3 shape, Table 10 lengths) or a dry run (tiny, CPU)."""
    if args.dry_run:
        s = dict(shape_name="tiny (dry run)", shape=DRY_SHAPE, lengths=[16, 32, 64], query_len=8,
                 sub_batch_tokens=64, budget_gib=32 / 1024, max_batch=4, max_probes=3, amp="fp32",
                 colbert_max_elements=1 << 16,
                 precision=dict(queries=4, query_len=8, group_size=2, passage_len=32),
                 throughput=dict(texts=8, batch_size=4, max_length=32, repeats=1),
                 limits=dict(capacity=20.0, precision=10.0, throughput=20.0, notebooks=0.0))
    else:
        s = dict(shape_name="xlmr-large", shape=SHAPES["xlmr-large"], lengths=[1024, 4096, 8192], query_len=32,
                 sub_batch_tokens=16384, budget_gib=80.0, max_batch=8192, max_probes=6, amp="bf16",
                 colbert_max_elements=1 << 27,
                 precision=dict(queries=32, query_len=64, group_size=2, passage_len=512),
                 throughput=dict(texts=8192, batch_size=128, max_length=512, repeats=3),
                 limits=dict(capacity=270.0, precision=30.0, throughput=75.0, notebooks=600.0))
    for key in ("lengths", "query_len", "sub_batch_tokens", "budget_gib", "max_batch", "max_probes"):
        value = getattr(args, key)
        if value is not None:
            s[key] = value
    if args.throughput_texts is not None:
        s["throughput"]["texts"] = args.throughput_texts
    for name in SECTIONS:
        value = getattr(args, f"{name}_time")
        if value is not None:
            s["limits"][name] = value
    s["modes"] = list(args.modes)
    s["tolerance"] = args.tolerance
    s["loss_rtol"] = args.loss_rtol
    return s


#: seconds that later sections keep back from earlier ones (each still runs, briefly, if time is short)
RESERVE = {"capacity": 0.0, "precision": 10.0, "throughput": 25.0, "notebooks": 0.0}


class Clock:
    def __init__(self, budget: float):
        self.deadline = T0 + budget
        self.budget = budget

    def left(self, until: float | None = None) -> float:
        return (self.deadline if until is None else until) - time.perf_counter()

    def section_deadline(self, name: str, limit: float, later: list[str]) -> float:
        keep = sum(RESERVE[s] for s in later)
        return min(time.perf_counter() + limit, self.deadline - keep)


# ----------------------------------------------------------------------------- environment

def device_info(device: torch.device) -> dict[str, Any]:
    import transformers

    info: dict[str, Any] = {"type": device.type, "python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "transformers": transformers.__version__,
                            "m3lab": m3lab_version, "platform": platform.platform(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=torch.cuda.get_device_name(device), total_memory_bytes=props.total_memory,
                    multiprocessors=props.multi_processor_count, capability=f"{props.major}.{props.minor}",
                    cudnn=torch.backends.cudnn.version(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                    alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF"))
        with contextlib.suppress(Exception):
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            if smi.returncode == 0:
                info["nvidia_smi"] = smi.stdout.strip()
    else:
        info.update(name=f"CPU: {cpu_model()}, {os.cpu_count()} cores", total_memory_bytes=None)
    return info


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return "cpu"


def autocast(device: torch.device, amp: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Shared:
    """Models built once and shared by the sections (the bge-m3-shaped random model: the same weights
    for capacity, precision and throughput)."""

    def __init__(self, cfg: dict, device: torch.device):
        self.cfg, self.device = cfg, device
        self._random = None
        self._default = None

    def random_model(self):
        if self._random is None:
            t = time.perf_counter()
            max_len = max(max(self.cfg["lengths"]), 8192 if self.device.type == "cuda" else 0,
                          self.cfg["throughput"]["max_length"])
            self._random = random_encoder_model(self.cfg["shape"], max_length=max_len, seed=0, device=self.device)
            self.random_build_s = time.perf_counter() - t
        return self._random

    def default_tokenizer(self):
        """The default model's XLM-R tokenizer (the e5-small backbone's), or MiniLM's for the dry run's
        30,522-row tiny encoder: the random models' ids must fit their embedding."""
        if self._default is None:
            from transformers import AutoTokenizer

            from m3lab.modeling import resolve_model_path

            name = "minilm" if self.cfg["shape"]["vocab_size"] < 250_002 else "e5-small"
            self._default = AutoTokenizer.from_pretrained(resolve_model_path(name))
        return self._default


_FULL_DEFAULT: list[str] = []


def default_model_path() -> str:
    """The shipped default model as a complete bge-m3 directory (FlagEmbedding and AutoTokenizer read it).

    The shipped folder stores only what training changed on e5-small (``M3Model.save_delta``):
    its ``save_pretrained`` writes the full layout once, into the suite's temporary folder.
    """
    if not _FULL_DEFAULT:
        full = Path(tempfile.mkdtemp(prefix="m3lab-default-"))
        atexit.register(shutil.rmtree, full, ignore_errors=True)
        M3Model.from_pretrained(DEFAULT_MODEL_DIR, device="cpu").save_pretrained(full / "m3lab-e5-small")
        _FULL_DEFAULT.append(str(full / "m3lab-e5-small"))
    return _FULL_DEFAULT[0]


# ----------------------------------------------------------------------------- 1. batch capacity

class Capacity:
    def __init__(self, cfg: dict, shared: Shared, device: torch.device):
        self.cfg, self.device = cfg, device
        self.cuda = device.type == "cuda"
        self.model = shared.random_model().train()
        self.vocab = self.model.encoder.config.vocab_size
        self.loss = M3Loss(colbert_max_elements=cfg["colbert_max_elements"])
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-7)
        self.budget = cfg["budget_gib"] * GiB
        self.rate: dict[str, float] = {}  # seconds per token of a fitting step, per mode (for time predictions)

    # one training step ---------------------------------------------------------------------------
    def step(self, mode: str, b: int, length: int) -> None:
        qlen, tokens = self.cfg["query_len"], self.cfg["sub_batch_tokens"]
        q = random_batch(b, qlen, self.vocab, seed=1000 + b, device=self.device)
        p = random_batch(b, length, self.vocab, seed=2000 + b + length, device=self.device)
        sub, q_sub = max(1, tokens // length), max(1, tokens // qlen)
        with autocast(self.device, self.cfg["amp"]):
            if mode == "split-ref":  # the reference code's split-batch: sub-batches, per-layer checkpointing
                out = self.loss(split_encode(self.model, q, q_sub, checkpoint=False, layer_checkpointing=True),
                                split_encode(self.model, p, sub, checkpoint=False, layer_checkpointing=True),
                                group_size=1)
                out.loss.backward()
            else:
                training_step(self.model, self.loss, q, p, mode=mode, group_size=1, sub_batch_size=sub,
                              query_sub_batch_size=q_sub)
        self.opt.step()
        self.opt.zero_grad(set_to_none=False)  # gradient buffers stay resident: part of the baseline

    def warm_up(self) -> None:
        self.step("plain", 1, min(self.cfg["lengths"]))  # gradients and AdamW state become resident
        sync(self.device)

    def trial(self, mode: str, b: int, length: int) -> dict[str, Any]:
        """One step at batch b: {batch, fits, oom, peak_bytes (absolute on CUDA), seconds}."""
        if self.cuda:
            torch.cuda.empty_cache()  # peak_memory collects young garbage; a full gc.collect() costs seconds
        base = torch.cuda.memory_allocated(self.device) if self.cuda else 0
        oom = False
        t0 = time.perf_counter()
        try:
            with peak_memory(self.device) as mem:
                self.step(mode, b, length)
                sync(self.device)
        except torch.cuda.OutOfMemoryError:
            oom = True
        seconds = time.perf_counter() - t0
        if oom:
            self.opt.zero_grad(set_to_none=False)
            free_memory(self.device)
            return {"batch": b, "fits": False, "oom": True, "peak_bytes": None, "seconds": round(seconds, 3)}
        peak = None if mem["peak_bytes"] is None else int(base + mem["peak_bytes"])
        fits = peak is None or peak <= self.budget
        if fits:
            self.rate[mode] = seconds / (b * (length + self.cfg["query_len"]))
        return {"batch": b, "fits": fits, "oom": False, "peak_bytes": peak, "seconds": round(seconds, 3)}

    # the search -----------------------------------------------------------------------------------
    def estimate(self, mode: str, length: int) -> int:
        """Largest batch by the analytic memory model (m3lab.memory), the search's starting point."""
        est = estimate_step_bytes(self.cfg["shape"], length, 1, mode=MEMORY_MODE[mode],
                                  sub_batch=max(1, self.cfg["sub_batch_tokens"] // length),
                                  query_length=self.cfg["query_len"], dtype_bytes=2 if self.cfg["amp"] != "fp32" else 4,
                                  attention="flash" if self.cuda else "eager",
                                  loss_workspace_elements=self.cfg["colbert_max_elements"], include_states=self.cuda)
        return max_batch(self.budget - est.static, per_example=est.per_example, fixed=est.fixed)

    def fit(self, probes: list[dict]) -> int | None:
        """Peak memory is about affine in b: the largest batch the budget allows on the line through two
        measured probes (the largest fitting and the smallest over-budget one when both have a peak,
        which interpolates; else the two largest fitting ones, which extrapolates)."""
        measured = {p["batch"]: p for p in probes if p["peak_bytes"]}
        ok = sorted(b for b, p in measured.items() if p["fits"])
        over = sorted(b for b, p in measured.items() if not p["fits"] and (not ok or b > ok[-1]))
        if ok and over:
            b1, b2 = ok[-1], over[0]
        elif len(ok) >= 2:
            b1, b2 = ok[-2], ok[-1]
        else:
            return None
        p1, p2 = measured[b1]["peak_bytes"], measured[b2]["peak_bytes"]
        if p2 <= p1:
            return None
        slope = (p2 - p1) / (b2 - b1)
        return max_batch(self.budget, per_example=slope, fixed=p2 - slope * b2)

    def next_batch(self, probes: list[dict], lo: int, hi: int | None, est: int) -> int:
        tol, cap = self.cfg["tolerance"], self.cfg["max_batch"]
        step = max(1, int(lo * tol))
        tried = {p["batch"] for p in probes}
        fit = self.fit(probes)
        if hi is None:
            if fit is not None:
                target = int(fit * (1 - tol / 2))  # aim a little under the extrapolated maximum
                nb = max(target, lo + step)  # at or past it: confirm just above
                nb = min(nb, 8 * lo)
            else:
                nb = max(2 * lo, min(est // 4, 8 * lo))
            return max(lo + 1, min(nb, cap))
        if lo == 0:
            return max(1, hi // 2)
        if fit is not None and lo < fit < hi and fit not in tried:
            return fit
        cand = int(hi * (1 - 2 * tol))  # the first failure, just over the fit's target: step back a little
        if sum(not p["fits"] for p in probes) == 1 and lo < cand < hi and cand not in tried:
            return cand
        return (lo + hi) // 2

    def largest(self, mode: str, length: int, deadline: float) -> dict[str, Any]:
        tol, cap = self.cfg["tolerance"], self.cfg["max_batch"]
        est = self.estimate(mode, length)
        probes: list[dict] = []
        lo, hi, stop = 0, None, None
        b = min(cap, max(1, est // 8))
        while True:
            rate = self.rate.get(mode)
            predicted = 1.2 * rate * b * (length + self.cfg["query_len"]) if rate else 0.0
            if probes and time.perf_counter() + predicted > deadline:
                stop = "time"
                break
            r = self.trial(mode, b, length)
            probes.append(r)
            print(f"  capacity {mode:<10} L={length:<5} b={b:<6} {'fits' if r['fits'] else ('OOM ' if r['oom'] else 'over')}"
                  f" peak={(r['peak_bytes'] or 0) / GiB:8.3f} GiB {r['seconds']:7.2f} s", flush=True)
            if r["fits"]:
                lo = max(lo, b)
            else:
                hi = b if hi is None else min(hi, b)
            if hi is not None and hi - lo <= max(1, int(lo * tol)):
                stop = "exact"
                break
            if lo >= cap:
                stop = "max batch"
                break
            if len(probes) >= self.cfg["max_probes"]:
                stop = "probe limit"
                break
            b = self.next_batch(probes, lo, hi, est)
        best = next((p for p in probes if p["batch"] == lo and p["fits"]), None)
        tokens = lo * (length + self.cfg["query_len"])
        paper_mode = {"plain": "plain", "split-ref": "split", "split": "split", "gradcache": "split"}[mode]
        paper = PAPER_TABLE10[paper_mode].get(length)
        return {
            "mode": mode, "length": length, "query_len": self.cfg["query_len"],
            "sub_batch_size": None if mode == "plain" else max(1, self.cfg["sub_batch_tokens"] // length),
            "max_batch": lo, "exact": stop == "exact", "stopped_by": stop, "first_failing": hi,
            "fit_predicts": self.fit(probes), "analytic_estimate": est,
            "peak_bytes": best["peak_bytes"] if best else None, "seconds": best["seconds"] if best else None,
            "tokens_per_s": round(tokens / best["seconds"], 1) if best and best["seconds"] else None,
            "paper_table10": paper, "paper_mode": paper_mode,
            "ratio_to_paper": round(lo / paper, 3) if paper else None,
            "probes": probes, "device": device_label(self.device),
        }


def run_capacity(cfg: dict, shared: Shared, device: torch.device, deadline: float, section: dict) -> None:
    cuda = device.type == "cuda"
    if cuda:
        total = torch.cuda.get_device_properties(device).total_memory
        fraction = min(1.0, cfg["budget_gib"] * GiB / total)
        torch.cuda.set_per_process_memory_fraction(fraction, device)
        section["allocator_fraction"] = round(fraction, 4)
    bench = Capacity(cfg, shared, device)
    section.update(
        shape=cfg["shape_name"], parameters=sum(p.numel() for p in bench.model.parameters()),
        attention=getattr(bench.model.encoder.config, "_attn_implementation", None), amp=cfg["amp"],
        budget_gib=cfg["budget_gib"], query_len=cfg["query_len"], sub_batch_tokens=cfg["sub_batch_tokens"],
        tolerance=cfg["tolerance"], max_batch_searched=cfg["max_batch"], model_build_s=round(shared.random_build_s, 2),
        memory_method=("torch.cuda.max_memory_allocated (weights, grads, AdamW state included); allocator capped at "
                       "the budget; fits = no OOM and peak <= budget") if cuda else
                      ("peak RSS (VmHWM) above the RSS before the step (weights, grads, AdamW state excluded); "
                       "fits = peak <= budget"),
        paper="Table 10, A800-80GB, XLM-R-large: plain 262/25/6, split-batch 855/258/130 (1024/4096/8192)")
    bench.warm_up()
    cells = [(length, mode) for length in cfg["lengths"] for mode in cfg["modes"]]
    factor = {"plain": 1.0, "split-ref": 4 / 3, "split": 4 / 3, "gradcache": 4 / 3}
    cost = {c: max(1, bench.estimate(c[1], c[0])) * (c[0] + cfg["query_len"]) * factor[c[1]] for c in cells}
    order = sorted(cells, key=cost.__getitem__)
    results: dict[tuple[int, str], dict] = {}
    for i, (length, mode) in enumerate(order):
        left = deadline - time.perf_counter()
        if left <= 0:
            results[(length, mode)] = {"mode": mode, "length": length, "max_batch": None, "skipped": "time limit",
                                       "device": device_label(device)}
            continue
        cell_deadline = time.perf_counter() + left / (len(order) - i)
        results[(length, mode)] = bench.largest(mode, length, cell_deadline)
    section["rows"] = [results[c] for c in cells]
    skipped = [f"{m} L={L}" for (L, m), r in results.items() if r.get("skipped")]
    bounds = [f"{m} L={L}" for (L, m), r in results.items() if not r.get("skipped") and not r["exact"]]
    section["status"] = "partial" if skipped else "ok"
    section["skipped"] = skipped
    section["lower_bounds"] = bounds
    del bench
    free_memory(device)
    if cuda:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


# ----------------------------------------------------------------------------- 2. mixed precision

def run_precision(cfg: dict, shared: Shared, device: torch.device, deadline: float, section: dict) -> None:
    pc = cfg["precision"]
    model = shared.random_model()
    model.eval()  # dropout off: the three runs see identical networks
    vocab = model.encoder.config.vocab_size
    q = random_batch(pc["queries"], pc["query_len"], vocab, seed=11, device=device, ragged=True)
    p = random_batch(pc["queries"] * pc["group_size"], pc["passage_len"], vocab, seed=12, device=device, ragged=True)
    loss_fn = M3Loss()  # bge-m3 form, self-distillation, dense + sparse + multi-vector
    section.update(shape=cfg["shape_name"], batch=pc, loss="M3Loss(form='bge-m3', self_distill=True, all three functions)",
                   weights="fp32 master weights; autocast for bf16/fp16; no grad scaler (one step, gradients checked finite)",
                   tolerance={"loss_rtol": cfg["loss_rtol"]})
    rows, ref = [], None
    for amp in ("fp32", "bf16", "fp16"):
        if ref is not None and time.perf_counter() > deadline:
            rows.append({"dtype": amp, "skipped": "time limit", "device": device_label(device)})
            continue
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        with autocast(device, amp):
            out = loss_fn(model(**q), model(**p), group_size=pc["group_size"])
        out.loss.backward()
        sync(device)
        grads = [prm.grad.float().pow(2).sum() for prm in model.parameters() if prm.grad is not None]
        grad_norm = float(torch.stack(grads).sum().sqrt()) if grads else float("nan")
        row = {"dtype": amp, "autocast": amp != "fp32", "loss": float(out.loss.detach()), "parts": out.parts,
               "grad_norm": grad_norm, "seconds": round(time.perf_counter() - t0, 3), "device": device_label(device)}
        row["finite"] = math.isfinite(row["loss"]) and math.isfinite(grad_norm)
        if ref is None:
            ref = row
        else:
            row["loss_rel_diff"] = abs(row["loss"] - ref["loss"]) / max(abs(ref["loss"]), 1e-12)
            row["grad_norm_rel_diff"] = abs(grad_norm - ref["grad_norm"]) / max(abs(ref["grad_norm"]), 1e-12)
            row["parts_max_rel_diff"] = max((abs(v - ref["parts"][k]) / max(abs(ref["parts"][k]), 1e-12)
                                             for k, v in row["parts"].items() if k in ref["parts"]), default=None)
            row["pass"] = bool(row["finite"] and row["loss_rel_diff"] <= cfg["loss_rtol"])
            if not row["pass"]:
                row["why"] = ("non-finite loss" if not math.isfinite(row["loss"]) else
                              "non-finite gradient" if not math.isfinite(grad_norm) else
                              f"loss rel diff > {cfg['loss_rtol']:g}")
                bad = [n for n, prm in model.named_parameters() if prm.grad is not None and not torch.isfinite(prm.grad).all()]
                if bad:
                    row["nonfinite_grad_params"] = {"count": len(bad), "of": sum(1 for _ in model.parameters()),
                                                    "first": bad[:5]}
        rows.append(row)
        print(f"  precision {amp}: loss {row['loss']:.6f}" + (f" rel diff {row['loss_rel_diff']:.2e}" if "loss_rel_diff" in row else ""),
              flush=True)
    model.zero_grad(set_to_none=True)
    section["rows"] = rows
    done = [r for r in rows if "pass" in r]
    section["pass"] = bool(done) and all(r["pass"] for r in done) and ref is not None and ref["finite"]
    section["status"] = "ok" if len(done) == 2 else "partial"


# ----------------------------------------------------------------------------- 3. encoding throughput

def throughput_texts(n: int) -> list[str]:
    """The mini corpus's passages and questions in all its languages, repeated to ``n`` texts. Read from
    data/mini/*.jsonl directly: m3lab.data imports bm25s and platformdirs, which the device image lacks."""
    base = []
    for path in sorted((ROOT / "data" / "mini").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                topic = json.loads(line)
                for lang in sorted(topic["passages"]):
                    base.append(topic["passages"][lang])
                    base.extend(topic.get("questions", {}).get(lang, []))
    if not base:
        raise FileNotFoundError(f"no mini corpus under {ROOT / 'data' / 'mini'}")
    return [base[i % len(base)] for i in range(n)]


def time_encode(fn, deadline: float, repeats: int, device: torch.device) -> tuple[float | None, int]:
    """Median seconds of ``repeats`` timed calls (fewer if the deadline comes), and how many ran."""
    times = []
    for _ in range(repeats):
        if times and time.perf_counter() > deadline:
            break
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return (times[len(times) // 2] if times else None), len(times)


def flag_model_class():
    """FlagEmbedding's BGEM3FlagModel, or (None, why not)."""
    try:
        from FlagEmbedding import BGEM3FlagModel
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "FlagEmbedding":
            return None, "not installed"
        return None, f"import failed: {type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - any import-time failure is recorded, not fatal
        return None, f"import failed: {type(exc).__name__}: {exc}"
    return BGEM3FlagModel, None


def run_throughput(cfg: dict, shared: Shared, device: torch.device, deadline: float, section: dict) -> None:
    tc = cfg["throughput"]
    texts = throughput_texts(tc["texts"])
    warm = texts[: tc["batch_size"]]
    kw = dict(batch_size=tc["batch_size"], max_length=tc["max_length"])
    flag_cls, flag_why = flag_model_class()
    if flag_cls is not None:
        from importlib.metadata import version

        flag_why = None
        section["flagembedding"] = version("FlagEmbedding")
    else:
        section["flagembedding"] = flag_why
    section.update(texts=len(texts), corpus="mini corpus (data/mini): passages + questions, 6 languages, repeated", **kw,
                   outputs="dense + sparse + multi-vector", timing=f"median of up to {tc['repeats']} runs after a warm-up")
    rows = []
    tmp = tempfile.TemporaryDirectory(prefix="m3lab-gpu-suite-")

    def models():
        """(label, checkpoint dir for FlagEmbedding or None, builder(dtype) -> M3Model)"""
        # FlagEmbedding needs the full bge-m3 export; m3lab loads the shipped delta directly
        path = default_model_path() if flag_cls is not None else None
        yield ("default model (m3lab-e5-small)", path,
               lambda dt: M3Model.from_pretrained(DEFAULT_MODEL_DIR, device=device, dtype=dt))

        def random_model(dt):
            rnd = shared.random_model()
            enc = copy.deepcopy(rnd.encoder).to(dtype=dt)
            return M3Model(enc, shared.default_tokenizer(), pooling="cls",
                           colbert_linear=copy.deepcopy(rnd.colbert_linear).to(dtype=dt),
                           sparse_linear=copy.deepcopy(rnd.sparse_linear).to(dtype=dt), heads_trained=False).eval()
        yield (f"bge-m3-shaped random ({cfg['shape_name']})", None, random_model)

    def flag_row(label: str, ckpt: str, dt_name: str, n_tokens: int) -> dict:
        row = {"model": label, "implementation": "FlagEmbedding BGEM3FlagModel.encode", "dtype": dt_name,
               "device": device_label(device)}
        if flag_cls is None or ckpt is None:
            return {**row, "skipped": flag_why}
        if time.perf_counter() > deadline:
            return {**row, "skipped": "time limit"}
        try:
            pooling = json.loads((Path(ckpt) / "m3lab_config.json").read_text()).get("pooling", "cls")
            flag = flag_cls(ckpt, use_fp16=dt_name == "fp16", use_bf16=dt_name == "bf16", pooling_method=pooling,
                            devices="cuda:0" if device.type == "cuda" else "cpu")
            fkw = dict(**kw, return_dense=True, return_sparse=True, return_colbert_vecs=True)
            flag.encode(warm, **fkw)
            secs, runs = time_encode(functools.partial(flag.encode, texts, **fkw), deadline, tc["repeats"], device)
            inner = getattr(flag, "model", None)
            row["weights_dtype"] = str(next(inner.parameters()).dtype) if isinstance(inner, torch.nn.Module) else None
            del flag, inner
            print(f"  throughput {label} FlagEmbedding {dt_name}: {n_tokens / secs:,.0f} tokens/s", flush=True)
            return {**row, "texts": len(texts), "tokens": n_tokens, "seconds": round(secs, 4), "runs": runs,
                    "tokens_per_s": round(n_tokens / secs, 1)}
        except Exception as exc:  # noqa: BLE001 - FlagEmbedding is optional: record and go on
            return {**row, "error": f"{type(exc).__name__}: {exc}"[:500]}
        finally:
            free_memory(device)

    for label, ckpt, build in models():
        n_tokens = None
        for dt_name, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            row = {"model": label, "implementation": "m3lab M3Model.encode", "dtype": dt_name,
                   "device": device_label(device)}
            if time.perf_counter() > deadline:
                rows.append({**row, "skipped": "time limit"})
                continue
            model = build(dt)
            if n_tokens is None:
                n_tokens = sum(len(x) for x in model.tokenize(texts, max_length=tc["max_length"]))
            model.encode(warm, **kw, show_progress=False)
            secs, runs = time_encode(functools.partial(model.encode, texts, **kw, show_progress=False), deadline,
                                     tc["repeats"], device)
            rows.append({**row, "texts": len(texts), "tokens": n_tokens, "seconds": round(secs, 4), "runs": runs,
                         "tokens_per_s": round(n_tokens / secs, 1), "weights_dtype": str(next(model.parameters()).dtype)})
            print(f"  throughput {label} m3lab {dt_name}: {n_tokens / secs:,.0f} tokens/s", flush=True)
            if ckpt is None and flag_cls is not None and time.perf_counter() < deadline:
                # FlagEmbedding reads checkpoints from disk: the same weights, in the bge-m3 layout
                ckpt = str(model.save_pretrained(Path(tmp.name) / "bge-m3-shaped", encoder_dtype=torch.float16))
            del model
            free_memory(device)
            rows.append(flag_row(label, ckpt, dt_name, n_tokens) if ckpt or flag_cls is None else
                        {"model": label, "implementation": "FlagEmbedding BGEM3FlagModel.encode", "dtype": dt_name,
                         "device": device_label(device), "skipped": "time limit"})
    tmp.cleanup()
    section["rows"] = rows
    measured = [r for r in rows if r["implementation"].startswith("m3lab")]
    section["status"] = "ok" if all("tokens_per_s" in r for r in measured) else "partial"


# ----------------------------------------------------------------------------- 4. notebooks

def run_notebooks(cfg: dict, args, out: Path, deadline: float, section: dict) -> None:
    section["notebooks"] = list(NOTEBOOKS)
    section["profile"] = "gpu (M3LAB_PROFILE=gpu, SMOKE unset)"
    if args.dry_run:
        section.update(status="skipped", reason="dry run")
        return
    if args.no_notebooks:
        section.update(status="skipped", reason="--no-notebooks")
        return
    missing = [m for m in NOTEBOOK_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        section.update(status="skipped", reason=f"missing modules: {', '.join(missing)}", missing=missing)
        return
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    env_keys = ("M3LAB_PROFILE", "SMOKE", "PYTHONPATH")
    saved = {k: os.environ.get(k) for k in env_keys}
    os.environ["M3LAB_PROFILE"] = "gpu"
    os.environ.pop("SMOKE", None)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([saved["PYTHONPATH"]] if saved["PYTHONPATH"] else []))
    rows = []
    try:
        for name in NOTEBOOKS:
            row: dict[str, Any] = {"notebook": name, "device": device_label(torch.device("cuda" if torch.cuda.is_available() else "cpu"))}
            if time.perf_counter() + 30 > deadline:
                rows.append({**row, "skipped": "time limit"})
                continue
            nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
            code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
            client = NotebookClient(nb, timeout=60, kernel_name="python3",
                                    resources={"metadata": {"path": str(ROOT / "notebooks")}})
            t0, done, status = time.perf_counter(), 0, "ok"
            try:
                with client.setup_kernel():
                    for i in code:
                        left = deadline - time.perf_counter()
                        if left < 5:
                            status = "partial (time limit)"
                            break
                        client.timeout = int(left)
                        client.execute_cell(nb.cells[i], i)
                        done += 1
            except CellTimeoutError:
                status = "partial (time limit inside a cell)"
            except CellExecutionError as exc:
                last = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()[-1][:300]
                status = f"error in cell {code[done] if done < len(code) else '?'}: {last}"
            except Exception as exc:  # noqa: BLE001
                status = f"error: {type(exc).__name__}: {exc}"
            executed = out / name.replace(".ipynb", ".gpu.ipynb")
            nbformat.write(nb, str(executed))
            skipped_lines = sorted({line.strip() for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                                    for line in str(o.get("text", "")).splitlines() if "SKIPPED" in line})
            rows.append({**row, "status": status, "code_cells": len(code), "executed_cells": done,
                         "seconds": round(time.perf_counter() - t0, 1), "executed_copy": executed.name,
                         "skipped_inside": skipped_lines})
            print(f"  notebook {name}: {status}, {done}/{len(code)} cells", flush=True)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    section["rows"] = rows
    section["status"] = "ok" if rows and all(r.get("status") == "ok" for r in rows) else "partial"


# ----------------------------------------------------------------------------- report

def fmt_gib(b) -> str:
    return "-" if b is None else f"{b / GiB:.2f} GiB" if b >= GiB / 10 else f"{b / 2**20:.1f} MiB"


def markdown(report: dict) -> str:
    dev = report["device"]
    dry = report["dry_run"]
    lines = [f"# m3lab GPU suite{' (DRY RUN: tiny shapes on the CPU, no GPU figures)' if dry else ''}", "",
             f"Device: {dev.get('name')}; torch {dev['torch']} (CUDA {dev['cuda']}); transformers {dev['transformers']}; "
             f"python {dev['python']}; m3lab {dev['m3lab']}.  ",
             f"Wall time {report['wall_s']:.1f} s of a {report['time_budget_s']:.0f} s budget; per section: "
             + ", ".join(f"{k} {v['wall_s']:.1f} s ({v['status']})" for k, v in report["sections"].items()) + ".  "]
    cap = report["sections"].get("capacity", {})
    if cap.get("budget_gib") is not None:
        amp = f"{cap.get('amp')} autocast" if cap.get("amp") != "fp32" else "fp32 (no autocast)"
        lines.append(f"Capacity: {cap.get('shape')} random weights ({cap.get('parameters', 0) / 1e6:.0f}M parameters), "
                     f"{amp}, budget {cap['budget_gib']:g} GiB ({cap.get('memory_method')}); "
                     f"queries of {cap.get('query_len')} tokens, sub-batches of {cap.get('sub_batch_tokens')} tokens.  ")
    lines += ["", "| section | case | result | reference / check | device |", "|---|---|---|---|---|"]
    for r in cap.get("rows", []):
        case = f"{MODE_LABEL.get(r['mode'], r['mode'])}, L={r['length']}"
        if r.get("skipped"):
            lines.append(f"| capacity | {case} | skipped: {r['skipped']} | | {r['device']} |")
            continue
        mb = r["max_batch"]
        if r["exact"]:
            res = f"**{mb}** (first failing {r['first_failing']})"
        else:
            res = f"**>= {mb}** ({r['stopped_by']}" + (f"; fit predicts {r['fit_predicts']}" if r.get("fit_predicts") else "") + ")"
        res += f"; peak {fmt_gib(r['peak_bytes'])}"
        if r.get("seconds"):
            res += f"; {r['seconds']:.2f} s/step, {r['tokens_per_s']:,.0f} tokens/s"
        ref = f"estimate {r['analytic_estimate']}"
        if r.get("paper_table10"):
            ref = (f"paper {'split-batch' if r['paper_mode'] == 'split' else 'plain'} {r['paper_table10']} "
                   f"(x{r['ratio_to_paper']:.2f}); " + ref)
        lines.append(f"| capacity | {case} | {res} | {ref} | {r['device']} |")
    prec = report["sections"].get("precision", {})
    tol = prec.get("tolerance", {}).get("loss_rtol")
    for r in prec.get("rows", []):
        if r.get("skipped"):
            lines.append(f"| precision | {r['dtype']} | skipped: {r['skipped']} | | {r['device']} |")
        elif r["dtype"] == "fp32":
            lines.append(f"| precision | fp32 | loss {r['loss']:.6f}; grad norm {r['grad_norm']:.4g} | reference | {r['device']} |")
        else:
            lines.append(f"| precision | {r['dtype']} autocast | loss {r['loss']:.6f} (rel diff {r['loss_rel_diff']:.2e}); "
                         f"parts max rel diff {r['parts_max_rel_diff']:.2e}; grad norm rel diff {r['grad_norm_rel_diff']:.2e} "
                         f"| rel diff <= {tol:g} and finite: **{'pass' if r['pass'] else 'FAIL'}**"
                         + (f" ({r['why']})" if r.get("why") else "") + f" | {r['device']} |")
    thr = report["sections"].get("throughput", {})
    for r in thr.get("rows", []):
        case = f"{r['model']}, {r['implementation']}, {r['dtype']}"
        if "tokens_per_s" in r:
            res = (f"**{r['tokens_per_s']:,.0f} tokens/s** ({r['texts']} texts, {r['tokens']:,} tokens, {r['seconds']:.3f} s"
                   + (f"; weights {r['weights_dtype'].replace('torch.', '')}" if r.get("weights_dtype") else "") + ")")
            ref = f"batch {thr.get('batch_size')}, max length {thr.get('max_length')}, 3 outputs"
        else:
            res = f"{'error: ' + r['error'] if r.get('error') else 'skipped: ' + str(r.get('skipped'))}"
            ref = ""
        lines.append(f"| throughput | {case} | {res} | {ref} | {r['device']} |")
    nbs = report["sections"].get("notebooks", {})
    if nbs.get("rows"):
        for r in nbs["rows"]:
            res = (f"skipped: {r['skipped']}" if r.get("skipped") else
                   f"{r['status']}: {r['executed_cells']}/{r['code_cells']} code cells, {r['seconds']} s")
            ref = f"executed copy {r.get('executed_copy', '-')}" + (f"; {len(r['skipped_inside'])} SKIPPED notes" if r.get("skipped_inside") else "")
            lines.append(f"| notebooks | {r['notebook']} (gpu profile) | {res} | {ref} | {r['device']} |")
    else:
        lines.append(f"| notebooks | 03, 04 (gpu profile) | {nbs.get('status', 'skipped')}: {nbs.get('reason', nbs.get('error', ''))} | | - |")
    for name, sec in report["sections"].items():
        if sec.get("error"):
            lines.append(f"| {name} | (section) | error: {sec['error'].splitlines()[-1][:200]} | | - |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, report: dict) -> None:
    report["wall_s"] = round(time.perf_counter() - T0, 2)
    write_json(out / "gpu_suite.json", report)
    with atomic_file(out / "gpu_suite.md") as f:
        f.write(markdown(report))


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_suite.json, gpu_suite.md, executed notebooks")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU, seconds (CI)")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--time-budget", type=float, default=None, help="seconds for the whole run (default 420; dry 60)")
    for name in SECTIONS:
        ap.add_argument(f"--{name}-time", type=float, default=None, help=f"time limit of the {name} section (s)")
    ap.add_argument("--budget-gib", type=float, default=None, help="capacity's memory budget (default 80)")
    ap.add_argument("--lengths", type=int, nargs="+", default=None, help="passage lengths (default 1024 4096 8192)")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--query-len", type=int, default=None)
    ap.add_argument("--sub-batch-tokens", type=int, default=None, help="tokens per sub-batch (default 16384)")
    ap.add_argument("--max-batch", type=int, default=None, help="largest batch the capacity search tries (default 8192)")
    ap.add_argument("--max-probes", type=int, default=None, help="probes per capacity cell (default 6)")
    ap.add_argument("--tolerance", type=float, default=0.05, help="relative precision of a capacity figure")
    ap.add_argument("--loss-rtol", type=float, default=1e-2, help="mixed-precision loss tolerance vs fp32")
    ap.add_argument("--throughput-texts", type=int, default=None)
    ap.add_argument("--no-notebooks", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on the CPU)")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        ap.error("no CUDA device: run with --dry-run here, and without it on a GPU")
    device = torch.device("cuda:0" if cuda else "cpu")
    if not cuda or args.threads:
        torch.set_num_threads(args.threads or 1)
    cfg = settings(args)
    clock = Clock(args.time_budget or (60.0 if args.dry_run else 420.0))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    report: dict[str, Any] = {
        "schema": SCHEMA, "dry_run": bool(args.dry_run), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "device": device_info(device), "time_budget_s": clock.budget,
        "settings": {k: v for k, v in cfg.items() if k != "shape"} | {"shape_sizes": cfg["shape"]},
        "sections": {},
    }
    print(f"gpu_suite: {'DRY RUN, ' if args.dry_run else ''}device {report['device']['name']}, "
          f"budget {clock.budget:.0f} s, sections {' '.join(args.sections)}", flush=True)
    shared = Shared(cfg, device)
    runners = {"capacity": lambda d, s: run_capacity(cfg, shared, device, d, s),
               "precision": lambda d, s: run_precision(cfg, shared, device, d, s),
               "throughput": lambda d, s: run_throughput(cfg, shared, device, d, s),
               "notebooks": lambda d, s: run_notebooks(cfg, args, out, d, s)}
    for i, name in enumerate(SECTIONS):
        section: dict[str, Any] = {"status": "skipped", "device": device_label(device)}
        report["sections"][name] = section
        t0 = time.perf_counter()
        later = [s for s in SECTIONS[i + 1:] if s in args.sections]
        if name not in args.sections:
            section["reason"] = "not in --sections"
        elif clock.left() <= 0:
            section["reason"] = "time budget spent"
        else:
            deadline = clock.section_deadline(name, cfg["limits"][name], later)
            section["time_limit_s"] = round(deadline - t0, 1)
            print(f"[{name}] time limit {deadline - t0:.0f} s", flush=True)
            try:
                runners[name](deadline, section)
            except Exception as exc:  # noqa: BLE001 - one failing section must not lose the others
                section["status"] = "error"
                section["error"] = "".join(traceback.format_exception(exc))[-4000:]
                print(section["error"], file=sys.stderr, flush=True)
                free_memory(device)
        section["wall_s"] = round(time.perf_counter() - t0, 2)
        write_outputs(out, report)
    write_outputs(out, report)
    print("\n" + (out / "gpu_suite.md").read_text(), flush=True)
    print(f"wrote {out / 'gpu_suite.json'} and {out / 'gpu_suite.md'} ({report['wall_s']:.1f} s)", flush=True)
    return report


if __name__ == "__main__":
    main()
