"""The training configuration: typed dataclasses read from YAML or JSON, validated strictly.

Every key is checked: an unknown key, a value of the wrong type or outside its range
raises :class:`ConfigError` naming the file and the key (with close matches for typos).
See docs/training.md for the reference of every field.

    config = load_config("configs/minilm-m3.yaml", overrides=["learning_rate=2e-5", "stages.0.steps=100"])
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Union

import yaml

from ..modeling.matryoshka import check_matryoshka_dims
from ..scoring import FUNCTIONS
from .samplers import TABLE9_BOUNDARIES

#: what ``freeze`` may name: the encoder, its token embeddings only, or one function
FREEZABLE = ("encoder", "embeddings", "dense", "sparse", "colbert")
NEGATIVES_POLICIES = ("sample_from_corpus", "repeat", "error")
LONG_TEXT_POLICIES = ("truncate", "error")
BATCHING = ("plain", "split", "gradcache")
AMP = ("auto", "bf16", "fp16", "none")
LOSS_FORMS = ("bge-m3", "paper")
SCHEDULERS = ("linear", "constant")
LOSS_WEIGHT_KEYS = ("dense", "sparse", "colbert", "inter", "kd_dense", "kd_sparse", "kd_colbert")


_FLOAT_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class ConfigError(ValueError):
    """A bad training configuration; the message names the file and the key."""


@dataclass
class StageConfig:
    """One training stage (section 3.3, multi-stage training).

    A stage runs ``steps`` optimizer steps (or ``epochs`` passes over the data; neither =
    1 epoch) training the listed ``functions``. With ``self_distill`` (default: on when two
    or more functions train) the self-knowledge distillation terms (eq. 3-4) join the loss
    from the stage's ``self_distill_from_step``-th step on (counted from the stage's start;
    the steps before are the per-function warm-up).
    ``freeze`` lists what gets no update: ``encoder`` (all encoder weights), ``embeddings``
    (the encoder's token/position embeddings only), ``sparse`` / ``colbert`` (their heads),
    ``dense`` (has no weights of its own: its loss terms are dropped, see docs/training.md).
    """

    name: str = "unified"
    steps: int | None = None
    epochs: float | None = None
    functions: list[str] = field(default_factory=lambda: list(FUNCTIONS))
    self_distill: bool | None = None          # None: on when two or more functions are trained
    self_distill_from_step: int = 0
    freeze: list[str] = field(default_factory=list)

    @property
    def trained_functions(self) -> tuple[str, ...]:
        """``functions`` minus a frozen ``dense`` (the only function without weights of its own)."""
        return tuple(f for f in self.functions if not (f == "dense" and "dense" in self.freeze))

    @property
    def uses_self_distill(self) -> bool:
        return self.self_distill if self.self_distill is not None else len(self.trained_functions) >= 2


@dataclass
class TrainConfig:
    """Everything a training run needs. Field reference: docs/training.md."""

    train_files: list[str]
    output_dir: str = "runs/m3lab"
    model: str = "default"
    pooling: str | None = None
    # ---- data
    query_max_length: int = 64
    passage_max_length: int = 256
    group_size: int = 8                      # passages per query: 1 positive + (group_size - 1) hard negatives
    negatives_policy: str = "sample_from_corpus"
    long_text_policy: str = "truncate"
    query_instruction: str | None = None     # before every query (a line's own "prompt" wins); None: the model's prompt
    passage_instruction: str | None = None   # before every passage; None: the model's passage prompt
    # ---- batching
    batch_size: int | dict[int, int] = 8     # queries per micro-batch over all processes; or per length group
    gradient_accumulation_steps: int = 1
    batching: str = "plain"
    sub_batch_size: int = 32
    gradient_checkpointing: bool = False
    frozen_layers: int = 0                   # embeddings + first N layers frozen in every stage, their outputs cached
    length_grouping: bool = True
    length_boundaries: list[int] | None = None  # None: the token ranges of Table 9
    drop_last: bool = False                  # drop each length group's last, short batch
    cross_device_negatives: bool = True
    cross_device_functions: list[str] = field(default_factory=lambda: ["dense"])  # gathered across processes
    # ---- optimisation
    learning_rate: float = 1e-5
    head_learning_rate: float | None = None  # the sparse and multi-vector heads' rate; None: learning_rate
    weight_decay: float = 0.01
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    warmup_ratio: float = 0.0
    warmup_steps: int | None = None
    lr_scheduler: str = "linear"
    max_steps: int | None = None             # a cap on the total steps of all stages
    seed: int = 0
    amp: str = "auto"
    device: str = "auto"
    # ---- loss
    temperature: float = 0.02
    loss_form: str = "bge-m3"
    ensemble_weights: list[float] = field(default_factory=lambda: [1.0, 0.3, 1.0])
    loss_weights: dict[str, float] | None = None  # e.g. {sparse: 0.1, inter: 1.0, kd_sparse: 0.1}; None: the form's
    use_teacher_scores: bool = False
    matryoshka_dims: list[int] | None = None      # e.g. [256, 128, 64]: also train truncated embeddings (MRL)
    matryoshka_weights: list[float] | None = None  # one per dim; None: all 1
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    # ---- logging and checkpoints
    log_steps: int = 10
    save_steps: int | None = 500
    save_total_limit: int | None = None
    resume_from: str | None = None           # None, "auto" or a checkpoint directory
    sparse_collapse_threshold: float = 0.01
    sparse_collapse_patience: int = 3
    progress_bar: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def log_path(self) -> Path:
        return Path(self.output_dir) / "log.jsonl"


# ----------------------------------------------------------------------------- loading

def load_config(source: str | Path | dict[str, Any] | TrainConfig, overrides: Iterable[str] = ()) -> TrainConfig:
    """A validated :class:`TrainConfig` from a YAML/JSON file, a dict or a config.

    ``overrides`` are ``key=value`` strings applied before validation; the key may be
    dotted with list indices (``stages.1.steps=200``) and the value is read as YAML
    (``functions=[dense]``, ``max_grad_norm=null``).
    """
    if isinstance(source, TrainConfig):
        source = source.to_dict()
    where = "config"
    if isinstance(source, (str, Path)):
        where = str(source)
        data = _read_file(Path(source))
    elif isinstance(source, dict):
        data = json.loads(json.dumps(source))  # a deep copy that also rejects non-JSON values
    else:
        raise TypeError(f"expected a config file path, a dict or a TrainConfig, got {type(source).__name__}")
    for item in overrides:
        _apply_override(data, item, where)
    config = _build(TrainConfig, data, where, "")
    validate(config, where)
    return config


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {err}") from None
    if data is None:
        raise ConfigError(f"{path}: the config file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level, got {type(data).__name__}")
    return data


def _apply_override(data: dict[str, Any], item: str, where: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML: {err}") from None
    parts = key.strip().split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[:i]) or 'the config'} has {len(node)} entries, "
                                  f"no index {part!r}")
            part = int(part)
        elif not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: {'.'.join(parts[:i])} is not a mapping or list")
        if last:
            node[part] = value
        else:
            if isinstance(node, dict) and part not in node:
                if part == "stages":  # the default single stage, made explicit so it can be edited
                    node[part] = [dataclasses.asdict(StageConfig())]
                else:
                    node[part] = {}
            node = node[part]


def _build(cls: type, data: Any, where: str, prefix: str):
    if not isinstance(data, dict):
        what = prefix.rstrip(".") or "the config"
        raise ConfigError(f"{where}: {what}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=3, cutoff=0.6)
            hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {prefix + str(key)!r}{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing required key {prefix + name!r}")
            continue
        kwargs[name] = _convert(data[name], hints[name], where, prefix + name)
    return cls(**kwargs)


def _convert(value: Any, hint: Any, where: str, key: str):
    """``value`` checked against the annotation ``hint`` (ints are accepted for floats)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for option in inner:  # the first type that accepts the value
            try:
                return _convert(value, option, where, key)
            except ConfigError as err:
                errors.append(err)
        if len(inner) == 1:
            raise errors[0]
        raise ConfigError(f"{where}: {key!r}: expected {' or '.join(_type_name(a) for a in inner)}"
                          f"{' or null' if type(None) in args else ''}, got {_describe(value)}")
    if origin is dict:
        key_type, value_type = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key!r}: expected a mapping, got {_describe(value)}")
        out = {}
        for k, v in value.items():
            if key_type is int and isinstance(k, str) and k.strip().lstrip("-").isdigit():
                k = int(k)  # JSON object keys are strings
            out[_convert(k, key_type, where, f"{key} key {k!r}")] = _convert(v, value_type, where, f"{key}.{k}")
        return out
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if key.endswith("train_files") and isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key!r}: expected a list, got {_describe(value)}")
        return [_convert(v, item_type, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where, key.replace("[", ".").replace("]", "") + ".")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key!r}: expected true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key!r}: expected an integer, got {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 (PyYAML) reads 2e-5 as a string; 2.0e-5 is a float
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key!r}: expected a number, got {_describe(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: {key!r}: expected a finite number, got {value}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key!r}: expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported config annotation {hint!r} for {key}")  # a bug in this module


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is list:
        return "a list"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(hint, str(hint))


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__


# ----------------------------------------------------------------------------- validation

def validate(c: TrainConfig, where: str = "config") -> None:
    """Range and consistency checks across fields; raises :class:`ConfigError`."""
    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{where}: {key!r}: {message}")

    def choice(key: str, value: Any, options: tuple) -> None:
        if value not in options:
            fail(key, f"expected one of {', '.join(repr(o) for o in options)}, got {value!r}")

    if not c.train_files:
        fail("train_files", "give at least one training file")
    bad = [f for f in c.cross_device_functions if f not in FUNCTIONS]
    if bad or len(set(c.cross_device_functions)) != len(c.cross_device_functions):
        fail("cross_device_functions", f"expected distinct names among {', '.join(FUNCTIONS)} (bge-m3: [dense]), "
                                       f"got {c.cross_device_functions}")
    if c.pooling is not None:
        choice("pooling", c.pooling, ("cls", "mean"))
    for key in ("query_max_length", "passage_max_length", "group_size",
                "gradient_accumulation_steps", "sub_batch_size", "log_steps", "sparse_collapse_patience"):
        if getattr(c, key) < 1:
            fail(key, f"must be >= 1, got {getattr(c, key)}")
    for key in ("save_steps", "save_total_limit", "max_steps"):
        if getattr(c, key) is not None and getattr(c, key) < 1:
            fail(key, f"must be >= 1 (or null), got {getattr(c, key)}")
    if c.warmup_steps is not None and c.warmup_steps < 0:
        fail("warmup_steps", f"must be >= 0, got {c.warmup_steps}")
    if not 0 <= c.warmup_ratio <= 1:
        fail("warmup_ratio", f"must be in [0, 1], got {c.warmup_ratio}")
    if c.learning_rate <= 0:
        fail("learning_rate", f"must be > 0, got {c.learning_rate}")
    if c.weight_decay < 0:
        fail("weight_decay", f"must be >= 0, got {c.weight_decay}")
    if len(c.adam_betas) != 2 or not all(0 <= b < 1 for b in c.adam_betas):
        fail("adam_betas", f"expected two numbers in [0, 1), got {c.adam_betas}")
    if c.max_grad_norm is not None and c.max_grad_norm <= 0:
        fail("max_grad_norm", f"must be > 0 (or null for no clipping), got {c.max_grad_norm}")
    if c.temperature <= 0:
        fail("temperature", f"must be > 0, got {c.temperature}")
    if not 0 <= c.sparse_collapse_threshold < 1:
        fail("sparse_collapse_threshold", f"must be in [0, 1), got {c.sparse_collapse_threshold}")
    choice("negatives_policy", c.negatives_policy, NEGATIVES_POLICIES)
    choice("long_text_policy", c.long_text_policy, LONG_TEXT_POLICIES)
    choice("batching", c.batching, BATCHING)
    if c.head_learning_rate is not None and c.head_learning_rate <= 0:
        fail("head_learning_rate", f"must be > 0 (or null for learning_rate), got {c.head_learning_rate}")
    if c.frozen_layers < 0:
        fail("frozen_layers", f"must be >= 0, got {c.frozen_layers}")
    if c.frozen_layers and (c.batching != "plain" or c.gradient_checkpointing):
        fail("frozen_layers", "cached lower layers work with batching: plain and no gradient_checkpointing "
                              f"(got batching: {c.batching}, gradient_checkpointing: {c.gradient_checkpointing})")
    choice("amp", c.amp, AMP)
    choice("loss_form", c.loss_form, LOSS_FORMS)
    choice("lr_scheduler", c.lr_scheduler, SCHEDULERS)
    if c.device != "auto" and c.device.split(":")[0] not in ("cpu", "cuda", "mps"):
        fail("device", f"expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {c.device!r}")
    if len(c.ensemble_weights) != 3:
        fail("ensemble_weights", f"expected 3 weights (dense, sparse, colbert), got {c.ensemble_weights}")
    sizes = c.batch_size.values() if isinstance(c.batch_size, dict) else [c.batch_size]
    if not sizes or any(b < 1 for b in sizes):
        fail("batch_size", f"must be >= 1 (or map length-group lower bounds to sizes >= 1), got {c.batch_size}")
    if isinstance(c.batch_size, dict):
        bounds = c.length_boundaries if c.length_boundaries is not None else list(TABLE9_BOUNDARIES)
        unknown = [k for k in c.batch_size if k not in bounds[:-1]] if c.length_grouping else []
        if unknown:
            fail("batch_size", f"keys must be lower bounds of the length groups {bounds[:-1]}, got {unknown}")
        if not c.length_grouping:
            fail("batch_size", "a batch size per length group needs length_grouping: true")
    for key, w in (c.loss_weights or {}).items():
        if key not in LOSS_WEIGHT_KEYS:
            close = difflib.get_close_matches(key, LOSS_WEIGHT_KEYS, n=2)
            fail(f"loss_weights.{key}", "unknown loss term" + (f" (did you mean {close[0]!r}?)" if close else "")
                 + f"; expected some of {', '.join(LOSS_WEIGHT_KEYS)}")
        if w < 0:
            fail(f"loss_weights.{key}", f"must be >= 0, got {w}")
    if c.matryoshka_dims is not None:
        try:
            check_matryoshka_dims(c.matryoshka_dims, None)
        except ValueError as err:
            fail("matryoshka_dims", f"{err} (expected distinct positive integers below the model's hidden size, "
                                    "e.g. [256, 128, 64])")
    if c.matryoshka_weights is not None:
        if c.matryoshka_dims is None:
            fail("matryoshka_weights", "given without matryoshka_dims")
        if len(c.matryoshka_weights) != len(c.matryoshka_dims):
            fail("matryoshka_weights", f"expected one weight per dim of {c.matryoshka_dims}, "
                                       f"got {c.matryoshka_weights}")
        bad = [w for w in c.matryoshka_weights if w < 0]
        if bad:
            fail("matryoshka_weights", f"must be >= 0, got {bad[0]}")
    if c.length_boundaries is not None:
        b = c.length_boundaries
        if len(b) < 2 or any(x < 0 for x in b) or any(x >= y for x, y in zip(b, b[1:])):
            fail("length_boundaries", f"expected two or more increasing token counts (e.g. [0, 500, 1000]), got {b}")
    if c.resume_from is not None and c.resume_from != "auto" and not c.resume_from:
        fail("resume_from", "expected null, 'auto' or a checkpoint directory")
    if c.use_teacher_scores and c.negatives_policy == "sample_from_corpus":
        fail("negatives_policy", "'sample_from_corpus' adds passages without teacher scores; with "
                                 "use_teacher_scores choose 'repeat' or 'error'")
    if not c.stages:
        fail("stages", "give at least one stage")
    names = set()
    for i, s in enumerate(c.stages):
        key = f"stages.{i}"
        if s.name in names:
            fail(f"{key}.name", f"duplicate stage name {s.name!r}")
        names.add(s.name)
        if s.steps is not None and s.epochs is not None:
            fail(key, "give steps or epochs, not both")
        if s.steps is not None and s.steps < 1:
            fail(f"{key}.steps", f"must be >= 1, got {s.steps}")
        if s.epochs is not None and s.epochs <= 0:
            fail(f"{key}.epochs", f"must be > 0, got {s.epochs}")
        if not s.functions:
            fail(f"{key}.functions", f"list at least one of {', '.join(FUNCTIONS)}")
        for f in s.functions:
            choice(f"{key}.functions", f, FUNCTIONS)
        if len(set(s.functions)) != len(s.functions):
            fail(f"{key}.functions", f"duplicate entries in {s.functions}")
        for f in s.freeze:
            choice(f"{key}.freeze", f, FREEZABLE)
        if not s.trained_functions:
            fail(f"{key}.freeze", "every listed function is frozen: nothing would be trained")
        trained = s.trained_functions
        if not ("encoder" not in s.freeze or ("sparse" in trained and "sparse" not in s.freeze)
                or ("colbert" in trained and "colbert" not in s.freeze)):
            fail(f"{key}.freeze", f"stage {s.name!r} trains {list(trained)} but freezes {s.freeze}: no weight would "
                                  "change (dense has no head of its own: it trains through the encoder)")
        if s.uses_self_distill and len(s.trained_functions) < 2:
            fail(f"{key}.self_distill", "self-distillation needs at least two trained functions "
                                        f"(the teacher is their weighted sum, eq. 2), got {list(s.trained_functions)}")
        if s.self_distill_from_step < 0:
            fail(f"{key}.self_distill_from_step", f"must be >= 0, got {s.self_distill_from_step}")
