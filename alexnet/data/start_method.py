"""How the DataLoader's worker processes start: ``data.multiprocessing_context``.

On Linux a DataLoader forks its workers from the training process. Forking a
process that runs threads is unsafe: the child inherits every lock as it
stood, and a lock that another thread held at that instant is never released
in the child. A DDP rank runs gloo's (or NCCL's) communication threads, and
the TensorBoard writer's and multiprocessing's queue feeder threads besides.
This deadlock was seen here: a rank's validation worker, forked during the
sanity check, hung for good in CPython's after-fork clean-up
(``PyOS_AfterFork_Child``, waiting on an inherited lock), and so did the run
(compare pytorch/pytorch#75147). Python 3.12 warns when a threaded process
forks, and Python 3.14 makes ``forkserver`` the default start method on Linux
for this reason.

``auto`` (the default) therefore starts the workers of a distributed run (more
than one process, or a process group of one: ``trainer=ddp`` on one device)
from a fork server: a clean single-threaded process, started once per rank,
that forks each worker. The server imports the script (``__main__``,
train.py) and the data modules once, before any worker is forked, so a worker
does not import them again. That costs each rank one such import at start
(README, "data.multiprocessing_context", has a measurement), and each worker
start a pickled copy of the dataset's file list sent to it, where a fork
shares the rank's memory: once per run with persistent workers (the
default), every epoch without. A run without a process group keeps the
platform's default: fork on Linux up to Python 3.13, which starts workers at
no cost (its threads are fewer, and the hang was not seen there); where the
default is already a fork server (Python 3.14), it gets the preload too.
``fork``, ``forkserver`` and ``spawn`` choose one method everywhere. A fork
server, and through it its workers, dies with its rank, also when the rank
is killed (alexnet/data/forkserver_guard.py).
"""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.context import BaseContext

from ..errors import ConfigError

CHOICES = ("auto", "fork", "forkserver", "spawn")
# What the fork server imports before it forks a worker: the script that the rank runs (so that
# unpickling the worker's arguments finds its classes; CPython imports it first), the guard that
# makes the server die with its rank (alexnet/data/forkserver_guard.py), the datasets and transforms.
PRELOAD = ["__main__", "alexnet.data.forkserver_guard", "alexnet.data"]
# The rank that starts a fork server, for the server to check (alexnet/data/forkserver_guard.py).
PARENT_ENV = "ALEXNET_FORKSERVER_PARENT"


def check(setting: str) -> None:
    if setting not in CHOICES:
        raise ConfigError("data.multiprocessing_context", f"must be one of {', '.join(CHOICES)}, got {setting!r}")
    if setting != "auto" and setting not in multiprocessing.get_all_start_methods():
        raise ConfigError(
            "data.multiprocessing_context",
            f"{setting!r} is not available on this platform (it has {', '.join(multiprocessing.get_all_start_methods())})",
        )


def method(setting: str, distributed: bool) -> str | None:
    """The start method for a process that is (or not) in a torch.distributed group; None: the platform's default."""
    if setting != "auto":
        return setting
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    if distributed or _default_method() == "forkserver":
        return "forkserver"
    return None


def _default_method() -> str:
    """The start method multiprocessing uses now, without fixing it as ``get_start_method()``
    does (a later ``set_start_method()`` without ``force=True`` would then raise)."""
    chosen = multiprocessing.get_start_method(allow_none=True)
    if chosen is None:  # not chosen yet: the platform's default context (private: no public way to read it)
        chosen = multiprocessing.context._default_context._default_context.get_start_method()
    return chosen


def context(setting: str, distributed: bool) -> BaseContext | None:
    """The ``multiprocessing_context`` to give a DataLoader with workers (None: its default)."""
    chosen = method(setting, distributed)
    if chosen is None:
        return None
    ctx = multiprocessing.get_context(chosen)
    if chosen == "forkserver":
        # Both take effect when this process's server starts, at its first worker (which inherits
        # the environment); later calls change nothing.
        ctx.set_forkserver_preload(PRELOAD)
        os.environ[PARENT_ENV] = str(os.getpid())
    return ctx
