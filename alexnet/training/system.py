"""The LightningModule: the training system around a plain AlexNet.

It takes scalars and small dicts only, so that ``save_hyperparameters()`` and
``AlexNetSystem.load_from_checkpoint(path)`` rebuild it from a checkpoint
alone (the checkpoint also holds the run's whole resolved config).
"""

from __future__ import annotations

import logging
import random

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from ..data.augment import average_crops
from ..nn.models import create
from ..parallel.ranks import data_parallel
from ..parallel.towers import all_gather_cat, clip_grad_norm_towers
from .optim import CosineToEnd, build_optimizer, warmup_factor

log = logging.getLogger(__name__)


def _numpy_state_to_safe(state: tuple) -> dict:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _numpy_state_from_safe(state: dict) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]


class AlexNetSystem(L.LightningModule):
    """SGD training and top-1 / top-5 evaluation of an AlexNet variant.

    Args:
        model: the keys of a ``conf/model`` option: ``name`` and the overrides
            of :func:`alexnet.nn.models.create`.
        optim: the keys of a ``conf/optim`` option (see :mod:`alexnet.training.optim`).
        num_classes: the number of classes of the dataset.
        class_names: human-readable class names, for predictions.
        config: the run's resolved config, stored with the checkpoint.
    """

    def __init__(
        self,
        model: dict,
        optim: dict,
        num_classes: int,
        class_names: list[str] | None = None,
        config: dict | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        options = {k: v for k, v in model.items() if k not in ("name", "num_classes")}
        self.net = create(model["name"], num_classes, **options)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        # With fewer than 5 classes top-5 is clipped to top-(num_classes).
        self.topk = {"top1": 1, "top5": min(5, num_classes)}
        # 1 - accuracy is a torchmetrics CompositionalMetric: Lightning logs it
        # per batch or accumulates it over the epoch and syncs it across ranks.
        for stage in ("train", "val", "test"):
            for name, k in self.topk.items():
                error = 1 - MulticlassAccuracy(num_classes, top_k=k, average="micro")
                setattr(self, f"{stage}_{name}_error", error)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def conv1_kernels(self) -> tuple[torch.Tensor, int]:
        """conv1's weight, (96, 3, 11, 11) for the paper, and its number of towers.

        Under model parallelism every rank must call it: the towers' halves are gathered.
        """
        weight = self.net.conv1.weight.detach()
        group = getattr(self.net, "group", None)
        if group is None:
            return weight, self.net.groups
        return all_gather_cat(weight, group), self.net.towers

    # -- training ---------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self._log_errors("train", logits, y, loss, on_step=True)
        return loss

    # -- evaluation -------------------------------------------------------
    def _eval_step(self, stage: str, batch) -> None:
        x, y = batch
        if x.ndim == 5:  # (B, crops, C, H, W): ten-crop testing
            scores = self._crop_probabilities(x)
            loss = F.nll_loss(scores.clamp_min(1e-12).log(), y)
        else:
            scores = self(x)
            loss = F.cross_entropy(scores, y)
        self._log_errors(stage, scores, y, loss, on_step=False)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def predict_step(self, batch, batch_idx: int = 0) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self._crop_probabilities(x) if x.ndim == 5 else self(x).softmax(dim=-1)

    def _crop_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(B, crops, C, H, W) -> (B, K): the softmax averaged over each image's crops."""
        b, n = x.shape[:2]
        return average_crops(self(x.flatten(0, 1)).view(b, n, -1))

    def _log_errors(self, stage: str, scores, y, loss, on_step: bool) -> None:
        # Errors, not accuracies: the paper reports top-1 and top-5 error rates.
        # Training logs per step, evaluation per epoch (reduced over DDP ranks).
        on_epoch = not on_step
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=on_epoch, prog_bar=True, sync_dist=on_epoch)
        for name in self.topk:
            metric = getattr(self, f"{stage}_{name}_error")
            metric(scores, y)
            self.log(f"{stage}/{name}_error", metric, on_step=on_step, on_epoch=on_epoch, prog_bar=name == "top1")

    # -- optimisation -----------------------------------------------------
    def configure_optimizers(self):
        return build_optimizer(self.net, self.hparams.optim, self.trainer.max_epochs)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        group = getattr(self.net, "group", None)
        if group is None or not gradient_clip_val or gradient_clip_algorithm == "value":
            # (clipping by value acts per element: the same on a tower as on the whole)
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        clip_grad_norm_towers(self.parameters(), gradient_clip_val, group)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        # Linear warm-up scales the scheduled learning rate for this one step and
        # puts it back afterwards, so the scheduler's own state never sees it and
        # every schedule (plateau, step, cosine) composes with it unchanged.
        steps = self.hparams.optim.get("warmup_epochs", 0) * self.trainer.num_training_batches
        factor = warmup_factor(self.trainer.global_step, steps) if self.trainer.global_step < steps else 1.0
        scheduled = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] *= factor
        optimizer.step(closure=optimizer_closure)
        for group, lr in zip(optimizer.param_groups, scheduled):
            group["lr"] = lr

    # -- checkpoints ------------------------------------------------------
    def on_fit_start(self) -> None:
        # Every process was seeded alike (so the ranks build the same network);
        # each now gets its own stream for what is drawn per step (dropout), or
        # all ranks would draw the same masks. The towers of one model-parallel
        # copy share a stream (each draws the whole dropout mask and keeps its half).
        # Not L.seed_everything: it rewrites PL_GLOBAL_SEED, which samplers read.
        # Per-image augmentation does not come from these streams (alexnet/data/sampling.py).
        rank, size = data_parallel(self.trainer)
        if size > 1:
            seed = (self.hparams.config or {}).get("seed", 0) + rank
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)  # every device's generator too

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lightning restores weights, optimizer, schedulers and loop counters;
        # the random state is ours to keep so that a resumed run draws the
        # same crops, flips, lighting and dropout masks as an uninterrupted one.
        # Each rank has its own state; rank zero writes them all.
        state = {
            "torch": torch.get_rng_state(),
            # as a tensor and plain scalars, so the file loads with weights_only=True
            "numpy": _numpy_state_to_safe(np.random.get_state()),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        }
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, state)
        else:
            states = [state]
        checkpoint["rng_states"] = states
        if self.hparams.config is not None:
            checkpoint["config"] = self.hparams.config

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Applied in on_train_start: the sanity-check validation that Lightning
        # runs between restoring and training draws from the global generator.
        self._rng_to_restore = checkpoint.get("rng_states")

    def on_train_start(self) -> None:
        self._replan_schedules()
        self._restore_random_state()

    def _replan_schedules(self) -> None:
        # A resumed run may have another trainer.max_epochs (extending a finished run).
        for config in self.trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, CosineToEnd) and config.scheduler.replan(self.trainer.max_epochs):
                lr = config.scheduler.get_last_lr()[0]
                log.info("the cosine schedule now ends at epoch %d: annealing from lr %.3g at epoch %d to %.3g",
                         self.trainer.max_epochs, lr, config.scheduler.last_epoch, config.scheduler.eta_min)

    def _restore_random_state(self) -> None:
        states, self._rng_to_restore = getattr(self, "_rng_to_restore", None), None
        if not states or len(states) != self.trainer.world_size:
            return  # a different number of processes: keep the fresh per-rank seeds
        state = states[self.global_rank]
        torch.set_rng_state(state["torch"])
        np.random.set_state(_numpy_state_from_safe(state["numpy"]))
        random.setstate(state["python"])
        if state.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
