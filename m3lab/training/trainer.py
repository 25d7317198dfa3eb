"""Training M3 models: multi-stage, self-knowledge distillation, efficient batching, exact resume.

Paper section 3.3 (objective, stages) and 3.4 / appendix B.3 (batching). One loop does
every stage: dense-only contrastive pre-training, a per-function warm-up, unified
fine-tuning with self-KD; what trains and what is frozen is set per stage.

    m3lab train --config configs/minilm-m3.yaml --set stages.0.steps=100
    torchrun --nproc_per_node 2 -m m3lab.training --config configs/minilm-m3.yaml

    from m3lab.training import train
    result = train("configs/tiny-smoke.yaml")      # -> TrainResult(output_dir, final_dir, steps, ...)

Layout of ``output_dir``: ``checkpoint-<step>/`` (bge-m3 model files + ``trainer_state.pt``),
``final/`` (the trained model, bge-m3 layout), ``log.jsonl`` and ``train_config.json``.
Every directory and file is written atomically; ``resume_from: auto`` continues from the
last complete checkpoint and reproduces an uninterrupted run exactly.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as tdist
from tqdm.auto import tqdm

from .._io import atomic_directory, write_json
from ..data.records import DataError
from ..losses import LossOutput, M3Loss
from ..modeling import M3Model
from . import distributed as dist
from .checkpoint import (
    STATE_FILE,
    _checkpoints,
    _rng_state,
    _save_state,
    _seed_everything,
    _set_rng_state,
    latest_checkpoint,
)
from .config import ConfigError, StageConfig, TrainConfig, load_config
from .data import TrainingData
from .monitor import _JsonlLog, _truncate_log, _Window
from .samplers import TABLE9_BOUNDARIES, LengthGroupedBatchSampler
from .step import training_step

logger = logging.getLogger("m3lab.training")

FINAL_DIR = "final"


@dataclass
class TrainResult:
    """What :func:`train` did: where it wrote, how many optimizer steps, the last logged losses."""

    output_dir: Path
    final_dir: Path
    steps: int
    final_losses: dict[str, float]
    log_path: Path
    checkpoints: list[Path] = field(default_factory=list)


def train(config: TrainConfig | str | Path | dict, *, overrides: Sequence[str] = (),
          on_log: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train an M3 model as ``config`` says (a :class:`TrainConfig`, a YAML/JSON file or a dict).

    Runs in one process, or under ``torchrun`` (one process per device; the process group
    is set up from the environment). ``overrides`` are ``key=value`` strings as for
    ``--set``. ``on_log`` is called (on the main process) with every step record written
    to the log, e.g. to plot losses live; an exception it raises stops training, leaving
    the checkpoints written so far. Returns where the model, checkpoints and log went.
    """
    config = load_config(config, overrides)
    joined = not dist.is_initialized() and dist.init_from_env()
    result = Trainer(config, on_log=on_log).run()
    if joined:  # leave the process group this call joined
        dist.cleanup()
    return result


class Trainer:
    """The training loop. Build it with a validated :class:`TrainConfig`, then :meth:`run`."""

    def __init__(self, config: TrainConfig, *, on_log: Callable[[dict[str, Any]], None] | None = None):
        self.config = c = config
        self.on_log = on_log
        self.rank, self.world = dist.rank(), dist.world_size()
        self.main = dist.is_main_process()
        self.output_dir = Path(c.output_dir)
        self.device = _pick_device(c.device)
        self.amp_dtype = _amp_dtype(c.amp, self.device)

        _seed_everything(c.seed + self.rank)  # dropout; a resumed run restores the saved states instead
        resume_dir = self._find_resume(c.resume_from)
        existing = latest_checkpoint(self.output_dir)
        if resume_dir is None and existing is not None:
            # a fresh run here would mix its checkpoints with the old ones (and 'auto' could resume the wrong one)
            raise ConfigError(f"output_dir {self.output_dir} already holds checkpoints (latest: {existing.name}) from "
                              "an earlier run: continue it with resume_from: auto (--resume auto), or choose another "
                              "output_dir")
        self.model = M3Model.from_pretrained(str(resume_dir) if resume_dir else c.model, pooling=c.pooling,
                                             device=self.device, dtype=torch.float32)
        if self.world > 1:  # the same starting weights on every process (as DDP does)
            _broadcast(self.model)
        if c.gradient_checkpointing:
            self.model.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.train()

        self.data = TrainingData(c.train_files, self.model, c)
        self.model.prompts = dict(self.data.prompts)  # saved with every checkpoint: inference applies them
        self.special_ids = torch.tensor(sorted(set(self.model.tokenizer.all_special_ids)), dtype=torch.long)
        self.sampler = self._make_sampler()
        self.batches_per_epoch = len(self.sampler)
        if self.batches_per_epoch == 0:
            raise DataError(f"{len(self.data)} examples make no full batch of batch_size={c.batch_size} "
                            "(drop_last: true drops each length group's short batch)", path=c.train_files[0])
        self.stage_steps = [self._stage_length(s) for s in c.stages]
        self.total_steps = sum(self.stage_steps) if c.max_steps is None else min(sum(self.stage_steps), c.max_steps)

        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]  # biases, LayerNorm (as nanoGPT)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": c.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=c.learning_rate, betas=tuple(c.adam_betas), eps=c.adam_eps)
        warmup = c.warmup_steps if c.warmup_steps is not None else math.ceil(c.warmup_ratio * self.total_steps)
        from transformers import (
            get_constant_schedule_with_warmup,
            get_linear_schedule_with_warmup,
        )

        self.scheduler = (get_linear_schedule_with_warmup(self.optimizer, warmup, self.total_steps)
                          if c.lr_scheduler == "linear" else get_constant_schedule_with_warmup(self.optimizer, warmup))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        self.lr = c.learning_rate
        self.overflow_steps = 0       # fp16 steps skipped by the gradient scaler, since the last log line
        self.step = 0                 # optimizer steps done
        self.epoch = 0
        self.batch_in_epoch = 0       # micro-batches of this epoch already consumed
        self.collapse_streak = 0
        self.checkpoints: list[Path] = []   # written by this run
        self._saved_step = -1
        self.last_losses: dict[str, float] = {}
        self._resume_dir = resume_dir

    # ------------------------------------------------------------------ setup helpers
    def _find_resume(self, resume_from: str | None) -> Path | None:
        if resume_from is None:
            return None
        if resume_from == "auto":
            found = latest_checkpoint(self.config.output_dir)
            if found is None:
                logger.info("resume_from: auto: no checkpoint in %s, starting from scratch", self.config.output_dir)
            return found
        path = Path(resume_from)
        if not (path / STATE_FILE).is_file():
            raise FileNotFoundError(f"resume_from: {path} is not a complete checkpoint (no {STATE_FILE})")
        return path

    def _make_sampler(self) -> LengthGroupedBatchSampler:
        """Batches from one length group at a time (section 3.4); ``batch_size`` counts all processes."""
        c = self.config
        if not c.length_grouping:  # one group holding every length
            boundaries: Sequence[int] = (0, max(self.data.lengths) + 1)
        else:
            boundaries = c.length_boundaries if c.length_boundaries is not None else TABLE9_BOUNDARIES
        return LengthGroupedBatchSampler(self.data.lengths, c.batch_size, boundaries=boundaries, seed=c.seed,
                                         rank=self.rank, world_size=self.world, drop_last=c.drop_last)

    def _stage_length(self, stage: StageConfig) -> int:
        if stage.steps is not None:
            return stage.steps
        epochs = stage.epochs if stage.epochs is not None else 1.0
        return max(1, math.ceil(epochs * self.batches_per_epoch / self.config.gradient_accumulation_steps))

    def stage_at(self, step: int) -> tuple[StageConfig, int]:
        """The stage that optimizer step ``step`` (0-based) belongs to, and the step within it."""
        start = 0
        for stage, n in zip(self.config.stages, self.stage_steps):
            if step < start + n:
                return stage, step - start
            start += n
        return self.config.stages[-1], step - start + self.stage_steps[-1]

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        c = self.config
        if self._resume_dir is not None:
            self._load_state(self._resume_dir)
        if self.main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.output_dir / "train_config.json", c.to_dict())
            _truncate_log(c.log_path, self.step if self._resume_dir is not None else -1)
        self.log = _JsonlLog(c.log_path if self.main else None)
        self._log_start()

        batches = self._micro_batches()
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not (self.main and c.progress_bar))
        window = _Window()
        current_stage = None
        try:
            while self.step < self.total_steps:
                stage, in_stage = self.stage_at(self.step)
                if stage is not current_stage:
                    self._enter_stage(stage)
                    current_stage = stage
                self_distill = stage.uses_self_distill and in_stage >= stage.self_distill_from_step
                loss_fn = self.loss_fns[self_distill]
                self.optimizer.zero_grad(set_to_none=True)
                for _ in range(c.gradient_accumulation_steps):
                    indices, epoch = next(batches)
                    out = self._micro_step(indices, epoch, loss_fn, window)
                    window.add_loss(out, 1.0 / c.gradient_accumulation_steps)
                window.grad_norm += self._optimizer_step()
                window.steps += 1
                self.step += 1
                bar.update(1)
                save = bool(c.save_steps) and self.step % c.save_steps == 0 and self.step < self.total_steps
                # a window also ends at a checkpoint, so a resumed run logs the same lines
                if self.step % c.log_steps == 0 or self.step == self.total_steps or save:
                    self._log_window(window, stage, self_distill, bar)
                    window = _Window()
                if save:
                    self.save_checkpoint()
            if self._saved_step != self.step:
                self.save_checkpoint()
            final_dir = self.output_dir / FINAL_DIR
            if self.main:
                self.model.save_pretrained(final_dir)
                self.log.write({"event": "end", "step": self.step, "final_dir": str(final_dir)})
            dist.barrier()
        except BaseException as err:
            if self.main:
                last = latest_checkpoint(self.output_dir)
                self.log.write({"event": "interrupted", "step": self.step, "error": f"{type(err).__name__}: {err}",
                                "last_checkpoint": str(last) if last else None})
                logger.error("training stopped at step %d (%s); the last complete checkpoint is %s",
                             self.step, type(err).__name__, last)
            raise
        finally:
            bar.close()
            self.log.close()
        return TrainResult(output_dir=self.output_dir, final_dir=final_dir, steps=self.step,
                           final_losses=dict(self.last_losses), log_path=c.log_path,
                           checkpoints=list(self.checkpoints))

    def _micro_batches(self) -> Iterator[tuple[list[int], int]]:
        """(example indices, epoch) per micro-batch, from the saved position on."""
        while True:
            self.sampler.set_epoch(self.epoch)
            batches = list(self.sampler)
            while self.batch_in_epoch < len(batches):
                i = self.batch_in_epoch
                self.batch_in_epoch += 1
                yield list(batches[i]), self.epoch
            self.epoch += 1
            self.batch_in_epoch = 0

    def _enter_stage(self, stage: StageConfig) -> None:
        c = self.config
        apply_freeze(self.model, stage.freeze)
        functions = stage.trained_functions
        common = dict(functions=functions, form=c.loss_form, temperature=c.temperature,
                      ensemble_weights=tuple(c.ensemble_weights), use_teacher_scores=c.use_teacher_scores,
                      loss_weights=dict(c.loss_weights) if c.loss_weights is not None else None)
        self.loss_fns = {False: M3Loss(self_distill=False, **common)}
        if stage.uses_self_distill:
            self.loss_fns[True] = M3Loss(self_distill=True, **common)
        self.stage_functions = functions
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        if "dense" in stage.freeze and "dense" in stage.functions and "encoder" not in stage.freeze:
            logger.warning("stage %r freezes 'dense': its loss terms are dropped, but the encoder still trains for "
                           "%s, so dense vectors still change (freeze 'encoder' too to keep them)",
                           stage.name, ", ".join(functions))
        if self.main:
            self.log.write({"event": "stage", "step": self.step, "stage": stage.name, "functions": list(functions),
                            "freeze": list(stage.freeze), "self_distill": stage.uses_self_distill,
                            "self_distill_from_step": stage.self_distill_from_step,
                            "trainable_parameters": n_train})

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _micro_step(self, indices: list[int], epoch: int, loss_fn: M3Loss, window: "_Window") -> LossOutput:
        """Forward and backward of one micro-batch (:func:`m3lab.training.step.training_step`)."""
        c = self.config
        batch = self.data.batch(indices, epoch, self.model)
        q_batch = {k: v.to(self.device) for k, v in batch["q"].items()}
        p_batch = {k: v.to(self.device) for k, v in batch["p"].items()}
        teacher = batch["teacher_scores"].to(self.device) if batch["teacher_scores"] is not None else None
        window.count_tokens(q_batch, p_batch)
        accumulation = 1.0 / c.gradient_accumulation_steps  # the step's gradient is the mean over micro-batches
        return training_step(
            self.model, loss_fn, q_batch, p_batch, group_size=c.group_size, mode=c.batching,
            sub_batch_size=c.sub_batch_size, teacher_scores=teacher,
            cross_device_functions=c.cross_device_functions if self._cross_device else (),
            scale=lambda loss: self.scaler.scale(loss * accumulation), autocast=self._autocast,
            on_embeddings=lambda q, p: window.count_sparse(q, p, self.special_ids))

    @property
    def _cross_device(self) -> bool:
        return self.world > 1 and self.config.cross_device_negatives

    def _optimizer_step(self) -> float:
        """Average gradients over processes, clip, step; returns the gradient norm before clipping."""
        self.lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses, for the log
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.world > 1:
            _average_gradients(params, self.world)
        self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        if self.config.max_grad_norm is not None and grads:
            torch.nn.utils.clip_grads_with_norm_(grads, self.config.max_grad_norm, norm)
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)  # fp16: skipped when a gradient overflowed
        self.scaler.update()
        if self.scaler.is_enabled() and self.scaler.get_scale() < scale:
            self.overflow_steps += 1  # no update was made: the schedule waits too (as HF's Trainer)
        else:
            self.scheduler.step()
        return float(norm)

    # ------------------------------------------------------------------ logging
    def _log_start(self) -> None:
        d, c = self.data, self.config
        record = {"event": "start" if self._resume_dir is None else "resume", "step": self.step,
                  "resumed_from": str(self._resume_dir) if self._resume_dir else None,
                  "examples": len(d), "queries": len(d.query_ids), "passages": len(d.passage_ids),
                  "truncated_queries": d.truncated_queries, "truncated_passages": d.truncated_passages,
                  "groups_filled": d.filled_groups, "negatives_policy": c.negatives_policy,
                  "batches_per_epoch": self.batches_per_epoch, "total_steps": self.total_steps,
                  "stage_steps": dict(zip([s.name for s in c.stages], self.stage_steps)),
                  "world_size": self.world, "device": str(self.device),
                  "length_groups": self.sampler.stats(self.epoch) if c.length_grouping else None,
                  "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "none"}
        if self.main:
            self.log.write(record)
            if d.truncated_queries or d.truncated_passages:
                logger.warning("truncated %d of %d queries to query_max_length=%d and %d of %d passages to "
                               "passage_max_length=%d tokens", d.truncated_queries, len(d.query_ids),
                               c.query_max_length, d.truncated_passages, len(d.passage_ids), c.passage_max_length)
            if d.filled_groups and c.group_size > 1:
                logger.info("%d of %d examples have fewer than %d negatives: filled by %s", d.filled_groups, len(d),
                            c.group_size - 1, c.negatives_policy)
            logger.info("training %d steps (%s) on %d examples, %d process(es), device %s",
                        self.total_steps, ", ".join(f"{s.name}: {n}" for s, n in zip(c.stages, self.stage_steps)),
                        len(d), self.world, self.device)

    def _log_window(self, w: "_Window", stage: StageConfig, self_distill: bool, bar) -> None:
        c = self.config
        stats = torch.tensor([w.loss, w.tokens, w.cells, w.sparse_nonzero, w.sparse_tokens, w.grad_norm],
                             dtype=torch.float64, device=self.device)
        parts = sorted(w.parts)
        part_values = torch.tensor([w.parts[k] for k in parts], dtype=torch.float64, device=self.device)
        if self.world > 1:  # losses and norms: the mean over processes; counts: the sum
            tdist.all_reduce(stats)
            tdist.all_reduce(part_values)
            stats[[0, 5]] /= self.world
            part_values /= self.world
        loss, tokens, cells, nz, sparse_tokens, grad_norm = stats.tolist()
        steps = w.steps
        elapsed = time.perf_counter() - w.start
        losses = {k: float(v) / steps for k, v in zip(parts, part_values.tolist())}
        share = nz / sparse_tokens if sparse_tokens else None
        epoch = self.epoch + self.batch_in_epoch / self.batches_per_epoch
        record = {"event": "step", "step": self.step, "epoch": round(epoch, 4), "stage": stage.name,
                  "self_distill": self_distill, "lr": self.lr,
                  "loss": loss / steps, "losses": losses, "grad_norm": grad_norm / steps,
                  "sparse_nonzero_share": share, "tokens_per_s": tokens / elapsed if elapsed > 0 else None,
                  "padding_share": 1.0 - tokens / cells if cells else None}
        if self.scaler.is_enabled():  # fp16: the first steps overflow while the loss scale settles
            record["fp16_skipped_steps"], self.overflow_steps = self.overflow_steps, 0
        self.last_losses = {"loss": record["loss"], **losses}
        if "sparse" in self.stage_functions and share is not None:
            self.collapse_streak = self.collapse_streak + 1 if share < c.sparse_collapse_threshold else 0
            if self.collapse_streak:
                record["sparse_collapse_streak"] = self.collapse_streak
            if self.collapse_streak == c.sparse_collapse_patience:
                message = (f"sparse weights are collapsing: only {share:.2%} of the content tokens have a non-zero "
                           f"lexical weight (< {c.sparse_collapse_threshold:.2%} for {self.collapse_streak} logs in a "
                           f"row, step {self.step}); sparse retrieval will find nothing, and a ReLU that outputs 0 "
                           "gets no gradient, so it rarely recovers. Resume from an earlier checkpoint with a lower "
                           "learning_rate or a larger loss_weights.sparse (docs/training.md, 'Sparse collapse')")
                if self.main:
                    logger.warning(message)
                    self.log.write({"event": "warning", "step": self.step, "warning": "sparse_collapse",
                                    "message": message})
        if self.main:
            self.log.write(record)
            if self.on_log is not None:
                self.on_log(record)
            bar.set_postfix({"stage": stage.name, "loss": f"{record['loss']:.4f}",
                             **{k: f"{v:.3f}" for k, v in losses.items()},
                             "sparse>0": "-" if share is None else f"{share:.0%}",
                             "pad": "-" if record["padding_share"] is None else f"{record['padding_share']:.0%}",
                             "tok/s": "-" if record["tokens_per_s"] is None else f"{record['tokens_per_s']:.0f}"},
                            refresh=False)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write ``checkpoint-<step>/`` atomically: bge-m3 model files plus ``trainer_state.pt``."""
        rng = _rng_state(self.device)
        all_rng = [rng]
        if self.world > 1:
            all_rng = [None] * self.world
            tdist.all_gather_object(all_rng, rng)
        path = self.output_dir / f"checkpoint-{self.step}"
        if self.main:
            state = {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                     "collapse_streak": self.collapse_streak, "world_size": self.world,
                     "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "scaler": self.scaler.state_dict(), "rng": all_rng,
                     "stage": self.stage_at(max(self.step - 1, 0))[0].name}
            with atomic_directory(path) as tmp:
                self.model.save_pretrained(tmp)
                _save_state(state, tmp / STATE_FILE)
                write_json(tmp / "train_config.json", self.config.to_dict())
            self.log.write({"event": "checkpoint", "step": self.step, "path": str(path)})
            self._prune_checkpoints(path)
        dist.barrier()
        self.checkpoints.append(path)
        self._saved_step = self.step
        return path

    def _apply_hyperparameters(self) -> None:
        """After loading a checkpoint, the config's optimizer settings win over the saved ones.

        So a run can resume with, e.g., a lower learning rate; the schedule continues from
        the saved step with the config's rate, warm-up and length. Unchanged settings give
        bit-identical values, so an exact resume stays exact.
        """
        c = self.config
        decay_group, no_decay_group = self.optimizer.param_groups
        decay_group["weight_decay"] = c.weight_decay
        for group in (decay_group, no_decay_group):
            group.update(initial_lr=c.learning_rate, betas=tuple(c.adam_betas), eps=c.adam_eps)
        self.scheduler.base_lrs = [c.learning_rate] * 2
        step = self.scheduler.last_epoch
        for group, schedule in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas):
            group["lr"] = c.learning_rate * schedule(step)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def _prune_checkpoints(self, newest: Path) -> None:
        limit = self.config.save_total_limit
        if limit is None:
            return
        found = sorted(_checkpoints(self.output_dir), key=lambda x: x[0])
        for _, path in found[:-limit]:
            if path != newest:
                shutil.rmtree(path, ignore_errors=True)

    def _load_state(self, path: Path) -> None:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._apply_hyperparameters()
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.collapse_streak = int(state["collapse_streak"])
        self._saved_step = self.step
        rngs = state["rng"]
        if len(rngs) == self.world:
            _set_rng_state(rngs[self.rank], self.device)
        else:
            logger.warning("%s was saved by %d process(es), this run has %d: random states are reseeded, "
                           "so the run will not repeat the original exactly", path, len(rngs), self.world)
            _seed_everything(self.config.seed + 1000 * self.step + self.rank)
        if self.step > self.total_steps:
            raise ConfigError(f"{path} is at step {self.step}, past this config's {self.total_steps} steps")
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch,
                    self.batch_in_epoch)


def apply_freeze(model: M3Model, freeze: Sequence[str]) -> None:
    """Set ``requires_grad`` for a stage: everything trainable except what ``freeze`` names.

    ``encoder`` freezes all encoder weights, ``embeddings`` only its input embeddings,
    ``sparse``/``colbert`` their heads (``sparse_linear``/``colbert_linear``). ``dense`` has
    no weights of its own (it is the encoder's [CLS] state): it is handled by dropping its
    loss terms (:attr:`StageConfig.trained_functions`), nothing is frozen here.
    """
    for p in model.parameters():
        p.requires_grad_(True)
    frozen = []
    if "encoder" in freeze:
        frozen.append(model.encoder)
    elif "embeddings" in freeze:
        frozen.append(getattr(model.encoder, "embeddings", None) or model.encoder.get_input_embeddings())
    if "sparse" in freeze:
        frozen.append(model.sparse_linear)
    if "colbert" in freeze:
        frozen.append(model.colbert_linear)
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)


def _pick_device(device: str) -> torch.device:
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on a GPU that supports it, else fp16 on GPU, none on CPU."""
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _broadcast(model: torch.nn.Module) -> None:
    import torch.distributed as tdist

    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            tdist.broadcast(t.data, src=0)


def _average_gradients(params: list[torch.Tensor], world: int) -> None:
    """All-reduce the gradients in one flat buffer and divide by the number of processes (as DDP).

    Each process's loss is the mean over its own queries; the gathered passages carry
    their gradient back to the process that encoded them, so the average over processes
    is the gradient of the mean loss over the global batch.
    """
    # Parameters outside this stage's loss (e.g. the heads in a dense-only stage) have no
    # gradient on any process (every process runs the same stage) and must keep none, so
    # AdamW leaves them alone.
    params = [p for p in params if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    tdist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n
