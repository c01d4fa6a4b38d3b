"""Lightning callbacks for what the paper shows and what a user watches."""

from __future__ import annotations

import time

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from torchvision.utils import make_grid

from .distributed import data_parallel


def conv1_kernel_grids(weight: torch.Tensor, towers: int = 1, scale: int = 3) -> list[torch.Tensor]:
    """conv1's weight, (96, 3, 11, 11) for the paper, as one image grid per tower (Figure 3).

    In the paper the first 48 kernels lived on GPU 1 and the other 48 on GPU 2.
    """
    towers = weight.detach().float().cpu().chunk(max(1, towers), dim=0)
    grids = []
    for kernels in towers:
        kernels = F.interpolate(kernels, scale_factor=scale, mode="nearest")
        grids.append(make_grid(kernels, nrow=8, normalize=True, scale_each=True, padding=scale, pad_value=1.0))
    return grids


class Conv1Kernels(L.Callback):
    """Logs conv1's kernels to TensorBoard every epoch, one image per tower."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        weight, towers = pl_module.conv1_kernels()  # on every rank: towers may have to be gathered
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for tower, grid in enumerate(conv1_kernel_grids(weight, towers), start=1):
                    logger.experiment.add_image(f"conv1_kernels/tower_{tower}", grid, trainer.global_step)


class ThroughputProgressBar(RichProgressBar):
    """Lightning's rich progress bar plus training images per second (all ranks)."""

    def __init__(self, smoothing: float = 0.9) -> None:
        super().__init__()
        self.smoothing = smoothing
        self._rate: float | None = None
        self._last: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._last = None  # validation time does not count against throughput

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._last is not None:
            # model parallelism: the towers of one copy share its images
            images = len(batch[1]) * data_parallel(trainer)[1]
            rate = images / max(now - self._last, 1e-9)
            self._rate = rate if self._rate is None else self.smoothing * self._rate + (1 - self.smoothing) * rate
        self._last = now
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        if self._rate is not None:
            items["img/s"] = f"{self._rate:.0f}"
        return items
