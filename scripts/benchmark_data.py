"""How fast is the training input pipeline? Images per second per worker, side by side.

    python scripts/benchmark_data.py                  # 192 generated JPEGs, 3 repeats
    python scripts/benchmark_data.py --images 512 --repeats 5 --json benchmark.json

Generates JPEGs with the shorter side 256 (as scripts/prepare_imagenet.py
--resize 256 writes them) in a temporary folder and times, in one process
(so the figure is per DataLoader worker):

* paper, per image: the paper's preset entirely in the worker (decode, centre
  256 square, random 224 crop, flip, PCA lighting, normalise to float);
* paper, batched: the worker decodes and crops to uint8, then flip, lighting
  and normalisation run batched on the device (timed separately and added;
  the worker part alone is what each worker sustains when a GPU does the rest);
* torchvision RandomResizedCrop: torchvision's standard ImageNet training
  preset (references/classification) on the same files;
* in-memory 32x32 (CIFAR, shapes): the batched augmentation alone.

Figures are the median of the repeats with their min-max spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2


from alexnet.data import FolderDataModule
from alexnet.data.shapes import generate_shapes
from alexnet.data.augment import Lighting
from alexnet.data.folder import ImageFiles, collate_skipping_bad, list_samples
from alexnet.data.presets import IMAGENET_MEAN, IMAGENET_STD, BatchTrainAugment, Normalization
from alexnet.data.sampling import EpochSampler, batch_draws


def make_jpegs(root: Path, n: int) -> None:
    """n smooth random JPEGs, shorter side 256, landscape and portrait, in two classes."""
    rng = np.random.default_rng(0)
    for i in range(n):
        w, h = (341, 256) if i % 2 else (256, 320)
        coarse = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)  # photo-like, not pure noise
        image = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
        for split in ("train", "val"):
            path = root / split / f"class{i % 2}" / f"{i:05d}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            if split == "train" or i < 2:
                image.save(path, quality=90)


def torchvision_preset(crop: int = 224) -> v2.Compose:
    """torchvision references/classification ClassificationPresetTrain, defaults."""
    return v2.Compose([
        v2.RandomResizedCrop(crop, antialias=True),
        v2.RandomHorizontalFlip(0.5),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def time_loader(dataset, batch_size: int, after=None, device="cpu", train: bool = True) -> tuple[float, float]:
    """Seconds spent in the loader (one process) and in `after` on the device, per pass.

    ``train``: the training path, keys (index, epoch) from the trainer's sampler, so each
    image's random draws are made as in training; else plain indices.
    """
    sampler = EpochSampler(dataset, num_replicas=1, rank=0, seed=0) if train else None
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=0, collate_fn=collate_skipping_bad)
    load = device_time = 0.0
    start = time.perf_counter()
    for batch in loader:
        load += time.perf_counter() - start
        if after is not None:
            x, draws = batch.x.to(device), batch.draws
            t = time.perf_counter()
            after(x, draws)
            if device == "cuda":
                torch.cuda.synchronize()
            device_time += time.perf_counter() - t
        start = time.perf_counter()
    return load, device_time


def summary(rates: list[float]) -> dict:
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=192)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: as in a DataLoader worker)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {name: summary(r) for name, r in measure(args.images, args.repeats, args.batch_size, args.device).items()}
    print(f"training pipeline, {args.images} JPEGs of shorter side 256 -> 224x224, batch {args.batch_size}, "
          f"torch threads {args.threads}, device {args.device}, {args.repeats} repeats")
    print(f"{'pipeline':36s} {'images/s per worker':>20s}  (min - max)")
    for name, r in results.items():
        print(f"{name:36s} {r['median']:20.0f}  ({r['min']:.0f} - {r['max']:.0f})")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2))
    return 0


def measure(images: int, repeats: int, batch_size: int, device: str) -> dict[str, list[float]]:
    """Images per second of every pipeline, one list of ``repeats`` figures each
    (also run by scripts/benchmark.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_jpegs(root, images)
        common = dict(root=str(root), batch_size=batch_size, num_workers=0, normalize="paper")
        per_image = FolderDataModule(**common, batch_augment=False)
        batched = FolderDataModule(**common, batch_augment=True)
        per_image.setup()
        batched.setup()
        samples = list_samples(root / "train", per_image.classes)
        rrc = ImageFiles(samples, torchvision_preset())
        augment = batched.train_batch.to(device)

        rows = {"paper, per image": [], "paper, batched": [], "  of which the worker part": [],
                "torchvision RandomResizedCrop": []}
        for _ in range(repeats):
            n = len(samples)
            load, _ = time_loader(per_image.train_set, batch_size)
            rows["paper, per image"].append(n / load)
            load, dev = time_loader(batched.train_set, batch_size, augment, device)
            rows["paper, batched"].append(n / (load + dev))
            rows["  of which the worker part"].append(n / load)  # what a worker sustains when a GPU does the rest
            load, _ = time_loader(rrc, batch_size, train=False)  # its own random draws
            rows["torchvision RandomResizedCrop"].append(n / load)

        # In-memory 32x32 data (CIFAR, shapes): only the batched augmentation runs.
        small = torch.randint(0, 256, (10_000, 3, 32, 32), dtype=torch.uint8, device=device)
        cifar = BatchTrainAugment(32, 4, True, Lighting(0.1), Normalization("imagenet")).to(device)
        rates = []
        for _ in range(repeats):
            t = time.perf_counter()
            for i, batch in enumerate(small.split(128)):  # each image's draws made as in training
                cifar(batch, batch_draws(0, 0, range(128 * i, 128 * i + len(batch))))
            if device == "cuda":
                torch.cuda.synchronize()
            rates.append(len(small) / (time.perf_counter() - t))
        rows["in-memory 32x32, batched (CIFAR)"] = rates
        # The built-in shapes data is generated, not read: how fast, at 32x32.
        generate_shapes(100, 32)  # warm-up
        rates = []
        for _ in range(repeats):
            t = time.perf_counter()
            generate_shapes(4000, 32)
            rates.append(4000 / (time.perf_counter() - t))
        rows["shapes generated, 32x32"] = rates
    return rows


if __name__ == "__main__":
    sys.exit(main())
