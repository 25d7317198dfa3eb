"""m3lab: an interactive toolkit for M3-Embedding (BGE-M3): dense, sparse and multi-vector retrieval from one encoder.

    from m3lab import M3Model, CorpusIndex
    model = M3Model.from_pretrained("default")
    index = CorpusIndex.build(model, ["a passage", "another passage"])

Packages: :mod:`m3lab.modeling` (the model), :mod:`m3lab.scoring` (every score),
:mod:`m3lab.losses`, :mod:`m3lab.training`, :mod:`m3lab.retrieval`, :mod:`m3lab.evaluation`,
:mod:`m3lab.viz` (inspection and figures), :mod:`m3lab.data`; :mod:`m3lab.experiments` holds the
notebooks' and benchmarks' helpers.
"""
import importlib

__version__ = "0.1.0"

from .modeling import EncodeOutput, M3Embeddings, M3Model, ScoreOutput, score_encoded  # noqa: E402
from .scoring import DEFAULT_WEIGHTS  # noqa: E402

__all__ = ["M3Model", "EncodeOutput", "ScoreOutput", "M3Embeddings", "score_encoded", "DEFAULT_WEIGHTS", "CorpusIndex", "QdrantIndex"]

# imported on first use, so that `import m3lab` stays light (faiss, plotly and umap load only when needed)
_LAZY = {"CorpusIndex": ("m3lab.retrieval", "CorpusIndex"), "QdrantIndex": ("m3lab.retrieval", "QdrantIndex"),
         "inspect": ("m3lab.viz.inspect", None),
         "plots": ("m3lab.viz.plots", None), "projection": ("m3lab.viz.projection", None)}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'm3lab' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    return getattr(value, attr) if attr else value
