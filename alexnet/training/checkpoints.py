"""Checkpoints: written whole or not at all, found, read and vetted before anything trains on them.

Writing. Lightning's ``TorchCheckpointIO`` writes through an fsspec
transaction whose temporary file lives in the system temp folder and is never
fsynced, so the final "move" may be a copy across file systems, and a crash
right after it can leave a file that lists but does not load.
:class:`AtomicCheckpointIO` writes through :func:`alexnet.files.atomic_path`
instead: the temporary file sits in the checkpoint's own folder, so the
rename is one atomic step, and a failed write (full disk, quota,
permissions) leaves the previous checkpoint as it was. Partial files of killed
runs are removed by the next run's first save.

Reading. :func:`resolve_ckpt_path` turns ``ckpt_path`` (a file, ``last``,
``auto``) into a file; :func:`read_checkpoint` loads it or names it;
:func:`check_compatible` refuses another network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..errors import ConfigError, TrainingError
from ..files import PARTIAL_SUFFIX, atomic_path, probe_writable, remove_partial_files
from ..parallel.placement import network

__all__ = ["PARTIAL_SUFFIX", "AtomicCheckpointIO", "atomic_torch_save", "check_compatible", "check_writable",
           "read_checkpoint", "resolve_ckpt_path"]

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"


# ---------------------------------------------------------------- writing


class _Writes:
    """A file's ``write``, keeping the OSError that torch.save reports as a bare RuntimeError."""

    def __init__(self, f) -> None:
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` so that ``path`` is either the old file or the complete new one.

    Raises :class:`TrainingError` naming ``path`` when the folder cannot be
    written (full disk, file-size limit, permissions); the old file is untouched.
    """
    path = Path(path)
    try:
        with atomic_path(path) as partial, open(partial, "wb") as f:
            writes = _Writes(f)
            try:
                torch.save(obj, writes)
            except RuntimeError as err:
                raise (writes.error or err) from err
    except (OSError, RuntimeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        kept = f"; the previous {path.name} is intact" if path.is_file() else ""
        raise TrainingError(f"cannot write the checkpoint {path}: {reason}{kept}") from err


def check_writable(folder: str | os.PathLike) -> None:
    """Create ``folder`` and a file in it, or raise :class:`TrainingError` naming it."""
    try:
        probe_writable(folder)
    except OSError as err:
        raise TrainingError(f"cannot write checkpoints to {folder}: {err.strerror or err}") from err


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint plugin with :func:`atomic_torch_save` for local paths.

    ``Trainer(plugins=[AtomicCheckpointIO()])``; every checkpoint Lightning
    writes (ModelCheckpoint's last and best, the SIGTERM and SLURM saves) goes
    through it. Remote URLs (``s3://...``) keep Lightning's own writer.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cleaned: set[Path] = set()

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        folder = Path(path).parent
        if folder not in self._cleaned:  # once per folder and run: what a kill -9 left behind
            remove_partial_files(folder)
            self._cleaned.add(folder)
        atomic_torch_save(checkpoint, path)


class StepCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` training steps, but not at an epoch's last batch.

    Lightning 2.6 cannot resume from a save made there, inside the last batch's
    ``on_train_batch_end``, before the epoch's validation: it counts the epoch
    as done, skips its validation, and gives the next epoch the loader's saved
    position, the end of the epoch, so that epoch trains no batch at all
    (reproduced: killed while validating epoch 1 of 3, the resumed run stopped
    at step 40 of 60, "max_epochs=3 reached"). A kill during that validation,
    which lasts minutes on ImageNet, lost an epoch. Without the save there, the
    run resumes from the step save before (mid-epoch, exact), trains the last
    steps again and validates. The save that was due at the last batch is made
    at the epoch's end, after the validation. (A SIGTERM or SLURM's signal
    there is acted on one batch later, for the same reason:
    alexnet/training/faults.py.)
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._due_at_epoch_end = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not at_epochs_last_batch(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        elif trainer.global_step % self._every_n_train_steps == 0:
            # The save due here is made at the epoch's end instead, where Lightning resumes exactly:
            # an epoch without an epoch-end save (checkpoint.every_n_epochs > 1, or no validation
            # that epoch) would otherwise keep an older last.ckpt than the steps promise.
            self._due_at_epoch_end = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)  # (saves nothing: every_n_epochs is 0 here)
        if self._due_at_epoch_end and not self._should_skip_saving_checkpoint(trainer):
            # (private: what ModelCheckpoint's own step save calls)
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        self._due_at_epoch_end = False


def at_epochs_last_batch(trainer) -> bool:
    """In the hooks of the training epoch's last batch, where a checkpoint saved is not resumable."""
    epoch_loop = trainer.fit_loop.epoch_loop
    # (private: Lightning's own test of the epoch's end, limit_train_batches included)
    return epoch_loop.batch_progress.is_last_batch or epoch_loop._num_ready_batches_reached()


# ---------------------------------------------------------------- reading


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> Path | None:
    """``ckpt_path`` as a file: a path, ``last`` (must exist) or ``auto`` (may not)."""
    if ckpt_path in (None, ""):
        return None
    if ckpt_path in ("last", "auto"):
        last = run_dir / CHECKPOINT_DIR / LAST
        # Lightning's SLURM requeue signal saves RUN/hpc_ckpt_N.ckpt: the newest of those and last.ckpt wins.
        found = [p for p in (last, *run_dir.glob("hpc_ckpt_*.ckpt")) if p.is_file()]
        if found:
            return max(found, key=lambda p: p.stat().st_mtime)
        if ckpt_path == "auto":
            return None
        raise ConfigError(
            "ckpt_path",
            f"`last` asks to resume, but there is no checkpoint at {last}. Give the run folder "
            "of the run to continue with hydra.run.dir=RUN, or use ckpt_path=auto to start "
            "afresh when there is nothing to resume.",
        )
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError("ckpt_path", f"no checkpoint file at {path}")
    return path


def read_checkpoint(path: Path) -> dict:
    """Load a checkpoint on the CPU; a truncated or foreign file gets an error naming it."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # torch raises several types for a bad zip or pickle
        raise ConfigError("ckpt_path", f"{path} is not a readable checkpoint ({err.__class__.__name__}: {err})") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise ConfigError("ckpt_path", f"{path} is not a checkpoint written by this tool (no state_dict or hyper_parameters)")
    return checkpoint


def check_compatible(checkpoint: dict, path: Path, model: dict, num_classes: int) -> None:
    """Refuse to resume a checkpoint of another variant, option set or class count.

    The network is compared, not its placement: a ``paper_dual_gpu`` checkpoint
    resumes as ``paper_grouped`` and back (alexnet/parallel/placement.py).
    """
    saved = checkpoint["hyper_parameters"]
    theirs = {**network(saved["model"]), "num_classes": saved["num_classes"]}
    ours = {**network(model), "num_classes": num_classes}
    mismatches = [
        f"  model.{key}: checkpoint has {theirs.get(key)!r}, this run has {ours.get(key)!r}"
        for key in sorted(set(theirs) | set(ours))
        # dropout, init and the like do not change the weights' shapes, but the
        # run would not be the same run: refuse any difference in the network.
        # lrn_impl only chooses how the same numbers are computed.
        if key not in ("num_classes", "lrn_impl") and theirs.get(key) != ours.get(key)
    ]
    if theirs["num_classes"] != num_classes:
        mismatches.append(f"  num_classes: checkpoint has {theirs['num_classes']}, this run has {num_classes}")
    if mismatches:
        raise ConfigError(
            "ckpt_path",
            f"{path} was trained with a different network:\n" + "\n".join(mismatches)
            + "\nResume with the checkpoint's model and data options (they are in its run folder's .hydra/overrides.yaml).",
        )
