"""Bitext mining (Tatoeba): for every source sentence, its nearest target sentence by the mode's score.

Accuracy = share of sentences whose nearest neighbour is their translation, both directions
(as MTEB's BitextMining accuracy).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import scoring
from ..data import XQUAD_LANGUAGES, BitextDataset
from ..data.tatoeba import ISO1_TO_TATOEBA
from ..modeling import M3Model, score_encoded
from ..retrieval.index import MODES as INDEX_MODES
from ..retrieval.ranker import mode_functions
from .retrieval import check_modes

BITEXT_MODES: tuple[str, ...] = INDEX_MODES


#: Tatoeba languages evaluated when none are given: XQuAD's, without English (the target side).
DEFAULT_TATOEBA = tuple(ISO1_TO_TATOEBA[lang] for lang in XQUAD_LANGUAGES if lang != "en")


def bitext_scores(model: M3Model, source: Sequence[str], target: Sequence[str], mode: str = "dense", *,
                  weights: Sequence[float] = scoring.DEFAULT_WEIGHTS, max_length: int | None = None,
                  batch_size: int = 32, encoded=None) -> tuple[np.ndarray, np.ndarray]:
    """All-pairs scores source→target and target→source (the multi-vector score is asymmetric).

    Both sides are encoded as queries (:meth:`M3Model.encode_queries`: bitext pairs are
    symmetric, and MTEB gives e5 its "query: " prompt on both); ``encoded`` reuses encodings.
    Scores come from :func:`m3lab.modeling.score_encoded`: one function for a single mode, the
    weighted sum for ``hybrid``.
    """
    if mode not in BITEXT_MODES:
        raise ValueError(f"unknown mode {mode!r}; the modes are {', '.join(BITEXT_MODES)}")
    src, tgt = encoded if encoded is not None else (
        model.encode_queries(list(source), max_length=max_length, batch_size=batch_size),
        model.encode_queries(list(target), max_length=max_length, batch_size=batch_size))
    w = tuple(weights) if mode == "hybrid" else tuple(float(f == mode) for f in scoring.FUNCTIONS)
    fwd = score_encoded(src, tgt, weights=w)
    if fwd.colbert is None:  # dense and sparse scores are symmetric: the reverse is the transpose
        return fwd.scores, fwd.scores.T
    back = scoring.colbert_scores_chunked(tgt.colbert, src.colbert)  # MaxSim is not symmetric
    transpose = lambda m: None if m is None else m.T  # noqa: E731
    bwd = scoring.combine_scores(transpose(fwd.dense), transpose(fwd.sparse), back, fwd.weights)
    return fwd.scores, np.asarray(bwd, dtype=np.float32)


def evaluate_bitext(model: M3Model, dataset: BitextDataset, modes: Sequence[str] = ("dense",), *,
                    weights: Sequence[float] = scoring.DEFAULT_WEIGHTS, max_length: int = 512, batch_size: int = 32,
                    dataset_label: str = "tatoeba", show_progress: bool = True) -> list[dict]:
    """Bitext-mining accuracy both ways: ``accuracy_xx_en`` (each source sentence's nearest English
    sentence is its translation), ``accuracy_en_xx`` (the reverse) and their mean ``accuracy``."""
    modes = check_modes(modes, BITEXT_MODES)
    if len(dataset) == 0:
        raise ValueError(f"bitext {dataset.name!r} is empty")
    comps = sorted({c for m in modes for c in mode_functions(m, weights)})
    kw = dict(max_length=max_length, batch_size=batch_size, return_dense="dense" in comps,
              return_sparse="sparse" in comps, return_colbert="colbert" in comps,
              show_progress=show_progress and len(dataset) > 8 * batch_size)
    encoded = (model.encode_queries(dataset.source, **kw), model.encode_queries(dataset.target, **kw))
    gold = np.arange(len(dataset))
    rows = []
    for m in modes:
        fwd, bwd = bitext_scores(model, dataset.source, dataset.target, m, weights=weights, encoded=encoded)
        xx_en = float(np.mean(np.argmax(fwd, axis=1) == gold))
        en_xx = float(np.mean(np.argmax(bwd, axis=1) == gold))
        rows.append({"dataset": dataset_label, "language": dataset.language, "mode": m,
                     "accuracy": (xx_en + en_xx) / 2, "accuracy_xx_en": xx_en, "accuracy_en_xx": en_xx,
                     "n_pairs": len(dataset)})
    return rows
