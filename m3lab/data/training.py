"""Training files in FlagEmbedding's JSON-lines format, and builders that make them from XQuAD and Tatoeba.

One line per example: ``{"query": str, "pos": [str, ...], "neg": [str, ...]}`` with
optional ``pos_scores`` / ``neg_scores`` (teacher scores, one per passage) and ``prompt``.
Other keys (``type``, ``id``, ...) are allowed and ignored.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from .._io import atomic_file
from ._files import iter_jsonl
from .mining import Miner, mine_hard_negatives
from .records import DataError, TrainingExample
from .tatoeba import load_tatoeba
from .xquad import XQUAD_LANGUAGES, XQuADParagraph, question_groups, xquad_paragraphs


def iter_training_file(path: str | Path) -> Iterator[TrainingExample]:
    """Stream the examples of a training file; a bad line raises ``DataError`` naming file, line and field."""
    for number, obj in iter_jsonl(path):
        try:
            yield TrainingExample.from_dict(obj)
        except DataError as e:
            raise e.at(path, number) from None


def read_training_file(path: str | Path) -> list[TrainingExample]:
    """All examples of a training file (``DataError`` if it has none)."""
    examples = list(iter_training_file(path))
    if not examples:
        raise DataError("no training examples: the file is empty", path=path)
    return examples


def write_training_file(path: str | Path, examples: Iterable[TrainingExample | Mapping]) -> None:
    """Write examples as JSON lines, atomically: on any error no file (or the previous one) is left."""
    count = 0
    with atomic_file(path) as f:
        for i, example in enumerate(examples):
            try:  # re-checked: a dataclass can be changed after construction
                example = TrainingExample.from_dict(example.to_dict() if isinstance(example, TrainingExample)
                                                    else dict(example))
            except DataError as e:
                raise DataError(f"example {i}: {e.message}", path=path, field=e.field) from None
            f.write(json.dumps(example.to_dict(), ensure_ascii=False) + "\n")
            count += 1
        if count == 0:
            raise DataError("no training examples to write", path=path)


def build_xquad_training(languages: Sequence[str] = XQUAD_LANGUAGES, *, cross_lingual: bool = True,
                         n_negatives: int = 7, miner: Miner = "bm25", split: str = "train",
                         data_dir: str | Path | None = None, seed: int = 0, max_examples: int | None = None,
                         n_train_articles: int = 24) -> list[TrainingExample]:
    """Question -> paragraph training examples from an XQuAD split (``train`` by default, disjoint from ``test``).

    For each language X: same-language examples (X question -> X paragraph); with
    ``cross_lingual`` also X -> English and English -> X for every X other than English.
    Questions are the distinct question strings of X (as in ``load_xquad``); a question
    asked of several paragraphs has them all as positives.

    Hard negatives for a query against the corpus in language Y are mined once per Y, with
    the question's translation into Y as the query: the paragraphs are parallel, so the
    mined paragraph indices serve every query language, and BM25 works within one language.
    ``max_examples`` keeps a seeded random subset (in order) after mining.
    """
    languages = [languages] if isinstance(languages, str) else list(languages)
    pairs = [(lang, lang) for lang in languages]
    if cross_lingual:
        pairs += [pair for lang in languages if lang != "en" for pair in ((lang, "en"), ("en", lang))]
    paragraphs = {lang: xquad_paragraphs(lang, split=split, data_dir=data_dir, n_train_articles=n_train_articles)
                  for lang in dict.fromkeys(lang for pair in pairs for lang in pair)}
    # 2 spare negatives: positives of a question string can differ between languages and are dropped below.
    negatives = {lang: _mine_xquad(paragraphs[lang], n_negatives + 2, miner, seed)
                 for lang in dict.fromkeys(corpus_lang for _, corpus_lang in pairs)}

    examples = []
    for query_lang, corpus_lang in pairs:
        contexts = [p.context for p in paragraphs[corpus_lang]]
        for text, (qids, positions) in question_groups(paragraphs[query_lang]).items():
            neg = [contexts[j] for j in negatives[corpus_lang][qids[0]] if j not in positions]
            examples.append(TrainingExample(text, [contexts[i] for i in positions], neg[:n_negatives]))
    if max_examples is not None and max_examples < len(examples):
        keep = np.sort(np.random.default_rng(seed).choice(len(examples), max_examples, replace=False))
        examples = [examples[i] for i in keep]
    return examples


def _mine_xquad(paragraphs: list[XQuADParagraph], n_negatives: int, miner: Miner, seed: int) -> dict[str, list[int]]:
    """qas id -> indices of hard-negative paragraphs, mined with the questions of the same language."""
    groups = question_groups(paragraphs)
    mined = mine_hard_negatives(list(groups), [positions for _, positions in groups.values()],
                                [p.context for p in paragraphs], n_negatives=n_negatives, miner=miner, seed=seed)
    return {qid: negs for (qids, _), negs in zip(groups.values(), mined) for qid in qids}


def build_tatoeba_training(languages: str | Sequence[str], *, split: str = "train", n_negatives: int = 7,
                           miner: Miner = "bm25", data_dir: str | Path | None = None, seed: int = 0,
                           max_pairs_per_language: int | None = None, test_fraction: float = 0.5,
                           split_seed: int = 0) -> list[TrainingExample]:
    """Translation-pair examples from Tatoeba, both directions: ``xxx -> eng`` and ``eng -> xxx``.

    Negatives are mined on the English side (each English sentence against the other
    English sentences of the split) and, the files being line-aligned, the same indices give
    the negatives on the other side. ``split_seed``/``test_fraction`` must match the ones
    used to load the test set (defaults do), while ``seed`` only drives sampling: the
    ``max_pairs_per_language`` subset and the mining's random fill.
    """
    languages = [languages] if isinstance(languages, str) else list(languages)
    rng = np.random.default_rng(seed)
    examples = []
    for lang in languages:
        ds = load_tatoeba(lang, split=split, data_dir=data_dir, test_fraction=test_fraction, seed=split_seed)
        chosen = range(len(ds))
        if max_pairs_per_language is not None and max_pairs_per_language < len(ds):
            chosen = sorted(int(i) for i in rng.choice(len(ds), max_pairs_per_language, replace=False))
        mined = mine_hard_negatives([ds.target[i] for i in chosen], list(chosen), ds.target,
                                    n_negatives=n_negatives, miner=miner, seed=seed)
        for i, negs in zip(chosen, mined):
            examples.append(TrainingExample(ds.source[i], [ds.target[i]], [ds.target[j] for j in negs]))
            examples.append(TrainingExample(ds.target[i], [ds.source[i]],
                                            [ds.source[j] for j in negs if ds.source[j] != ds.source[i]]))
    return examples

