"""The LightningModule: the training system around a plain AlexNet.

It takes scalars and small dicts only, so that ``save_hyperparameters()`` and
``AlexNetSystem.load_from_checkpoint(path)`` rebuild it from a checkpoint
alone (the checkpoint also holds the run's whole resolved config).
"""

from __future__ import annotations

import logging

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from ..data.augment import average_crops
from ..errors import TrainingError
from ..nn.models import create
from .optim import CosineToEnd, build_optimizer, warmup_factor

log = logging.getLogger(__name__)


class AlexNetSystem(L.LightningModule):
    """SGD training and top-1 / top-5 evaluation of an AlexNet variant.

    Args:
        model: the network: ``name`` and the overrides of :func:`alexnet.nn.models.create`
            (a ``conf/model`` option without its placement, alexnet.parallel.placement.network).
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
        # Lightning's model summary runs one image through the network to fill its FLOPs
        # and sizes columns (without an example it prints "Total FLOPs: 0"): per image.
        # Every rank computes it, so a tower's forward meets its partner's (alexnet/parallel).
        self.example_input_array = torch.zeros(1, self.net.in_channels, self.net.input_size, self.net.input_size)
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

        Every rank must call it: under model parallelism the network (a tower)
        gathers the other towers' halves.
        """
        return self.net.conv1_kernels()

    # -- training ---------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if not len(y):
            # Every file of the batch was unreadable (data.max_bad_images allowed them): a loss of
            # zero that still reaches every parameter, so that DDP's gradient reduction, which every
            # rank must join, runs; nothing is logged. (The optimizer still steps: momentum and
            # weight decay move the weights as on any step.)
            return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self._log_errors("train", logits, y, loss, on_step=True)
        return loss

    # -- evaluation -------------------------------------------------------
    def _eval_step(self, stage: str, batch) -> None:
        x, y = batch
        self._evaluated += len(y)
        if not len(y):
            # Every file of the batch was unreadable: nothing to count. Its keys are logged all the
            # same, with a weight of zero and the metrics not updated: the epoch-end reduction is a
            # collective that every DDP rank must join, and a rank whose batches were all empty
            # would otherwise skip it while the others wait in it for good.
            self._log_errors(stage, None, y, x.new_zeros(()), on_step=False, batch_size=0)
            return
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

    _evaluated = 0  # images counted in this evaluation, on this rank

    def on_validation_epoch_start(self) -> None:
        self._evaluated = 0

    def on_test_epoch_start(self) -> None:
        self._evaluated = 0

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:  # its few batches may all be a broken folder's
            self._check_evaluated("validation")

    def on_test_epoch_end(self) -> None:
        self._check_evaluated("test")

    def _check_evaluated(self, what: str) -> None:
        """Stop when no rank counted an image: the errors would read 100% (an accuracy of nothing
        is 0) and the loss NaN, and the best checkpoint would be chosen on them. A sum over the
        ranks, so that all of them stop together."""
        counted = self.trainer.strategy.reduce(torch.tensor(self._evaluated, device=self.device), reduce_op="sum")
        if int(counted) == 0:
            raise TrainingError(
                f"the {what} found no readable image: every file it read was unreadable (see the warnings "
                "naming them, and data.max_bad_images)"
            )

    def predict_step(self, batch, batch_idx: int = 0) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self._crop_probabilities(x) if x.ndim == 5 else self(x).softmax(dim=-1)

    def _crop_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(B, crops, C, H, W) -> (B, K): the softmax averaged over each image's crops."""
        b, n = x.shape[:2]
        return average_crops(self(x.flatten(0, 1)).view(b, n, -1))

    def _log_errors(self, stage: str, scores, y, loss, on_step: bool, batch_size: int | None = None) -> None:
        # Errors, not accuracies: the paper reports top-1 and top-5 error rates.
        # Training logs per step, evaluation per epoch (reduced over DDP ranks).
        # scores=None: an empty batch, logged (batch_size=0) but not counted.
        on_epoch = not on_step
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=on_epoch, prog_bar=True, sync_dist=on_epoch,
                 batch_size=batch_size)
        for name in self.topk:
            metric = getattr(self, f"{stage}_{name}_error")
            if scores is not None:
                metric(scores, y)
            self.log(f"{stage}/{name}_error", metric, on_step=on_step, on_epoch=on_epoch, prog_bar=name == "top1")

    # -- optimisation -----------------------------------------------------
    def configure_optimizers(self):
        return build_optimizer(self.net, self.hparams.optim, self.trainer.max_epochs)

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
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The run's whole config, for evaluate.py and predict.py (alexnet/inference.py).
        # The random state is the RandomState callback's (alexnet/training/random_state.py).
        if self.hparams.config is not None:
            checkpoint["config"] = self.hparams.config

    def on_train_start(self) -> None:
        self._replan_schedules()

    def _replan_schedules(self) -> None:
        # A resumed run may have another trainer.max_epochs (extending a finished run).
        for config in self.trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, CosineToEnd) and config.scheduler.replan(self.trainer.max_epochs):
                lr = config.scheduler.get_last_lr()[0]
                log.info("the cosine schedule now ends at epoch %d: annealing from lr %.3g at epoch %d to %.3g",
                         self.trainer.max_epochs, lr, config.scheduler.last_epoch, config.scheduler.eta_min)
