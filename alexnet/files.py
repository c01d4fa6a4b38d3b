"""Files that are either complete or absent, folders that can be written, and the cache folder.

Plain Python, no torch: the one implementation that checkpoints
(:mod:`alexnet.training.checkpoints`), the LRN kernel cache
(:mod:`alexnet.nn.fast_lrn`) and the CIFAR decode cache
(:mod:`alexnet.data.cifar`) write through.

    folder/.partial-XXXX.partial   written, flushed, fsynced
    folder/target                  replaced in one step (os.replace); the folder is fsynced

A kill at any moment leaves the previous file or the complete new one under
the target's name, never a truncated file; a failed write removes its partial
file and leaves the previous one as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator

PARTIAL_PREFIX, PARTIAL_SUFFIX = ".partial-", ".partial"


def _umask() -> int:
    # mkstemp makes 0600 files; a written file gets the mode open() would give it.
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


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable: its entry must reach the disk too."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:  # some file systems (and Windows) cannot fsync a folder
        if err.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = PARTIAL_SUFFIX) -> Iterator[Path]:
    """A temporary path beside ``target`` to write; renamed over ``target`` when the block ends.

    The partial file is never named after the target (Lightning finds
    ``hpc_ckpt_N.ckpt`` by substring). If the block raises, the partial file is
    removed and ``target`` is untouched. ``suffix``: the partial file's ending
    (``.partial.npz`` for numpy, which appends ``.npz`` otherwise).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=PARTIAL_PREFIX, suffix=suffix, dir=target.parent)
    partial = Path(name)
    try:
        os.fchmod(fd, FILE_MODE)
        os.close(fd)
        fd = None
        yield partial
        with open(partial, "rb+") as f:  # whatever wrote it, its bytes reach the disk before the rename
            os.fsync(f.fileno())
        os.replace(partial, target)
        fsync_dir(target.parent)
    finally:
        if fd is not None:
            os.close(fd)
        partial.unlink(missing_ok=True)


def remove_partial_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the partial files that killed processes left in ``folder``; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for partial in folder.glob(f"{PARTIAL_PREFIX}*"):
        partial.unlink(missing_ok=True)
        removed.append(partial)
    return removed


def probe_writable(folder: str | os.PathLike) -> None:
    """Create ``folder`` and a file in it (then remove the file); raises OSError when it cannot."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=PARTIAL_PREFIX, suffix=PARTIAL_SUFFIX, dir=folder)
    os.close(fd)
    os.unlink(probe)


def cache_dir() -> Path:
    """This project's cache folder: $ALEXNET_CACHE, else $XDG_CACHE_HOME/alexnet, else ~/.cache/alexnet."""
    if os.environ.get("ALEXNET_CACHE"):
        return Path(os.environ["ALEXNET_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "alexnet"
