"""Imported only by a rank's fork server (preloaded): the server dies with its rank.

CPython's fork server exits when the last holder of its "alive" pipe is gone,
but every process it forks is handed a copy of that pipe, and a loader
worker's index queue holds its own writing end. So when a rank is killed
(SIGKILL: Lightning's launcher stopping the other processes after one failed,
the OOM killer, ``kill -9``), neither learns it: the server and the workers
live on for good, holding memory (the server has imported the script, and
with it torch) and the run's output pipes. Seen here: a killed rank's server
and its two validation workers, still alive minutes later. PyTorch's workers
do watch their parent, which is the server, not the rank: so the server asks
Linux to kill it when the rank dies (``PR_SET_PDEATHSIG``), and then its
workers exit on their own within seconds (torch's ``MP_STATUS_CHECK_INTERVAL``).
Linux sends the signal when the thread that started the server ends: here
the rank's main thread, where Lightning iterates the loaders. Elsewhere
(macOS) this does nothing.

The rank names itself in ``ALEXNET_FORKSERVER_PARENT`` (alexnet/data/start_method.py)
before its server starts, and the server inherits it: that says this process
is the server, and whether its parent is still the rank. A parent pid of 1
says nothing: a container's entrypoint, the rank, is pid 1. CPython imports
the script (``__main__``) before the preloaded modules, so the guard is armed
seconds after the server starts; a rank that dies before then leaves a server
with no workers, which exits by itself when it finds its alive pipe closed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

from .start_method import PARENT_ENV

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _rank() -> int | None:
    """The pid of the rank that started this fork server; None when this process is not one."""
    value = os.environ.get(PARENT_ENV, "")
    # The server runs `python -c "from multiprocessing.forkserver import main; main(...)"`.
    if not value.isdigit() or sys.argv[:1] != ["-c"] or "multiprocessing.forkserver" not in sys.modules:
        return None
    return int(value)


def _die_with_rank() -> bool:
    rank = _rank()
    if rank is None or not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if os.getppid() != rank:  # the rank died before the request: nothing would send the signal
        os._exit(0)
    return True


ENABLED = _die_with_rank()
