"""How many DataLoader workers a GPU needs: the rule of thumb a run prints at start.

AlexNet is cheap to compute, so a GPU trains it faster than a few CPU cores
can decode JPEGs. The figures below are rules of thumb, not measurements of
the machine a run is on; scripts/benchmark.py measures this machine's.
"""

from __future__ import annotations

import logging
import math
import os

log = logging.getLogger(__name__)

# Images per second one worker (one core) delivers, data.decode=worker: the worker part of
# the paper's training pipeline on 256-pixel JPEGs (scripts/prepare_imagenet.py --resize 256),
# torchvision.io decoding, measured by scripts/benchmark.py on one core of a 2-core AMD EPYC
# (README, Speed: 1,174 on a busy day). 500x375 photos: about 480, 40% of that.
PER_WORKER = 1200
# The paper network's training rate on one current GPU: a lower bound. torchvision's AlexNet
# on 4 A100s with 16 workers per GPU trained about 7,900 images/s in total, bound by its input
# pipeline, so about 2,000 per GPU.
GPU_IMAGES_PER_S = 2000


def workers_needed(gpu_rate: float = GPU_IMAGES_PER_S, per_worker: float = PER_WORKER) -> int:
    return math.ceil(gpu_rate / per_worker)


def cores_per_process(devices: int) -> int:
    """The CPU cores this process may use, shared by the node's ``devices`` training processes."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, devices))


def advice(num_workers: int, decode: str, devices: int) -> str | None:
    """The line for a GPU run whose workers cannot keep up with one GPU, or None."""
    if decode == "device":  # the workers only read files; the GPU decodes
        return None
    cores = cores_per_process(devices)
    working = min(num_workers, cores)
    need = workers_needed()
    if working >= need:
        return None
    if num_workers == 0:
        where = "data.num_workers=0: the training process itself decodes"
    else:
        where = f"data.num_workers={num_workers}" + (
            f" on {cores} CPU core{'s' if cores > 1 else ''} per GPU" if cores < num_workers else "")
    return (
        f"data: {where}, about {max(working, 1) * PER_WORKER:,} images/s (about {PER_WORKER:,} per worker and core "
        f"on 256-pixel JPEGs), less than the about {GPU_IMAGES_PER_S:,} images/s one GPU trains AlexNet at: the GPU "
        f"will wait. Use data.num_workers={need} or more on {need} free cores, or data.decode=device (nvJPEG)"
    )


def advise_workers(trainer, num_workers: int, decode: str) -> None:
    """Log :func:`advice` once, on rank zero, when the run trains on CUDA."""
    if trainer is None or trainer.strategy.root_device.type != "cuda" or not trainer.is_global_zero:
        return
    line = advice(num_workers, decode, max(1, len(getattr(trainer, "device_ids", [None]))))
    if line:
        log.warning("%s", line)
