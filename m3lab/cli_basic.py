"""``m3lab encode`` and ``m3lab score``: the model from the command line."""
from __future__ import annotations

import argparse

import numpy as np


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="embed texts and print what each function gives")
    p.add_argument("texts", nargs="+", help="texts to embed")
    _model_args(p)
    p.add_argument("--top", type=int, default=8, help="lexical weights to show per text")
    p.set_defaults(func=_encode)

    s = sub.add_parser("score", help="score a query against passages with dense, sparse, multi-vector and hybrid")
    s.add_argument("query")
    s.add_argument("passages", nargs="+")
    _model_args(s)
    s.add_argument("--weights", default="1,0.3,1", help="w_dense,w_sparse,w_colbert (default 1,0.3,1)")
    s.set_defaults(func=_score)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="model directory, hub id, or 'default' (default)")
    p.add_argument("--pooling", choices=["cls", "mean"], default=None, help="override the checkpoint's pooling")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--mcls", action="store_true", help="insert a [CLS] every 256 tokens (appendix B.2)")


def _load(args):
    from .modeling import M3Model

    return M3Model.from_pretrained(args.model, pooling=args.pooling)


def _encode(args) -> int:
    from .viz.inspect import token_weights

    model = _load(args)
    out = model.encode(args.texts, max_length=args.max_length, mcls=args.mcls)
    print(f"model: {model!r}")
    for i, text in enumerate(args.texts):
        top = ", ".join(f"{w.token}:{w.weight:.3f}" for w in token_weights(model, out, i)[: args.top])
        print(f"[{i}] {text[:60]!r}\n    dense {out.dense.shape[1]}-d, norm {np.linalg.norm(out.dense[i]):.3f}; "
              f"multi-vector {out.colbert[i].shape}; lexical: {top}")
    return 0


def _score(args) -> int:
    weights = tuple(float(w) for w in args.weights.split(","))
    model = _load(args)
    res = model.score(args.query, args.passages, weights=weights, max_length=args.max_length)
    print(f"model: {model!r}\nquery: {args.query!r}   weights (dense, sparse, colbert) = {weights}")
    print(f"{'rank':>4} {'hybrid':>8} {'dense':>8} {'sparse':>8} {'colbert':>8}  passage")
    for rank, j in enumerate(np.argsort(-res.scores[0]), 1):
        print(f"{rank:>4} {res.scores[0, j]:8.4f} {res.dense[0, j]:8.4f} {res.sparse[0, j]:8.4f} "
              f"{res.colbert[0, j]:8.4f}  {args.passages[j][:70]}")
    return 0
