"""SGD and the learning-rate schedules (Section 5 of the paper, and the usual alternatives).

Section 5: "stochastic gradient descent with a batch size of 128 examples,
momentum of 0.9, and weight decay of 0.0005 ... The learning rate was
initialized at 0.01 ... divide the learning rate by 10 when the validation
error rate stopped improving". The paper writes the update as
v <- 0.9 v - 0.0005 eps w - eps grad; torch.optim.SGD applies the same step
with the learning rate outside the velocity, which only differs in the few
steps after a learning-rate drop.
"""

from __future__ import annotations

import math

from torch import nn
from torch.optim import SGD
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, ReduceLROnPlateau, StepLR

SCHEDULES = ("plateau", "step", "cosine", "constant")
MONITOR = "val/top1_error"  # Section 5: "when the validation error rate stopped improving"


def build_optimizer(net: nn.Module, optim: dict, max_epochs: int | None) -> dict:
    """The optimizer and scheduler config that ``configure_optimizers`` returns."""
    if optim.get("decay_biases", True):
        params = net.parameters()
    else:  # Caffe's decay_mult: 0 on biases
        decay = [p for n, p in net.named_parameters() if not n.endswith("bias")]
        no_decay = [p for n, p in net.named_parameters() if n.endswith("bias")]
        params = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = SGD(
        params,
        lr=optim["lr"],
        momentum=optim["momentum"],
        weight_decay=optim["weight_decay"],
        nesterov=optim.get("nesterov", False),
    )
    schedule = optim["schedule"]
    factor = optim.get("factor", 0.1)
    # "name": "lr" makes LearningRateMonitor log the TensorBoard tag `lr`.
    config: dict = {"name": "lr", "interval": "epoch"}
    if schedule == "plateau":
        config.update(
            scheduler=ReduceLROnPlateau(
                optimizer,
                mode="min",
                factor=factor,
                patience=optim.get("patience", 5),
                threshold=optim.get("threshold", 1e-3),
                min_lr=optim.get("min_lr", 0.0),
            ),
            monitor=MONITOR,
            strict=True,
        )
    elif schedule == "step":
        config["scheduler"] = StepLR(optimizer, step_size=optim.get("step_size", 30), gamma=factor)
    elif schedule == "cosine":
        # Over the whole run, warm-up included (warm-up only scales it); a
        # resumed run with another trainer.max_epochs re-plans it (CosineToEnd.replan).
        t_max = max(1, max_epochs or 1)
        config["scheduler"] = CosineToEnd(optimizer, T_max=t_max, eta_min=optim.get("min_lr", 0.0))
    elif schedule == "constant":
        config["scheduler"] = LambdaLR(optimizer, lambda epoch: 1.0)
    else:
        raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {schedule!r}")
    return {"optimizer": optimizer, "lr_scheduler": config}


def warmup_factor(step: int, warmup_steps: int, start: float = 0.1) -> float:
    """Linear warm-up from ``start`` times the learning rate to the full rate."""
    return start + (1.0 - start) * min(1.0, (step + 1) / warmup_steps)


class CosineToEnd(CosineAnnealingLR):
    """Cosine annealing to ``eta_min`` at epoch ``T_max`` that can be re-planned.

    Until re-planned it is torch's CosineAnnealingLR (in closed form). A run
    extended past its end (``ckpt_path=last trainer.max_epochs=N``) would have
    CosineAnnealingLR climb back up its next half-cycle; :meth:`replan` instead
    anneals from where the schedule stands, at its current learning rate, to
    ``eta_min`` at the new last epoch, so the rate never rises again. Loads
    CosineAnnealingLR's state (checkpoints written before it existed).
    """

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        self.start_epoch = 0  # where the current half-cycle starts, and its rates there
        self.start_lrs: list[float] | None = None
        super().__init__(optimizer, T_max=T_max, eta_min=eta_min, last_epoch=last_epoch)

    def get_lr(self) -> list[float]:
        starts = self.start_lrs or self.base_lrs
        span = max(1, self.T_max - self.start_epoch)
        t = min(max(self.last_epoch - self.start_epoch, 0), span)
        return [self.eta_min + (lr - self.eta_min) * (1 + math.cos(math.pi * t / span)) / 2 for lr in starts]

    def replan(self, end_epoch: int) -> bool:
        """End at ``end_epoch`` instead, from the current epoch and rates; False if already so."""
        if end_epoch == self.T_max:
            return False
        self.start_epoch, self.start_lrs = self.last_epoch, list(self.get_last_lr())
        self.T_max = max(end_epoch, self.last_epoch + 1)
        return True
