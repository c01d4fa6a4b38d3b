"""Large host allocations reused instead of page-faulted afresh: glibc's malloc, tuned for CPU training.

glibc serves an allocation above its mmap threshold (dynamic, at most 32 MiB
by default) with fresh pages from mmap and unmaps them when it is freed. A
batch of 64 float32 224x224 images is 38.5 MiB, and a CPU training step
allocates several such activations: each of them page-faults all its pages
again, every step. PyTorch has no caching allocator for the CPU; its
performance guide recommends jemalloc or TCMalloc through LD_PRELOAD for
this reason. A running process can still raise glibc's own thresholds
(``mallopt``), so that freed blocks stay in the heap for the next step.

scripts/benchmark.py measures it on the batch half of the paper's training
pipeline (flip, lighting, normalisation of 64 224x224 images), one process
with and one without: 2.5 times faster with it (README, Speed). The cost:
the process keeps up to about 1 GiB of freed memory for reuse instead of
returning it to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# Allocations up to 256 MiB (a float batch of 128 224x224 images is 77 MiB) come from the
# heap and are reused; free memory at the top of the heap goes back to the system only
# beyond 1 GiB, about a CPU training step of the paper's network at batch 128. So a
# process keeps about 1 GiB more than it uses, not every peak it ever reached.
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (and the workers it forks).
    False where the C library is not glibc (macOS, musl): nothing is changed there."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
