"""Record one unified fine-tuning step of FlagEmbedding's own M3 training model (run once; committed).

FlagEmbedding is not a dependency of m3lab: run this in the scratch virtualenv of
``requirements.txt`` (see README.md). It does not import m3lab.

    /tmp/flagvenv/bin/python tests/reference/make_training_reference.py

What it runs: the checkpoint of ``training_checkpoint.py`` loaded by FlagEmbedding's own
loader (``EncoderOnlyEmbedderM3Runner.get_model``: AutoModel + colbert_linear.pt +
sparse_linear.pt), wrapped in ``EncoderOnlyEmbedderM3Model`` with the settings of bge-m3's
unified fine-tuning (``unified_finetuning=True, use_self_distill=True``, temperature 0.02,
CLS pooling, normalised embeddings, no cross-device negatives, no sub-batches, no teacher
scores; the training-argument defaults otherwise), the batch collated by FlagEmbedding's
``AbsEmbedderCollator``; the model in ``train()`` mode (its loss is only computed then) with
the config's dropout probabilities 0, so nothing is random. One ``forward`` (what the
trainer's ``compute_loss`` calls) and one ``backward``.

It writes ``tests/reference/training_reference.npz``:

- ``q_input_ids``/``q_attention_mask``/``p_input_ids``/``p_attention_mask``: the collated batch;
- ``loss``: the total loss; ``part/<name>``: every loss term as FlagEmbedding computed it
  (recorded by wrapping the model's own ``_compute_in_batch_neg_loss`` and ``distill_loss``
  during that one forward: dense, sparse, colbert, inter = the InfoNCE terms, kd_* = the
  self-distillation terms);
- ``scores/<name>``: the (4, 16) score matrices those calls returned, times the temperature
  (FlagEmbedding divides by it inside its score functions), i.e. raw s_dense, s_lex, s_mul, s_inter;
- ``grad/<name>``: the gradient of every parameter that received one, under m3lab's names
  (``encoder.*`` for FlagEmbedding's ``model.*``; ``colbert_linear.*``, ``sparse_linear.*``);
- ``meta`` (JSON): versions, settings, the checkpoint digests, parameters without a gradient,
  and the size of FlagEmbedding's padding quirk in s_mul on this batch (see below).
"""
from __future__ import annotations

import json
import platform
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import training_checkpoint as tc  # noqa: E402

OUT = HERE / "training_reference.npz"
TEMPERATURE = 0.02
#: Settings of EncoderOnlyEmbedderM3Model (what the runner passes from the training arguments).
MODEL_KWARGS = dict(negatives_cross_device=False, temperature=TEMPERATURE, sub_batch_size=-1,
                    kd_loss_type="kl_div", sentence_pooling_method="cls", normalize_embeddings=True,
                    unified_finetuning=True, use_self_distill=True, self_distill_start_step=-1)
IN_BATCH_ORDER = ("dense", "sparse", "colbert", "inter")   # the order forward() calls the loss function
DISTILL_ORDER = ("kd_dense", "kd_sparse", "kd_colbert")


def m3lab_name(flag_name: str) -> str:
    return "encoder." + flag_name[len("model."):] if flag_name.startswith("model.") else flag_name


def colbert_masked(q, p, q_mask, p_mask):
    """s_mul with the passages' padding excluded from the max (what the paper's formula says)."""
    sim = torch.einsum("qin,pjn->qipj", q, p)
    sim = sim.masked_fill(~p_mask[:, 1:].bool()[None, None], float("-inf"))
    best = sim.max(-1).values * q_mask[:, 1:, None]
    return best.sum(1) / q_mask[:, 1:].sum(-1, keepdim=True)


def main() -> None:
    import transformers
    from FlagEmbedding.abc.finetune.embedder import AbsEmbedderCollator
    from FlagEmbedding.finetune.embedder.encoder_only.m3 import EncoderOnlyEmbedderM3Model
    from FlagEmbedding.finetune.embedder.encoder_only.m3.runner import EncoderOnlyEmbedderM3Runner
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = tc.build_training_checkpoint(Path(tmp) / "training-ckpt")
        encoder_sha, heads_sha, config = tc.encoder_digest(ckpt), tc.heads_digest(ckpt), tc.config_summary(ckpt)
        tokenizer = AutoTokenizer.from_pretrained(str(ckpt))
        base = EncoderOnlyEmbedderM3Runner.get_model(str(ckpt))
        model = EncoderOnlyEmbedderM3Model(base, tokenizer=tokenizer, **MODEL_KWARGS)
    model.train()
    assert all(p.dtype == torch.float32 for p in model.parameters())

    g = tc.GROUP_SIZE
    features = [(q, list(tc.PASSAGES[i * g:(i + 1) * g]), None) for i, q in enumerate(tc.QUERIES)]
    collator = AbsEmbedderCollator(tokenizer=tokenizer, query_max_len=tc.QUERY_MAX_LEN,
                                   passage_max_len=tc.PASSAGE_MAX_LEN, sub_batch_size=None,
                                   padding=True, return_tensors="pt")
    batch = collator(features)

    # record every term during the one forward that produces the loss
    parts: dict[str, torch.Tensor] = {}
    scores: dict[str, torch.Tensor] = {}
    in_batch, distill = model._compute_in_batch_neg_loss, model.distill_loss

    def in_batch_recorder(*args, **kwargs):
        s, loss = in_batch(*args, **kwargs)
        name = IN_BATCH_ORDER[len(scores)]
        scores[name], parts[name] = s.detach().clone(), loss.detach().clone()
        return s, loss

    def distill_recorder(*args, **kwargs):
        loss = distill(*args, **kwargs)
        parts[DISTILL_ORDER[sum(k.startswith("kd_") for k in parts)]] = loss.detach().clone()
        return loss

    model._compute_in_batch_neg_loss, model.distill_loss = in_batch_recorder, distill_recorder
    out = model(**batch)
    model._compute_in_batch_neg_loss, model.distill_loss = in_batch, distill
    out.loss.backward()
    loss = out.loss.detach()
    assert set(parts) == set(IN_BATCH_ORDER) | set(DISTILL_ORDER), sorted(parts)

    # the terms combine to the total as forward() combines them (a check of the recording)
    combined = ((parts["dense"] + parts["inter"] + 0.1 * parts["sparse"] + parts["colbert"]) / 4
                + (parts["kd_dense"] + 0.1 * parts["kd_sparse"] + parts["kd_colbert"]) / 3) / 2
    assert torch.allclose(combined, loss, rtol=1e-6, atol=0), (float(combined), float(loss))

    # FlagEmbedding's s_mul takes the max over every passage position, padding included, where
    # the (masked, normalised) vectors are 0: a query token whose similarities to all real
    # passage tokens are < 0 gets 0 instead. How much that changes s_mul on this batch:
    with torch.no_grad():
        _, _, qc = model.encode(batch["queries"])
        _, _, pc = model.encode(batch["passages"])
        quirk = (scores["colbert"] * TEMPERATURE
                 - colbert_masked(qc, pc, batch["queries"]["attention_mask"], batch["passages"]["attention_mask"]))
        # share of content-token positions whose lexical weight passes the ReLU
        special = torch.tensor([tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                                tokenizer.unk_token_id])
        active, content = 0, 0
        for side in (batch["queries"], batch["passages"]):
            hidden = model.model(**side, return_dict=True).last_hidden_state
            w = model._sparse_embedding(hidden, side["input_ids"], return_embedding=False).squeeze(-1)
            keep = ~torch.isin(side["input_ids"], special)
            active, content = active + int((w[keep] > 0).sum()), content + int(keep.sum())

    grads, no_grad = {}, []
    for name, p in model.named_parameters():
        if p.grad is None:
            no_grad.append(m3lab_name(name))
        else:
            grads[m3lab_name(name)] = p.grad.detach().numpy().astype(np.float32)

    meta = {
        "flagembedding": version("FlagEmbedding"), "transformers": transformers.__version__,
        "torch": torch.__version__, "python": platform.python_version(),
        "model_class": "FlagEmbedding.finetune.embedder.encoder_only.m3.EncoderOnlyEmbedderM3Model",
        "model_kwargs": MODEL_KWARGS, "mode": "train() with hidden/attention dropout probabilities 0",
        "seed": tc.SEED, "config": config, "encoder_sha256": encoder_sha, "heads_sha256": heads_sha,
        "group_size": g, "queries": list(tc.QUERIES), "passages": list(tc.PASSAGES),
        "query_max_len": tc.QUERY_MAX_LEN, "passage_max_len": tc.PASSAGE_MAX_LEN,
        "loss_formula": "((dense + inter + 0.1 sparse + colbert)/4 + (kd_dense + 0.1 kd_sparse + kd_colbert)/3) / 2, "
                        "s_inter = s_dense + 0.3 s_lex + s_mul, every score / temperature",
        "parameters_without_grad": no_grad,
        "colbert_padding_quirk_max_abs_diff": float(quirk.abs().max()),
        "sparse_active_content_tokens": f"{active}/{content}",
    }
    arrays = {"loss": loss.numpy().astype(np.float32)}
    for side, key in (("q", "queries"), ("p", "passages")):
        arrays[f"{side}_input_ids"] = batch[key]["input_ids"].numpy()
        arrays[f"{side}_attention_mask"] = batch[key]["attention_mask"].numpy()
    arrays |= {f"part/{k}": v.numpy().astype(np.float32) for k, v in parts.items()}
    arrays |= {f"scores/{k}": (v * TEMPERATURE).numpy().astype(np.float32) for k, v in scores.items()}
    arrays |= {f"grad/{k}": v for k, v in grads.items()}
    arrays["meta"] = np.array(json.dumps(meta))
    tmp_out = OUT.with_name(OUT.stem + ".partial.npz")
    np.savez_compressed(tmp_out, **arrays)
    tmp_out.replace(OUT)
    print(json.dumps({k: v for k, v in meta.items() if k not in ("queries", "passages")}, indent=2))
    print("loss", float(loss), {k: round(float(v), 6) for k, v in parts.items()})
    print(f"{len(grads)} gradients, {sum(v.size for v in grads.values())} values; "
          f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
