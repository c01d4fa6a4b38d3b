"""What the network computes in: the Trainer's ``precision``, and nothing else.

Section 5: the paper trained on two GTX 580s, in float32. So every config
says ``trainer.precision: 32-true``, and anything else is the user's choice,
written on the command line (``trainer.precision=bf16-mixed``) and logged in
one line when the run starts. No switch turns a lower precision on by itself.

TF32 is the other way a float32 run can stop being float32: on Ampere and
later GPUs, matmuls and convolutions may round their inputs to 10 mantissa
bits. PyTorch's default does so for cuDNN convolutions (and not for
matmuls). The config key ``tf32`` decides both: ``false`` (the default) is
IEEE float32 as the paper, ``true`` is faster and logged like bf16.

``scripts/evaluate.py`` and ``scripts/predict.py`` compute in what the run
trained in (:func:`alexnet.inference.run_precision`).
"""

from __future__ import annotations

import logging

import lightning as L
import torch

log = logging.getLogger(__name__)

FLOAT32 = ("32-true", "32")


def set_tf32(on: bool) -> None:
    """TF32 for CUDA matmuls and cuDNN convolutions, on or off (process-wide)."""
    # The legacy flags, which Lightning and torch.set_float32_matmul_precision also use:
    # PyTorch refuses reads after a mix of these and its newer fp32_precision API.
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def describe(precision: str, tf32: bool, on_cuda: bool, verb: str = "training") -> str | None:
    """The line that says a run does not compute in the paper's float32, or None when it does."""
    if str(precision) not in FLOAT32:
        return f"{verb} in {precision}: not the paper's float32 (trainer.precision=32-true for the paper)"
    if tf32 and on_cuda:
        return f"{verb} in {precision} with TF32 matmuls and convolutions (tf32=true): not the paper's float32"
    return None


class Precision(L.Callback):
    """Sets TF32 as ``tf32`` says, on every process, and logs on rank zero when the run is not float32.

    Args:
        tf32: allow TF32 matmuls and convolutions on CUDA (the config key ``tf32``).
    """

    def __init__(self, tf32: bool = False) -> None:
        self.tf32 = tf32

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        set_tf32(self.tf32)
        on_cuda = trainer.strategy.root_device.type == "cuda"
        note = describe(trainer.precision, self.tf32, on_cuda, "training" if stage == "fit" else "evaluating")
        if note and trainer.is_global_zero:
            log.warning("%s", note)

    def __repr__(self) -> str:
        return f"Precision(tf32={self.tf32})"
