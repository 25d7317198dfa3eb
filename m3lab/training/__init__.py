"""Training: config, data, length-grouped sampling, split-batch/GradCache, cross-device negatives, the trainer.

    from m3lab.training import train, load_config
    result = train("configs/tiny-smoke.yaml")

=====================  =========================================================
:mod:`.config`         the YAML/JSON config, validated (``TrainConfig``, ``StageConfig``)
:mod:`.data`           tokenised examples and each example's passage group per epoch
:mod:`.samplers`       length-grouped batches (section 3.4, Table 9)
:mod:`.batching`       split-batch with gradient checkpointing (B.3) and GradCache
:mod:`.distributed`    torchrun helpers and the differentiable all-gather (cross-device negatives)
:mod:`.step`           one micro-batch: embed, score, backpropagate (used by the trainer and benchmarks)
:mod:`.trainer`        the loop: stages, freezing, optimizer, AMP, accumulation
:mod:`.checkpoint`     atomic checkpoints and exact resume
:mod:`.monitor`        the JSONL log, running sums, the sparse-collapse warning
:mod:`.cli`            ``m3lab train`` and ``python -m m3lab.training`` (torchrun)
=====================  =========================================================
"""
from .batching import GradCache, split_encode
from .checkpoint import STATE_FILE, latest_checkpoint
from .config import ConfigError, StageConfig, TrainConfig, load_config
from .data import TrainingData
from .samplers import TABLE9_BOUNDARIES, LengthGroupedBatchSampler
from .setup import apply_freeze
from .trainer import Trainer, TrainResult, train

__all__ = ["train", "Trainer", "TrainResult", "TrainConfig", "StageConfig", "ConfigError", "load_config",
           "apply_freeze", "TrainingData", "LengthGroupedBatchSampler", "TABLE9_BOUNDARIES", "GradCache",
           "split_encode", "STATE_FILE", "latest_checkpoint"]
