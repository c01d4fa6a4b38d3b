"""What keeps a long run safe: non-finite losses and weights, SIGTERM, labels out of range.

SIGTERM and SLURM's requeue signal go through Lightning's signal connector
(``SLURMEnvironment(auto_requeue=True)`` is selected under ``srun``), with one
change, :class:`SignalsAtBatchEnd`: what Lightning does inside the signal
handler is deferred to the end of a training batch, where all ranks act
together. :class:`SaveOnSigterm` turns the stop into a saved ``last.ckpt``;
:class:`StopLaunchedOnError` stops the DDP processes that a failed rank zero launched.
Lightning has no guard against a NaN loss any more (``terminate_on_nan`` is
gone), so :class:`NonFiniteGuard` is written here.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_prefixed_message
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from lightning.pytorch.trainer.connectors.signal_connector import _get_sigkill_signal
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..errors import ConfigError, TrainingError
from .checkpoints import at_epochs_last_batch, check_writable

log = logging.getLogger(__name__)

# 128 + SIGTERM, what a shell reports for a process SIGTERM killed: the run was
# stopped (and saved), not finished, so `train.py && evaluate.py` stops too.
EXIT_SIGTERM = 143
NONFINITE_POLICIES = ("stop", "skip")


def _any_rank(trainer: L.Trainer, flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (one all-reduce when there are several)."""
    if trainer.world_size == 1:
        return flag
    total = trainer.strategy.reduce(torch.tensor([float(flag)], device=device), reduce_op="sum")
    return bool(total.item() > 0)


class NonFiniteGuard(L.Callback):
    """A NaN or infinite training loss stops the run (``stop``) or skips the batch (``skip``).

    The loss is checked before ``backward`` and the verdict reduced over the
    ranks, so all ranks stop together, or all drop the same step. ``stop``
    raises :class:`TrainingError` naming the step, before the optimizer step,
    so no checkpoint ever holds the result of that step. ``skip`` lets
    backward run (DDP's gradient all-reduce needs every rank), then drops every
    gradient, so the optimizer leaves weights and momentum untouched; skipped
    steps are counted, logged as ``train/skipped_batches`` and kept in the
    checkpoint.

    Whatever the policy, a checkpoint is never written from non-finite weights
    (a finite loss can still blow the weights up): :meth:`on_save_checkpoint`
    refuses, before any file is opened.

    Args:
        policy: ``stop`` or ``skip``.
    """

    def __init__(self, policy: str = "stop") -> None:
        if policy not in NONFINITE_POLICIES:
            raise ConfigError("nonfinite_loss", f"must be one of {', '.join(NONFINITE_POLICIES)}, got {policy!r}")
        self.policy = policy
        self.skipped = 0
        self._drop_step = False

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        local_bad = not bool(torch.isfinite(loss).all())
        if not _any_rank(trainer, local_bad, loss.device):
            return
        where = f"training step {trainer.global_step} (epoch {trainer.current_epoch})"
        value = f"{loss.item()}" if local_bad else "not finite on another rank"
        if self.policy == "stop":
            raise TrainingError(
                f"the training loss is {value} at {where}: stopped before updating the weights, so every "
                "checkpoint holds an earlier, finite state. Lower optim.lr (or add trainer.gradient_clip_val), "
                "or give nonfinite_loss=skip to skip such batches."
            )
        self._drop_step = True
        self.skipped += 1
        if trainer.is_global_zero:
            log.warning("skipped the batch of %s: the loss is %s (%d skipped so far)", where, value, self.skipped)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._drop_step:
            # SGD (and every torch optimizer) leaves a parameter without a gradient alone.
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
            self._drop_step = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.policy == "skip":
            pl_module.log("train/skipped_batches", float(self.skipped), on_step=True, on_epoch=False)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Runs on every rank before anything is written (Trainer.save_checkpoint dumps, then writes).
        bad = [k for k, v in checkpoint.get("state_dict", {}).items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if _any_rank(trainer, bool(bad), pl_module.device):
            names = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "") if bad else "on another rank"
            raise TrainingError(
                f"the weights are not finite after training step {trainer.global_step} (epoch {trainer.current_epoch}; "
                f"{names}): no checkpoint was written, the previous ones are intact. Lower optim.lr "
                "(or add trainer.gradient_clip_val)."
            )

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = state_dict.get("skipped", 0)


class SignalsAtBatchEnd(L.Callback):
    """SIGTERM and SLURM's requeue signal, acted on by all ranks together at a training batch end.

    Lightning 2.6 acts inside the signal handler: on SIGTERM it broadcasts from
    rank zero, on the requeue signal it saves a checkpoint (collectives too),
    at whatever point the signal interrupted each rank. Under DDP that
    collective can meet another rank's gradient all-reduce, and the job hangs
    (seen: two CPU processes hung for good after one SIGTERM). Here the
    handlers Lightning registers only note the signal (rank zero still forwards
    SIGTERM to the processes it launched, as Lightning does); at the end of
    every training batch but an epoch's last, and when training ends, the notes are summed over the
    ranks, and then every rank runs Lightning's requeue handler (hpc checkpoint,
    ``scontrol requeue``) or stops with ``SIGTERMException`` together.
    """

    def __init__(self) -> None:
        self.sigterm = self.requeue = False
        self._lightning_requeue = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        # Lightning registers these attributes as handlers after the setup hooks (Trainer._run).
        connector = getattr(trainer, "_signal_connector", None)
        if connector is None or not hasattr(connector, "_slurm_sigusr_handler_fn"):
            # another Lightning (tests/test_faults.py fails on it): keep its own handling, and say so
            log.warning("this Lightning has no _signal_connector._slurm_sigusr_handler_fn: SIGTERM and SLURM's "
                        "requeue signal are handled inside the signal handler, which can hang a DDP job")
            return
        self.trainer = trainer
        self._lightning_requeue = type(connector)._slurm_sigusr_handler_fn.__get__(connector)
        connector._sigterm_notifier_fn = self._note_sigterm
        connector._slurm_sigusr_handler_fn = self._note_requeue

    def _note_sigterm(self, signum, frame) -> None:
        log.info(rank_prefixed_message("received SIGTERM: stopping after this batch", self.trainer.global_rank))
        launcher = self.trainer.strategy.launcher
        if not self.sigterm and launcher is not None:
            launcher.kill(signum)  # the DDP processes this one started
        self.sigterm = True

    def _note_requeue(self, signum, frame) -> None:
        self.requeue = True

    def _act(self, trainer, pl_module) -> None:
        notes = torch.tensor([float(self.sigterm), float(self.requeue)], device=pl_module.device)
        if trainer.world_size > 1:
            notes = trainer.strategy.reduce(notes, reduce_op="sum")
        sigterm, requeue = (notes > 0).tolist()
        if requeue and self._lightning_requeue is not None:
            self.requeue = False
            self._lightning_requeue(signal.SIGUSR1, None)
        if sigterm:
            self.sigterm = False
            raise SIGTERMException()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if at_epochs_last_batch(trainer):
            # A save here is one Lightning cannot resume (alexnet/training/checkpoints.py, StepCheckpoint):
            # act after the epoch's validation, at the next batch's end, as for a signal during validation.
            return
        self._act(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._act(trainer, pl_module)  # a SIGTERM during the last validation: save, and skip the test


class SaveOnSigterm(L.Callback):
    """On SIGTERM during fitting, save ``last.ckpt`` (atomically) and let Lightning stop the run.

    :class:`SignalsAtBatchEnd` raises ``SIGTERMException`` on every rank at the
    same batch, so every rank is here together, as ``Trainer.save_checkpoint``
    needs. The sanity check and the final test are not saved: neither has
    trained anything (and the test stage holds the best weights, not the last).
    """

    def __init__(self, last: Path) -> None:
        self.last = Path(last)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        trainer.save_checkpoint(self.last, weights_only=False)
        if trainer.is_global_zero:
            print(
                f"stopped by SIGTERM at training step {trainer.global_step} (epoch {trainer.current_epoch}); "
                f"saved {self.last}. Continue with: python train.py hydra.run.dir={self.last.parent.parent} ckpt_path=last",
                file=sys.stderr,
                flush=True,
            )


class CheckpointsWritable(L.Callback):
    """The checkpoint folder is checked when fitting starts, not at the first save an epoch later."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            check_writable(self.folder)  # every rank: they agree on a shared file system


class StopLaunchedOnError(L.Callback):
    """When the process that launched the other DDP processes fails, kill them.

    Lightning's launcher (one node, ``trainer=ddp`` without torchrun or srun)
    watches the processes it started, and kills them all when one of those
    fails; but when the launching process (rank zero) fails alone (more
    unreadable images in its shard than ``data.max_bad_images``, a checkpoint
    it cannot write, running out of memory), Lightning kills the others only
    for Ctrl-C. Otherwise they wait in their next collective: with NCCL until
    the process-group timeout (30 minutes), holding their GPUs; with gloo until
    the closed socket fails them (seen: 45 s, then a traceback of theirs that
    hides the error). They get ``grace_s`` to end on their own first, as they
    do when every rank stops with the same error (a NaN loss) and prints it.
    SIGTERM is left alone: every rank stops on it together and saves
    ``last.ckpt`` (:class:`SaveOnSigterm`).
    """

    def __init__(self, grace_s: float = 10.0) -> None:
        self.grace_s = grace_s

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        launcher = trainer.strategy.launcher
        if isinstance(exception, (SIGTERMException, KeyboardInterrupt)) or not isinstance(launcher, _SubprocessScriptLauncher):
            return  # (Lightning kills them after a Ctrl-C itself)
        # launcher.procs: filled in rank zero of Lightning's launcher, empty in the processes it launched.
        # Lightning's watcher thread (every 5 s) reads that same list, and kills this process as soon as
        # a child has ended with an error, its own or the kill below, cutting this one's error report
        # short: empty the list (the watcher then stops), and watch them here instead.
        procs = list(launcher.procs)
        launcher.procs.clear()
        deadline = time.monotonic() + self.grace_s
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        running = [proc for proc in procs if proc.poll() is None]
        if running:
            log.info("stopping the %d DDP processes this one launched: still running %.0f s after its error",
                     len(running), self.grace_s)
            for proc in running:
                proc.send_signal(_get_sigkill_signal())
                proc.wait()


def fault_callbacks(nonfinite_loss: str, last: Path) -> list[L.Callback]:
    """The callbacks of this module for a run whose ``last.ckpt`` is ``last``."""
    return [NonFiniteGuard(nonfinite_loss), SignalsAtBatchEnd(), SaveOnSigterm(last), CheckpointsWritable(Path(last).parent),
            StopLaunchedOnError()]
