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
        # Over the whole run, warm-up included (warm-up only scales it). Fixed by
        # the first run: a resumed run keeps the saved T_max.
        t_max = max(1, max_epochs or 1)
        config["scheduler"] = CosineAnnealingLR(optimizer, T_max=t_max, eta_min=optim.get("min_lr", 0.0))
    elif schedule == "constant":
        config["scheduler"] = LambdaLR(optimizer, lambda epoch: 1.0)
    else:
        raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {schedule!r}")
    return {"optimizer": optimizer, "lr_scheduler": config}


def warmup_factor(step: int, warmup_steps: int, start: float = 0.1) -> float:
    """Linear warm-up from ``start`` times the learning rate to the full rate."""
    return start + (1.0 - start) * min(1.0, (step + 1) / warmup_steps)
