"""Looking inside a loss and a run: each term and its gradient, training logs, per-query metrics."""
from __future__ import annotations

import os
from typing import Any

import torch


def loss_terms(loss_fn, q, p, *, group_size: int, teacher_scores=None) -> dict[str, tuple[torch.Tensor, float]]:
    """Every term of :class:`m3lab.losses.M3Loss` as a tensor, with its coefficient in the final loss.

    Terms: ``dense``/``sparse``/``colbert`` (InfoNCE per function, eq. 1), ``inter`` (InfoNCE of
    the ensemble s_inter, eq. 2) and ``kd_<function>`` (self-distillation, eq. 3) — whichever
    ``loss_fn`` uses; :meth:`M3Loss.terms` computes them and :meth:`M3Loss.coefficients` holds the
    coefficients, so ``sum(c * t)`` is ``loss_fn(q, p, group_size=...).loss``.
    """
    return loss_fn.terms(q, p, group_size=group_size, teacher_scores=teacher_scores)


def parameter_groups(model) -> dict[str, list[torch.nn.Parameter]]:
    """The model's trainable parts: the shared encoder and the two heads (the dense function has none)."""
    return {"encoder": list(model.encoder.parameters()),
            "sparse head (W_lex)": list(model.sparse_linear.parameters()),
            "multi-vector head (W_mul)": list(model.colbert_linear.parameters())}


def gradient_flow(model, loss_fn, q_batch: dict, p_batch: dict, *, group_size: int) -> list[dict[str, Any]]:
    """Which parameters each loss term sends gradient to, and how much.

    One forward pass of the batch, then for every term of :func:`loss_terms` the L2 norm of
    its gradient (unweighted, and times its coefficient) in each of :func:`parameter_groups`.
    Returns one row per term: ``{"term", "coefficient", "value", "<group>": norm, ...,
    "weighted <group>": coefficient * norm}``.
    """
    groups = parameter_groups(model)
    params = [p for ps in groups.values() for p in ps]
    q, p = model(**q_batch), model(**p_batch)
    rows = []
    for name, (term, coef) in loss_terms(loss_fn, q, p, group_size=group_size).items():
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        row: dict[str, Any] = {"term": name, "coefficient": coef, "value": float(term.detach())}
        k = 0
        for group, ps in groups.items():
            g = [x for x in grads[k:k + len(ps)] if x is not None]
            k += len(ps)
            norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in g]))) if g else 0.0
            row[group] = norm
            row[f"weighted {group}"] = coef * norm
        rows.append(row)
    return rows


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The step records of a training ``log.jsonl``, flattened for plotting.

    Each record keeps ``step``, ``stage``, ``self_distill``, ``lr``, ``loss``, ``grad_norm``,
    ``sparse_nonzero_share``, ``tokens_per_s``, ``padding_share`` and gets every loss part as
    ``loss_<part>`` (``loss_dense``, ``loss_kd_sparse``, ...).
    """
    import json

    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            if rec.get("event") != "step":
                continue
            flat = {k: v for k, v in rec.items() if k != "losses"}
            flat.update({f"loss_{k}": v for k, v in (rec.get("losses") or {}).items()})
            rows.append(flat)
    return rows


def subsample(dataset, n_queries: int | None, *, seed: int = 0):
    """The same corpus with at most ``n_queries`` of its judged queries (a seeded random subset, in
    order) — for quick runs; ``None`` returns ``dataset`` unchanged."""
    import random

    from ..data import RetrievalDataset

    judged = [q for q in dataset.queries if dataset.qrels.get(q.id)]
    if n_queries is None or n_queries >= len(judged):
        return dataset
    keep = sorted(random.Random(seed).sample(range(len(judged)), n_queries))
    queries = [judged[i] for i in keep]
    return RetrievalDataset(f"{dataset.name}-{n_queries}q", dataset.corpus, queries,
                            {q.id: dataset.qrels[q.id] for q in queries}, dataset.query_language,
                            dataset.corpus_language)


def per_query_metrics(model_or_index, dataset, modes: tuple[str, ...] = ("dense",), *, max_length: int = 512,
                      mcls: bool = False, top_k: int = 100, batch_size: int = 32) -> list[dict[str, Any]]:
    """nDCG@10, Recall@10 and MRR@10 of every query, per mode, for analyses by query group (length,
    language, ...). Same ranking and metrics (pytrec_eval via ir_measures) as
    :func:`m3lab.evaluation.evaluate_retrieval`, whose means these rows average to. Rows:
    ``{"query_id", "mode", "ndcg@10", "recall@10", "mrr@10"}``."""
    from ..evaluation import retrieval_metrics
    from ..retrieval import CorpusIndex

    index = model_or_index if isinstance(model_or_index, CorpusIndex) else CorpusIndex.build(
        model_or_index, dataset.corpus, max_length=max_length, batch_size=batch_size, mcls=mcls,
        store=sorted({c for m in modes for c in (("dense", "sparse", "colbert") if m == "hybrid" else (m,))}),
        show_progress=False)
    queries = [q for q in dataset.queries if dataset.qrels.get(q.id)]
    comps = sorted({c for m in modes for c in index.components_for(m)})
    enc = index.encode_queries([q.text for q in queries], components=comps, max_length=max_length,
                               batch_size=batch_size, show_progress=False)
    rankings = index.rank(enc, list(modes), top_k=top_k)
    rows = []
    for mode in modes:
        r = rankings[mode]
        for i, q in enumerate(queries):
            run = {q.id: {index.doc_ids[j]: float(sc) for j, sc in zip(r.indices[i], r.scores[i]) if j >= 0}}
            metrics = retrieval_metrics({q.id: dataset.qrels[q.id]}, run)  # evaluate's own function, one query
            rows.append({"query_id": q.id, "mode": mode, **{k: metrics[k] for k in ("ndcg@10", "recall@10", "mrr@10")}})
    return rows


def xquad_answer_offsets(language: str, tokenizer, *, split: str = "all") -> dict[str, int]:
    """For each XQuAD question (by id), the token offset at which its paragraph starts inside its
    whole article (:func:`m3lab.data.load_xquad_long` joins paragraphs with a blank line) — where
    a long-document model has to look for the answer."""
    from ..data.xquad import question_groups, xquad_paragraphs

    paragraphs = xquad_paragraphs(language, split=split)
    starts: dict[tuple[int, int], int] = {}
    by_article: dict[int, list] = {}
    for p in paragraphs:
        by_article.setdefault(p.article, []).append(p)
    for article, ps in by_article.items():
        offset = 0
        for p in ps:
            starts[(article, p.index)] = offset
            offset += len(tokenizer(p.context + "\n\n", add_special_tokens=False, verbose=False)["input_ids"])
    out = {}
    for qids, positions in question_groups(paragraphs).values():
        p = paragraphs[positions[0]]
        out[qids[0]] = starts[(p.article, p.index)]
    return out


def log_summary(path: str | os.PathLike) -> dict[str, Any]:
    """What a training ``log.jsonl`` says about its run as a whole, for a table row.

    ``{"examples", "steps", "stage_steps", "self_distill", "device", "finished", "logged_hours"}``:
    the training examples and planned steps of the (first) ``start`` record, the steps the run
    reached and each stage's self-distillation setting, whether an ``end`` record closes it,
    and the hours its records span — the time between records, leaving out the pauses before a
    ``resume`` (a stopped and resumed run counts only its running time). The trainer writes its
    first record after its setup, so the setup (loading, e.g. the frozen-layer cache) is not in it.
    """
    import json
    from itertools import pairwise

    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                records.append(json.loads(line))
    start = next((r for r in records if r.get("event") == "start"), {})
    seconds = 0.0
    for prev, rec in pairwise(records):
        if rec.get("event") != "resume" and "time" in rec and "time" in prev:
            seconds += max(0.0, rec["time"] - prev["time"])
    self_distill = {}
    for r in records:
        if r.get("event") == "stage":
            self_distill.setdefault(r.get("stage"), bool(r.get("self_distill")))
    return {"examples": start.get("examples"), "steps": max((r.get("step", 0) for r in records), default=0),
            "stage_steps": start.get("stage_steps"), "self_distill": self_distill, "device": start.get("device"),
            "finished": any(r.get("event") == "end" for r in records), "logged_hours": round(seconds / 3600, 2)}
