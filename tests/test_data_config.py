"""conf/data/: every option instantiates, and a bad value is an error that names its key."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO
from data_fixtures import image_tree, random_image
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import alexnet.data.cifar as cifar
from alexnet.data import CIFAR10DataModule, CIFAR100DataModule, ImageNetDataModule, ShapesDataModule, imagenet_classes
from alexnet.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
COMMON_KEYS = {"root", "batch_size", "num_workers", "crop_size", "resize_size", "center_crop", "flip", "pca_std",
               "pca_file", "normalize", "eval_crops", "test_crops", "max_bad_images", "channels", "seed", "pin_memory",
               "persistent_workers"}


def compose_data(*overrides):
    if not (CONF / "config.yaml").is_file():
        pytest.skip("conf/config.yaml is not there yet")
    with initialize_config_dir(str(CONF), version_base=None):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("option", ["shapes", "imagenet", "cifar10", "cifar100", "folder"])
def test_every_data_option_instantiates_with_the_common_keys(tmp_path, option):
    image_tree(tmp_path / "imgs", per_class=1)
    root = {"imagenet": tmp_path / "imgs", "folder": tmp_path / "imgs"}.get(option, tmp_path / "cifar")
    cfg = compose_data(f"data={option}", "model=paper_single_tower", f"data.root={root}")
    assert COMMON_KEYS <= set(cfg.data)
    assert cfg.data.crop_size == 224 and cfg.data.channels == 3  # following the model
    dm = instantiate(cfg.data)
    assert dm.num_classes == len(dm.class_names) == {"cifar100": 100, "imagenet": 3, "folder": 3}.get(option, 10)
    assert dm.eval_crops == cfg.data.eval_crops


def test_the_paper_preset_is_the_papers_setup():
    cfg = compose_data("data=imagenet", "model=paper_grouped").data
    assert (cfg.resize_size, cfg.crop_size, cfg.center_crop, cfg.flip) == (256, 224, True, True)  # Sections 2, 4.1
    assert (cfg.pca_std, cfg.normalize, cfg.eval_crops, cfg.batch_size) == (0.1, "paper", 10, 128)


BAD = [
    ({"batch_size": 0}, "data.batch_size"),
    ({"batch_size": -4}, "data.batch_size"),
    ({"crop_size": 300}, "data.crop_size"),  # larger than resize_size 256
    ({"eval_crops": 5}, "data.eval_crops"),
    ({"test_crops": 3}, "data.test_crops"),
    ({"pca_std": -0.1}, "data.pca_std"),
    ({"normalize": "zscore"}, "data.normalize"),
    ({"channels": 2}, "data.channels"),
    ({"num_workers": -1}, "data.num_workers"),
    ({"max_bad_images": -1}, "data.max_bad_images"),
    ({"multiprocessing_context": "threads"}, "data.multiprocessing_context"),
]


@pytest.mark.parametrize("override,key", BAD, ids=[k for _, k in BAD])
def test_a_bad_value_is_a_config_error_naming_its_key(tmp_path, override, key):
    image_tree(tmp_path, per_class=1)
    with pytest.raises(ConfigError) as e:
        ImageNetDataModule(root=str(tmp_path), **override)
    assert e.value.key == key and str(e.value).startswith(key)


def test_shapes_sizes_must_be_positive():
    with pytest.raises(ConfigError, match="data.num_train"):
        ShapesDataModule(num_train=0, crop_size=32)


def test_construction_is_cheap_no_image_is_decoded(tmp_path, monkeypatch):
    image_tree(tmp_path, per_class=2)
    monkeypatch.setattr("alexnet.data.folder.load_rgb", lambda *a, **k: pytest.fail("decoded an image"))
    dm = ImageNetDataModule(root=str(tmp_path))
    assert dm.class_names == ["tench", "goldfish", "great white shark"]  # via the shipped wnid map


def test_the_wnid_map_names_all_1000_ilsvrc_2012_classes_in_torchvisions_order():
    from torchvision.models import AlexNet_Weights

    table = imagenet_classes()
    assert len(table) == 1000 and list(table) == sorted(table)
    assert list(table.values()) == AlexNet_Weights.IMAGENET1K_V1.meta["categories"]
    assert table["n01440764"] == "tench" and table["n03888257"] == "parachute" and table["n15075141"] == "toilet tissue"


def test_cifar_without_data_downloads_into_root(tmp_path, monkeypatch):
    calls = []

    class FakeCIFAR:  # stands in for torchvision.datasets.CIFAR10: no network in tests
        def __init__(self, root, train, download):
            calls.append((root, train, download))

    monkeypatch.setitem(cifar.TORCHVISION, "cifar10", FakeCIFAR)
    dm = CIFAR10DataModule(root=str(tmp_path / "cifar"))
    assert dm.layout == "missing" and dm.class_names[0] == "airplane"
    dm.prepare_data()
    assert calls == [(str(tmp_path / "cifar"), True, True), (str(tmp_path / "cifar"), False, True)]


def test_cifar_reads_torchvisions_pickled_layout(tmp_path, monkeypatch):
    (tmp_path / "cifar-100-python").mkdir()

    class FakeCIFAR100:  # what torchvision.datasets.CIFAR100 exposes after reading the pickles
        def __init__(self, root, train, download):
            n = 50 if train else 10
            self.data = np.full((n, 32, 32, 3), 7 if train else 9, dtype=np.uint8)
            self.targets = list(range(n))
            self.classes = [str(i) for i in range(100)]

    monkeypatch.setitem(cifar.TORCHVISION, "cifar100", FakeCIFAR100)
    dm = CIFAR100DataModule(root=str(tmp_path), batch_size=8)
    assert dm.layout == "pickle" and dm.num_classes == 100 and dm.class_names[:2] == ["apple", "aquarium_fish"]
    dm.setup()
    assert dm.train_set.x.shape == (50, 3, 32, 32) and dm.train_set.x.dtype == torch.uint8
    assert dm.val_set.x.unique().tolist() == [9]  # validation is the test split


def held_out_cifar(tmp_path, monkeypatch, **kwargs):
    """A CIFAR-10 whose every image is its own index (pixel value index % 256, label index % 10)."""
    (tmp_path / "cifar-10-batches-py").mkdir(exist_ok=True)

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            n = 200 if train else 40
            self.data = np.stack([np.full((32, 32, 3), i % 256, dtype=np.uint8) for i in range(n)])
            self.data[:, 0, 0, 0] = 0 if train else 1  # the split, in one pixel
            self.targets = [i % 10 for i in range(n)]
            self.classes = [str(i) for i in range(10)]

    monkeypatch.setitem(cifar.TORCHVISION, "cifar10", FakeCIFAR10)
    dm = CIFAR10DataModule(root=str(tmp_path), batch_size=8, **kwargs)
    dm.setup()
    return dm


def test_cifar_validates_on_the_test_split_unless_training_images_are_held_out(tmp_path, monkeypatch):
    dm = held_out_cifar(tmp_path, monkeypatch)
    assert len(dm.train_set) == 200 and dm.val_set is dm.test_set and dm.test_set.x[:, 0, 0, 0].unique().tolist() == [1]

    dm = held_out_cifar(tmp_path, monkeypatch, val_size=30)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (170, 30, 40)
    assert dm.val_set.x[:, 0, 0, 0].unique().tolist() == [0]  # training images
    assert dm.test_set.x[:, 0, 0, 0].unique().tolist() == [1]  # the test split, untouched
    held, trained = set(dm.val_set.x[:, 0, 0, 1].tolist()), set(dm.train_set.x[:, 0, 0, 1].tolist())
    assert not held & trained and len(held | trained) == 200  # disjoint, and together the training split
    assert dm.val_set.y.bincount(minlength=10).tolist() == [3] * 10  # as many of each class
    # the loaders read them: validation the held-out images, the test the test split
    x = next(iter(dm.val_dataloader()))[0]  # a Samples batch: its images first
    assert set(x[:, 0, 0, 0].tolist()) == {0}
    x = next(iter(dm.test_dataloader()))[0]
    assert set(x[:, 0, 0, 0].tolist()) == {1}
    # the same images whatever the run's seed
    again = held_out_cifar(tmp_path, monkeypatch, val_size=30, seed=5)
    assert torch.equal(again.val_set.x, dm.val_set.x)


@pytest.mark.parametrize("val_size", [-1, 1.5, 200, 191])
def test_a_held_out_size_the_training_split_cannot_give_is_refused_naming_the_key(val_size, tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as err:  # 191: 20 of a class that has 20 training images
        held_out_cifar(tmp_path, monkeypatch, val_size=val_size)
    assert err.value.key == "data.val_size"


def test_grayscale_models_get_one_channel(tmp_path):
    dm = ShapesDataModule(num_train=20, num_val=10, crop_size=32, channels=1, batch_size=5)
    x, y = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert x.shape == (5, 1, 32, 32)
    assert dm.eval_transform(random_image()).shape == (1, 32, 32)


@pytest.mark.parametrize("child, parent, own", [
    ("cifar100", "cifar10", {"_target_", "root"}),
    ("imagenet", "folder", {"_target_", "root", "num_workers", "normalize", "eval_crops"}),
])
def test_a_dataset_option_inherits_its_parents_keys_and_says_only_what_differs(child, parent, own):
    from conftest import compose_config

    a, b = compose_config(f"data={child}").data, compose_config(f"data={parent}", "data.root=x").data
    assert list(a) == list(b)
    assert {key for key in a if a[key] != b[key]} == own
    assert not (set(yaml.safe_load((REPO / "conf" / "data" / f"{child}.yaml").read_text())) - own - {"defaults"})
