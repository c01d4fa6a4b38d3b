"""The GPU fast path: how the network runs on the device, never what it computes.

The keys of ``fast_path`` in ``conf/config.yaml``; ``auto`` means on when
training on CUDA and off elsewhere, ``true``/``false`` force it either way:

* ``channels_last``: activations (and conv weights) in NHWC, the layout that
  tensor-core convolutions read without transposing;
* ``compile``: ``torch.compile`` the network (``true``: the default
  backend, or a backend's name), in place, so checkpoints keep their keys;
* ``reuse_memory``: the one switch for the CPU, ``auto`` meaning on when
  training on the CPU: large freed host allocations are kept for reuse
  instead of page-faulted afresh every step (alexnet/training/host_memory.py).

None of them changes the number format: that is ``trainer.precision`` alone
(and ``tf32``; alexnet/training/precision.py). bf16 is ``trainer.precision=bf16-mixed``,
asked for on the command line; cuDNN autotuning is ``trainer.benchmark`` alone
(``trainer=gpu`` and ``trainer=ddp`` turn it on). This module reads the
Trainer's arguments and edits none of them.

The rest of the fast path is in the data: workers only decode (and take the
uint8 crop); flip, lighting and normalisation run batched on the device
(``on_after_batch_transfer``), from pinned memory (``data.pin_memory``, on by
default with CUDA) with the non-blocking copies Lightning makes from it;
in-memory datasets live on the GPU.
"""

from __future__ import annotations

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from .host_memory import keep_freed_memory

SWITCHES = ("channels_last",)
DEFAULTS = {"channels_last": "auto", "compile": False, "reuse_memory": "auto"}
# Keys that moved to the Trainer, which owns them.
MOVED = {"bf16": "trainer.precision=bf16-mixed", "cudnn_benchmark": "trainer.benchmark=true"}


def _switch(key: str, value, on_cuda: bool) -> bool:
    if value == "auto":
        return on_cuda
    if isinstance(value, bool):
        return value
    raise ConfigError(f"fast_path.{key}", f"must be auto, true or false, got {value!r}")


def trains_on_cuda(trainer_args: dict) -> bool:
    accelerator = trainer_args.get("accelerator", "auto")
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def configure(fast_path: DictConfig | dict | None, trainer_args: dict) -> list[L.Callback]:
    """Resolve ``fast_path`` for a Trainer built with ``trainer_args`` (read, not changed):
    the callback that applies channels_last and compile, if any."""
    options = {**DEFAULTS, **(OmegaConf.to_container(fast_path) if isinstance(fast_path, DictConfig) else fast_path or {})}
    for key, instead in MOVED.items():  # bf16 turned itself on for CUDA runs that said 32-true
        if key in options:
            raise ConfigError(f"fast_path.{key}", f"is gone: the Trainer owns it; give {instead}")
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise ConfigError("fast_path", f"unknown key(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    on_cuda = trains_on_cuda(trainer_args)
    on = {key: _switch(key, options[key], on_cuda) for key in SWITCHES}
    if _switch("reuse_memory", options["reuse_memory"], not on_cuda):  # auto: on for the CPU
        keep_freed_memory()
    compile_ = options["compile"]
    if not isinstance(compile_, (bool, str)):
        raise ConfigError("fast_path.compile", f"must be true, false or a torch.compile backend, got {compile_!r}")
    if not on["channels_last"] and not compile_:
        return []
    return [FastPath(channels_last=on["channels_last"], compile=compile_)]


def _channels_last_input(module, args):
    x = args[0]
    if x.dim() == 4:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return None


class FastPath(L.Callback):
    """channels_last and torch.compile for ``pl_module.net``.

    Weights turn channels_last at setup, before the strategy wraps or moves
    the module; the network's input turns channels_last by a forward
    pre-hook, and compilation happens once the final network is in place
    (after ``configure_model``, which model parallelism uses to swap it).
    """

    def __init__(self, channels_last: bool = True, compile: bool | str = False) -> None:
        self.channels_last, self.compile = channels_last, compile
        self._prepared: set[int] = set()

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.channels_last:
            pl_module.net.to(memory_format=torch.channels_last)

    def _prepare(self, trainer, pl_module) -> None:
        net = pl_module.net
        if id(net) in self._prepared:
            return
        if self.channels_last:
            net.register_forward_pre_hook(_channels_last_input)
        if self.compile:
            net.compile(**({} if self.compile is True else {"backend": self.compile}))
        self._prepared.add(id(net))

    on_fit_start = on_validation_start = on_test_start = on_predict_start = _prepare

    def __repr__(self) -> str:
        return f"FastPath(channels_last={self.channels_last}, compile={self.compile!r})"
