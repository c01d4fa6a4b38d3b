"""Lay out ILSVRC-2012 as data=imagenet expects: OUT/train/<wnid>/*.JPEG, OUT/val/<wnid>/*.JPEG.

The official validation images come as one flat folder; this sorts them into
class folders using their ground truth, given as either

* a CSV of file,label (label a wnid; Kaggle's LOC_val_solution.csv works:
  the first word of its second column is the wnid), or
* the devkit (ILSVRC2012_devkit_t12.tar.gz or its extracted folder), whose
  data/ILSVRC2012_validation_ground_truth.txt and data/meta.mat give the
  classes (reading meta.mat needs scipy: pip install scipy).

With ``--resize 256`` it writes every image (train too, with ``--train``)
with the shorter side 256, as the paper does before training (Section 2);
loading then costs several times less. Without it the files are copied (or
hard-linked with ``--link``). The source is only ever read. Finished files
are skipped, so an interrupted run resumes where it stopped.

    python scripts/prepare_imagenet.py --val ILSVRC2012_img_val --labels LOC_val_solution.csv --out data/imagenet
    python scripts/prepare_imagenet.py --val ILSVRC2012_img_val --labels ILSVRC2012_devkit_t12.tar.gz \\
        --train ILSVRC2012_img_train --out data/imagenet256 --resize 256 --workers 8
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import shutil
import sys
import tarfile
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


from alexnet.data.folder import find_classes, is_image, iter_images, load_rgb


def read_csv_labels(path: Path) -> dict[str, str]:
    """file stem -> wnid from 'file,label' rows (a header row is skipped)."""
    labels = {}
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if len(row) < 2 or not row[1].strip().startswith("n"):
                continue  # header or blank
            labels[Path(row[0].strip()).stem] = row[1].split()[0]
    return labels


def read_devkit_labels(devkit: Path, val_files: list[str]) -> dict[str, str]:
    """file stem -> wnid from the devkit: ground truth IDs (1-1000, one per file in
    sorted order) mapped to wnids by meta.mat."""
    with tempfile.TemporaryDirectory() as tmp:
        if devkit.is_file():
            with tarfile.open(devkit) as tar:
                tar.extractall(tmp, filter="data")
            devkit = next(Path(tmp).rglob("ILSVRC2012_validation_ground_truth.txt")).parents[1]
        try:
            from scipy.io import loadmat
        except ImportError:
            sys.exit("reading the devkit's meta.mat needs scipy (pip install scipy), or pass --labels as a CSV")
        synsets = loadmat(str(devkit / "data" / "meta.mat"), squeeze_me=True)["synsets"]
        wnid_of = {int(s[0]): str(s[1]) for s in synsets if int(s[4]) == 0}  # leaves: the 1000 classes
        ids = [int(line) for line in (devkit / "data" / "ILSVRC2012_validation_ground_truth.txt").read_text().split()]
    if len(ids) != len(val_files):
        sys.exit(f"the devkit has {len(ids)} labels but the validation folder {len(val_files)} images")
    return {Path(f).stem: wnid_of[i] for f, i in zip(sorted(val_files), ids)}


def write_one(job: tuple[str, str, int, bool]) -> str | None:
    """Copy, link or resize one image; None on success, else the error. Atomic: a
    half-written file never has the final name, so a resumed run redoes it."""
    src, dst, resize, link = job
    if os.path.exists(dst):
        return None
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = f"{dst}.part{os.getpid()}"
    try:
        if resize:
            image = load_rgb(src, resize)
            scale = resize / min(image.size)
            if scale < 1:
                size = (max(resize, round(image.width * scale)), max(resize, round(image.height * scale)))
                image = image.resize(size, Image.BILINEAR, reducing_gap=3.0)
            image.save(tmp, "JPEG", quality=90)
        elif link:
            os.link(src, tmp)
        else:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except Exception as e:  # noqa: BLE001 - report every unreadable file, keep going
        if os.path.exists(tmp):
            os.remove(tmp)
        return f"{src}: {type(e).__name__}: {e}"
    return None


def val_jobs(val_dir: Path, labels_path: Path, out: Path, resize: int) -> list[tuple[str, str]]:
    files = sorted(f for f in os.listdir(val_dir) if is_image(f))
    if labels_path.suffix.lower() == ".csv":
        labels = read_csv_labels(labels_path)
    else:
        labels = read_devkit_labels(labels_path, files)
    missing = [f for f in files if Path(f).stem not in labels]
    if missing:
        sys.exit(f"{len(missing)} validation images have no label in {labels_path}, e.g. {missing[:3]}")
    ext = ".JPEG" if resize else None
    return [(str(val_dir / f), str(out / "val" / labels[Path(f).stem] / (Path(f).stem + (ext or Path(f).suffix))))
            for f in files]


def train_jobs(train_dir: Path, out: Path, resize: int) -> list[tuple[str, str]]:
    jobs = []
    for wnid in find_classes(train_dir):
        for src in iter_images(train_dir / wnid):
            rel = Path(src).relative_to(train_dir)
            jobs.append((src, str((out / "train" / rel).with_suffix(".JPEG") if resize else out / "train" / rel)))
    return jobs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--val", type=Path, help="the official flat validation folder (ILSVRC2012_val_*.JPEG)")
    p.add_argument("--labels", type=Path, help="CSV of file,wnid, or the devkit (.tar.gz or folder)")
    p.add_argument("--train", type=Path, help="train/<wnid>/ folders, to copy or resize as well")
    p.add_argument("--out", type=Path, required=True, help="the new data.root")
    p.add_argument("--resize", type=int, default=0, help="shorter side in pixels (the paper: 256); 0 copies")
    p.add_argument("--link", action="store_true", help="hard-link instead of copying (no --resize)")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    args = p.parse_args(argv)
    if not args.val and not args.train:
        p.error("give --val (with --labels) and/or --train")
    if args.val and not args.labels:
        p.error("--val needs --labels")
    for src in (args.val, args.train, args.labels):
        if src and not src.exists():
            p.error(f"{src} does not exist")
    if args.out.resolve() in [s.resolve() for s in (args.val, args.train) if s]:
        p.error("--out must differ from the source folders: the source is never modified")

    jobs = val_jobs(args.val, args.labels, args.out, args.resize) if args.val else []
    jobs += train_jobs(args.train, args.out, args.resize) if args.train else []
    todo = [(s, d, args.resize, args.link) for s, d in jobs if not os.path.exists(d)]
    print(f"{len(jobs)} images, {len(jobs) - len(todo)} already done, writing {len(todo)} into {args.out}")
    errors = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns) as progress, ProcessPoolExecutor(args.workers) if args.workers > 1 else contextlib.nullcontext() as pool:
        task = progress.add_task("preparing", total=len(todo))
        results = pool.map(write_one, todo, chunksize=64) if pool else map(write_one, todo)
        for error in results:
            if error:
                errors.append(error)
            progress.advance(task)
    for e in errors:
        print(f"skipped {e}", file=sys.stderr)
    print(f"done: {len(todo) - len(errors)} written, {len(errors)} unreadable; use data=imagenet data.root={args.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
