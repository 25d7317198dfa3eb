"""Evaluation: retrieval metrics (:mod:`.retrieval`), bitext mining (:mod:`.bitext`), data sets by name, ``m3lab eval``."""
from .bitext import BITEXT_MODES, DEFAULT_TATOEBA, bitext_scores, evaluate_bitext
from .cli import format_table
from .datasets import (
           DATASETS,
           check_languages,
           dataset_kind,
           dataset_languages,
           load_dataset,
)
from .retrieval import (
           METRICS,
           RETRIEVAL_MODES,
           check_modes,
           evaluate_retrieval,
           positive_scores,
           ranking_changes,
           retrieval_metrics,
           top1_rates,
)

__all__ = ["evaluate_retrieval", "evaluate_bitext", "bitext_scores", "retrieval_metrics", "check_modes",
           "top1_rates", "positive_scores", "ranking_changes",
           "load_dataset", "dataset_kind", "dataset_languages", "check_languages", "format_table", "METRICS",
           "RETRIEVAL_MODES", "BITEXT_MODES", "DEFAULT_TATOEBA", "DATASETS"]
