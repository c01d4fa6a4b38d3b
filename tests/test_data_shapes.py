"""The built-in synthetic dataset (seed 002's ten pattern classes)."""


import torch

from alexnet.data import ShapesDataModule
from alexnet.data.shapes import SHAPE_CLASSES, generate_shapes


def test_shapes_is_deterministic_for_a_seed():
    a, la = generate_shapes(300, 32, seed=3)
    b, lb = generate_shapes(300, 32, seed=3)
    c, _ = generate_shapes(300, 32, seed=4)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c)


def test_shapes_is_balanced_over_its_ten_classes():
    _, labels = generate_shapes(1000, 32)
    assert torch.bincount(labels, minlength=10).tolist() == [100] * 10
    _, labels = generate_shapes(1003, 32)
    counts = torch.bincount(labels, minlength=10)
    assert counts.max() - counts.min() <= 1


def test_shapes_are_uint8_rgb_at_the_asked_size_and_varied_within_a_class():
    x, y = generate_shapes(200, 48)
    assert x.shape == (200, 3, 48, 48) and x.dtype == torch.uint8
    circles = x[y == SHAPE_CLASSES.index("circle")].float()
    assert (circles[0] - circles[1]).abs().mean() > 10  # jittered, not one image repeated


def test_train_and_val_differ_and_are_deterministic_per_seed():
    dm = ShapesDataModule(num_train=50, num_val=50, crop_size=32, seed=1)
    dm.setup()
    again = ShapesDataModule(num_train=50, num_val=50, crop_size=32, seed=1)
    again.setup()
    assert torch.equal(dm.train_set.x, again.train_set.x)
    assert not torch.equal(dm.train_set.x, dm.val_set.x)
    assert dm.class_names == list(SHAPE_CLASSES) and dm.num_classes == 10
