"""Training data: tokenised examples and the passage group each example gives at each epoch."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..data._files import iter_jsonl
from ..data.records import DataError, TrainingExample
from ..modeling import M3Model
from .config import ConfigError, TrainConfig

logger = logging.getLogger("m3lab.training")


@dataclass
class _Example:
    query: int                  # index into the query token table
    pos: list[int]              # indices into the passage token table
    neg: list[int]
    pos_scores: list[float] | None
    neg_scores: list[float] | None


def training_prompts(model: M3Model, config: TrainConfig) -> dict[str, str]:
    """The query and passage prompts training uses: the config's instructions, else the model's own prompts.

    The trainer stores them in the model, so the checkpoint it saves applies them at inference
    (``encode_queries`` / ``encode_corpus``).
    """
    return {"query": config.query_instruction if config.query_instruction is not None else model.prompts["query"],
            "passage": config.passage_instruction if config.passage_instruction is not None
            else model.prompts["passage"]}


class TrainingData:
    """Tokenised training examples and the passage group each example gives at each epoch.

    Texts are tokenised once (``query_max_length`` / ``passage_max_length``, specials
    included); longer texts are truncated and counted, or rejected with
    ``long_text_policy: error``. A group is 1 positive + ``group_size - 1`` negatives, drawn
    with a generator seeded by (seed, epoch, example), so any step can be rebuilt on resume.

    A line with fewer negatives than needed follows ``negatives_policy``:
    ``sample_from_corpus`` (default) keeps all its negatives and fills the rest with
    passages drawn at random from the other examples (never one of its own positives);
    ``repeat`` samples its negatives with repetition as FlagEmbedding does (a line
    without any negative is an error); ``error`` rejects the line.
    """

    def __init__(self, files: Sequence[str | Path], model: M3Model, config: TrainConfig):
        self.config = config
        self.group_size = config.group_size
        self.seed = config.seed
        self.model = model
        self.tokenizer = model.tokenizer
        raw: list[tuple[TrainingExample, tuple[str, int]]] = []
        for path in files:
            n_before = len(raw)
            for number, obj in iter_jsonl(path):
                try:
                    raw.append((TrainingExample.from_dict(obj), (str(path), number)))
                except DataError as err:
                    raise err.at(path, number) from None
            if len(raw) == n_before:
                raise DataError("no training examples: the file is empty", path=path)
        self._check_lines(raw)

        q_index: dict[str, int] = {}
        p_index: dict[str, int] = {}
        q_where: list[tuple[str, int]] = []   # where each text first occurs
        p_where: list[tuple[str, int]] = []

        def intern(table: dict[str, int], wheres: list, text: str, where: tuple[str, int]) -> int:
            if text not in table:
                table[text] = len(table)
                wheres.append(where)
            return table[text]

        self.examples: list[_Example] = []
        self.prompts = training_prompts(model, config)
        passage_prompt = self.prompts["passage"]
        for ex, where in raw:
            instruction = ex.prompt if ex.prompt is not None else self.prompts["query"]
            query = f"{instruction}{ex.query}" if instruction else ex.query
            self.examples.append(_Example(
                query=intern(q_index, q_where, query, where),
                pos=[intern(p_index, p_where, passage_prompt + t, where) for t in ex.pos],
                neg=[intern(p_index, p_where, passage_prompt + t, where) for t in ex.neg],
                pos_scores=ex.pos_scores, neg_scores=ex.neg_scores))
        self.query_ids, self.truncated_queries = self._tokenize(list(q_index), q_where, config.query_max_length,
                                                                "query", "query_max_length")
        self.passage_ids, self.truncated_passages = self._tokenize(list(p_index), p_where,
                                                                   config.passage_max_length, "passage",
                                                                   "passage_max_length")
        p_len = np.array([len(x) for x in self.passage_ids])
        # the padded length of a group is that of its longest passage: group by it (section 3.4)
        self.lengths = [int(max(p_len[ex.pos + ex.neg])) for ex in self.examples]
        self.filled_groups = sum(len(ex.neg) < self.group_size - 1 for ex in self.examples)

    def __len__(self) -> int:
        return len(self.examples)

    # ------------------------------------------------------------------ checks
    def _check_lines(self, raw: list[tuple[TrainingExample, tuple[str, int]]]) -> None:
        """Teacher scores where needed, and enough negatives for ``negatives_policy``."""
        c, need = self.config, self.group_size - 1
        for ex, (path, line) in raw:
            if c.use_teacher_scores and (ex.pos_scores is None or ex.neg_scores is None):
                raise DataError("use_teacher_scores is on but this line has no pos_scores/neg_scores",
                                path=path, line=line)
            if len(ex.neg) >= need:
                continue
            if c.negatives_policy == "error":
                raise DataError(f"has {len(ex.neg)} negatives but group_size {self.group_size} needs {need} "
                                "(negatives_policy: error; 'sample_from_corpus' or 'repeat' fill the group)",
                                path=path, line=line, field="neg")
            if c.negatives_policy == "repeat" and not ex.neg:
                raise DataError(f"has no negatives to repeat but group_size {self.group_size} needs {need} "
                                "(negatives_policy: repeat; 'sample_from_corpus' fills from other examples)",
                                path=path, line=line, field="neg")
        if c.negatives_policy == "sample_from_corpus" and need:
            n_passages = len({t for ex, _ in raw for t in ex.pos + ex.neg})
            for ex, (path, line) in raw:
                if len(ex.neg) < need and len(set(ex.pos)) >= n_passages:
                    raise DataError("sample_from_corpus has no passage to fill this group with: every passage in "
                                    "the data is one of its positives", path=path, line=line, field="neg")

    def _tokenize(self, texts: list[str], wheres: list[tuple[str, int]], max_length: int, what: str,
                  key: str) -> tuple[list[np.ndarray], int]:
        """Token ids with special tokens, cut to ``max_length`` as :meth:`M3Model.tokenize` does at inference."""
        n_special = len(self.model.tokenize([""], max_length=max_length)[0])
        if max_length > self.model.max_positions:
            logger.warning("%s=%d exceeds the model's %d positions: texts are cut at %d tokens", key, max_length,
                           self.model.max_positions, self.model.max_positions)
        if min(max_length, self.model.max_positions) <= n_special:
            raise ConfigError(f"{key}={max_length} leaves no room for text after the {n_special} special tokens")
        out: list[np.ndarray] = []
        truncated = 0
        for start in range(0, len(texts), 1024):
            chunk = texts[start:start + 1024]
            ids = self.model.tokenize(chunk, max_length=max_length)
            contents = self.tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]
            for i, (x, content) in enumerate(zip(ids, contents)):
                if len(content) > len(x) - n_special:
                    if self.config.long_text_policy == "error":
                        path, line = wheres[start + i]
                        raise DataError(f"a {what} of {len(content) + n_special} tokens exceeds {key}={max_length} "
                                        f"(long_text_policy: error; 'truncate' cuts it): {chunk[i][:60]!r}",
                                        path=path, line=line)
                    truncated += 1
                out.append(np.asarray(x, dtype=np.int64))
        return out, truncated

    # ------------------------------------------------------------------ groups
    def group(self, index: int, epoch: int) -> tuple[int, list[int], list[float] | None]:
        """(query, passages, teacher scores) of one example at one epoch: the positive comes first."""
        ex = self.examples[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        p = int(rng.integers(len(ex.pos)))
        passages, scores = [ex.pos[p]], [ex.pos_scores[p]] if ex.pos_scores is not None else None
        need = self.group_size - 1
        if need == 0:
            return ex.query, passages, scores
        if len(ex.neg) >= need:
            chosen = rng.choice(len(ex.neg), need, replace=False).tolist()
        elif self.config.negatives_policy == "repeat":  # FlagEmbedding: sample from the negatives repeated
            pool = list(range(len(ex.neg))) * math.ceil(need / len(ex.neg))
            chosen = [pool[i] for i in rng.choice(len(pool), need, replace=False)]
        else:  # sample_from_corpus: all own negatives, then random passages that are not its positives
            chosen = rng.permutation(len(ex.neg)).tolist()
        passages += [ex.neg[i] for i in chosen]
        if scores is not None:
            scores += [ex.neg_scores[i] for i in chosen]
        own = set(ex.pos)
        n_passages = len(self.passage_ids)
        while len(passages) < self.group_size:
            cand = int(rng.integers(n_passages))
            if cand not in own:
                passages.append(cand)
        return ex.query, passages, scores

    def batch(self, indices: Sequence[int], epoch: int, model: M3Model) -> dict[str, Any]:
        """Padded query and passage tensors (B and B*group_size rows) for a micro-batch, and which
        texts they hold (``q_rows``/``p_rows``: indices into ``query_ids``/``passage_ids``)."""
        groups = [self.group(i, epoch) for i in indices]
        q = model.collate([self.query_ids[g[0]] for g in groups])
        p = model.collate([self.passage_ids[j] for g in groups for j in g[1]])
        teacher = None
        if self.config.use_teacher_scores:
            teacher = torch.tensor([g[2] for g in groups], dtype=torch.float32)
        return {"q": q, "p": p, "teacher_scores": teacher,
                "q_rows": [g[0] for g in groups], "p_rows": [j for g in groups for j in g[1]]}
