"""Where this process stands among the data-parallel copies of the network."""

from __future__ import annotations


def data_parallel(trainer) -> tuple[int, int]:
    """(rank, size) of this process among the data-parallel copies: the sampler's.

    Under DDP every process is a copy (the global rank and world size); under
    ``model=paper_dual_gpu`` (alexnet.parallel.strategy) the two towers of a copy share
    one rank, and the size is the number of copies. One process: (0, 1).
    """
    strategy = getattr(trainer, "strategy", None) if trainer is not None else None
    kwargs = getattr(strategy, "distributed_sampler_kwargs", None)
    if not kwargs:
        return 0, 1
    return int(kwargs["rank"]), int(kwargs["num_replicas"])
