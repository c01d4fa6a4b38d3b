"""Image files as they come: odd formats decode to RGB, bad files are skipped and
counted, and a wrong folder layout is an error that names the folders."""

import json
import math
import warnings

import pytest
import torch
from conftest import compose_config, run_cli
from data_fixtures import image_tree, random_image, save
from PIL import Image

import train as train_script
from alexnet.data import FolderDataModule, ImageNetDataModule
from alexnet.data.folder import EncodedSamples, load_rgb
from alexnet.errors import ConfigError, TrainingError

ODD_FILES = {  # name: (PIL mode, format written)
    "gray.JPEG": ("L", "JPEG"),
    "cmyk.JPEG": ("CMYK", "JPEG"),
    "palette.png": ("P", "PNG"),
    "animated.gif": ("P", "GIF"),
    "alpha.png": ("RGBA", "PNG"),
    "png_named.JPEG": ("RGB", "PNG"),
}


def small(root, **kw):
    kw = {"root": str(root), "crop_size": 32, "resize_size": 40, "batch_size": 4, "num_workers": 0, **kw}
    return FolderDataModule(**kw)


def batches(dm, loader):
    """What Lightning hands to the steps: each batch through on_before_batch_transfer (which,
    with data.decode=device, decodes the files' bytes: on the CPU here, with no trainer), then
    on_after_batch_transfer, in Lightning's order."""
    return [dm.on_after_batch_transfer(dm.on_before_batch_transfer(b, 0), 0) for b in loader]


# data.decode: the workers decode (torchvision.io, PIL for the rest), or they only read the
# files' bytes and the main process decodes each batch (alexnet/data/decode.py). Either way
# the same files come out RGB, are skipped and named, and stop the run past the limit.
DECODE = pytest.mark.parametrize("decode", ["worker", "device"])


@pytest.mark.parametrize("name", ODD_FILES)
def test_odd_image_files_decode_to_rgb(tmp_path, name):
    mode, fmt = ODD_FILES[name]
    path = save(random_image((50, 30), mode=mode), tmp_path / name, fmt)
    image = load_rgb(str(path))
    assert image.mode == "RGB" and image.size == (50, 30)


def test_transparent_pixels_become_white_not_their_hidden_colour(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert load_rgb(str(save(rgba, tmp_path / "clear.png", "PNG"))).getpixel((0, 0)) == (255, 255, 255)


@DECODE
def test_a_folder_of_odd_files_gives_rgb_batches(tmp_path, decode):
    image_tree(tmp_path, classes=("a", "b"), per_class=2)
    for name, (mode, fmt) in ODD_FILES.items():
        save(random_image((60, 45), mode=mode), tmp_path / "train" / "a" / name, fmt)
    dm = small(tmp_path, decode=decode)
    dm.setup("fit")
    assert len(dm.train_set) == 2 * 2 + len(ODD_FILES)
    loader = dm.train_dataloader()
    assert isinstance(next(iter(loader)), EncodedSamples) == (decode == "device")  # bytes, decoded by on_before
    x = torch.cat([x for x, _ in batches(dm, loader)])
    assert x.shape == (len(dm.train_set), 3, 32, 32) and x.dtype == torch.float32


@DECODE
def test_an_unreadable_image_is_skipped_with_a_warning_that_names_it_and_counted(tmp_path, decode):
    image_tree(tmp_path, classes=("a", "b"), per_class=3)
    good = (tmp_path / "train" / "a" / "a_0.JPEG").read_bytes()
    truncated = tmp_path / "train" / "b" / "truncated.JPEG"
    truncated.write_bytes(good[: len(good) // 2])
    (tmp_path / "train" / "b" / "notes.jpg").write_text("not an image")
    dm = small(tmp_path, max_bad_images=2, decode=decode)
    dm.setup("fit")
    with pytest.warns(UserWarning) as caught:
        got = batches(dm, dm.train_dataloader())
    messages = " ".join(str(w.message) for w in caught)
    assert "truncated.JPEG" in messages and "notes.jpg" in messages
    assert sum(len(y) for _, y in got) == 6  # the six good images, the two bad ones skipped
    assert len(dm.bad_images) == 2


@DECODE
def test_past_max_bad_images_the_run_stops_with_an_error_that_lists_them(tmp_path, decode):
    image_tree(tmp_path, classes=("a", "b"), per_class=2)
    for i in range(3):
        (tmp_path / "train" / "a" / f"broken{i}.JPEG").write_bytes(b"\xff\xd8\xff garbage")
    dm = small(tmp_path, max_bad_images=2, decode=decode)
    dm.setup("fit")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConfigError, match="data.max_bad_images") as e:
            batches(dm, dm.train_dataloader())
    assert all(f"broken{i}.JPEG" in str(e.value) for i in range(3))


@DECODE
def test_a_run_whose_batch_has_only_unreadable_files_goes_on_without_it(tmp_path, decode):
    # Validation reads the files in class order, so a class folder of broken files (a copy that
    # failed) fills whole batches; max_bad_images allows them, so the run must not crash on one.
    image_tree(tmp_path, classes=("a", "b"), per_class=4)
    for path in (tmp_path / "val" / "a").iterdir():
        path.unlink()
    for i in range(4):  # the first validation batch of 4: all of them broken
        (tmp_path / "val" / "a" / f"broken{i}.JPEG").write_bytes(b"\xff\xd8\xff garbage")
    dm = small(tmp_path, max_bad_images=10, decode=decode)
    dm.setup("fit")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (empty, _), (x, y) = batches(dm, dm.val_dataloader())
    assert empty.shape == (0, 3, 32, 32) and x.shape == (4, 3, 32, 32) and y.tolist() == [1] * 4
    cfg = compose_config("data=folder", f"data.root={tmp_path}", "data.resize_size=40", "data.batch_size=4",
                         "data.num_workers=0", "data.max_bad_images=10", f"data.decode={decode}", "data.eval_crops=10",
                         "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = train_script.train(cfg, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "results.json").read_text())["results"]
    assert saved["test/top1_error"] == results["test/top1_error"] in (0.0, 0.25, 0.5, 0.75, 1.0)  # 4 images counted


@DECODE
def test_a_bad_file_counts_once_however_many_epochs_skip_it(tmp_path, decode):
    # max_bad_images bounds the files: three bad ones, skipped by two workers in each of three
    # epochs (and the bad validation one by the sanity check, each validation and the test),
    # are four skipped images, each warned about once, and the run ends.
    image_tree(tmp_path, classes=("a", "b"), per_class=4)
    for split, n in (("train", 3), ("val", 1)):
        for i in range(n):
            (tmp_path / split / "b" / f"broken{i}.JPEG").write_bytes(b"\xff\xd8\xff garbage")
    cfg = compose_config("data=folder", f"data.root={tmp_path}", "data.resize_size=40", "data.batch_size=4",
                         "data.num_workers=2", "data.max_bad_images=4", f"data.decode={decode}",
                         "trainer.max_epochs=3", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_script.train(cfg, tmp_path / "run")
    skipped = sorted(str(w.message).split(" (")[0] for w in caught if "skipped unreadable image" in str(w.message))
    assert skipped == [f"skipped unreadable image {tmp_path / s / 'b' / f'broken{i}.JPEG'}"
                       for s, i in (("train", 0), ("train", 1), ("train", 2), ("val", 0))]
    assert (tmp_path / "run" / "results.json").is_file()


def test_a_training_batch_without_images_is_a_zero_loss_that_reaches_every_parameter():
    # so that under DDP every rank joins the gradient reduction, whatever its batch held
    from alexnet.training.system import AlexNetSystem

    system = AlexNetSystem(model={"name": "cifar"}, optim={"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
                                                            "schedule": "constant"}, num_classes=10)
    loss = system.training_step((torch.empty(0, 3, 32, 32), torch.empty(0, dtype=torch.int64)), 0)
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is not None and not p.grad.any() for p in system.parameters())


def test_under_ddp_a_rank_whose_validation_batches_are_all_unreadable_joins_the_reduction_and_the_run_ends(tmp_path):
    # 6 validation images on 2 ranks: rank r evaluates images r, r + 2, r + 4 (DistributedSampler,
    # in order), so breaking every class's second image leaves rank 1 nothing to count. The epoch
    # end's reduction must still run on both ranks (it hung in rank 0 before), over rank 0's images.
    image_tree(tmp_path, classes=("a", "b", "c"), per_class=2, size=(40, 36))
    for c in "abc":
        (tmp_path / "val" / c / f"{c}_1.JPEG").write_bytes(b"\xff\xd8\xff garbage")
    result = run_cli("train.py", f"hydra.run.dir={tmp_path / 'run'}", "data=folder", f"data.root={tmp_path}",
                     "data.resize_size=36", "data.batch_size=4", "data.num_workers=0", "trainer.max_epochs=1",
                     "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.enable_progress_bar=false",
                     timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())["results"]
    assert round(3 * saved["test/top1_error"], 4) in (0, 1, 2, 3)  # errors among the 3 readable images
    assert math.isfinite(saved["test/loss"])


def ddp_run_with_broken_validation_images(root, image: int):
    """2 gloo processes with loader workers, as users run, on 3 classes of 2 validation images whose
    image number ``image`` is unreadable in every class: rank r evaluates image r of each (as above).
    Those 3 files are over data.max_bad_images=2 in the sanity check, where the other rank has none."""
    image_tree(root, classes=("a", "b", "c"), per_class=2, size=(40, 36))
    for c in "abc":
        (root / "val" / c / f"{c}_{image}.JPEG").write_bytes(b"\xff\xd8\xff garbage")
    return run_cli("train.py", f"hydra.run.dir={root / 'run'}", "data=folder", f"data.root={root}",
                   "data.resize_size=36", "data.batch_size=4", "data.num_workers=2", "data.max_bad_images=2",
                   "trainer.max_epochs=1", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                   "trainer.enable_progress_bar=false", timeout=300)


def test_under_ddp_a_rank_past_max_bad_images_stops_the_whole_run_naming_its_shard(tmp_path):
    # Rank 1 fails alone; Lightning's launcher in rank 0 stops the run.
    result = ddp_run_with_broken_validation_images(tmp_path, image=1)
    assert result.returncode != 0
    assert ("data.max_bad_images: 3 unreadable images in the shard of data-parallel rank 1 of 2 "
            "(each rank counts its own), more than the 2 allowed") in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "run" / "results.json").exists()


def test_under_ddp_when_rank_zero_fails_alone_the_process_it_launched_is_stopped_not_left_waiting(tmp_path):
    # Rank 0, the launching process, fails alone. Its child must be killed, not left in a collective:
    # with NCCL it would wait 30 minutes; with gloo it fails on the closed socket, later, with a
    # traceback of its own. run_cli returns when every writer of the output pipes (the child too) has ended.
    result = ddp_run_with_broken_validation_images(tmp_path, image=0)
    assert result.returncode == 1
    assert "error: data.max_bad_images: 3 unreadable images in the shard of data-parallel rank 0 of 2" in result.stderr
    assert "stopping the 1 DDP processes this one launched" in result.stdout  # (the log, on stdout)
    assert "Connection closed by peer" not in result.stderr, result.stderr[-3000:]  # the child's own failure
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def test_an_evaluation_that_found_no_readable_image_stops_the_run_instead_of_reporting_100_percent_error(tmp_path):
    image_tree(tmp_path, classes=("a", "b"), per_class=2)
    for path in (tmp_path / "val").rglob("*.JPEG"):
        path.write_bytes(b"\xff\xd8\xff garbage")
    cfg = compose_config("data=folder", f"data.root={tmp_path}", "data.resize_size=40", "data.batch_size=4",
                         "data.num_workers=0", "data.max_bad_images=10", "trainer.max_epochs=1",
                         "trainer.accelerator=cpu", "trainer.enable_progress_bar=false")
    with warnings.catch_warnings(), pytest.raises(TrainingError, match="the validation found no readable image"):
        warnings.simplefilter("ignore")
        train_script.train(cfg, tmp_path / "run")  # (the sanity check's batches, all broken too, pass)
    assert not (tmp_path / "run" / "results.json").exists()


def test_hidden_folders_and_files_are_never_classes_or_images(tmp_path):
    image_tree(tmp_path, classes=("a", "b"), per_class=2)
    for split in ("train", "val"):
        for hidden in (".git", ".ipynb_checkpoints"):
            save(random_image(), tmp_path / split / hidden / "x.jpg")
        save(random_image(), tmp_path / split / "a" / ".ipynb_checkpoints" / "a_0-checkpoint.jpg")
        save(random_image(), tmp_path / split / "a" / "._a_0.jpg")  # macOS resource fork
    dm = small(tmp_path)
    assert dm.class_names == ["a", "b"] and dm.num_classes == 2
    dm.setup("fit")
    assert len(dm.train_set) == 4 and len(dm.val_set) == 4


def test_an_empty_class_folder_is_an_error_that_names_it(tmp_path):
    image_tree(tmp_path, classes=("a", "b"), per_class=2)
    (tmp_path / "train" / "c").mkdir()
    (tmp_path / "val" / "c").mkdir()
    save(random_image(), tmp_path / "val" / "c" / "c.jpg")
    with pytest.raises(ConfigError, match="data.root.*empty class folder") as e:
        small(tmp_path)
    assert str(tmp_path / "train" / "c") in str(e.value)


def test_train_and_val_with_different_classes_is_an_error_that_names_the_folders(tmp_path):
    image_tree(tmp_path, classes=("a", "b"), per_class=1)
    save(random_image(), tmp_path / "train" / "only_train" / "x.jpg")
    save(random_image(), tmp_path / "val" / "only_val" / "x.jpg")
    with pytest.raises(ConfigError, match="different classes") as e:
        small(tmp_path)
    message = str(e.value)
    assert "only in train/: only_train" in message and "only in val/: only_val" in message
    assert str(tmp_path / "train") in message and str(tmp_path / "val") in message


@pytest.mark.parametrize("make", ["nothing", "no_train", "no_val"])
def test_a_missing_root_names_the_key_and_shows_the_expected_layout(tmp_path, make):
    root = tmp_path / "data"
    if make != "nothing":
        image_tree(root, classes=("a",), per_class=1, splits=("val",) if make == "no_train" else ("train",))
    with pytest.raises(ConfigError) as e:
        ImageNetDataModule(root=str(root))
    assert e.value.key == "data.root"
    assert "<root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG" in str(e.value)
    assert str(root) in str(e.value)


def test_test_folder_stands_in_for_a_missing_val_folder(tmp_path):
    image_tree(tmp_path, classes=("a", "b"), per_class=2, splits=("train", "test"))
    dm = small(tmp_path)
    assert dm.val_split == "test"
    dm.setup()
    assert len(dm.val_set) == 4


def test_class_order_is_the_same_for_train_and_val(tmp_path):
    image_tree(tmp_path, classes=("zebra", "apple", "mango"), per_class=2)
    dm = small(tmp_path)
    dm.setup()
    assert dm.class_names == ["apple", "mango", "zebra"]
    for dataset, split in ((dm.train_set, "train"), (dm.val_set, "val")):
        for path, label in dataset.samples:
            assert f"/{split}/{dm.class_names[label]}/" in path
