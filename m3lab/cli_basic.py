"""``m3lab encode`` and ``m3lab score``: the model from the command line."""
from __future__ import annotations

import argparse

import numpy as np


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="embed texts and print what each function gives")
    p.add_argument("texts", nargs="+", help="texts to embed")
    _model_args(p)
    p.add_argument("--top", type=int, default=8, help="lexical weights to show per text")
    p.add_argument("--as", dest="kind", choices=["plain", "query", "passage"], default="plain",
                   help="plain: the texts as given; query/passage: with the model's saved prompt and max length "
                        "(encode_queries / encode_corpus)")
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
    p.add_argument("--max-length", type=int, default=None,
                   help="max tokens per text (default: the model's saved query/passage max length, 512 for plain)")
    p.add_argument("--mcls", action="store_true", help="insert a [CLS] every 256 tokens (appendix B.2)")


def _load(args):
    from .modeling import M3Model

    return M3Model.from_pretrained(args.model, pooling=args.pooling)


def _encode(args) -> int:
    from .viz.inspect import token_weights

    model = _load(args)
    encode = {"plain": model.encode, "query": model.encode_queries, "passage": model.encode_corpus}[args.kind]
    max_length = args.max_length if args.max_length is not None or args.kind != "plain" else 512
    out = encode(args.texts, max_length=max_length, mcls=args.mcls)
    print(f"model: {model!r}")
    for i, text in enumerate(args.texts):
        top = ", ".join(f"{w.token}:{w.weight:.3f}" for w in token_weights(model, out, i)[: args.top])
        print(f"[{i}] {text[:60]!r}\n    dense {out.dense.shape[1]}-d, norm {np.linalg.norm(out.dense[i]):.3f}; "
              f"multi-vector {out.colbert[i].shape}; lexical: {top}")
    return 0


def _score(args) -> int:
    weights = tuple(float(w) for w in args.weights.split(","))
    model = _load(args)
    # the query with the model's query prompt, the passages with its passage prompt
    res = model.score(args.query, args.passages, weights=weights, max_length=args.max_length)
    print(f"model: {model!r}\nquery: {args.query!r}   weights (dense, sparse, colbert) = {weights}")
    print(f"{'rank':>4} {'hybrid':>8} {'dense':>8} {'sparse':>8} {'colbert':>8}  passage")
    for rank, j in enumerate(np.argsort(-res.scores[0]), 1):
        parts = " ".join("       -" if m is None else f"{m[0, j]:8.4f}" for m in (res.dense, res.sparse, res.colbert))
        print(f"{rank:>4} {res.scores[0, j]:8.4f} {parts}  {args.passages[j][:70]}")
    return 0
