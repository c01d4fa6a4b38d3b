"""The random streams of a run's processes: seeded per data-parallel copy, saved and restored.

What is drawn per image (crops, flips, lighting) does not come from these
streams (alexnet/data/sampling.py); what is drawn per step does (dropout
masks), so a resumed run must continue each process's stream where it was.
"""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch

from ..parallel.ranks import data_parallel


def _numpy_state_to_safe(state: tuple) -> dict:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _numpy_state_from_safe(state: dict) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]


def seed_process(seed: int) -> None:
    """Python's, numpy's and torch's (every device's) generators, from ``seed``.

    Not L.seed_everything: it rewrites PL_GLOBAL_SEED, which Lightning's samplers read.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class RandomState(L.Callback):
    """Per-copy streams at fit start; every rank's state in each checkpoint, restored at train start.

    Every process was seeded alike before the network was built (so the ranks
    build the same network). At fit start each data-parallel copy gets the
    stream of ``seed + its rank``, or all copies would draw the same dropout
    masks; the towers of one model-parallel copy share it (each draws the whole
    layer's mask and keeps its half). The checkpoint keeps every rank's state
    (``checkpoint["rng_states"]``, gathered to rank zero, loadable with
    ``weights_only=True``); a resume on as many processes restores them at
    train start, after the sanity-check validation that Lightning runs
    between restoring and training. Another process count keeps fresh seeds.

    Args:
        seed: the run's seed (the config key ``seed``).
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._to_restore: list | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        rank, size = data_parallel(trainer)
        if size > 1:
            seed_process(self.seed + rank)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        state = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state_to_safe(np.random.get_state()),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        }
        if trainer.world_size > 1:
            states: list = [None] * trainer.world_size
            torch.distributed.all_gather_object(states, state)
        else:
            states = [state]
        checkpoint["rng_states"] = states

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._to_restore = checkpoint.get("rng_states")

    def on_train_start(self, trainer, pl_module) -> None:
        states, self._to_restore = self._to_restore, None
        if not states or len(states) != trainer.world_size:
            return  # a different number of processes: keep the fresh per-copy seeds
        state = states[trainer.global_rank]
        torch.set_rng_state(state["torch"])
        np.random.set_state(_numpy_state_from_safe(state["numpy"]))
        random.setstate(state["python"])
        if state.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
