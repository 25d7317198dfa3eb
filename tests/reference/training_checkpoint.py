"""The training-parity checkpoint and batch: a tiny random XLM-R encoder in bge-m3's layout.

Used by both ``make_training_reference.py`` (run once with FlagEmbedding in a scratch
virtualenv) and ``tests/test_training_parity.py`` (which rebuilds the identical directory in
tmp_path), so both sides train from the same weights on the same batch. Only torch,
transformers, tokenizers and safetensors are needed: this module does not import m3lab.

Layout written (what ``BAAI/bge-m3`` ships):

    config.json, model.safetensors          a 2-layer, 32-d XLM-RoBERTa, dropout probabilities 0
    tokenizer.json, tokenizer_config.json   an XLM-R-style word-level Unigram tokenizer
                                            (<s> ... </s>, a real EOS), 40 pieces
    colbert_linear.pt                       torch.save(Linear(32, 32).state_dict())
    sparse_linear.pt                        torch.save(Linear(32, 1).state_dict())

Every weight is drawn here from one seeded ``torch.Generator`` (not by transformers'
initialisers, which may change between versions), so :func:`weights_digest` pins them.
The dropout probabilities are 0 in the config: the model can be in ``train()`` mode (which
FlagEmbedding's loss needs) and still compute deterministically.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

SEED = 20240205
HIDDEN = 32
LAYERS = 2
HEADS = 4
INTERMEDIATE = 64
MAX_POSITIONS = 34  # XLM-R: positions start at padding_idx + 1 = 2, so 32 tokens fit

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
WORDS = tuple("""the a of and in is was who what when where built tower river city paris france
music science water light energy plant cell sun moon capital largest first people world year
many how did""".split())
#: The sparse head's bias and weight scale: about 94% of the token weights on the batch pass the
#: ReLU (some are cut, so its zero region is exercised) and they stay ~0.07, so s_lex / 0.02 is a few units.
SPARSE_BIAS = 0.1
SPARSE_WEIGHT_STD = 0.1

#: The batch: 4 queries, each with its positive first and 3 hard negatives (group size 4).
#: Lengths differ so queries and passages are padded. One word outside the vocabulary
#: ("zebra") tokenises to <unk>, which the sparse function must drop.
GROUP_SIZE = 4
QUERIES = (
    "who built the tower",
    "what is the capital of france",
    "how did the plant cell use light energy",
    "where is the largest river zebra",
)
PASSAGES = (
    # query 0
    "the tower in paris was built in the first year",
    "the river of the city",
    "music and science of the world",
    "people in the city built a tower of water",
    # query 1
    "paris is the capital and largest city of france",
    "the capital of the moon",
    "france was the first of many",
    "the sun is the light",
    # query 2
    "a plant cell is how the sun light was energy",
    "the cell of the world",
    "water and energy in the city of paris and the river",
    "light music",
    # query 3
    "the largest river in the world is where people and water",
    "the river in paris",
    "the moon is the largest of many zebra",
    "how the tower was built",
)
#: FlagEmbedding's collator defaults (query_max_len / passage_max_len): nothing here is cut.
QUERY_MAX_LEN = 32
PASSAGE_MAX_LEN = 32


def make_tokenizer():
    """The word-level XLM-R-style tokenizer: ids 0..3 = <s>, <pad>, </s>, <unk>, then the words, then <mask>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import XLMRobertaTokenizerFast

    pieces = [(t, 0.0) for t in SPECIALS] + [("\u2581" + w, -1.0) for w in WORDS] + [("<mask>", 0.0)]
    tk = Tokenizer(models.Unigram(pieces, unk_id=3))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                      special_tokens=[("<s>", 0), ("</s>", 2)])
    return XLMRobertaTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                   sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")


def vocab_size() -> int:
    return len(SPECIALS) + len(WORDS) + 1


def make_config():
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(vocab_size=vocab_size(), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
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

    model = XLMRobertaModel(make_config())
    gen = torch.Generator().manual_seed(seed)
    return {name: _draw(name, tuple(t.shape), gen)
            for name, t in sorted(model.state_dict().items()) if t.is_floating_point()}


def make_heads(seed: int = SEED) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Random (not identity) heads: W_mul ~ N(0, 1/d), b_mul ~ N(0, 0.02^2);
    W_lex ~ N(0, 0.1^2/d), b_lex = 0.1 plus small noise (ReLU weights mostly active)."""
    gen = torch.Generator().manual_seed(seed + 1)
    d = HIDDEN
    colbert = {"weight": torch.randn(d, d, generator=gen) / d ** 0.5,
               "bias": 0.02 * torch.randn(d, generator=gen)}
    sparse = {"weight": SPARSE_WEIGHT_STD * torch.randn(1, d, generator=gen) / d ** 0.5,
              "bias": SPARSE_BIAS + 0.01 * torch.randn(1, generator=gen)}
    return colbert, sparse


def build_training_checkpoint(path: str | Path, seed: int = SEED) -> Path:
    """Write the checkpoint to ``path`` (created; must not hold another model)."""
    from transformers import XLMRobertaModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = XLMRobertaModel(make_config())
    missing, unexpected = model.load_state_dict(make_encoder_state(seed), strict=False)
    # only non-floating buffers (position/token-type id tables) may be left out
    assert not unexpected and all(not model.state_dict()[k].is_floating_point() for k in missing), (missing, unexpected)
    model.save_pretrained(str(path), safe_serialization=True)
    make_tokenizer().save_pretrained(str(path))
    colbert, sparse = make_heads(seed)
    torch.save(colbert, path / "colbert_linear.pt")
    torch.save(sparse, path / "sparse_linear.pt")
    return path


def _tensor_digest(h, prefix: str, state: dict[str, torch.Tensor]) -> None:
    for k in sorted(state):
        t = state[k]
        h.update(f"{prefix}:{k}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())


def encoder_digest(path: str | Path) -> str:
    """sha256 over the encoder's tensors as stored (names, shapes, dtypes, bytes; not the file's metadata)."""
    from safetensors.torch import load_file

    h = hashlib.sha256()
    _tensor_digest(h, "encoder", load_file(str(Path(path) / "model.safetensors")))
    return h.hexdigest()


def heads_digest(path: str | Path) -> str:
    """sha256 over the two head files' tensors."""
    h = hashlib.sha256()
    for name in ("colbert_linear.pt", "sparse_linear.pt"):
        _tensor_digest(h, name, torch.load(Path(path) / name, map_location="cpu", weights_only=True))
    return h.hexdigest()


def config_summary(path: str | Path) -> dict:
    """The config fields that decide the forward pass (recorded with the reference)."""
    cfg = json.loads((Path(path) / "config.json").read_text())
    keys = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "max_position_embeddings", "hidden_dropout_prob",
            "attention_probs_dropout_prob", "layer_norm_eps", "pad_token_id", "hidden_act")
    return {k: cfg.get(k) for k in keys}
