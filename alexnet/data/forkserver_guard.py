"""Imported only by a rank's fork server (the first module it preloads): it dies with its rank.

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
the rank's main thread, where Lightning iterates the loaders.
Elsewhere (macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _in_fork_server() -> bool:
    # The server runs `python -c "from multiprocessing.forkserver import main; main(...)"`; a rank
    # that imported this by mistake must not be tied to its own parent (the shell, or rank zero).
    return sys.argv[:1] == ["-c"] and "multiprocessing.forkserver" in sys.modules


def _die_with_parent() -> bool:
    if not sys.platform.startswith("linux") or not _in_fork_server():
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if os.getppid() == 1:  # the rank died before the request: nothing would send the signal
        os._exit(0)
    return True


ENABLED = _die_with_parent()
