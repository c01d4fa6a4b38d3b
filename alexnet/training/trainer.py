"""The Lightning Trainer of a run: its loggers, checkpoints and callbacks, all under the run folder."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from ..parallel.placement import splits_towers
from ..parallel.strategy import TowerParallelStrategy
from .callbacks import Conv1Kernels, FlatStart, LRNStrength, ThroughputProgressBar
from .checkpoints import CHECKPOINT_DIR, LAST, AtomicCheckpointIO, StepCheckpoint
from .fast_path import configure as fast_path_callbacks
from .faults import fault_callbacks
from .loggers import TrackerIds, build_loggers
from .precision import Precision
from .random_state import RandomState

log = logging.getLogger(__name__)


def dual_gpu_strategy(trainer_args: dict):
    """``model=paper_dual_gpu``: one tower per device; on one device, the grouped network."""
    if trainer_args.get("devices") in (1, "1") and trainer_args.get("num_nodes", 1) == 1:
        log.info("model=paper_dual_gpu on one device: training the grouped network (groups=2) there")
        return trainer_args.get("strategy", "auto")
    return TowerParallelStrategy()


def build_trainer(cfg: DictConfig, run_dir: Path, resuming: bool = False) -> L.Trainer:
    """``lightning.Trainer(**cfg.trainer)`` with the run's loggers, checkpoints and callbacks.

    ``resuming``: fitting continues from a checkpoint, so the W&B and MLflow runs continue too.
    """
    checkpoints = ModelCheckpoint(
        dirpath=run_dir / CHECKPOINT_DIR,
        filename="best-epoch{epoch:03d}-top1err{val/top1_error:.4f}",
        auto_insert_metric_name=False,  # the metric's "/" would make a subfolder
        monitor="val/top1_error",
        mode="min",
        save_top_k=cfg.checkpoint.save_top_k,
        every_n_epochs=cfg.checkpoint.every_n_epochs,
    )
    # last.ckpt has unmonitored callbacks of its own: save_last=True on the monitored one
    # rewrites it only when the best improves, and drops step saves until a validation
    # metric exists (the first epoch of a run, or of a resumed run). No version counter:
    # always last.ckpt, never a last-v1.ckpt beside a stale last.ckpt.
    last = dict(dirpath=run_dir / CHECKPOINT_DIR, filename=LAST.removesuffix(".ckpt"), monitor=None, save_top_k=1,
                enable_version_counter=False)
    callbacks = [RandomState(cfg.seed), checkpoints, ModelCheckpoint(**last, every_n_epochs=cfg.checkpoint.every_n_epochs),
                 LearningRateMonitor(logging_interval="epoch"), Conv1Kernels(), LRNStrength()]
    if cfg.get("flat_start_steps"):
        callbacks.append(FlatStart(cfg.flat_start_steps))  # warns once if the loss sits at chance
    if cfg.checkpoint.every_n_train_steps:
        callbacks.append(StepCheckpoint(**last, every_n_train_steps=cfg.checkpoint.every_n_train_steps))
    callbacks += fault_callbacks(cfg.nonfinite_loss, run_dir / CHECKPOINT_DIR / LAST)
    trainer_args = OmegaConf.to_container(cfg.trainer, resolve=True)
    callbacks += fast_path_callbacks(cfg.get("fast_path"), trainer_args)  # reads them, changes none
    callbacks.append(Precision(tf32=cfg.get("tf32", False)))  # TF32 as asked; logs a run that is not float32
    if trainer_args.get("enable_progress_bar", True):
        callbacks.append(ThroughputProgressBar())
    if splits_towers(cfg.model):  # model=paper_dual_gpu
        trainer_args["strategy"] = dual_gpu_strategy(trainer_args)
    # conf/logger/: RUN/tensorboard by default (a resumed run appends to it), or several loggers;
    # a resumed run continues its W&B and MLflow runs, recorded in RUN/trackers.json.
    loggers = build_loggers(cfg.logger, run_dir, resuming)
    callbacks.append(TrackerIds(run_dir, resuming))
    # Every checkpoint is written aside and renamed into place (alexnet/training/checkpoints.py).
    return L.Trainer(**trainer_args, logger=loggers, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
                     default_root_dir=str(run_dir))
