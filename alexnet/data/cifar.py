"""CIFAR-10/100 as in-memory uint8 tensors, from torchvision's pickles or a JPEG folder copy.

In memory because 60,000 32x32 images are 180 MB: the whole epoch then costs
one index per batch, and the augmentation runs batched (augment.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets

from ..files import atomic_path, cache_dir, probe_writable
from .folder import find_classes, iter_images, load_rgb

TORCHVISION = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}
PICKLE_FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def detect_layout(root: Path, name: str) -> str:
    """``folder`` (train/<class>/*.jpg and test/<class>/*.jpg), ``pickle``
    (torchvision's extracted batches) or ``missing`` (to download)."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        return "folder"
    if (root / PICKLE_FOLDER[name]).is_dir():
        return "pickle"
    return "missing"


def download(root: Path, name: str) -> None:
    """torchvision's download into root (needs the internet)."""
    for train in (True, False):
        TORCHVISION[name](str(root), train=train, download=True)


def load_pickled(root: Path, name: str, train: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    ds = TORCHVISION[name](str(root), train=train, download=False)
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    return x, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes)


def load_folder(split_dir: Path, classes: list[str], cache_dirs: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a class-per-folder split of 32x32 images once, then reuse the cached array.

    The cache is keyed by the list of files, so adding or removing an image
    rebuilds it; it goes in the first writable directory of ``cache_dirs``,
    written aside and renamed into place (:func:`alexnet.files.atomic_path`).
    """
    samples = [(p, i) for i, c in enumerate(classes) for p in iter_images(split_dir / c)]
    key = hashlib.sha1("\n".join(f"{p}:{i}" for p, i in samples).encode()).hexdigest()[:16]
    name = f"{split_dir.name}-{key}.npz"
    for d in cache_dirs:
        if (d / name).is_file():
            with np.load(d / name) as f:
                return torch.from_numpy(f["x"]), torch.from_numpy(f["y"])
    x = np.stack([np.asarray(load_rgb(p)) for p, _ in samples]).transpose(0, 3, 1, 2)  # (N, 3, H, W)
    y = np.array([i for _, i in samples], dtype=np.int64)
    x = np.ascontiguousarray(x)
    for d in cache_dirs:
        try:
            probe_writable(d)
        except OSError:
            continue  # a read-only data folder: the next one
        with atomic_path(d / name, suffix=".partial.npz") as partial:
            np.savez(partial, x=x, y=y)
        break
    return torch.from_numpy(x), torch.from_numpy(y)


def cache_dirs(root: Path) -> list[Path]:
    """Where decoded arrays may go: next to the data, else this project's cache folder."""
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    return [root / ".alexnet-cache", cache_dir() / digest]


def folder_classes(root: Path) -> list[str]:
    return find_classes(root / "train")
