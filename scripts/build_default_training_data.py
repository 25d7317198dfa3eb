"""Build the training file of m3lab's default model (issues 6, 13) from held-in splits only.

XQuAD train articles (first 24 of 48) in all 12 languages, same-language and cross-lingual
(X -> en, en -> X), and Tatoeba train pairs (both directions), with BM25 hard negatives.
The XQuAD test articles and the Tatoeba test pairs are never read.

    python scripts/build_default_training_data.py --out runs/data/m3lab-e5-small.jsonl
"""
from __future__ import annotations

import argparse
import random
from collections import Counter

from m3lab.data import (TATOEBA_LANGUAGES, XQUAD_LANGUAGES, build_tatoeba_training, build_xquad_training,
                        write_training_file)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--negatives", type=int, default=3, help="BM25 hard negatives per example")
    ap.add_argument("--tatoeba-pairs", type=int, default=40, help="train pairs sampled per Tatoeba language")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    xquad = build_xquad_training(XQUAD_LANGUAGES, cross_lingual=True, n_negatives=args.negatives, seed=args.seed)
    tatoeba = build_tatoeba_training(TATOEBA_LANGUAGES, n_negatives=args.negatives, seed=args.seed,
                                     max_pairs_per_language=args.tatoeba_pairs)
    examples = xquad + tatoeba
    random.Random(args.seed).shuffle(examples)  # mix tasks and languages across batches
    write_training_file(args.out, examples)
    negs = Counter(len(e.neg) for e in examples)
    print(f"wrote {len(examples)} examples to {args.out}: XQuAD {len(xquad)}, Tatoeba {len(tatoeba)}; "
          f"negatives per example {dict(sorted(negs.items()))}")


if __name__ == "__main__":
    main()
