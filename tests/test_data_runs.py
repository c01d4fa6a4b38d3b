"""The imagenet, folder, cifar10 and shapes options run under a Lightning Trainer,
on generated ImageNet-layout folders and on the real CIFAR-10 copy."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from data_fixtures import cifar10_jpg, cifar10_jpg_subset, image_tree, random_image  # noqa: F401
from torch import nn

from alexnet.data import CIFAR10DataModule, FolderDataModule, ImageNetDataModule, ShapesDataModule, average_crops


class Probe(L.LightningModule):
    """A tiny model that records what reaches its steps."""

    def __init__(self, num_classes: int, channels: int = 3):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
        self.seen = {"train": [], "val": [], "test": []}

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch
        self.seen["train"].append((tuple(x.shape), x.dtype, y.dtype, float(x.mean()), float(x.std())))
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, _):
        x, y = batch
        self.seen["val"].append((tuple(x.shape), x.dtype, y.dtype, float(x.mean()), float(x.std())))
        if x.dim() == 5:
            average_crops(self(x.flatten(0, 1)).view(*x.shape[:2], -1))

    def test_step(self, batch, _):
        x, y = batch
        self.seen["test"].append((tuple(x.shape), x.dtype, y.dtype, float(x.mean()), float(x.std())))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(dm, batches=2):
    probe = Probe(dm.num_classes, dm.channels)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=batches, limit_val_batches=batches, num_sanity_val_steps=0,
                        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(probe, datamodule=dm)
    return probe.seen


@pytest.mark.parametrize("eval_crops", [1, 10])
def test_imagenet_option_runs_on_a_generated_imagenet_layout(tmp_path, eval_crops):
    image_tree(tmp_path, per_class=3, size=(300, 260))
    dm = ImageNetDataModule(root=str(tmp_path), batch_size=4, num_workers=1, eval_crops=eval_crops)
    seen = fit(dm)
    assert seen["train"][0][:3] == ((4, 3, 224, 224), torch.float32, torch.int64)
    val_shape = (4, 10, 3, 224, 224) if eval_crops == 10 else (4, 3, 224, 224)
    assert seen["val"][0][:3] == (val_shape, torch.float32, torch.int64)
    # normalize=paper: raw 0-255 pixels minus the mean (mid-grey noise, smoothed by the resize).
    mean, std = seen["train"][0][3:]
    assert abs(mean) < 40 and 10 < std < 100


def test_folder_option_runs_per_image_path_too(tmp_path):
    image_tree(tmp_path, classes=("cat", "dog"), per_class=4, size=(64, 48))
    for batch_augment in (True, False):
        dm = FolderDataModule(root=str(tmp_path), crop_size=32, resize_size=40, batch_size=4, num_workers=0,
                              normalize="imagenet", batch_augment=batch_augment)
        seen = fit(dm)
        assert seen["train"][0][:3] == ((4, 3, 32, 32), torch.float32, torch.int64)
        assert seen["val"][0][:3] == ((4, 3, 32, 32), torch.float32, torch.int64)


@pytest.mark.parametrize("batch_augment", [True, False])
def test_test_crops_give_the_final_test_ten_crops_while_validation_keeps_one(tmp_path, batch_augment):
    image_tree(tmp_path, classes=("cat", "dog"), per_class=4, size=(64, 48))
    dm = FolderDataModule(root=str(tmp_path), crop_size=32, resize_size=40, batch_size=4, num_workers=0,
                          normalize="imagenet", batch_augment=batch_augment, eval_crops=1, test_crops=10)
    probe = Probe(dm.num_classes)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, limit_test_batches=1,
                        num_sanity_val_steps=0, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(probe, datamodule=dm)
    trainer.test(probe, datamodule=dm, verbose=False)
    assert probe.seen["val"][0][0] == (4, 3, 32, 32)
    assert probe.seen["test"][0][0] == (4, 10, 3, 32, 32)


def test_shapes_option_runs_and_upscales_for_a_224_model():
    dm = ShapesDataModule(num_train=20, num_val=20, image_size=32, crop_size=224, batch_size=5, eval_crops=10)
    seen = fit(dm, batches=1)
    assert seen["train"][0][0] == (5, 3, 224, 224) and seen["val"][0][0] == (5, 10, 3, 224, 224)


def test_cifar10_option_reads_the_real_jpeg_copy(cifar10_jpg):
    dm = CIFAR10DataModule(root=str(cifar10_jpg))
    assert dm.layout == "folder"
    assert dm.class_names == "airplane automobile bird cat deer dog frog horse ship truck".split()
    assert sum(1 for _ in (cifar10_jpg / "train").rglob("*.jpg")) == 50_000


def test_cifar10_option_trains_on_real_cifar_images(cifar10_jpg_subset, monkeypatch):
    dm = CIFAR10DataModule(root=str(cifar10_jpg_subset), batch_size=64, normalize="imagenet")
    seen = fit(dm, batches=3)
    assert len(dm.train_set) == 2000 and len(dm.val_set) == 500
    assert seen["train"][0][:3] == ((64, 3, 32, 32), torch.float32, torch.int64)
    # Standardised with CIFAR-10's mean and std: about zero mean, unit spread.
    mean, std = seen["val"][0][3:]
    assert abs(mean) < 0.3 and 0.7 < std < 1.3
    # The decoded array was cached: a second DataModule loads it without decoding.
    monkeypatch.setattr("alexnet.data.cifar.load_rgb", lambda *a: pytest.fail("decoded again"))
    again = CIFAR10DataModule(root=str(cifar10_jpg_subset))
    again.setup()
    assert torch.equal(again.train_set.x, dm.train_set.x)


def test_eval_transform_is_what_the_model_sees_at_evaluation(tmp_path):
    image_tree(tmp_path, per_class=1)
    dm = ImageNetDataModule(root=str(tmp_path), eval_crops=10)
    image = random_image((400, 300))
    x = dm.eval_transform(image)
    assert x.shape == (10, 3, 224, 224) and x.dtype == torch.float32
    # The same image through the validation path gives the same tensor.
    path = tmp_path / "val" / "n01440764" / "n01440764_0.JPEG"
    dm.setup()
    loaded = dm.val_set[[p for p, _ in dm.val_set.samples].index(str(path))][0]
    from PIL import Image

    assert torch.allclose(dm.eval_batch(loaded.unsqueeze(0))[0], dm.eval_transform(Image.open(path)))


def test_eval_transform_needs_no_dataset_with_require_data_false(tmp_path):
    # Predicting with an ImageNet checkpoint on a machine without ImageNet.
    dm = ImageNetDataModule(root=str(tmp_path / "absent"), require_data=False, eval_crops=10)
    assert dm.eval_transform(random_image((300, 280))).shape == (10, 3, 224, 224)
