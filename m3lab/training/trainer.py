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
from .checkpoint import (STATE_FILE, _rng_state, _save_state, _seed_everything, _set_rng_state, apply_hyperparameters,
                         find_resume, latest_checkpoint, prune_checkpoints)
from .config import ConfigError, StageConfig, TrainConfig, load_config
from .data import TrainingData
from .frozen import LowerLayerCache, freeze_lower_layers
from .monitor import CollapseMonitor, _JsonlLog, _truncate_log, _Window, data_summary, progress_postfix
from .samplers import TABLE9_BOUNDARIES, LengthGroupedBatchSampler
from .setup import amp_dtype, apply_freeze, check_matryoshka_model, make_optimizer, pick_device
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


def _heads_train(model) -> bool:
    """Whether the optimizer updates both heads (they are not frozen)."""
    return all(p.requires_grad for head in (model.colbert_linear, model.sparse_linear) for p in head.parameters())


class Trainer:
    """The training loop. Build it with a validated :class:`TrainConfig`, then :meth:`run`."""

    def __init__(self, config: TrainConfig, *, on_log: Callable[[dict[str, Any]], None] | None = None):
        self.config = c = config
        self.on_log = on_log
        self.rank, self.world = dist.rank(), dist.world_size()
        self.main = dist.is_main_process()
        self.output_dir = Path(c.output_dir)
        self.device = pick_device(c.device)
        self.amp_dtype = amp_dtype(c.amp, self.device)

        _seed_everything(c.seed + self.rank)  # dropout; a resumed run restores the saved states instead
        resume_dir = find_resume(c.resume_from, self.output_dir)
        existing = latest_checkpoint(self.output_dir)
        if resume_dir is None and existing is not None:
            # a fresh run here would mix its checkpoints with the old ones (and 'auto' could resume the wrong one)
            raise ConfigError(f"output_dir {self.output_dir} already holds checkpoints (latest: {existing.name}) from "
                              "an earlier run: continue it with resume_from: auto (--resume auto), or choose another "
                              "output_dir")
        self.model = M3Model.from_pretrained(str(resume_dir) if resume_dir else c.model, pooling=c.pooling,
                                             device=self.device, dtype=torch.float32)
        if self.world > 1:  # the same starting weights on every process (as DDP does)
            dist.broadcast_parameters(self.model)
        dims = check_matryoshka_model(c, self.model)
        if dims is not None:  # saved with every checkpoint (m3lab_config.json): the sizes it was trained for
            self.model.matryoshka_dims = list(dims)
        if c.gradient_checkpointing:
            self.model.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.train()

        self.data = TrainingData(c.train_files, self.model, c)
        self.model.prompts = dict(self.data.prompts)  # saved with every checkpoint: inference applies them
        self.lower_cache = None
        if c.frozen_layers:  # run the frozen lower layers once per text (m3lab.training.frozen)
            freeze_lower_layers(self.model, c.frozen_layers)
            self.lower_cache = {
                "q": LowerLayerCache(self.model, self.data.query_ids, c.frozen_layers, desc="lower layers: queries",
                                     progress=c.progress_bar and self.main),
                "p": LowerLayerCache(self.model, self.data.passage_ids, c.frozen_layers,
                                     desc="lower layers: passages", progress=c.progress_bar and self.main)}
        self.special_ids = torch.tensor(sorted(set(self.model.tokenizer.all_special_ids)), dtype=torch.long)
        self.sampler = self._make_sampler()
        self.batches_per_epoch = len(self.sampler)
        if self.batches_per_epoch == 0:
            raise DataError(f"{len(self.data)} examples make no full batch of batch_size={c.batch_size} "
                            "(drop_last: true drops each length group's short batch)", path=c.train_files[0])
        self.stage_steps = [self._stage_length(s) for s in c.stages]
        self.total_steps = sum(self.stage_steps) if c.max_steps is None else min(sum(self.stage_steps), c.max_steps)

        self.optimizer, self.scheduler = make_optimizer(self.model, c, self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        self.lr = c.learning_rate
        self.overflow_steps = 0       # fp16 steps skipped by the gradient scaler, since the last log line
        self.step = 0                 # optimizer steps done
        self.epoch = 0
        self.batch_in_epoch = 0       # micro-batches of this epoch already consumed
        self.collapse = CollapseMonitor(c.sparse_collapse_threshold, c.sparse_collapse_patience)
        self.checkpoints: list[Path] = []   # written by this run
        self._saved_step = -1
        self.last_losses: dict[str, float] = {}
        self._resume_dir = resume_dir

    # ------------------------------------------------------------------ setup helpers
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
                if not self.model.heads_trained and _heads_train(self.model):
                    self.model.heads_trained = True  # saved in m3lab_config.json: the app says so
                    self.model.heads_origin = "trained"
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
        if self.config.frozen_layers:
            freeze_lower_layers(self.model, self.config.frozen_layers)
        functions = stage.trained_functions
        common = dict(functions=functions, form=c.loss_form, temperature=c.temperature,
                      ensemble_weights=tuple(c.ensemble_weights), use_teacher_scores=c.use_teacher_scores,
                      loss_weights=dict(c.loss_weights) if c.loss_weights is not None else None,
                      matryoshka_dims=c.matryoshka_dims, matryoshka_weights=c.matryoshka_weights)
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
        if self.lower_cache is not None:
            for side, b in (("q", q_batch), ("p", p_batch)):
                b["lower_states"] = self.lower_cache[side].batch(batch[f"{side}_rows"]).to(self.device)
                b["lower_layers"] = c.frozen_layers
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
            dist.average_gradients(params, self.world)
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
                  **data_summary(d, c), "batches_per_epoch": self.batches_per_epoch, "total_steps": self.total_steps,
                  "stage_steps": dict(zip([s.name for s in c.stages], self.stage_steps)),
                  "world_size": self.world, "device": str(self.device),
                  "length_groups": self.sampler.stats(self.epoch) if c.length_grouping else None,
                  "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "none"}
        if self.main:
            self.log.write(record)
            logger.info("training %d steps (%s) on %d examples, %d process(es), device %s",
                        self.total_steps, ", ".join(f"{s.name}: {n}" for s, n in zip(c.stages, self.stage_steps)),
                        len(d), self.world, self.device)

    def _log_window(self, w: _Window, stage: StageConfig, self_distill: bool, bar) -> None:
        summary = w.summarize(self.world, self.device)
        epoch = self.epoch + self.batch_in_epoch / self.batches_per_epoch
        record = {"event": "step", "step": self.step, "epoch": round(epoch, 4), "stage": stage.name,
                  "self_distill": self_distill, "lr": self.lr, **summary}
        if self.scaler.is_enabled():  # fp16: the first steps overflow while the loss scale settles
            record["fp16_skipped_steps"], self.overflow_steps = self.overflow_steps, 0
        self.last_losses = {"loss": record["loss"], **record["losses"]}
        if "sparse" in self.stage_functions and record["sparse_nonzero_share"] is not None:
            message = self.collapse.update(record["sparse_nonzero_share"], self.step)
            if self.collapse.streak:
                record["sparse_collapse_streak"] = self.collapse.streak
            if message and self.main:
                logger.warning(message)
                self.log.write({"event": "warning", "step": self.step, "warning": "sparse_collapse",
                                "message": message})
        if self.main:
            self.log.write(record)
            if self.on_log is not None:
                self.on_log(record)
            bar.set_postfix(progress_postfix(record), refresh=False)

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
                     "collapse_streak": self.collapse.streak, "world_size": self.world,
                     "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "scaler": self.scaler.state_dict(), "rng": all_rng,
                     "stage": self.stage_at(max(self.step - 1, 0))[0].name}
            with atomic_directory(path) as tmp:
                self.model.save_pretrained(tmp)
                _save_state(state, tmp / STATE_FILE)
                write_json(tmp / "train_config.json", self.config.to_dict())
            self.log.write({"event": "checkpoint", "step": self.step, "path": str(path)})
            prune_checkpoints(self.output_dir, self.config.save_total_limit, path)
        dist.barrier()
        self.checkpoints.append(path)
        self._saved_step = self.step
        return path

    def _load_state(self, path: Path) -> None:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        apply_hyperparameters(self.optimizer, self.scheduler, self.config)
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.collapse.streak = int(state["collapse_streak"])
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
