"""The largest training batch that fits, and its tokens/s: plain vs split-batch vs GradCache.

One training step = b queries (``--query-len`` tokens) and b passages (L tokens, one
positive per query, the others in-batch negatives), encoded with all three functions,
the bge-m3 loss with self-distillation (m3lab.losses.M3Loss), backward and an AdamW
step. "batch" is b. Encodings:

* plain: one forward of the whole batch, ``loss.backward()``;
* split-ref: split-batch as the reference code does it (FlagEmbedding's ``sub_batch_size``
  with the encoder's per-layer gradient checkpointing): every sub-batch keeps each
  layer's input hidden states until backward;
* split: m3lab's ``split_encode`` (appendix B.3): each sub-batch's whole forward is one
  checkpoint, so only its embeddings stay alive until backward; its recomputation holds
  one sub-batch's activations;
* gradcache: ``GradCache`` (Gao et al., 2021);
* split+layer, gradcache+layer: the same with per-layer checkpointing inside the
  recomputation (``layer_checkpointing=True``), which holds one layer's activations at a
  time (for long texts, where one text's activations exceed the budget).

Sub-batches hold ``--sub-batch-tokens`` tokens (at least one text). The model has random
weights (``--config``: ``xlmr-large`` is XLM-RoBERTa-large's shape with V = 250,002).

Memory and the search for the largest batch:

* CUDA: a batch fits when the step runs without ``torch.cuda.OutOfMemoryError`` (and, with
  ``--budget-gib``, its ``torch.cuda.max_memory_allocated()`` stays below the budget);
  the peak includes weights, gradients and optimizer state.
* CPU: torch keeps no CPU allocator statistics, so the peak is the process's peak resident
  set (VmHWM) above the resident set before the step, reset before each step through
  /proc/self/clear_refs, with glibc serving allocations >= 64 KiB by mmap
  (MALLOC_MMAP_THRESHOLD_, set by re-executing) so freed memory leaves the process.
  Weights, gradients and optimizer state are allocated by a warm-up step and are not in
  the figure: the budget (``--budget-gib``) bounds what one step adds (activations,
  embeddings, loss).

Search: from b = 1, each next batch extrapolates the peak of the last two fitting batches
to the budget or the GPU memory (memory is about affine in b), and failures
bracket it; it stops when the first failing batch is within ``--tolerance`` (relative) of
the largest fitting one, or at ``--max-batch`` or after a step slower than
``--max-trial-seconds`` (then the result is a lower bound, printed as ">="). tokens/s = b * (L + query_len)
/ seconds of the largest fitting step.

    python benchmarks/batch_capacity.py                                   # CPU, tiny config, 64 MiB
    python benchmarks/batch_capacity.py --device cuda --config xlmr-large --lengths 1024 4096 8192
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from m3lab._io import atomic_file, write_json  # noqa: E402
from m3lab.training import GradCache, split_encode  # noqa: E402
from m3lab.losses import M3Loss  # noqa: E402
from m3lab.experiments import random_encoder_model  # noqa: E402
from m3lab.memory import SHAPES  # noqa: E402
from m3lab.modeling import M3Model  # noqa: E402

CONFIGS = {
    **SHAPES,
    # smaller than experiments' "tiny": a CPU run that still spans the interesting batch sizes
    "tiny": dict(vocab_size=30_000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=256),
}
MODES = ("plain", "split-ref", "split", "split+layer", "gradcache", "gradcache+layer")
PAPER_TABLE10 = {"plain": {1024: 262, 4096: 25, 8192: 6}, "split": {1024: 855, 4096: 258, 8192: 130}}


def build_model(config: str, max_len: int, device: str) -> M3Model:
    return random_encoder_model(CONFIGS[config], max_length=max_len, seed=0, device=device).train()


def make_batch(n: int, length: int, vocab: int, device: str, gen: torch.Generator) -> dict[str, torch.Tensor]:
    ids = torch.randint(4, vocab, (n, length), generator=gen)
    ids[:, 0], ids[:, -1] = 0, 2
    return {"input_ids": ids.to(device), "attention_mask": torch.ones(n, length, dtype=torch.long, device=device)}


class Bench:
    def __init__(self, args):
        self.args = args
        self.device = args.device
        self.model = build_model(args.config, max(args.lengths), args.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-6)
        self.loss = M3Loss(colbert_max_elements=args.colbert_max_elements)
        self.vocab = CONFIGS[args.config]["vocab_size"]
        # what the search extrapolates to: the budget, else the GPU's memory (OOM decides)
        self.capacity = torch.cuda.get_device_properties(0).total_memory if args.device == "cuda" else None
        self.gen = torch.Generator().manual_seed(0)
        self.amp_dtype = ({"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
                          if args.device == "cuda" and args.dtype != "fp32" else None)

    def step(self, mode: str, b: int, length: int) -> None:
        q = make_batch(b, self.args.query_len, self.vocab, self.device, self.gen)
        p = make_batch(b, length, self.vocab, self.device, self.gen)
        sub = max(1, self.args.sub_batch_tokens // length)
        ctx = torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype is not None else contextlib.nullcontext()
        with ctx:
            if mode == "plain":
                self.loss(self.model(**q), self.model(**p), group_size=1).loss.backward()
            elif mode in ("split", "split+layer", "split-ref"):
                q_sub = max(1, self.args.sub_batch_tokens // self.args.query_len)
                kw = {"checkpoint": mode != "split-ref", "layer_checkpointing": mode != "split"}
                self.loss(split_encode(self.model, q, q_sub, **kw), split_encode(self.model, p, sub, **kw),
                          group_size=1).loss.backward()
            else:
                GradCache(self.model, self.loss, sub_batch_size=sub,
                          query_sub_batch_size=max(1, self.args.sub_batch_tokens // self.args.query_len),
                          layer_checkpointing=mode == "gradcache+layer").step(q, p, group_size=1)
        self.opt.step()
        self.opt.zero_grad(set_to_none=False)  # keep gradient buffers resident (part of the baseline)

    def trial(self, mode: str, b: int, length: int) -> tuple[bool, int, float]:
        """(fits, peak bytes, seconds) of one step."""
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            try:
                self.step(mode, b, length)
                torch.cuda.synchronize()
            except torch.cuda.OutOfMemoryError:
                self.opt.zero_grad(set_to_none=False)
                gc.collect()
                torch.cuda.empty_cache()
                return False, -1, float("nan")
            seconds = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated()
            ok = self.args.budget_gib is None or peak <= self.args.budget_gib * 2**30
            return ok, peak, seconds
        base = _status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        t0 = time.perf_counter()
        self.step(mode, b, length)
        seconds = time.perf_counter() - t0
        peak = _status_bytes("VmHWM") - base
        return peak <= self.args.budget_gib * 2**30, peak, seconds

    def largest(self, mode: str, length: int) -> dict:
        tol, cap = self.args.tolerance, self.args.max_batch
        tried: dict[int, tuple[bool, int, float]] = {}

        def fits(b: int) -> bool:
            if b not in tried:
                tried[b] = self.trial(mode, b, length)
                ok, peak, sec = tried[b]
                print(f"  {mode:<15} L={length:<5} b={b:<6} {'fits' if ok else 'no  '} "
                      f"peak={peak / 2**30:7.3f} GiB  {sec:7.2f} s", flush=True)
            return tried[b][0]

        if not fits(1):
            return {"max_batch": 0, "capped": False, "trials": len(tried)}
        target = self.args.budget_gib * 2**30 if self.args.budget_gib else self.capacity
        lo, hi, last_ok = 1, None, True
        while lo < cap and (hi is None or hi - lo > max(1, int(lo * tol))):
            guess = self._guess(tried, lo, hi, target, tol) if last_ok else (lo + hi) // 2
            guess = min(guess, cap, hi - 1 if hi is not None else cap)
            if guess <= lo:
                break
            last_ok = fits(guess)
            if last_ok:
                lo = guess
                if self.args.max_trial_seconds and tried[guess][2] > self.args.max_trial_seconds:
                    break  # larger batches would take too long: report lo as a lower bound
            else:
                hi = guess
        ok, peak, sec = tried[lo]
        tokens = lo * (length + self.args.query_len)
        capped = hi is None or hi - lo > max(1, int(lo * tol))
        return {"max_batch": lo, "capped": capped, "first_failing": hi, "peak_bytes": peak, "seconds": sec,
                "tokens_per_s": tokens / sec, "trials": len(tried)}


    @staticmethod
    def _guess(tried: dict, lo: int, hi: int | None, target: float | None, tol: float) -> int:
        """Next batch to try: memory is about affine in the batch, so extrapolate the last two
        fitting points to the target memory (aiming a little low), at most x4; else double."""
        step = max(1, int(lo * tol))
        fitting = sorted(b for b, (ok, peak, _) in tried.items() if ok and peak >= 0)
        if target is not None and len(fitting) >= 2:
            b1, b2 = fitting[-2], fitting[-1]
            p1, p2 = tried[b1][1], tried[b2][1]
            if p2 > p1:
                guess = int(b2 + (target - p2) / ((p2 - p1) / (b2 - b1)) * (1 - tol / 2))
                upper = hi - 1 if hi is not None else 4 * lo
                return max(lo + step, min(guess, upper))
        return 2 * lo if hi is None else (lo + hi) // 2


def write_table(path: Path, meta: dict, lines: list[str]) -> None:
    """Print the table and save it with its settings as text."""
    head = (f"config={meta['config']} ({meta['parameters'] / 1e6:.1f}M parameters) device={meta['device_name']} "
            f"dtype={meta['dtype']} budget={meta['budget_gib']} GiB sub-batch tokens={meta['sub_batch_tokens']} "
            f"query_len={meta['query_len']} threads={meta['threads']}")
    text = "\n".join([head, *lines, f"memory: {meta['memory_method']}"]) + "\n"
    print("\n" + text, end="")
    with atomic_file(path) as f:
        f.write(text)


def table(results: list[dict], config: str) -> list[str]:
    """The results as text: each mode's largest batch, against plain and the reference split-batch."""
    paper = config == "xlmr-large"
    lines = [f"{'length':>7} {'mode':<16}{'max batch':>11}{'x plain':>9}{'x split-ref':>12}{'peak GiB':>10}"
             f"{'tokens/s':>11}" + ("   paper Table 10 (A800-80GB)" if paper else "")]

    def ratio(r: dict, base_mode: str) -> str:
        base = next((x for x in results if x["length"] == r["length"] and x["mode"] == base_mode), None)
        return f"{r['max_batch'] / base['max_batch']:.1f}" if base and base["max_batch"] else "-"

    for r in results:
        mb = f"{'>=' if r['capped'] else ''}{r['max_batch']}"
        ref = PAPER_TABLE10.get("split" if r["mode"].startswith("split") else r["mode"], {}).get(r["length"], "")
        lines.append(f"{r['length']:>7} {r['mode']:<16}{mb:>11}{ratio(r, 'plain'):>9}{ratio(r, 'split-ref'):>12}"
                     f"{r.get('peak_bytes', 0) / 2**30:>10.3f}{r.get('tokens_per_s', 0):>11.0f}"
                     + (f"   {ref}" if paper else ""))
    return lines


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--config", choices=list(CONFIGS), default=None, help="default: xlmr-large on cuda, tiny on cpu")
    ap.add_argument("--lengths", type=int, nargs="+", default=None,
                    help="default: 1024 4096 8192 (cuda), 128 512 1024 (cpu)")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--query-len", type=int, default=32)
    ap.add_argument("--sub-batch-tokens", type=int, default=None,
                    help="tokens per sub-batch (default 16384 cuda, 512 cpu)")
    ap.add_argument("--budget-gib", type=float, default=None,
                    help="memory budget (default: none on cuda, 0.0625 = 64 MiB on cpu)")
    ap.add_argument("--max-batch", type=int, default=None, help="stop searching here (default 8192 cuda, 256 cpu)")
    ap.add_argument("--tolerance", type=float, default=0.05, help="relative precision of the largest batch")
    ap.add_argument("--max-trial-seconds", type=float, default=None,
                    help="stop growing the batch after a fitting step slower than this (result is then a lower bound)")
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None,
                    help="autocast dtype on cuda (default bf16); cpu runs fp32")
    ap.add_argument("--colbert-max-elements", type=int, default=None,
                    help="multi-vector similarity block per chunk (default 2^27 cuda, 2^20 cpu)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default 1 on cpu: on a shared CPU, spinning OpenMP threads stall)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--render", type=Path, help="print (and save as .txt) the table of a saved results JSON, then exit")
    args = ap.parse_args(argv)
    if args.render:
        saved = json.loads(args.render.read_text())
        write_table(args.render.with_suffix(".txt"), saved, table(saved["results"], saved["config"]))
        return
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    args.config = args.config or ("xlmr-large" if cuda else "tiny")
    args.lengths = args.lengths or ([1024, 4096, 8192] if cuda else [128, 512, 1024])
    args.sub_batch_tokens = args.sub_batch_tokens or (16384 if cuda else 512)
    args.budget_gib = args.budget_gib if args.budget_gib is not None or cuda else 0.0625
    args.max_batch = args.max_batch or (8192 if cuda else 256)
    args.dtype = args.dtype or ("bf16" if cuda else "fp32")
    args.colbert_max_elements = args.colbert_max_elements or (1 << 27 if cuda else 1 << 20)
    args.out = args.out or ROOT / "benchmarks" / "results" / f"batch_capacity_{args.device}_{args.config}.json"
    if args.threads or not cuda:
        torch.set_num_threads(args.threads or 1)
    if not cuda and os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":
        # re-execute so glibc returns freed blocks to the OS (honest peak resident set)
        os.execve(sys.executable, [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])],
                  dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536"))

    bench = Bench(args)
    n_params = sum(p.numel() for p in bench.model.parameters())
    print(f"config={args.config} ({n_params / 1e6:.1f}M parameters) device={args.device} dtype={args.dtype} "
          f"budget={args.budget_gib} GiB sub-batch tokens={args.sub_batch_tokens} query_len={args.query_len}")
    bench.step("plain", 1, min(args.lengths))  # warm-up: gradients and optimizer state become resident
    method = ("torch.cuda.max_memory_allocated (weights, grads, optimizer included); fits = no OOM"
              + (f" and <= {args.budget_gib} GiB" if args.budget_gib else "")) if cuda else \
        "peak RSS (VmHWM) above the pre-step RSS, MALLOC_MMAP_THRESHOLD_=65536; weights/grads/optimizer excluded"
    meta = {"config": args.config, "parameters": n_params, "device": args.device,
            "device_name": torch.cuda.get_device_name() if cuda else "cpu",
            "dtype": args.dtype, "budget_gib": args.budget_gib, "query_len": args.query_len,
            "sub_batch_tokens": args.sub_batch_tokens, "tolerance": args.tolerance,
            "max_trial_seconds": args.max_trial_seconds,
            "max_batch": args.max_batch, "threads": torch.get_num_threads(), "memory_method": method}
    results = []
    for length in args.lengths:
        for mode in args.modes:
            r = bench.largest(mode, length)
            r.update(length=length, mode=mode, sub_batch_size=max(1, args.sub_batch_tokens // length))
            results.append(r)
            write_json(args.out, {**meta, "complete": False, "results": results})  # partial results survive

    write_json(args.out, {**meta, "complete": True, "results": results})
    write_table(args.out.with_suffix(".txt"), meta, table(results, args.config))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
