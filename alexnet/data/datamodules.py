"""The DataModules behind ``conf/data/``: shapes, cifar10, cifar100, folder, imagenet.

Construction is cheap (folders are listed, no image is decoded) and checks
the config; ``setup`` lists or loads the images.
"""

from __future__ import annotations

import json
import warnings
from importlib import resources

import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from ..errors import ConfigError
from . import cifar
from .base import AlexNetDataModule
from .folder import FileBytes, ImageFiles, check_split_classes, collate_bytes, collate_skipping_bad, list_samples
from .presets import load_eval, load_train
from .workers import advise_workers
from .sampling import Samples, batch_draws, split_key
from .shapes import SHAPE_CLASSES, generate_shapes


class TensorImages(Dataset):
    """Images held in memory as one uint8 tensor (N, C, H, W).

    ``__getitems__`` lets the DataLoader fetch a whole batch with one index
    operation instead of N Python calls, as :class:`~alexnet.data.sampling.Samples`;
    training keys ``(index, epoch)`` bring the images' draws for that epoch
    (from ``seed``). ``transform``, if given, runs on that batch (the
    loader-side path, ``batch_augment=False``).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform=None, seed: int = 0):
        self.x, self.y, self.transform, self.seed = x, y, transform, seed

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def __getitems__(self, keys) -> Samples:
        pairs = [split_key(k) for k in keys]
        index = torch.tensor([i for i, _ in pairs], dtype=torch.int64)
        epoch = pairs[0][1] if pairs else None
        draws = None if epoch is None else batch_draws(self.seed, epoch, index.tolist())
        idx = index.to(self.x.device)
        x = self.x[idx]
        if self.transform is not None:
            x = self.transform(x) if draws is None else self.transform(x, draws)
        return Samples(x, self.y[idx], index, draws, [])


def _already_batched(batch):
    return batch


class InMemoryDataModule(AlexNetDataModule):
    """A dataset small enough to hold as tensors: no workers; the DataLoader
    hands out uint8 slices and all augmentation runs batched on the device."""

    # Options of image files that do nothing here, with the value that says so.
    INERT = {"num_workers": 0, "center_crop": True, "max_bad_images": 0, "decode": "worker"}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for key, inert in self.INERT.items():
            if kwargs.get(key, inert) != inert:
                warnings.warn(f"data.{key}={kwargs[key]} does nothing for {type(self).__name__}: its images are held "
                              f"in memory as one tensor (leave it {inert})", stacklevel=2)
        # Images are stored at their own size and resized batched, on the device.
        self.train_batch.resize = self.eval_batch.resize = self.test_batch.resize = self.resize_size

    def _tensors(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        sets = []
        for train in (True, False):
            x, y = self._tensors(train)
            if self.channels == 1:
                x = TF.rgb_to_grayscale(x)
            device = self._device()
            if device.type == "cuda" and self.batch_augment:
                # airbench style: the whole uint8 dataset lives on the GPU (CIFAR: 180 MB),
                # so a batch costs one index and no host-to-device copy.
                x, y = x.to(device), y.to(device)
            sets.append(TensorImages(x, y, seed=self.seed))
        self.train_set, self.val_set = sets
        self.test_set = self.val_set  # the same images, unless a subclass holds some training images out

    def test_dataloader(self):
        self._need_setup()
        return self._tensor_loader(self.test_set, shuffle=False, batch=self.test_batch)

    def _tensor_loader(self, dataset: TensorImages, shuffle: bool, batch=None):
        if not self.batch_augment:  # run the batch half in the loader, on the CPU
            dataset = TensorImages(dataset.x, dataset.y, batch, self.seed)
        on_device = dataset.x.device.type != "cpu"
        return self._loader(dataset, shuffle, num_workers=0, collate_fn=_already_batched,
                            pin_memory=self.pin_memory and not on_device)

    def train_dataloader(self):
        self._need_setup()
        return self._tensor_loader(self.train_set, shuffle=True, batch=self.train_batch)

    def _eval_loader(self, batch):
        return self._tensor_loader(self.val_set, shuffle=False, batch=batch)

    def train_pixels(self, max_images: int, batch_size: int = 256):
        self._need_setup()
        x = self.train_set.x
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))[:max_images]
        for i in range(0, len(idx), batch_size):
            yield x[idx[i : i + batch_size]]


class ShapesDataModule(InMemoryDataModule):
    """Seed 002's ten synthetic pattern classes, generated in memory (shapes.py)."""

    mean = (0.377, 0.377, 0.375)  # measured on 5,000 generated 32x32 images
    std = (0.312, 0.309, 0.310)

    def __init__(self, num_train: int = 5000, num_val: int = 1000, image_size: int | None = None, **kwargs):
        kwargs.setdefault("root", None)
        image_size = image_size or kwargs.get("crop_size", 224)
        if kwargs.get("resize_size") is None:  # generated smaller than the model's input: upscaled batched
            kwargs["resize_size"] = max(image_size, kwargs.get("crop_size", 224))
        for key, value in (("num_train", num_train), ("num_val", num_val)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"data.{key}", f"must be a positive integer, got {value!r}")
        super().__init__(**kwargs)
        self.num_train, self.num_val, self.image_size = num_train, num_val, image_size
        self.num_classes, self.class_names = len(SHAPE_CLASSES), list(SHAPE_CLASSES)

    def _tensors(self, train: bool):
        # Different seeds for the two splits, so no validation image is a training image.
        return generate_shapes(self.num_train if train else self.num_val, self.image_size, 2 * self.seed + (not train))


# CIFAR-100's fine labels in index order, as in its "meta" file (known without the data).
CIFAR100_CLASSES = """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge
bus butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile
cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard
lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree
pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal
shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone
television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split()
CIFAR10_CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()


class CIFAR10DataModule(InMemoryDataModule):
    """CIFAR-10 from torchvision's pickled batches (downloaded into data.root
    when missing) or from a class-per-folder copy with train/ and test/."""

    name = "cifar10"
    known_classes = CIFAR10_CLASSES
    mean = (0.4914, 0.4822, 0.4465)  # the training set's, widely published
    std = (0.2470, 0.2435, 0.2616)

    def __init__(self, val_size: int = 0, **kwargs):
        kwargs.setdefault("crop_size", 32)
        kwargs.setdefault("padding", 4)
        if kwargs.get("resize_size") is None:  # 32, or 256 for a 224-pixel model (as 256:224 in Section 2)
            crop = kwargs["crop_size"]
            kwargs["resize_size"] = 32 if crop <= 32 else crop * 8 // 7
        super().__init__(**kwargs)
        if not isinstance(val_size, int) or isinstance(val_size, bool) or val_size < 0:
            raise ConfigError("data.val_size", f"must be 0 (validate on the test split) or a number of training "
                              f"images to hold out, got {val_size!r}")
        self.val_size = val_size
        if self.require_data and (self.root is None or (self.root.exists() and not self.root.is_dir())):
            raise ConfigError(
                "data.root",
                f"{self.root} is not a directory. Expected torchvision's {cifar.PICKLE_FOLDER[self.name]}/ "
                "there (downloaded when missing), or a JPEG copy: <root>/train/<class>/*.jpg and <root>/test/<class>/*.jpg",
            )
        self.layout = cifar.detect_layout(self.root, self.name) if self.root else "missing"
        if self.layout == "folder":
            self.class_names = check_split_classes(self.root, ["train", "test"])
        else:
            self.class_names = list(self.known_classes)
        self.num_classes = len(self.class_names)

    def prepare_data(self) -> None:
        if cifar.detect_layout(self.root, self.name) == "missing":
            cifar.download(self.root, self.name)

    def _tensors(self, train: bool):
        layout = cifar.detect_layout(self.root, self.name)
        if layout == "folder":
            split = self.root / ("train" if train else "test")
            return cifar.load_folder(split, self.class_names, cifar.cache_dirs(self.root))
        if layout == "missing":
            raise ConfigError("data.root", f"no CIFAR data in {self.root}; prepare_data() downloads it")
        x, y, _ = cifar.load_pickled(self.root, self.name, train)
        return x, y

    def setup(self, stage: str | None = None) -> None:
        """Train on the training split and test on the test split; validate on the test split
        (``val_size=0``, as cuda-convnet did) or on ``val_size`` training images held out."""
        if self.train_set is not None:
            return
        super().setup(stage)
        if self.val_size:
            train = self.train_set
            held = held_out(train.y.cpu(), self.val_size, self.num_classes).to(train.x.device)
            self.train_set = TensorImages(train.x[~held], train.y[~held], seed=self.seed)
            self.val_set = TensorImages(train.x[held], train.y[held], seed=self.seed)


def held_out(labels: torch.Tensor, size: int, num_classes: int) -> torch.Tensor:
    """A mask of ``size`` training images to validate on: as many of each class (the first
    classes one more when ``size`` does not divide), drawn with a fixed generator, so every
    run and seed holds out the same images."""
    if size >= len(labels):
        raise ConfigError("data.val_size", f"must be below the {len(labels)} training images, got {size}")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    per_class, extra = divmod(size, num_classes)
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(num_classes):
        members = order[labels[order] == c]
        wanted = per_class + (c < extra)
        if wanted >= len(members):
            raise ConfigError("data.val_size", f"holds out {wanted} images of class {c}, which has only "
                              f"{len(members)} training images: give fewer")
        mask[members[:wanted]] = True
    return mask


class CIFAR100DataModule(CIFAR10DataModule):
    name = "cifar100"
    known_classes = CIFAR100_CLASSES
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)


class FolderDataModule(AlexNetDataModule):
    """Any class-per-folder dataset: <root>/train/<class>/<image> and
    <root>/val/<class>/<image> (or test/ when there is no val/)."""

    layout_hint = "<root>/train/<class>/<image> and <root>/val/<class>/<image> (or test/ instead of val/)"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        root = self.root
        problem = None
        if root is None:
            problem = "is not set"
        elif not root.is_dir():
            problem = f"{root} does not exist"
        elif not (root / "train").is_dir():
            problem = f"{root} has no train/ folder"
        elif not (root / "val").is_dir() and not (root / "test").is_dir():
            problem = f"{root} has no val/ or test/ folder"
        if problem and not self.require_data:
            self.classes, self.class_names, self.num_classes = [], [], 0
            return
        if problem:
            raise ConfigError("data.root", f"{problem}. Expected the layout {self.layout_hint}")
        self.val_split = "val" if (root / "val").is_dir() else "test"
        self.classes = check_split_classes(root, ["train", self.val_split])  # folder names, sorted
        self.class_names = self.names(self.classes)
        self.num_classes = len(self.classes)

    def names(self, folders: list[str]) -> list[str]:
        return list(folders)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train = list_samples(self.root / "train", self.classes)
        val = list_samples(self.root / self.val_split, self.classes)
        # The load halves: in the workers (data.decode=worker), or on the device after
        # decoding there (data.decode=device: the workers only read the files).
        self.load_train = load_train(self.resize_size, self.crop_size, self.center_crop, self.channels)
        self.load_eval = load_eval(self.resize_size, self.channels)
        if self.decode == "device":
            self.train_set, self.val_set = FileBytes(train, self.seed), FileBytes(val)
            return
        self.train_set = ImageFiles(train, self.per_image(self.load_train, self.train_batch), self.resize_size, self.seed)
        self.val_set = ImageFiles(val, self.per_image(self.load_eval, self.eval_batch), self.resize_size)

    @property
    def collate(self):
        return collate_bytes if self.decode == "device" else collate_skipping_bad

    def train_dataloader(self):
        self._need_setup()
        advise_workers(self.trainer, self.num_workers, self.decode)
        return self._loader(self.train_set, True, collate_fn=self.collate)

    def _eval_loader(self, batch):
        dataset = self.val_set
        if not self.batch_augment and batch is not self.eval_batch:  # the workers run the batch half too
            dataset = ImageFiles(dataset.samples, self.per_image(self.load_eval, batch), self.resize_size)
        return self._loader(dataset, False, collate_fn=self.collate)

    def train_pixels(self, max_images: int, batch_size: int = 64):
        self._need_setup()
        samples = self.train_set.samples
        idx = torch.randperm(len(samples), generator=torch.Generator().manual_seed(self.seed))[:max_images]
        subset = ImageFiles([samples[i] for i in idx], load_eval(self.resize_size, 3), self.resize_size)
        loader = self._loader(subset, False, collate_fn=collate_skipping_bad)
        for batch in loader:
            if batch.bad:
                self._count_bad(batch.bad)
            if len(batch.x):
                yield batch.x


def imagenet_classes() -> dict[str, str]:
    """wnid -> human-readable label for the 1000 ILSVRC-2012 classes.

    The names are torchvision's (AlexNet_Weights.IMAGENET1K_V1.meta["categories"]),
    matched to the wnids in sorted order, the order of the class folders.
    """
    return json.loads(resources.files(__package__).joinpath("imagenet_classes.json").read_text())


class ImageNetDataModule(FolderDataModule):
    """ILSVRC-2012 (Section 2): <root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG."""

    layout_hint = (
        "<root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG (e.g. train/n01440764/n01440764_10026.JPEG); "
        "scripts/prepare_imagenet.py sorts the official flat validation folder into val/<wnid>/"
    )

    def names(self, folders: list[str]) -> list[str]:
        table = imagenet_classes()
        return [table.get(f, f) for f in folders]


__all__ = [
    "ShapesDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "FolderDataModule",
    "ImageNetDataModule",
    "TensorImages",
    "imagenet_classes",
]
