"""Peak memory of one training step's sparse (lexical) path: m3lab vs the reference's B x L x V form.

The step: token weights (a leaf tensor requiring grad, zero at special/padding positions,
as M3Model.forward gives them) -> s_lex for every query/passage pair -> InfoNCE (eq. 1)
-> backward. Only the sparse path runs, so the difference is the score computation:

* naive: FlagEmbedding's training code: ``zeros(B, L, V).scatter(...)``, max over L,
  special-token columns zeroed, then (n_q x V) @ (V x n_p).
* batch-vocab: ``scoring.sparse_scores_from_tokens``: lexical vectors over the batch's
  own distinct ids (n x U, U <= tokens in the batch), then the same dot products.
* m3lab (what M3Loss runs): ``losses.sparse_training_scores``: passage tokens that occur in
  no query are dropped first (they cannot score), so the vectors span the queries'
  distinct ids only (n x U_q, U_q <= query tokens in the batch).

Measurement: every variant runs in a fresh subprocess. On CUDA, peak =
``torch.cuda.max_memory_allocated()`` minus the memory allocated before the step. On CPU
(torch has no CPU allocator statistics), peak = the process's peak resident set (VmHWM in
/proc/self/status) minus its resident set before the step; the peak is reset right
before the step through /proc/self/clear_refs, and glibc is told to serve allocations
>= 64 KiB with mmap (MALLOC_MMAP_THRESHOLD_) so freed memory is returned and the baseline
is honest. A warm-up step on a tiny batch runs first so library initialisation is not
counted. Token ids are drawn uniformly from the vocabulary: almost every token is
distinct, the worst case for m3lab's form (real text repeats tokens).

    python benchmarks/sparse_memory.py                       # CPU configs that fit in RAM
    python benchmarks/sparse_memory.py --device cuda       # adds the naive form at 8x32+64x256
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SPECIALS = (0, 1, 2, 3)  # cls/pad/eos/unk in XLM-R
XLMR_VOCAB = 250_002


# ----------------------------------------------------------------------------- the two forms

def naive_sparse_scores(qw, qids, pw, pids, vocab_size: int):
    """FlagEmbedding's training path (encoder_only/m3/modeling.py, _sparse_embedding with self.training)."""
    def embed(w, ids):
        full = torch.zeros(ids.shape[0], ids.shape[1], vocab_size, dtype=w.dtype, device=w.device)
        full = torch.scatter(full, dim=-1, index=ids.unsqueeze(-1), src=w.unsqueeze(-1))
        out = full.max(dim=1).values
        out[:, list(SPECIALS)] *= 0.0
        return out

    return embed(qw, qids) @ embed(pw, pids).T


def batch_vocab_sparse_scores(qw, qids, pw, pids, vocab_size: int):
    from m3lab import scoring

    return scoring.sparse_scores_from_tokens(qw, qids, pw, pids)


def m3lab_sparse_scores(qw, qids, pw, pids, vocab_size: int):
    from m3lab.losses import sparse_training_scores

    return sparse_training_scores(qw, qids, pw, pids)


VARIANTS = {"naive": naive_sparse_scores, "batch-vocab": batch_vocab_sparse_scores, "m3lab": m3lab_sparse_scores}


def make_inputs(n_q: int, l_q: int, n_p: int, l_p: int, vocab: int, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)

    def side(n, length):
        ids = torch.randint(len(SPECIALS), vocab, (n, length), generator=gen)
        ids[:, 0] = 0
        ids[:, -1] = 2
        w = torch.relu(torch.randn(n, length, generator=gen))
        w[:, 0] = 0
        w[:, -1] = 0
        return w.to(device).requires_grad_(), ids.to(device)

    qw, qids = side(n_q, l_q)
    pw, pids = side(n_p, l_p)
    return qw, qids, pw, pids


def step(variant: str, qw, qids, pw, pids, vocab: int) -> float:
    from m3lab.losses import info_nce

    scores = VARIANTS[variant](qw, qids, pw, pids, vocab)
    group = pw.shape[0] // qw.shape[0]
    loss = info_nce(scores, torch.arange(qw.shape[0], device=qw.device) * group)
    loss.backward()
    return float(loss)


# ----------------------------------------------------------------------------- measurement (child process)

def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def measure(variant: str, n_q: int, l_q: int, n_p: int, l_p: int, vocab: int, device: str) -> dict:
    torch.manual_seed(0)
    warm = make_inputs(2, 4, 4, 8, vocab, device, seed=1)
    step(variant, *warm, vocab)
    inputs = make_inputs(n_q, l_q, n_p, l_p, vocab, device)
    distinct = int(torch.unique(torch.cat([inputs[1].flatten(), inputs[3].flatten()])).numel())
    distinct_q = int(torch.unique(inputs[1]).numel())
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        loss = step(variant, *inputs, vocab)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() - base
        method = "torch.cuda.max_memory_allocated"
    else:
        base = _status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM (peak RSS) to the current RSS
        t0 = time.perf_counter()
        loss = step(variant, *inputs, vocab)
        seconds = time.perf_counter() - t0
        peak = _status_bytes("VmHWM") - base
        method = "VmHWM - VmRSS (fresh process, MALLOC_MMAP_THRESHOLD_=65536)"
    return {"variant": variant, "n_q": n_q, "l_q": l_q, "n_p": n_p, "l_p": l_p, "vocab": vocab,
            "device": device, "distinct_ids": distinct, "distinct_query_ids": distinct_q,
            "peak_bytes": int(peak), "seconds": seconds,
            "loss": loss, "method": method}


def run_child(variant: str, cfg: tuple[int, int, int, int], vocab: int, device: str) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, __file__, "--child", variant, "--configs", _cfg_str(cfg), "--vocab", str(vocab),
           "--device", device]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"variant": variant, "error": (proc.stderr.strip().splitlines() or ["killed"])[-1],
                "returncode": proc.returncode}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- CLI

def _parse_cfg(s: str) -> tuple[int, int, int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)\+(\d+)x(\d+)", s)
    if not m:
        raise argparse.ArgumentTypeError(f"config {s!r} must look like 8x32+64x256 (queries x len + passages x len)")
    return tuple(int(x) for x in m.groups())  # type: ignore[return-value]


def _cfg_str(c) -> str:
    return f"{c[0]}x{c[1]}+{c[2]}x{c[3]}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", type=_parse_cfg,
                    default=[_parse_cfg("8x32+16x64"), _parse_cfg("8x32+16x128"), _parse_cfg("8x32+64x256")],
                    help="queries x length + passages x length")
    ap.add_argument("--vocab", type=int, default=XLMR_VOCAB)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--max-naive-gib", type=float, default=None,
                    help="skip the naive form where its B x L x V tensors would exceed this (estimate: 2 such "
                         "tensors); default 60 on cuda, 6 on cpu")
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/sparse_memory_<device>.json")
    ap.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.out = args.out or RESULTS / f"sparse_memory_{args.device}.json"
    if args.max_naive_gib is None:
        args.max_naive_gib = 60.0 if args.device == "cuda" else 6.0

    if args.child:
        print(json.dumps(measure(args.child, *args.configs[0], args.vocab, args.device)))
        return

    rows = []
    for cfg in args.configs:
        n_q, l_q, n_p, l_p = cfg
        naive_estimate = 2 * (n_q * l_q + n_p * l_p) * args.vocab * 4  # measured: about 1.6 B x L x V tensors
        res = {"config": _cfg_str(cfg), "naive_bxlxv_bytes": (n_q * l_q + n_p * l_p) * args.vocab * 4}
        for variant in VARIANTS:
            if variant == "naive" and naive_estimate > args.max_naive_gib * 2**30:
                res[variant] = {"skipped": f"needs about {naive_estimate / 2**30:.1f} GiB "
                                           f"(> --max-naive-gib {args.max_naive_gib})"}
                continue
            res[variant] = run_child(variant, cfg, args.vocab, args.device)
        rows.append(res)

    lines: list[str] = []

    def say(line: str) -> None:
        print(line)
        lines.append(line)

    say(f"sparse path of one training step (scores + InfoNCE + backward), V = {args.vocab:,}, "
        f"device = {args.device}")
    say(f"{'batch (q x len + p x len)':<24}{'ids':>7}{'q ids':>7}{'naive MiB':>11}{'batch-vocab MiB':>17}"
        f"{'m3lab MiB':>11}{'naive/m3lab':>13}{'naive s':>9}{'m3lab s':>9}")

    def mib(x: dict) -> str:
        return f"{x['peak_bytes'] / 2**20:.2f}" if "peak_bytes" in x else ("skipped" if "skipped" in x else "error")

    for r in rows:
        n, b, m = r["naive"], r["batch-vocab"], r["m3lab"]
        ratio = f"{n['peak_bytes'] / max(m['peak_bytes'], 1):.0f}x" if "peak_bytes" in n and "peak_bytes" in m else "-"
        say(f"{r['config']:<24}{m.get('distinct_ids', '-'):>7}{m.get('distinct_query_ids', '-'):>7}{mib(n):>11}"
            f"{mib(b):>17}{mib(m):>11}{ratio:>13}"
            f"{n.get('seconds', float('nan')):>9.2f}{m.get('seconds', float('nan')):>9.3f}")
        if "skipped" in n and "peak_bytes" in m:
            bound = r["naive_bxlxv_bytes"]
            r["ratio_vs_naive_lower_bound"] = bound / max(m["peak_bytes"], 1)
            say(f"{'':<24}naive skipped ({n['skipped']}); its B x L x V float32 tensor alone is "
                f"{bound / 2**30:.1f} GiB (computed, not measured): naive/m3lab >= "
                f"{r['ratio_vs_naive_lower_bound']:.0f}x")
    say(f"method: {rows[0]['m3lab'].get('method', '?')}")
    from m3lab._io import atomic_file, write_json

    write_json(args.out, {"vocab": args.vocab, "device": args.device, "rows": rows})
    with atomic_file(args.out.with_suffix(".txt")) as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
