"""The shipped default model (issue 13): what it is made of, and that its bge-m3 export loads in FlagEmbedding.

``data/models/m3lab-e5-small`` stores only what training changed on the e5-small backbone
(``M3Model.save_delta``). ``save_pretrained`` of it writes the complete bge-m3 layout:
``tests/reference/make_default_model_reference.py`` loaded that directory in FlagEmbedding
1.4.2's ``BGEM3FlagModel`` and recorded its outputs and the saved weights' digests. Here m3lab
saves again: the same bytes, and m3lab's outputs on its own directory equal FlagEmbedding's.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import load_reference, load_reference_module
from m3lab import M3Model
from m3lab.modeling.hub import DEFAULT_MODEL_DIR, DELTA_FILE
from test_parity import _assert_same_encoding

REF_FILE = Path(__file__).parent / "reference" / "default_model_reference.npz"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ref() -> dict:
    return load_reference(REF_FILE)


@pytest.fixture(scope="module")
def default() -> M3Model:
    return M3Model.from_pretrained("default", device="cpu", dtype=torch.float32)


def test_default_is_e5_small_with_its_prompts_and_trained_heads(default):
    assert default.heads_trained and default.pooling == "mean"
    assert default.prompts == {"query": "query: ", "passage": "passage: "}
    assert default.encoder.config.num_hidden_layers == 12 and default.hidden_size == 384
    assert len(default.tokenizer) == 250002 and default.drop_ids.tolist() == [0, 1, 2, 3]
    # the delta holds only the trained top layers, so the frozen part is the backbone's own
    from safetensors.torch import load_file

    delta = load_file(str(DEFAULT_MODEL_DIR / DELTA_FILE))
    assert delta and all(".layer.9." in k or ".layer.10." in k or ".layer.11." in k for k in delta)
    assert all(t.dtype == torch.float16 for t in delta.values())


def test_save_pretrained_of_default_loads_unchanged_in_flagembedding(default, ref, tmp_path):
    builder = load_reference_module("parity_checkpoint")
    saved = default.save_pretrained(tmp_path / "full")
    meta = ref["meta"]
    assert {p.name for p in saved.iterdir()} == set(meta["saved_files"])
    assert builder.weights_digest(saved) == meta["saved_weights_sha256"], "save_pretrained wrote other weights"
    assert builder.heads_digest(saved) == meta["saved_heads_sha256"]
    again = M3Model.from_pretrained(saved, device="cpu", dtype=torch.float32)
    _assert_same_encoding(again.encode(meta["texts"], batch_size=3), ref)
    assert meta["m3lab_vs_flagembedding_max_abs_diff"] < 1e-5
