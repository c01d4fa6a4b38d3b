"""Class-per-folder image datasets (ImageNet's layout): listing, decoding, skipping bad files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import ConfigError
from .decode import DECODERS, PIL_ERRORS, decode, read_bytes, unreadable
from .sampling import Samples, batch_draws, sample_draws, split_key


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def find_classes(directory: Path) -> list[str]:
    """The sorted class folders of a split.

    Written here rather than torchvision's ``find_classes`` because that one
    makes classes of hidden folders such as ``.ipynb_checkpoints`` and ``.git``.
    """
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not is_hidden(e.name))


# torchvision's list lacks GIF, which PIL decodes.
EXTENSIONS = tuple(IMG_EXTENSIONS) + (".gif",)


def is_image(name: str) -> bool:
    return not is_hidden(name) and name.lower().endswith(EXTENSIONS)


def iter_images(class_dir: Path):
    """Image files under a class folder, hidden files and folders left out, sorted."""
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for name in sorted(filenames):
            if is_image(name):
                yield os.path.join(dirpath, name)


def has_image(class_dir: Path) -> bool:
    return next(iter_images(class_dir), None) is not None


def list_samples(split_dir: Path, classes: list[str]) -> list[tuple[str, int]]:
    """(path, class index) for every image of a split, in a fixed order."""
    return [(path, i) for i, c in enumerate(classes) for path in iter_images(split_dir / c)]


def check_split_classes(root: Path, splits: list[str], key: str = "data.root") -> list[str]:
    """The classes shared by all splits; an error naming folders when they differ or are empty.

    Cheap: lists folders and stops at the first image of each class.
    """
    found = {s: find_classes(root / s) for s in splits}
    first = splits[0]
    if not found[first]:
        raise ConfigError(key, f"{root / first} has no class folders (expected {root / first}/<class>/<image>)")
    for s in splits[1:]:
        if found[s] != found[first]:
            only_a = sorted(set(found[first]) - set(found[s]))
            only_b = sorted(set(found[s]) - set(found[first]))
            raise ConfigError(
                key,
                f"{root / first} and {root / s} have different classes: "
                f"only in {first}/: {_few(only_a)}; only in {s}/: {_few(only_b)}",
            )
    empty = [str(root / s / c) for s in splits for c in found[first] if not has_image(root / s / c)]
    if empty:
        raise ConfigError(key, f"empty class folder(s) with no images: {_few(empty)}")
    return found[first]


def _few(items: list[str], n: int = 10) -> str:
    shown = ", ".join(items[:n]) or "none"
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def load_rgb(path, min_size: int | None = None) -> Image.Image:
    """Decode any image file (a path or a file object) to an RGB PIL image, whatever its
    extension says.

    Grayscale, CMYK, palette, GIF, RGBA and PNG data named .JPEG all come out
    RGB: PIL detects the format from the bytes. The workers decode JPEG data
    with torchvision.io instead (alexnet.data.decode), and this where that
    cannot. ``min_size`` lets a large JPEG decode at reduced resolution (JPEG's
    DCT scaling), which still leaves the shorter side >= min_size.
    """
    with Image.open(path) as img:
        if min_size and img.format == "JPEG":
            img.draft("RGB", (min_size, min_size))
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            # Composite on white rather than dropping alpha onto whatever colour hides under it.
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, img).convert("RGB")
        return img.convert("RGB")  # .convert loads the pixels: a truncated file raises here


class ImageFiles(Dataset):
    """(path, label) samples decoded (:func:`alexnet.data.decode.decode`) and transformed.

    Keys are sample indices (evaluation) or ``(index, epoch)`` (training,
    from :class:`~alexnet.data.sampling.EpochSampler`): then the transform
    also gets the image's draws for that epoch, from ``seed``.

    A file that fails to decode yields ``(None, label, index, None, path)``
    instead of raising, so one bad JPEG among a million does not kill a run;
    :func:`collate_skipping_bad` drops it and reports its path in the batch.

    ``decoder``: ``auto`` (JPEG data with torchvision.io, the rest with PIL) or
    ``pil`` (every file with PIL, the path before torchvision.io; for comparison).
    """

    def __init__(self, samples: list[tuple[str, int]], transform, min_size: int | None = None, seed: int = 0,
                 decoder: str = "auto"):
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.samples, self.transform, self.min_size, self.seed = samples, transform, min_size, seed
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        index, epoch = split_key(key)
        return self._item(index, None if epoch is None else sample_draws(self.seed, epoch, index))

    def __getitems__(self, keys) -> list:
        """A batch's samples; the draws of its images are made in one vectorised call."""
        pairs = [split_key(k) for k in keys]
        epochs = {epoch for _, epoch in pairs}
        draws = {}
        for epoch in epochs - {None}:
            indices = [i for i, e in pairs if e == epoch]
            draws.update(((i, epoch), d) for i, d in zip(indices, batch_draws(self.seed, epoch, indices)))
        return [self._item(i, draws.get((i, e))) for i, e in pairs]

    def _item(self, index: int, draws: torch.Tensor | None):
        path, label = self.samples[index]
        try:
            image = decode(read_bytes(path), self.min_size, self.decoder)
        except PIL_ERRORS as e:
            return None, label, index, draws, unreadable(path, e)
        x = self.transform(image) if draws is None else self.transform(image, draws)
        return x, label, index, draws, None


class EncodedSamples(NamedTuple):
    """A batch of undecoded files (``data.decode=device``), as the workers hand it over.

    ``data``: the files' bytes end to end, one uint8 tensor (one shared-memory
    transfer from a worker, one pinned copy), ``lengths`` each file's share;
    ``paths``: the files, for decoding errors to name. y, index, draws, bad as in
    :class:`~alexnet.data.sampling.Samples`. The DataModule decodes the batch on
    the device into Samples.
    """

    data: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    draws: torch.Tensor | None
    bad: list[str]
    lengths: list[int]
    paths: list[str]

    def files(self) -> list[torch.Tensor]:
        """Each file's bytes: views of ``data``."""
        return list(self.data.split(self.lengths)) if self.lengths else []


class FileBytes(ImageFiles):
    """:class:`ImageFiles` for ``data.decode=device``: each item is the file's bytes,
    read and nothing else (decoding and crops happen on the device, batched)."""

    def __init__(self, samples: list[tuple[str, int]], seed: int = 0):
        super().__init__(samples, transform=None, seed=seed)

    def _item(self, index: int, draws: torch.Tensor | None):
        path, label = self.samples[index]
        try:
            data = read_bytes(path)
        except OSError as e:
            return None, label, index, draws, unreadable(path, e), path
        return data, label, index, draws, None, path


def collate_bytes(items) -> EncodedSamples:
    """:func:`collate_skipping_bad` for :class:`FileBytes`: the files' bytes joined end to end."""
    good = [item for item in items if item[4] is None]
    draws = torch.stack([item[3] for item in good]) if good and good[0][3] is not None else None
    return EncodedSamples(
        torch.cat([item[0] for item in good]) if good else torch.empty(0, dtype=torch.uint8),
        torch.tensor([item[1] for item in good], dtype=torch.int64),
        torch.tensor([item[2] for item in good], dtype=torch.int64),
        draws,
        [item[4] for item in items if item[4] is not None],
        [len(item[0]) for item in good],
        [item[5] for item in good],
    )


def collate_skipping_bad(items) -> Samples:
    """Stack the good samples into :class:`~alexnet.data.sampling.Samples`; ``bad``
    lists the files that failed. The DataModule's ``on_after_batch_transfer``
    counts them."""
    good = [item for item in items if item[4] is None]
    bad = [item[4] for item in items if item[4] is not None]
    if not good:
        return Samples(torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.int64),
                       torch.empty(0, dtype=torch.int64), None, bad)
    x = default_collate([item[0] for item in good])  # in a worker: straight into shared memory
    y = torch.tensor([item[1] for item in good], dtype=torch.int64)
    index = torch.tensor([item[2] for item in good], dtype=torch.int64)
    draws = torch.stack([item[3] for item in good]) if good[0][3] is not None else None
    return Samples(x, y, index, draws, bad)
