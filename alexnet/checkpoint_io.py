"""Checkpoint files that are either complete or absent: write aside, fsync, rename.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction whose
temporary file lives in the system temp folder and is never fsynced, so the
final "move" may be a copy across file systems, and a crash right after it can
leave a file that lists but does not load. Here the temporary file sits in the
checkpoint's own folder, so ``os.replace`` is one atomic rename:

    checkpoints/.checkpoint-XXXX.partial   written, flushed, fsynced
    checkpoints/last.ckpt                  replaced in one step; the folder is fsynced

A kill at any moment leaves either the previous ``last.ckpt`` or the new one
under that name, never a truncated file; a failed write (full disk, quota,
permissions) removes its partial file and leaves the previous checkpoint as it
was. Partial files of killed runs are removed by the next run's first save.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .errors import TrainingError

PARTIAL_PREFIX, PARTIAL_SUFFIX = ".checkpoint-", ".partial"


def _umask() -> int:
    # mkstemp makes 0600 files; a checkpoint gets the mode open() would give it.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (and put it back at once)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()


def _fsync_dir(folder: Path) -> None:
    # The rename itself is only durable once the folder's entry is on disk.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:  # some file systems (and Windows) cannot fsync a folder
        if err.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


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
    fd, partial = None, None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Not named after the target: Lightning finds hpc_ckpt_N.ckpt by substring.
        fd, partial = tempfile.mkstemp(prefix=PARTIAL_PREFIX, suffix=PARTIAL_SUFFIX, dir=path.parent)
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            fd = None  # the file object owns it now
            writes = _Writes(f)
            try:
                torch.save(obj, writes)
            except RuntimeError as err:
                raise (writes.error or err) from err
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
        partial = None
        _fsync_dir(path.parent)
    except (OSError, RuntimeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        kept = f"; the previous {path.name} is intact" if path.is_file() else ""
        raise TrainingError(f"cannot write the checkpoint {path}: {reason}{kept}") from err
    finally:
        if fd is not None:
            os.close(fd)
        if partial is not None:
            Path(partial).unlink(missing_ok=True)


def check_writable(folder: str | os.PathLike) -> None:
    """Create ``folder`` and a file in it, or raise :class:`TrainingError` naming it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=PARTIAL_PREFIX, suffix=PARTIAL_SUFFIX, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise TrainingError(f"cannot write checkpoints to {folder}: {err.strerror or err}") from err


def remove_partial_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the partial files that killed runs left in ``folder``; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for partial in folder.glob(f"{PARTIAL_PREFIX}*{PARTIAL_SUFFIX}"):
        partial.unlink(missing_ok=True)
        removed.append(partial)
    return removed


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
