"""SGD and the learning-rate schedules (Section 5 of the paper, and the usual alternatives).

Section 5: "stochastic gradient descent with a batch size of 128 examples,
momentum of 0.9, and weight decay of 0.0005 ... The learning rate was
initialized at 0.01 ... divide the learning rate by 10 when the validation
error rate stopped improving with the current learning rate ... reduced three
times prior to termination". The paper writes the update as
v <- 0.9 v - 0.0005 eps w - eps grad; torch.optim.SGD applies the same step
with the learning rate outside the velocity, which only differs in the few
steps after a learning-rate drop.
"""

from __future__ import annotations

import logging
import math

from torch import nn
from torch.optim import SGD
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, ReduceLROnPlateau, StepLR

from ..errors import ConfigError

log = logging.getLogger(__name__)

SCHEDULES = ("plateau", "step", "cosine", "constant")
MONITOR = "val/top1_error"  # Section 5: "when the validation error rate stopped improving"


def check_optim(optim) -> None:
    """Every ``optim.*`` key (a ``conf/optim`` option, dict or DictConfig): a ConfigError naming the first bad one."""
    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"optim.{key}", message)

    get = optim.get
    need(get("lr") > 0, "lr", f"must be > 0, got {get('lr')}")
    need(0 <= get("momentum") < 1, "momentum", f"must be in [0, 1), got {get('momentum')}")
    need(get("weight_decay") >= 0, "weight_decay", f"must be >= 0, got {get('weight_decay')}")
    need(get("schedule") in SCHEDULES, "schedule", f"must be one of {list(SCHEDULES)}, got {get('schedule')!r}")
    need(0 < get("factor", 0.1) < 1, "factor", f"must be in (0, 1), got {get('factor')}")
    need(get("patience", 5) >= 0, "patience", f"must be >= 0, got {get('patience')}")
    need(get("threshold", 1e-3) >= 0, "threshold", f"must be >= 0, got {get('threshold')}")
    drops = get("max_drops")
    need(drops is None or (isinstance(drops, int) and not isinstance(drops, bool) and drops >= 0), "max_drops",
         f"must be an integer >= 0, or null for no cap, got {drops!r}")
    need(get("min_lr", 0.0) >= 0, "min_lr", f"must be >= 0, got {get('min_lr')}")
    need(get("step_size", 30) >= 1, "step_size", f"must be >= 1, got {get('step_size')}")
    need(get("warmup_epochs", 0) >= 0, "warmup_epochs", f"must be >= 0, got {get('warmup_epochs')}")


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
            scheduler=PaperPlateau(
                optimizer,
                factor=factor,
                patience=optim.get("patience", 5),
                threshold=optim.get("threshold", 1e-3),
                max_drops=optim.get("max_drops"),
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
        check_optim(optim)  # names the key (schedule)
        raise AssertionError(f"unhandled schedule {schedule!r}")
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


class PaperPlateau(ReduceLROnPlateau):
    """Section 5's schedule: the learning rate multiplied by ``factor`` (0.1: "divide
    the learning rate by 10") "when the validation error rate stopped improving
    with the current learning rate", "three times prior to termination".

    torch's ReduceLROnPlateau (mode ``min``, relative ``threshold``) read as written:

    * *with the current learning rate*: the first error at a rate is that rate's
      reference, and "stopped improving" is more than ``patience`` epochs since
      the best error at this rate;
    * *stopped* improving needs it to have improved: no drop until an error at
      this rate has beaten the rate's first error by more than ``threshold``.
      With the paper's initialisation a network can sit at chance for epochs
      before it learns; a drop then can keep it there for good;
    * at most ``max_drops`` drops (``None``: no cap). Three at lr 0.01 end at 1e-5.

    Every counter is an attribute, so ReduceLROnPlateau's ``state_dict`` and
    ``load_state_dict`` (which Lightning checkpoints) save and restore it whole.

    Args:
        optimizer: the optimizer whose learning rates it sets.
        factor: the learning-rate multiplier at each drop (the paper's 0.1).
        patience: epochs without a new best at this rate that are tolerated.
        threshold: the smallest relative improvement that counts, for a new
            best and for "has improved at this rate".
        max_drops: the most drops in a run, or ``None``.
        min_lr: a floor under the learning rate.
    """

    def __init__(self, optimizer, factor: float = 0.1, patience: int = 5, threshold: float = 1e-3,
                 max_drops: int | None = 3, min_lr: float = 0.0) -> None:
        super().__init__(optimizer, mode="min", factor=factor, patience=patience, threshold=threshold, min_lr=min_lr)
        self.max_drops = max_drops
        self.drops = 0  # drops made so far
        self.improved = False  # has the error improved at the current rate?

    def step(self, metrics, epoch=None) -> None:  # noqa: ARG002 (epoch: torch's deprecated argument)
        current = float(metrics)
        self.last_epoch += 1
        if self.best == self.mode_worse:  # the first error at this rate: its reference
            self.best = current
        elif self._is_better(current, self.best):
            self.best, self.num_bad_epochs, self.improved = current, 0, True
        else:
            self.num_bad_epochs += 1
        capped = self.max_drops is not None and self.drops >= self.max_drops
        if self.improved and self.num_bad_epochs > self.patience and not capped:
            before = [group["lr"] for group in self.optimizer.param_groups]
            self._reduce_lr(self.last_epoch)
            if [group["lr"] for group in self.optimizer.param_groups] != before:
                self.drops += 1
                log.info("val/top1_error stopped improving at lr %g: drop %d of %s, lr now %g", before[0],
                         self.drops, self.max_drops if self.max_drops is not None else "any",
                         self.optimizer.param_groups[0]["lr"])
            self._reset()  # the next error is the new rate's reference
            self.improved = False
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
