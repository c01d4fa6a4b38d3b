"""Which images an epoch trains on, and every random draw of each image.

Both are functions of ``(seed, epoch, sample index)`` alone, so a run draws
the same batches whatever the number of DataLoader workers, of processes, or
of interruptions:

* the order: :class:`EpochSampler`, one permutation per ``(seed, epoch)``,
  the same on every rank; each data-parallel rank takes its strided share
  (``DistributedSampler``'s), and the towers of a model-parallel copy take
  the same share;
* the augmentation: :func:`batch_draws`, six numbers per image and epoch
  (crop position, flip, PCA lighting), from a counter-based generator keyed
  by the three.
  Workers and the batched on-device half both read them, so nothing random
  depends on which process or worker handles an image, or on a worker's
  random state (which no checkpoint holds).

What is drawn per step (dropout masks) comes from each process's own random
stream, which the checkpoint keeps.

The sampler yields ``(index, epoch)`` keys, so the epoch reaches the
datasets inside persistent worker processes too (an attribute set on the
dataset in the main process would not).
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

# Columns of the draws of one image: uniforms in [0, 1), then standard normals.
CROP_TOP, CROP_LEFT, FLIP = 0, 1, 2
LIGHTING = slice(3, 6)  # alpha / alphastd of Section 4.1's PCA lighting, one per eigenvector
NUM_DRAWS = 6
_RAW = 7  # 64-bit numbers per image: three uniforms, and four for three Box-Muller normals
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on uint64 arrays (numpy's uint64 arithmetic wraps, as it must)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def batch_draws(seed: int, epoch: int, indices) -> torch.Tensor:
    """The random numbers of images ``indices`` in ``epoch``: float64 (B, 6).

    Columns CROP_TOP, CROP_LEFT, FLIP are uniform in [0, 1); LIGHTING are
    standard normal. Image i's row depends on (seed, epoch, i) alone, not on
    the other indices asked for with it. float64, so that ``floor(u * n)`` is
    exactly uniform over any crop range.

    Written by hand, a counter-based generator (SplitMix64 over the counter
    (seed, epoch, index, draw)), because torch and numpy have no generator
    keyed by integers that is vectorised over keys: a torch.Generator per
    image costs about 10 us, this about 2 us per image in a batch.
    """
    index = np.asarray(indices, dtype=np.uint64).reshape(-1, 1)
    key = _mix(np.array([seed], dtype=np.uint64) * _GOLDEN + np.uint64(1))
    key = _mix(key ^ (np.array([epoch], dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03)))
    counter = index * np.uint64(_RAW) + np.arange(_RAW, dtype=np.uint64)
    u = (_mix(key + counter * _GOLDEN) >> np.uint64(11)).astype(np.float64) * 2.0**-53  # (B, 7) in [0, 1)
    radius = np.sqrt(-2.0 * np.log1p(-u[:, [3, 5]]))  # Box-Muller: two normals per pair of uniforms
    angle = 2.0 * np.pi * u[:, [4, 6]]
    normal = np.stack([radius[:, 0] * np.cos(angle[:, 0]), radius[:, 0] * np.sin(angle[:, 0]),
                       radius[:, 1] * np.cos(angle[:, 1])], axis=1)
    return torch.from_numpy(np.concatenate([u[:, :3], normal], axis=1))


def sample_draws(seed: int, epoch: int, index: int) -> torch.Tensor:
    """:func:`batch_draws` of one image: float64 (6,)."""
    return batch_draws(seed, epoch, [index])[0]


def split_key(key) -> tuple[int, int | None]:
    """A dataset key -> (index, epoch): :class:`EpochSampler` yields (index, epoch),
    evaluation samplers plain indices (no epoch: nothing is drawn)."""
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1])
    return int(key), None


def offsets(u: torch.Tensor, choices: int) -> torch.Tensor:
    """Uniforms in [0, 1) -> integers 0 .. choices-1, each equally likely."""
    return (u * choices).long().clamp_(max=choices - 1)


class Samples(NamedTuple):
    """A batch as it leaves the DataLoader (and, moved, reaches the device).

    x: uint8 images (B, C, H, W); y: int64 labels (B,); index: int64 sample
    indices (B,); draws: float64 (B, 6) per-image random numbers for training
    (:func:`sample_draws`), None for evaluation; bad: the files of this batch
    that could not be decoded (dropped from it).
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    draws: torch.Tensor | None
    bad: list[str]


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` whose order is a function of ``(seed, epoch)``, yielding ``(index, epoch)``.

    torch's DistributedSampler already shuffles with ``seed + epoch``; what
    this adds is that the seed is given, never read from ``PL_GLOBAL_SEED``
    (which per-rank seeding rewrites, so that every rank would take its share
    of a different permutation), and that the keys carry the epoch to the
    dataset. Resuming mid-epoch, torchdata's StatefulDataLoader skips the
    keys already trained on; the permutation is rebuilt from the epoch, which
    must be set before iteration starts (:meth:`set_epoch`; the DataModule
    does it when it builds the loader, as Lightning would only after its
    first ``iter()`` on a resumed run).

    Args:
        dataset: the training set.
        num_replicas, rank: the data-parallel size and rank (not the global
            ones: both towers of a model-parallel copy read the same share).
        seed: the run's seed.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.iterated_epoch: int | None = None  # the epoch the latest iteration drew its order for

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.iterated_epoch = self.epoch
        for index in super().__iter__():
            yield index, epoch

    def __repr__(self) -> str:
        return f"EpochSampler(seed={self.seed}, epoch={self.epoch}, rank={self.rank} of {self.num_replicas}, {self.num_samples} per epoch)"
