"""The evaluation data sets by name (``xquad``, ``xquad-cross``, ``tatoeba``, ``xquad-long``, ``mini``, ``beir:PATH``)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..data import (
    MINI_LANGUAGES,
    TATOEBA_LANGUAGES,
    XQUAD_LANGUAGES,
    BitextDataset,
    RetrievalDataset,
    load_beir,
    load_mini,
    load_tatoeba,
    load_xquad,
    load_xquad_long,
)
from ..data.tatoeba import tatoeba_code
from .bitext import DEFAULT_TATOEBA

DATASETS: tuple[str, ...] = ("xquad", "xquad-cross", "tatoeba", "xquad-long", "mini", "beir:PATH")


def dataset_languages(dataset: str) -> tuple[str, ...]:
    """The languages ``dataset`` accepts (``()`` for a BEIR folder, which has no language choice)."""
    kind = dataset_kind(dataset)
    return {"xquad": XQUAD_LANGUAGES, "xquad-cross": XQUAD_LANGUAGES, "xquad-long": XQUAD_LANGUAGES,
            "mini": MINI_LANGUAGES, "tatoeba": TATOEBA_LANGUAGES, "beir": ()}[kind]


def default_languages(dataset: str) -> tuple[str, ...]:
    kind = dataset_kind(dataset)
    return DEFAULT_TATOEBA if kind == "tatoeba" else (None,) if kind == "beir" else dataset_languages(dataset)


def dataset_kind(dataset: str) -> str:
    """``xquad``, ``xquad-cross``, ``xquad-long``, ``mini``, ``tatoeba`` or ``beir`` (for ``beir:PATH``)."""
    if dataset.startswith("beir:"):
        if not dataset[5:]:
            raise ValueError("beir:PATH needs the path of a BEIR folder, e.g. beir:./scifact")
        return "beir"
    if dataset not in DATASETS[:-1]:
        raise ValueError(f"unknown dataset {dataset!r}; the datasets are {', '.join(DATASETS)}")
    return dataset


def check_languages(dataset: str, languages: Sequence[str] | None) -> list[str | None]:
    """The languages to evaluate (the data set's defaults when ``None``), each validated."""
    kind = dataset_kind(dataset)
    if not languages:
        return list(default_languages(dataset))
    if kind == "beir":
        raise ValueError("a BEIR folder has no language choice: leave out --languages")
    valid = dataset_languages(dataset)
    out = []
    for lang in languages:
        if kind == "tatoeba":
            try:
                lang = tatoeba_code(lang)
            except ValueError:
                raise ValueError(f"unknown language {lang!r} for tatoeba; use ISO 639-1 (de) or the LASER "
                                 f"ISO 639-3 codes: {', '.join(valid)}") from None
        elif lang not in valid:
            raise ValueError(f"unknown language {lang!r} for {dataset}; the languages are {', '.join(valid)}")
        out.append(lang)
    return list(dict.fromkeys(out))


def load_dataset(dataset: str, language: str | None, *, split: str = "all",
                 data_dir: str | Path | None = None) -> RetrievalDataset | BitextDataset:
    """One language of a named data set, through :mod:`m3lab.data`.

    ``xquad-cross``: ``language``'s questions against the English paragraphs. ``mini`` has no
    split; a BEIR folder's ``all`` means its ``test`` qrels.
    """
    kind = dataset_kind(dataset)
    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be all, train or test, got {split!r}")
    if kind == "xquad":
        return load_xquad(language, split=split, data_dir=data_dir)
    if kind == "xquad-cross":
        return load_xquad(language, corpus_language="en", split=split, data_dir=data_dir)
    if kind == "xquad-long":
        return load_xquad_long(language, split=split, data_dir=data_dir)
    if kind == "tatoeba":
        return load_tatoeba(language, split=split, data_dir=data_dir)
    if kind == "mini":
        if split != "all":
            raise ValueError("the mini corpus has no train/test split: use --split all")
        return load_mini(language)
    return load_beir(dataset[5:], split="test" if split == "all" else split)
