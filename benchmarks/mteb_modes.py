"""Every M3 mode of the default model in MTEB's own XQuADRetrieval, through m3lab's wrappers, against ``m3lab eval``.

MTEB's task (its evaluator and pytrec_eval scoring; its corpus construction, read from the local
XQuAD files by ``m3lab.evaluation.mteb.local_xquad_task``) evaluates ``M3DenseEncoder`` (dense) and
``M3SearchModel`` (dense, sparse, colbert, hybrid with w = 1, 0.3, 1); ``m3lab eval``'s
``evaluate_retrieval`` evaluates the same model on the same data. Needs the ``mteb`` extra::

    M3LAB_DATA_DIR=../shared/data python benchmarks/mteb_modes.py --languages en,de,zh

Prints a markdown table (nDCG@10 × 100) and writes it to ``benchmarks/results/mteb_modes.md``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("dense", "sparse", "colbert", "hybrid")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--languages", default="en,de,zh")
    ap.add_argument("--data-dir", default=os.environ.get("M3LAB_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mteb_modes.md"))
    args = ap.parse_args()
    import mteb

    from m3lab._io import atomic_file
    from m3lab.data import load_xquad
    from m3lab.evaluation import evaluate_retrieval
    from m3lab.evaluation.mteb import M3DenseEncoder, M3SearchModel, local_xquad_task
    from m3lab.modeling import M3Model

    languages, data_dir = args.languages.split(","), Path(args.data_dir)
    model = M3Model.from_pretrained(args.model)
    t0 = time.perf_counter()
    ours = {lang: {r["mode"]: r["ndcg@10"] for r in evaluate_retrieval(model, load_xquad(lang, data_dir=data_dir),
                                                                          MODES, show_progress=False)}
            for lang in languages}
    ours_s = time.perf_counter() - t0

    def run(wrapper) -> dict[str, float]:
        result = mteb.evaluate(wrapper, local_xquad_task(data_dir, languages), cache=None, show_progress_bar=False)
        return {s["hf_subset"]: s["ndcg_at_10"] for s in result.task_results[0].scores["validation"]}

    t0 = time.perf_counter()
    theirs = {"dense (encoder)": run(M3DenseEncoder(model))}
    theirs.update({m: run(M3SearchModel(model, mode=m)) for m in MODES})
    theirs_s = time.perf_counter() - t0

    lines = [f"# MTEB XQuADRetrieval, model {args.model!r}, every mode (nDCG@10 × 100)", "",
             f"mteb {mteb.__version__}, its XQuADRetrieval task on the local XQuAD files, through "
             "`M3DenseEncoder` / `M3SearchModel`, vs `m3lab eval` (`evaluate_retrieval`, max length 512, hybrid "
             f"w = 1, 0.3, 1, 100 candidates). m3lab eval {ours_s:.0f} s, MTEB (5 runs) {theirs_s:.0f} s. "
             "`python benchmarks/mteb_modes.py`", "",
             "| mode | " + " | ".join(f"MTEB {x} | m3lab {x}" for x in languages) + " | largest Δ |",
             "|---|" + "---:|" * (2 * len(languages) + 1)]
    for name, scores in theirs.items():
        mode = name.split()[0]
        cells, worst = [], 0.0
        for lang in languages:
            a, b = 100 * scores[lang], 100 * ours[lang][mode]
            worst = max(worst, abs(a - b))
            cells += [f"{a:.3f}", f"{b:.3f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {worst:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    with atomic_file(args.out) as f:
        f.write(text)


if __name__ == "__main__":
    main()
