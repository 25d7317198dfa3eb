"""Index specs: the :meth:`CorpusIndex.build` storage options as one short string (CLI, app, benchmarks).

A spec is a named preset, ``key=value`` pairs, or both, comma-separated::

    "exact"                                   # float32 everything, exhaustive MaxSim (evaluation's reference)
    "compact"                                 # the preset below
    "muvera,colbert_dtype=int8"               # a preset with one option changed
    "pool_factor=2,pool_method=kmeans,dense_quantization=binary"

Values are read as JSON where they parse (``2``, ``0.5``, ``true``, ``null``) and as strings
otherwise; ``prune=lexical:0.5`` and ``prune=stop_tokens`` are short for the ``prune`` dict.
Unknown keys are refused with the list of known ones. :func:`describe_spec` turns build options
back into the canonical string, so a spec round-trips.
"""
from __future__ import annotations

import json

# What each option is called and its default (the defaults of CorpusIndex.build).
SPEC_DEFAULTS: dict[str, object] = {
    "colbert_dtype": "float16", "pool_factor": 1, "pool_method": "ward", "prune": None, "muvera": None,
    "dense_quantization": "float32", "rescore_multiplier": 4, "dense_dim": None, "colbert_dim": None,
    "sparse_top_k": None, "query_sparse_top_k": None, "dense_index": "flat",
}

PRESETS: dict[str, dict[str, object]] = {
    # m3lab's default storage: float16 multi-vectors, exhaustive MaxSim
    "default": {},
    # every score exact in float32 (what evaluation uses as its reference)
    "exact": {"colbert_dtype": "float32"},
    # a multi-vector store about 8x smaller than float32: int8 codes, tokens pooled by 2
    "compact": {"colbert_dtype": "int8", "pool_factor": 2},
    # MUVERA first stage for the colbert mode, float16 vectors for its exact rerank
    "muvera": {"muvera": True},
    # the smallest: binary dense, int8 pooled multi-vectors behind MUVERA
    "tiny": {"dense_quantization": "binary", "colbert_dtype": "int8", "pool_factor": 2, "muvera": True},
}


def parse_index_spec(spec: str | dict | None) -> dict[str, object]:
    """Build options (keyword arguments of :meth:`CorpusIndex.build`) from a spec string or dict."""
    if spec is None:
        return {}
    if isinstance(spec, dict):
        items = list(spec.items())
    elif isinstance(spec, str):
        items = []
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            if "=" not in part:
                if part not in PRESETS:
                    raise ValueError(f"index spec: unknown preset {part!r}; presets are {', '.join(PRESETS)} "
                                     "(or give key=value options)")
                items.extend(PRESETS[part].items())
                continue
            key, raw = (s.strip() for s in part.split("=", 1))
            items.append((key, _value(key, raw)))
    else:
        raise TypeError(f"an index spec is a string or a dict, got {type(spec).__name__}")
    out: dict[str, object] = {}
    for key, value in items:
        if key not in SPEC_DEFAULTS:
            raise ValueError(f"index spec: unknown option {key!r}; the options are {', '.join(SPEC_DEFAULTS)}")
        out[key] = value
    return out


def _value(key: str, raw: str) -> object:
    if key == "prune" and raw not in ("null", "none", "None"):
        by, _, ratio = raw.partition(":")
        return {"by": by} if not ratio else {"by": by, "keep_ratio": float(ratio)}
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def describe_spec(settings: dict) -> str:
    """The canonical spec string of an index's settings: the options that differ from the defaults
    (``"default"`` when none do)."""
    parts = []
    for key, default in SPEC_DEFAULTS.items():
        value = settings.get(key, default)
        if key == "muvera" and value:
            value = True if isinstance(value, dict) and _is_default_muvera(value) else value
        if key == "prune" and value:
            value = value["by"] + ("" if value.get("keep_ratio", 1.0) == 1.0 else f":{value['keep_ratio']:g}")
            parts.append(f"prune={value}")
            continue
        if value != default and not (key == "muvera" and not value):
            parts.append(f"{key}={json.dumps(value) if not isinstance(value, str) else value}")
    return ",".join(parts) or "default"


def _is_default_muvera(config: dict) -> bool:
    from .index import default_muvera_config

    return config == default_muvera_config(int(config["dimension"])).to_dict()


# Which stored function each option shapes (an option for a function that is not stored is dropped).
_OPTION_FUNCTION = {"colbert_dtype": "colbert", "pool_factor": "colbert", "pool_method": "colbert",
                    "prune": "colbert", "muvera": "colbert", "colbert_dim": "colbert",
                    "dense_quantization": "dense", "rescore_multiplier": "dense", "dense_dim": "dense",
                    "dense_index": "dense", "sparse_top_k": "sparse", "query_sparse_top_k": "sparse"}


def options_for_store(options: dict[str, object], store) -> dict[str, object]:
    """``options`` without those that shape a function not in ``store`` (e.g. ``muvera`` for a dense-only
    evaluation), so one spec can be given to every mode."""
    store = set(store)
    return {k: v for k, v in options.items() if _OPTION_FUNCTION.get(k) in store}
