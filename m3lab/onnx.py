"""The whole M3 model as one ONNX graph, and a runner that gives m3lab's ``EncodeOutput`` (issue 15, part 2).

:func:`export_onnx` writes a folder a server can load without PyTorch or m3lab's model code::

    model.onnx          input_ids, attention_mask (int64, batch x length; any batch, any length)
                        -> dense (batch, d), token_weights (batch, length), colbert (batch, length-1, d'),
                           colbert_mask (batch, length-1)
    tokenizer files     the model's own tokenizer (Hugging Face format)
    m3lab_onnx.json     pooling, prompts, max lengths, sizes, what it was exported from

The graph is :meth:`M3Model.forward`: the encoder, both heads and the three functions of
section 3.2, with the special-token removal of the lexical weights and the padding masks inside
(:mod:`m3lab.modeling.functions`). What stays outside is what no graph does well: tokenising,
and turning a padded batch into per-text results (max weight per repeated token, multi-vectors
without padding), which :class:`OnnxM3Model` does with the same code as :meth:`M3Model.encode`.
MCLS (appendix B.2) is not exported: its extra ``cls_mask`` input is for long documents only.

    from m3lab.onnx import export_onnx, OnnxM3Model
    export_onnx(M3Model.from_pretrained("default"), "m3-onnx")      # or: m3lab export onnx m3-onnx
    onnx_model = OnnxM3Model("m3-onnx")
    out = onnx_model.encode_queries(["what is the capital of France?"])   # an EncodeOutput

Needs the optional extra ``onnx`` (``pip install "m3lab[onnx]"``: onnx, onnxscript, onnxruntime).
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ._io import atomic_directory, write_json
from .modeling.model import (
    CPU_BATCH_OVERHEAD_TOKENS,
    M3Model,
    check_texts,
    encode_batches,
    pad_token_ids,
    plan_batches,
    tokenize_texts,
)
from .modeling.outputs import EncodeOutput

ONNX_FILE = "model.onnx"
SETTINGS_FILE = "m3lab_onnx.json"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAMES = ("dense", "token_weights", "colbert", "colbert_mask")
FORMAT = "m3lab-onnx/1"

#: What :func:`export_onnx` checks the graph on before it keeps it: texts of different lengths,
#: an empty one, a repeated word, so that padding, special tokens and max-pooling all take part.
CHECK_TEXTS = ("", "a short query", "the same word word word again, in a longer text than the others are")


class _Graph(nn.Module):
    """M3Model.forward with tuple outputs (what the exporter traces)."""

    def __init__(self, model: M3Model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.dense, out.token_weights, out.colbert, out.colbert_mask


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ImportError(f"ONNX export needs the 'onnx' extra: pip install \"m3lab[onnx]\" ({err})") from None
    return onnxruntime


def export_onnx(model: M3Model, folder: str | os.PathLike, *, opset: int | None = None,
                check: bool = True, rtol: float = 1e-4) -> Path:
    """Write ``model`` as one ONNX graph plus its tokenizer and settings, atomically, to ``folder``.

    The export runs on a float32 CPU copy of the model (the original is left as it is) with a
    dynamic batch and length. With ``check`` (the default) the written graph runs in
    onnxruntime on :data:`CHECK_TEXTS` and must give the torch model's dense and multi-vector
    outputs to ``rtol`` (relative to their largest magnitude) and the same lexical token sets,
    or nothing is written and a ``RuntimeError`` says by how much it differs.
    """
    ort = _require_onnx()
    folder = Path(folder)
    cpu = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    sample = cpu.collate(cpu.tokenize(list(CHECK_TEXTS[1:]), max_length=64))
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    with atomic_directory(folder) as tmp:
        torch.onnx.export(_Graph(cpu).eval(), (sample["input_ids"], sample["attention_mask"]), str(tmp / ONNX_FILE),
                          dynamo=True, external_data=False, opset_version=opset, input_names=list(INPUT_NAMES),
                          output_names=list(OUTPUT_NAMES), verbose=False,
                          dynamic_shapes={"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}})
        cpu.tokenizer.save_pretrained(str(tmp))
        write_json(tmp / SETTINGS_FILE, {
            "format": FORMAT, "source": model.name_or_path, "pooling": cpu.pooling,
            "hidden_size": cpu.hidden_size, "colbert_dim": cpu.colbert_linear.out_features,
            "vocab_size": cpu.vocab_size, "max_positions": cpu.max_positions,
            "prompts": dict(cpu.prompts), "max_lengths": dict(cpu.max_lengths),
            "matryoshka_dims": list(cpu.matryoshka_dims) if cpu.matryoshka_dims else None,
            "heads_trained": cpu.heads_trained, "inputs": list(INPUT_NAMES), "outputs": list(OUTPUT_NAMES),
            "onnxruntime": ort.__version__, "torch": torch.__version__,
        })
        if check:
            difference = compare_outputs(cpu.encode(list(CHECK_TEXTS)), OnnxM3Model(tmp).encode(list(CHECK_TEXTS)))
            worst = max(difference["dense"], difference["colbert"], difference["sparse"])
            if worst > rtol or not difference["same_tokens"]:
                raise RuntimeError(f"the exported graph does not reproduce the model: {difference} (rtol {rtol}); "
                                   f"nothing was written to {folder}")
    return folder


def compare_outputs(reference: EncodeOutput, other: EncodeOutput) -> dict:
    """How far ``other`` is from ``reference``: the largest difference of each output relative to the
    largest magnitude of the reference's, and whether every text kept the same lexical tokens."""
    def rel(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)) if a.size else 0.0

    dense = rel(reference.dense, other.dense)
    colbert = max((rel(a, b) for a, b in zip(reference.colbert, other.colbert)), default=0.0)
    same_tokens = all(a.keys() == b.keys() for a, b in zip(reference.sparse, other.sparse))
    top = max((max(s.values(), default=0.0) for s in reference.sparse), default=0.0) or 1.0
    sparse = max((abs(a[t] - b[t]) / top for a, b in zip(reference.sparse, other.sparse) for t in a.keys() & b.keys()),
                 default=0.0)
    same_shapes = [a.shape for a in reference.colbert] == [b.shape for b in other.colbert]
    return {"dense": dense, "colbert": colbert if same_shapes else float("inf"), "sparse": sparse,
            "same_tokens": same_tokens}


class OnnxM3Model:
    """An exported M3 model run by onnxruntime, with :class:`M3Model`'s ``encode`` API.

    ``providers`` are onnxruntime's execution providers (default: CPU); ``threads`` its intra-op
    threads (default: onnxruntime's, i.e. the cores).
    """

    def __init__(self, folder: str | os.PathLike, *, providers: Sequence[str] | None = None,
                 threads: int | None = None):
        ort = _require_onnx()
        from transformers import AutoTokenizer

        self.folder = Path(folder)
        settings_file = self.folder / SETTINGS_FILE
        if not (self.folder / ONNX_FILE).is_file() or not settings_file.is_file():
            raise FileNotFoundError(f"{self.folder} is not an m3lab ONNX export (no {ONNX_FILE} or {SETTINGS_FILE}); "
                                    "write one with m3lab.onnx.export_onnx or `m3lab export onnx`")
        try:
            self.settings = json.loads(settings_file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{settings_file}: not valid JSON ({err})") from None
        if self.settings.get("format") != FORMAT:
            raise ValueError(f"{settings_file}: format {self.settings.get('format')!r}, expected {FORMAT!r}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(self.folder / ONNX_FILE), options,
                                            providers=list(providers or ["CPUExecutionProvider"]))
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        self.prompts: dict[str, str] = self.settings["prompts"]
        self.max_lengths: dict[str, int] = self.settings["max_lengths"]
        self.hidden_size: int = self.settings["hidden_size"]
        self.vocab_size: int = self.settings["vocab_size"]
        self.max_positions: int = self.settings["max_positions"]

    def __repr__(self) -> str:
        return (f"OnnxM3Model({str(self.folder)!r}, exported from {self.settings.get('source')!r}, "
                f"d={self.hidden_size}, providers={self.session.get_providers()})")

    def encode(self, texts: str | Sequence[str], *, batch_size: int = 32, max_length: int = 512,
               return_dense: bool = True, return_sparse: bool = True, return_colbert: bool = True,
               show_progress: bool | None = None) -> EncodeOutput:
        """Embed texts with the three functions, as :meth:`M3Model.encode` does (same batching, same outputs)."""
        texts = check_texts(texts)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        ids = tokenize_texts(self.tokenizer, texts, max_length=min(max_length, self.max_positions)) if texts else []
        on_cpu = self.session.get_providers()[0] == "CPUExecutionProvider"
        batches = plan_batches([len(x) for x in ids], batch_size, CPU_BATCH_OVERHEAD_TOKENS if on_cpu else None)
        pad = self.tokenizer.pad_token_id or 0

        def run(batch: dict[str, torch.Tensor]) -> tuple:
            dense, weights, colbert, mask = self.session.run(
                list(OUTPUT_NAMES), {name: batch[name].numpy() for name in INPUT_NAMES})
            return dense, weights, colbert, mask.astype(bool)

        return encode_batches(run, ids, batches, lambda chunk: pad_token_ids(chunk, pad), dense_dim=self.hidden_size,
                              vocab_size=self.vocab_size, return_dense=return_dense, return_sparse=return_sparse,
                              return_colbert=return_colbert, show_progress=show_progress)

    # the same prompts and max lengths as the torch model, through the same code
    encode_queries = M3Model.encode_queries
    encode_corpus = M3Model.encode_corpus
    _encode_as = M3Model._encode_as


# ---------------------------------------------------------------------- m3lab export onnx
def add_cli(sub) -> None:
    p = sub.add_parser("export", help="export a model for serving: `m3lab export onnx DIR`")
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    o = formats.add_parser("onnx", help="one ONNX graph with the encoder, both heads and the three outputs")
    o.add_argument("folder", help="folder to write (replaced atomically if it exists)")
    o.add_argument("--model", default="default", help="model directory, hub id, or 'default' (default)")
    o.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    o.add_argument("--no-check", dest="check", action="store_false",
                   help="skip running the written graph in onnxruntime against the torch model")
    o.set_defaults(func=_export_onnx_cli)


def _export_onnx_cli(args) -> int:
    model = M3Model.from_pretrained(args.model, device="cpu", dtype=torch.float32)
    folder = export_onnx(model, args.folder, opset=args.opset, check=args.check)
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    print(f"wrote {folder} ({size / 2**20:.1f} MiB): {ONNX_FILE}, tokenizer, {SETTINGS_FILE}"
          + ("; onnxruntime reproduces the torch model" if args.check else ""))
    return 0
