"""How fast is the training input pipeline? Images per second per worker (one core), side by side.

    python scripts/benchmark_data.py                  # 192 generated JPEGs of each size, 3 repeats
    python scripts/benchmark_data.py --images 512 --repeats 5 --json benchmark.json

Generates JPEGs of two sizes in a temporary folder: shorter side 256 (as
scripts/prepare_imagenet.py --resize 256 writes them) and full-size photos
(500x375 and 375x500, about ImageNet's typical size), then times, in one
process (so each figure is per DataLoader worker, i.e. per core), every
contender once per repeat, in turn:

* paper, per image (PIL | torchvision.io): the paper's preset entirely in the
  worker (decode, shorter side 256, centre square, random 224 crop, flip, PCA
  lighting, normalise to float), decoding with PIL or torchvision.io;
* paper, batched (PIL | torchvision.io): the worker decodes and crops to
  uint8 (the worker part: what each worker sustains when a GPU does the
  rest); then flip, lighting and normalisation run batched on the device (the
  CPU here), timed separately and added: the whole path;
* paper, decode=device: the worker only reads the files (its part); the batch
  is decoded (torchvision.io, one call), cropped and augmented on the device
  (the CPU here; on CUDA also with nvJPEG);
* torchvision RandomResizedCrop: torchvision's standard ImageNet training
  preset (references/classification), PIL decoding, on the same files: the reference;
* in-memory 32x32 (CIFAR, shapes): the batched augmentation alone.

Figures are the median of the repeats with their min-max spread; a ratio is
the median of the per-repeat ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import subprocess
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
from alexnet.data.folder import ImageFiles, collate_bytes, collate_skipping_bad
from alexnet.data.presets import IMAGENET_MEAN, IMAGENET_STD, BatchTrainAugment, Normalization
from alexnet.data.sampling import EpochSampler, batch_draws
from alexnet.training.host_memory import keep_freed_memory


SIZES = {  # image set: (landscape, portrait) sizes
    "256px": ((341, 256), (256, 320)),
    "500x375": ((500, 375), (375, 500)),
}


def make_jpegs(root: Path, n: int, sizes=SIZES["256px"]) -> None:
    """n smooth random JPEGs, landscape and portrait, in two classes."""
    rng = np.random.default_rng(0)
    for i in range(n):
        w, h = sizes[i % 2]
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


def time_loader(dataset, batch_size: int, after=None, device="cpu", train: bool = True, collate=collate_skipping_bad,
                before=None) -> tuple[float, float]:
    """Seconds spent in the loader (one process) and on the device, per pass.

    ``train``: the training path, keys (index, epoch) from the trainer's sampler, so each
    image's random draws are made as in training; else plain indices. On the device:
    ``before`` (decoding, data.decode=device: the batch -> Samples there), then ``after``
    (the batch half: crops, flip, lighting, normalisation).
    """
    sampler = EpochSampler(dataset, num_replicas=1, rank=0, seed=0) if train else None
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=0, collate_fn=collate)
    load = device_time = 0.0
    start = time.perf_counter()
    for batch in loader:
        load += time.perf_counter() - start
        if after is not None:
            t = time.perf_counter()
            if before is not None:
                batch = before(batch, torch.device(device))
            after(batch.x.to(device), batch.draws)
            if device == "cuda":
                torch.cuda.synchronize()
            device_time += time.perf_counter() - t
        start = time.perf_counter()
    return load, device_time


def summary(rates: list[float]) -> dict:
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=192, help="JPEGs of each size (default 192)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: as in a DataLoader worker)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device == "cpu":
        keep_freed_memory()  # as a CPU run does (fast_path.reuse_memory=auto)
    rates, ratios = measure(args.images, args.repeats, args.batch_size, args.device)
    results = {name: summary(r) for name, r in rates.items()}
    ratios = {name: summary(r) for name, r in ratios.items()}
    print(f"training pipeline, {args.images} JPEGs of each size -> 224x224, batch {args.batch_size}, "
          f"torch threads {args.threads}, device {args.device}, {args.repeats} repeats")
    print(f"{'pipeline':60s} {'images/s per worker':>20s}  (min - max)")
    for name, r in results.items():
        print(f"{name:60s} {r['median']:20.0f}  ({r['min']:.0f} - {r['max']:.0f})")
    print()
    for name, r in ratios.items():
        target = TARGETS.get(name)
        verdict = f"  target >= {target}: {'met' if r['median'] >= target else 'NOT met'}" if target else ""
        print(f"{name:60s} {r['median']:20.2f}  ({r['min']:.2f} - {r['max']:.2f}){verdict}")
    print(workers_line(results))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                                         "ratios": ratios}, indent=2))
    return 0


# The targets on the 2-core development machine, for the 256-pixel copies.
WORKER_PART = "256px: worker part, torchvision.io / RandomResizedCrop"
WHOLE_PATH = "256px: whole path on the CPU, torchvision.io / RandomResizedCrop"
TARGETS = {WORKER_PART: 3.5, WHOLE_PATH: 2.0}


def workers_line(results: dict, gpu_rate: float | None = None) -> str:
    """'one GPU at N img/s needs W workers', from the measured worker part per core."""
    from alexnet.data.workers import GPU_IMAGES_PER_S

    measured = gpu_rate is not None
    gpu_rate = gpu_rate or GPU_IMAGES_PER_S
    parts = []
    for images in SIZES:
        per_worker = results[f"{images}: paper, batched, torchvision.io: worker part"]["median"]
        parts.append(f"{math.ceil(gpu_rate / per_worker)} workers for {images} JPEGs ({per_worker:,.0f} each)")
    source = "measured (gpu section)" if measured else "documented, alexnet/data/workers.py"
    return f"one GPU at {gpu_rate:,.0f} img/s ({source}) needs " + "; ".join(parts)


def measure(images: int, repeats: int, batch_size: int, device: str) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Images per second of every pipeline, one list of ``repeats`` figures each, and the
    ratios to the reference per repeat (also run by scripts/benchmark.py)."""
    rows: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, sizes in SIZES.items():
            root = Path(tmp) / name
            make_jpegs(root, images, sizes)
            set_rows, set_ratios = measure_files(root, name, repeats, batch_size)
            rows.update(set_rows)
            ratios.update(set_ratios)
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
    if device == "cpu":
        rows.update(batch_half_rows(repeats, batch_size))
    return rows, ratios


BATCH_HALF = """
import sys, time, torch
from alexnet.data.augment import Lighting
from alexnet.data.presets import BatchTrainAugment, Normalization
from alexnet.data.sampling import batch_draws
from alexnet.training.host_memory import keep_freed_memory
torch.set_num_threads(1)
if sys.argv[1] == "reused":
    keep_freed_memory()
batch, repeats = int(sys.argv[2]), int(sys.argv[3])
x = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
augment = BatchTrainAugment(224, 0, True, Lighting(0.1, scale=255.0), Normalization("paper"))
draws = batch_draws(0, 0, range(batch))
augment(x, draws)
for _ in range(repeats):
    start = time.perf_counter()
    augment(x, draws)
    print(batch / (time.perf_counter() - start))
"""


def batch_half_rows(repeats: int, batch_size: int) -> dict[str, list[float]]:
    """The batch half on the CPU with glibc's default malloc (every batch-sized tensor on fresh
    pages) and with fast_path.reuse_memory (alexnet/training/host_memory.py): one process each,
    since the setting is for a whole process."""
    rows = {}
    for mode, label in (("default", "glibc default, fresh pages"), ("reused", "fast_path.reuse_memory")):
        out = subprocess.run([sys.executable, "-c", BATCH_HALF, mode, str(batch_size), str(repeats)],
                             cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True)
        rows[f"batch half on the CPU, {label}"] = [float(v) for v in out.stdout.split()]
    return rows


def measure_files(root: Path, images: str, repeats: int, batch_size: int):
    """The file pipelines on one image set, in turn within each repeat."""
    common = dict(root=str(root), batch_size=batch_size, num_workers=0, normalize="paper")
    per_image = FolderDataModule(**common, batch_augment=False)
    batched = FolderDataModule(**common, batch_augment=True)
    on_device = FolderDataModule(**common, decode="device")
    for dm in (per_image, batched, on_device):
        dm.setup()
    samples = per_image.train_set.samples
    n = len(samples)

    def files(dm, decoder):
        train = dm.train_set
        return ImageFiles(samples, train.transform, train.min_size, train.seed, decoder=decoder)

    augment = batched.train_batch  # the batch half, on the CPU
    augment_cuda = copy.deepcopy(augment).cuda() if torch.cuda.is_available() else None
    name = lambda what: f"{images}: {what}"  # noqa: E731
    rows = {name(what): [] for what in (
        "paper, per image, PIL", "paper, per image, torchvision.io",
        "paper, batched, PIL", "paper, batched, PIL: worker part",
        "paper, batched, torchvision.io", "paper, batched, torchvision.io: worker part",
        "paper, decode=device on the CPU", "paper, decode=device: worker part (reads files)",
        "torchvision RandomResizedCrop (PIL)")}
    if torch.cuda.is_available():
        rows[name("paper, decode=device, nvJPEG")] = []
    rrc = ImageFiles(samples, torchvision_preset(), decoder="pil")
    for _ in range(repeats):
        for decoder, label in (("pil", "PIL"), ("auto", "torchvision.io")):
            load, _ = time_loader(files(per_image, decoder), batch_size)
            rows[name(f"paper, per image, {label}")].append(n / load)
            load, dev = time_loader(files(batched, decoder), batch_size, augment, "cpu")
            rows[name(f"paper, batched, {label}")].append(n / (load + dev))
            rows[name(f"paper, batched, {label}: worker part")].append(n / load)
        load, dev = time_loader(on_device.train_set, batch_size, augment, "cpu", collate=collate_bytes,
                                before=on_device.decode_files)
        rows[name("paper, decode=device on the CPU")].append(n / (load + dev))
        rows[name("paper, decode=device: worker part (reads files)")].append(n / load)
        if torch.cuda.is_available():
            load, dev = time_loader(on_device.train_set, batch_size, augment_cuda, "cuda", collate=collate_bytes,
                                    before=on_device.decode_files)
            rows[name("paper, decode=device, nvJPEG")].append(n / (load + dev))
        load, _ = time_loader(rrc, batch_size, train=False)  # its own random draws
        rows[name("torchvision RandomResizedCrop (PIL)")].append(n / load)
    reference = rows[name("torchvision RandomResizedCrop (PIL)")]
    per_repeat = lambda what: [a / b for a, b in zip(rows[name(what)], reference)]  # noqa: E731
    ratios = {
        name("worker part, torchvision.io / RandomResizedCrop"): per_repeat("paper, batched, torchvision.io: worker part"),
        name("worker part, PIL / RandomResizedCrop"): per_repeat("paper, batched, PIL: worker part"),
        name("whole path on the CPU, torchvision.io / RandomResizedCrop"): per_repeat("paper, batched, torchvision.io"),
        name("whole path on the CPU, PIL / RandomResizedCrop"): per_repeat("paper, batched, PIL"),
        name("decode=device on the CPU / RandomResizedCrop"): per_repeat("paper, decode=device on the CPU"),
    }
    return rows, ratios


if __name__ == "__main__":
    sys.exit(main())
