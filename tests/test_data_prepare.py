"""scripts/prepare_imagenet.py: the flat validation folder into val/<wnid>/, resized to 256, resumable."""

import importlib.util
import sys
from pathlib import Path

import pytest
from data_fixtures import image_tree, random_image, save
from PIL import Image

from alexnet.data import ImageNetDataModule

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "prepare_imagenet.py"
spec = importlib.util.spec_from_file_location("prepare_imagenet", SCRIPT)
prepare = importlib.util.module_from_spec(spec)
sys.modules["prepare_imagenet"] = prepare  # so that worker processes can unpickle its functions
spec.loader.exec_module(prepare)

WNIDS = ["n01440764", "n01443537"]


def snapshot(folder: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture
def official(tmp_path):
    """A flat validation folder with odd files, Kaggle-style labels, and a train/ tree."""
    val = tmp_path / "ILSVRC2012_img_val"
    for i in range(6):
        mode, fmt = [("RGB", "JPEG"), ("CMYK", "JPEG"), ("RGB", "PNG")][i % 3]  # PNG data named .JPEG too
        save(random_image((400, 300), seed=i, mode=mode), val / f"ILSVRC2012_val_{i + 1:08d}.JPEG", fmt)
    labels = tmp_path / "LOC_val_solution.csv"
    rows = [f"ILSVRC2012_val_{i + 1:08d},{WNIDS[i % 2]} 10 20 200 200" for i in range(6)]
    labels.write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    train = image_tree(tmp_path / "train_src", classes=WNIDS, per_class=2, size=(320, 500), splits=("train",)) / "train"
    return val, labels, train


def test_the_flat_validation_folder_becomes_class_folders_resized_to_256(tmp_path, official, capsys):
    val, labels, train = official
    before = snapshot(tmp_path)
    out = tmp_path / "imagenet256"
    code = prepare.main(["--val", str(val), "--labels", str(labels), "--train", str(train), "--out", str(out),
                         "--resize", "256", "--workers", "2"])
    assert code == 0
    assert snapshot(val) == {p: v for p, v in before.items() if p.is_relative_to(val) and p != val}  # untouched
    assert sorted(p.name for p in (out / "val" / WNIDS[1]).iterdir()) == [
        "ILSVRC2012_val_00000002.JPEG", "ILSVRC2012_val_00000004.JPEG", "ILSVRC2012_val_00000006.JPEG"]
    for path in out.rglob("*.JPEG"):
        image = Image.open(path)
        assert min(image.size) == 256 and image.mode == "RGB" and image.format == "JPEG"
    assert "10 images, 0 already done, writing 10" in capsys.readouterr().out

    # The result is what data=imagenet reads.
    dm = ImageNetDataModule(root=str(out))
    assert dm.class_names == ["tench", "goldfish"]


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, official, capsys):
    val, labels, _ = official
    out = tmp_path / "imagenet"
    assert prepare.main(["--val", str(val), "--labels", str(labels), "--out", str(out), "--workers", "1"]) == 0
    done = sorted(out.rglob("*.JPEG"))
    assert len(done) == 6 and (done[0].read_bytes() == (val / done[0].name).read_bytes())  # copied as is
    done[0].unlink()  # as if the run had stopped before this one
    capsys.readouterr()
    assert prepare.main(["--val", str(val), "--labels", str(labels), "--out", str(out), "--workers", "1"]) == 0
    assert "6 images, 5 already done, writing 1" in capsys.readouterr().out
    assert len(list(out.rglob("*.JPEG"))) == 6


def test_unlabelled_validation_images_stop_the_run_before_writing(tmp_path, official):
    val, labels, _ = official
    labels.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 1 2 3 4\n")
    with pytest.raises(SystemExit, match="5 validation images have no label"):
        prepare.main(["--val", str(val), "--labels", str(labels), "--out", str(tmp_path / "o"), "--workers", "1"])
    assert not (tmp_path / "o").exists()
