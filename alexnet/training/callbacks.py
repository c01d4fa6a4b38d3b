"""Lightning callbacks for what the paper shows and what a user watches."""

from __future__ import annotations

import logging
import math
import time

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import RichProgressBar
from torch import nn
from torchvision.utils import make_grid

from ..nn.layers import LocalResponseNorm
from ..nn.models import resolve_options
from ..parallel.ranks import data_parallel
from .loggers import log_image

log = logging.getLogger(__name__)


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
    """Logs conv1's kernels every epoch, one image per tower, to every logger that takes
    images (TensorBoard, W&B, MLflow; not CSV)."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        weight, towers = pl_module.conv1_kernels()  # on every rank: towers may have to be gathered
        if not trainer.is_global_zero:
            return
        grids = conv1_kernel_grids(weight, towers)
        for logger in trainer.loggers:
            for tower, grid in enumerate(grids, start=1):
                log_image(logger, f"conv1_kernels/tower_{tower}", grid, trainer.global_step)


class FlatStart(L.Callback):
    """Warns once when the training loss sits at chance: its running mean within
    ``tolerance`` of ln(classes) for ``steps`` training steps in a row.

    Section 5's initialisation (weights N(0, 0.01), biases 1) relies on the
    paper's raw 0-255 inputs; on other data a network can sit at chance for
    epochs (SPEC.md: Caffe found bias 1 gave a flat loss), and the warning says
    so and what to try. The loss is smoothed over about ten steps (an
    exponential moving average): a network stuck at chance jitters around and
    above ln(classes) from batch to batch. It watches the start only: once the
    smoothed loss has fallen below the band it stops looking (and reading the loss).

    Args:
        steps: steps in a row at chance before the warning (the config key ``flat_start_steps``).
        tolerance: the band around ln(classes), as a fraction of it ("a few percent").
        smoothing: the weight of the running mean's past at each step.
    """

    def __init__(self, steps: int, tolerance: float = 0.05, smoothing: float = 0.9) -> None:
        if steps < 1 or not 0 < tolerance < 1 or not 0 <= smoothing < 1:
            raise ValueError(f"FlatStart needs steps >= 1, 0 < tolerance < 1, 0 <= smoothing < 1, "
                             f"got {steps}, {tolerance}, {smoothing}")
        self.steps, self.tolerance, self.smoothing = steps, tolerance, smoothing
        self.loss: float | None = None  # the running mean
        self.flat = 0  # steps in a row at chance
        self.done = False  # warned, or the loss has left chance downwards

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if self.done or loss is None:  # (a batch skipped for a non-finite loss has none)
            return
        chance = math.log(pl_module.hparams.num_classes)
        value = float(loss)
        self.loss = value if self.loss is None else self.smoothing * self.loss + (1 - self.smoothing) * value
        if self.loss < chance * (1 - self.tolerance):
            self.done = True  # it learns
            return
        self.flat = self.flat + 1 if self.loss <= chance * (1 + self.tolerance) else 0
        if self.flat >= self.steps:
            self.done = True
            if trainer.is_global_zero:
                log.warning("%s", self.message(pl_module, chance))

    def message(self, pl_module, chance: float) -> str:
        model = dict(pl_module.hparams.model)
        init = resolve_options(model.pop("name"), **{k: v for k, v in model.items() if k != "num_classes"})["init"]
        flat = (f"the training loss has stayed within {self.tolerance:.0%} of ln({pl_module.hparams.num_classes}) = "
                f"{chance:.3f}, chance, for {self.flat} steps (now {self.loss:.3f}): the network is not learning yet")
        if init == "paper":
            # docs/REPRODUCTION.md, "A flat start": on CIFAR-10 at 224 px, paper did not leave chance in 300
            # steps, caffe did at step 53, kaiming on standardised pixels at step 26 (on raw ones: NaN at step 5).
            return (f"{flat}. Likely cause: model.init=paper (Section 5: N(0, 0.01) weights, biases 1) on this data, "
                    "which can sit at chance for epochs; model.init=caffe, or model.init=kaiming with "
                    "data.normalize=imagenet (Kaiming's init diverges on raw 0-255 pixels), start sooner")
        return f"{flat} (model.init={init}); check optim.lr and data.normalize"


def lrn_layers(net: nn.Module) -> dict[str, LocalResponseNorm]:
    """A network's (or a tower's) LRN modules, named by the convolution whose output they normalise."""
    layers, convs = {}, 0
    for module in net.modules():  # registration order: the order of the forward pass
        if isinstance(module, nn.Conv2d):
            convs += 1
        elif isinstance(module, LocalResponseNorm):
            layers[f"conv{convs}"] = module
    return layers


class LRNProbe:
    """How much each LRN layer does, over the forward passes run inside ``with LRNProbe(net) as probe:``.

    The strength of a layer with input a and output b is

        mean(|b|) / mean(|a| / k^beta)

    over all elements of the batch: the |a|-weighted mean of b / (a / k^beta),
    which is (k / (k + alpha * SUM a_j^2))^beta per element (Section 3.3). 1.0
    means LRN only divides by the constant k^beta, which the next layer
    absorbs; lower means the neighbours' activity divides too. Weighting by
    |a| leaves out the zeros of the ReLU before it and keeps the division
    away from 0. SPEC.md: on 0-1 or standardised inputs it is ~1.
    """

    def __init__(self, net: nn.Module) -> None:
        self.layers = lrn_layers(net)
        self._sums: dict[str, list[torch.Tensor]] = {}
        self._handles: list = []

    def _hook(self, name: str):
        def hook(module: LocalResponseNorm, inputs, output) -> None:
            with torch.no_grad():  # float32 sums, whatever the autocast dtype
                a = torch.sum(inputs[0].detach().abs(), dtype=torch.float32) / module.k**module.beta
                b = torch.sum(output.detach().abs(), dtype=torch.float32)
                sums = self._sums.setdefault(name, [a.new_zeros(()), a.new_zeros(())])
                sums[0] += b
                sums[1] += a
        return hook

    def __enter__(self) -> "LRNProbe":
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in self.layers.items()]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def strengths(self) -> dict[str, float]:
        """Each layer's strength; layers whose input was all zeros are left out."""
        return {name: (b / a).item() for name, (b, a) in self._sums.items() if a > 0}


class LRNStrength(L.Callback):
    """Logs ``lrn/strength_<layer>`` (``lrn/strength_conv1``, ...) once per epoch,
    measured on the epoch's first training batch (:class:`LRNProbe`).

    Networks without LRN log nothing. Under model parallelism each rank has its
    own tower's LRN layers: rank zero logs its tower's, with no collective.
    Under ``fast_path.compile`` nothing is measured (adding and removing hooks
    would recompile the network).
    """

    def __init__(self) -> None:
        self._armed = False
        self._probe: LRNProbe | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._armed = True  # a run resumed in mid-epoch gets no on_train_epoch_start for that epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._armed = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._armed or not len(batch[1]):  # a batch without images (all unreadable): the next one
            return
        self._armed = False
        if getattr(pl_module.net, "_compiled_call_impl", None) is not None:
            return
        probe = LRNProbe(pl_module.net)
        if probe.layers:
            self._probe = probe.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        probe, self._probe = self._probe, None
        if probe is None:
            return
        probe.__exit__()
        if trainer.is_global_zero:
            for name, strength in probe.strengths().items():
                pl_module.log(f"lrn/strength_{name}", strength, on_step=False, on_epoch=True, rank_zero_only=True)


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
