"""Everything between image files and a batch on the device (SPEC.md, "Data").

    >>> from alexnet.data import ShapesDataModule, average_crops
    >>> dm = ShapesDataModule(crop_size=32, num_train=1000)
"""

from .augment import Lighting, average_crops, random_crop, random_flip, ten_crop
from .datamodules import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FolderDataModule,
    ImageNetDataModule,
    ShapesDataModule,
    imagenet_classes,
)
from .stats import PixelMoments, PixelStats

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "FolderDataModule",
    "ImageNetDataModule",
    "ShapesDataModule",
    "Lighting",
    "PixelMoments",
    "PixelStats",
    "average_crops",
    "imagenet_classes",
    "random_crop",
    "random_flip",
    "ten_crop",
]
