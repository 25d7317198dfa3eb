"""The default model's targets (issue 13, item 5), each marked met or not, from the evaluation's JSON.

    python scripts/check_targets.py data/models/m3lab-e5-small/results.json \
        --ablation data/models/m3lab-e5-small/results-ablation.json

Reads what ``scripts/evaluate_default.py`` wrote (the main run with every task; the ablation
run, evaluated as its "M3" columns) and prints a markdown list: the numbers compared and
whether the target holds. Nothing here measures anything; it only compares.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SINGLE = ("Dense", "Sparse", "Multi-vec")
TASK_NAMES = {"xquad": "XQuAD same language", "xquad-cross": "XQuAD X→en", "tatoeba": "Tatoeba (11 languages)",
              "tatoeba-extra": "Tatoeba (30 more languages)"}


def mean(table: dict, column: str) -> float:
    return float(np.mean([row[column] for row in table.values()]))


def mark(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def targets(tables: dict, ablation: dict | None) -> list[str]:
    out = []
    tasks = [t for t in TASK_NAMES if t in tables]
    # 1. dense does not fall below the base on any task average
    rows = [(TASK_NAMES[t], mean(tables[t], "M3 Dense"), mean(tables[t], "e5-small")) for t in tasks]
    ok = all(d >= b for _, d, b in rows)
    out.append(f"- Dense ≥ base e5-small on every task average: {mark(ok)} — "
               + "; ".join(f"{n} {100 * d:.1f} vs {100 * b:.1f}" for n, d, b in rows))
    # 2. All is at least the best single function on each task average, and beats BM25 per language
    rows = []
    for t in tasks:
        best = max(SINGLE, key=lambda f: mean(tables[t], f"M3 {f}"))
        rows.append((TASK_NAMES[t], mean(tables[t], "M3 All"), best, mean(tables[t], f"M3 {best}")))
    ok = all(a >= b for _, a, _, b in rows)
    out.append(f"- All ≥ the best single function on each task average: {mark(ok)} — "
               + "; ".join(f"{n} {100 * a:.1f} vs {f} {100 * b:.1f}" for n, a, f, b in rows))
    if "xquad" in tables:
        below = {lang: (r["M3 All"], r["BM25"]) for lang, r in tables["xquad"].items() if r["M3 All"] <= r["BM25"]}
        margin = min(r["M3 All"] - r["BM25"] for r in tables["xquad"].values())
        out.append(f"- All > BM25 on XQuAD same-language in every language: {mark(not below)} — smallest margin "
                   f"{100 * margin:+.1f} points" + (f"; at or below: {', '.join(below)}" if below else ""))
        s, b = mean(tables["xquad"], "M3 Sparse"), mean(tables["xquad"], "BM25")
        out.append(f"- Sparse ≥ BM25 on the XQuAD same-language average: {mark(s >= b)} — {100 * s:.1f} vs {100 * b:.1f}")
    if "scale" in tables:
        sc = tables["scale"]
        out.append(f"- Scale of the scores (XQuAD same language, positives): mean s_lex {mean(sc, 'M3 s_sparse'):.3f}, "
                   f"s_dense {mean(sc, 'M3 s_dense'):.3f}, s_mul {mean(sc, 'M3 s_colbert'):.3f}; w_sparse = 0.3 "
                   f"changes dense's first result for {100 * mean(sc, 'M3 top1_changed'):.1f} % of queries and its "
                   f"top-10 for {100 * mean(sc, 'M3 top10_changed'):.1f} %")
    if ablation is not None:
        rows = [(TASK_NAMES[t], mean(tables[t], "M3 Sparse"), mean(ablation[t], "M3 Sparse"))
                for t in tasks if t in ablation]
        ok = all(kd > no for _, kd, no in rows)
        out.append(f"- Self-KD ablation, sparse with self-KD > without: {mark(ok)} — "
                   + "; ".join(f"{n} {100 * kd:.1f} vs {100 * no:.1f}" for n, kd, no in rows))
    if "mini" in tables:
        mini = tables["mini"]
        topic = {lang: r["M3 All topic"] for lang, r in mini.items()}
        same = {lang: r["M3 All same-language"] for lang, r in mini.items()}
        out.append(f"- Mini corpus, hybrid, right topic first ≥ 95 % in every language: "
                   f"{mark(min(topic.values()) >= 0.95)} — "
                   + ", ".join(f"{lang} {100 * v:.1f}" for lang, v in topic.items()))
        out.append(f"- Mini corpus, hybrid, same-language passage first ≥ 90 % in every language: "
                   f"{mark(min(same.values()) >= 0.90)} — "
                   + ", ".join(f"{lang} {100 * v:.1f}" for lang, v in same.items()))
    return out


def summary(tables: dict, ablation: dict | None) -> str:
    """Task averages × 100: BM25, the base, and every M3 column (the ablation's beside, when given)."""
    columns = ["BM25", "e5-small", *(f"M3 {c}" for c in (*SINGLE, "Dense+Sparse", "All"))]
    head = ["BM25", "base e5-small (dense)", "Dense", "Sparse", "Multi-vec", "Dense+Sparse", "All"]
    lines = ["| task | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    for t in (t for t in TASK_NAMES if t in tables):
        cells = []
        for c in columns:
            cell = f"{100 * mean(tables[t], c):.1f}"
            if ablation is not None and t in ablation and c.startswith("M3 ") and c in next(iter(ablation[t].values())):
                cell += f" / {100 * mean(ablation[t], c):.1f}"
            cells.append(cell)
        lines.append(f"| {TASK_NAMES[t]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--ablation", type=Path, default=None)
    args = ap.parse_args()
    tables = json.loads(args.results.read_text())["tables"]
    ablation = json.loads(args.ablation.read_text())["tables"] if args.ablation else None
    print(summary(tables, ablation) + "\n")
    if ablation is not None:
        print("(M3 columns: with self-KD / without)\n")
    print("\n".join(targets(tables, ablation)))


if __name__ == "__main__":
    main()
