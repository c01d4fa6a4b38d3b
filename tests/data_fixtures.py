"""Fixtures and helpers for the data tests: image trees made on the fly and the real CIFAR-10 copy.

Test modules import what they use (``from data_fixtures import cifar10_jpg``);
pytest picks fixtures up from the importing module's namespace.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CIFAR_TARBALL = SHARED / "datasets" / "cifar10-jpg.tar.gz"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "alexnet-tests"


@contextlib.contextmanager
def cache_lock():
    """Hold CACHE/.lock: pytest-xdist's workers (and two test runs) build the shared copies once."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def random_image(size=(48, 40), seed=0, mode="RGB") -> Image.Image:
    """A noise image (width, height) in any PIL mode."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    return rgb if mode == "RGB" else rgb.convert(mode)


def photo_image(size=(341, 256), seed=0) -> Image.Image:
    """A photo-like RGB image (width, height): smooth coarse colour noise (one value per
    16 pixels, upscaled BICUBIC) plus a little pixel texture. Unlike :func:`random_image`'s
    noise, it compresses as photos do, so JPEG decoders differ as they do on photos."""
    w, h = size
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((w, h), Image.BICUBIC), dtype=np.int16)
    texture = rng.integers(-12, 13, (h, w, 3))
    return Image.fromarray(np.clip(smooth + texture, 0, 255).astype(np.uint8))


def save(image: Image.Image, path: Path, fmt: str = "JPEG", **options) -> Path:
    """Write ``image`` in ``fmt`` whatever the file name says (PNG data named .JPEG...);
    ``options`` go to PIL's save (``quality=90``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    path.write_bytes(buf.getvalue())
    return path


def image_tree(root: Path, classes=("n01440764", "n01443537", "n01484850"), per_class=4, size=(80, 64), splits=("train", "val")) -> Path:
    """An ImageNet-layout tree: root/<split>/<class>/<class>_<i>.JPEG with noise JPEGs."""
    for s_i, split in enumerate(splits):
        for c_i, c in enumerate(classes):
            for i in range(per_class):
                save(random_image(size, seed=1000 * s_i + 100 * c_i + i), root / split / c / f"{c}_{i}.JPEG")
    return root


@pytest.fixture(scope="session")
def cifar10_jpg() -> Path:
    """The real CIFAR-10 JPEG copy from shared/datasets, extracted once outside the repository."""
    if not CIFAR_TARBALL.is_file():
        pytest.skip(f"the real CIFAR-10 copy is not at {CIFAR_TARBALL}")
    target = CACHE / "cifar10-jpg"
    with cache_lock():
        if not (target / "train").is_dir() or not (target / "test").is_dir():
            _extract(CIFAR_TARBALL, target)
    return target


def _extract(tarball: Path, target: Path) -> None:
    """Unpack aside, then rename into place: an interrupted extraction leaves no half tree."""
    tmp = CACHE / f"{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(tmp, filter="data")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


@pytest.fixture(scope="session")
def cifar10_jpg_subset(cifar10_jpg) -> Path:
    """Symlinks to the first 200 training and 50 test images of each real CIFAR-10 class:
    the real files, few enough to decode in a second."""
    target = CACHE / "cifar10-jpg-subset"
    with cache_lock():
        _link_subset(cifar10_jpg, target)
    return target


def _link_subset(cifar10_jpg: Path, target: Path) -> None:
    for split, n in (("train", 200), ("test", 50)):
        for class_dir in sorted((cifar10_jpg / split).iterdir()):
            out = target / split / class_dir.name
            if out.is_dir() and len(os.listdir(out)) == n:
                continue
            out.mkdir(parents=True, exist_ok=True)
            for f in sorted(class_dir.iterdir())[:n]:
                link = out / f.name
                if not link.exists():
                    link.symlink_to(f)
