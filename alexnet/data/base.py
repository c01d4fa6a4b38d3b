"""What every dataset's DataModule shares: config checks, the two transform halves, the batch hook.

Subclasses set ``num_classes`` and ``class_names`` in ``__init__`` (cheaply:
no image is decoded there) and build ``self.train_set``/``self.val_set`` in
``setup``. Batches leave the DataLoader as uint8
:class:`~alexnet.data.sampling.Samples` (with ``data.decode=device``, as file
bytes that ``on_before_batch_transfer`` decodes and crops on the device into
Samples); ``on_after_batch_transfer`` turns them into what the model sees,
on the device:

    train: x float32 (B, C, crop, crop), y int64 (B,)
    val: x float32 (B, C, crop, crop), or (B, 10, C, crop, crop) with eval_crops=10
    test: the same with test_crops (default: eval_crops) crops

The training loader is torchdata's ``StatefulDataLoader`` over an
:class:`~alexnet.data.sampling.EpochSampler`: Lightning saves its position in
every checkpoint and restores it on resume, and since the order and every
augmentation draw are functions of (seed, epoch, index), a run resumed from
any step continues with the batches an uninterrupted run would have drawn.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from ..errors import ConfigError, TrainingError
from ..parallel.ranks import data_parallel
from . import start_method
from .augment import IMAGENET_EIGVAL, IMAGENET_EIGVEC, Lighting
from .decode import DECODE, decode_batch
from .folder import EncodedSamples
from .labels import check_labels
from .presets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZE,
    BatchEvalTransform,
    BatchTrainAugment,
    Normalization,
    PerImage,
    load_eval,
)
from .sampling import EpochSampler, Samples
from .stats import PixelStats

log = logging.getLogger(__name__)

# The DataModule's checkpoint state: the version of the sampling scheme.
# Checkpoints without it were written when the order came from a shuffle
# generator and crops from worker random streams: they resume, but the rest
# of their epoch is drawn afresh.
SAMPLING = "seed-epoch-index/1"


class AlexNetDataModule(L.LightningDataModule):
    """The common keys of ``conf/data/*.yaml``; see those files for their meaning."""

    num_classes: int
    class_names: list[str]
    # The training set's per-channel pixel mean and std on a 0-1 scale; a
    # data.pca_file written by scripts/compute_pca.py replaces them.
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 128,  # Section 5
        num_workers: int = 4,
        crop_size: int = 224,  # Section 4.1: 224x224 patches
        resize_size: int = 256,  # Section 2: shorter side to 256
        center_crop: bool = True,  # Section 2: the central 256x256 square
        flip: bool = True,  # Section 4.1
        padding: int = 0,
        pca_std: float = 0.1,  # Section 4.1: alpha ~ N(0, 0.1)
        pca_file: str | None = None,
        normalize: str = "paper",
        eval_crops: int = 1,
        test_crops: int | None = None,
        max_bad_images: int = 10,
        channels: int = 3,
        seed: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        batch_augment: bool = True,
        decode: str = "worker",
        prefetch_factor: int | None = 2,
        multiprocessing_context: str = "auto",
        require_data: bool = True,
    ) -> None:
        """``require_data=False`` skips the checks of data.root, for callers that
        only need :meth:`eval_transform` (predicting on a machine without the dataset)."""
        super().__init__()
        self.save_hyperparameters()
        self.require_data = require_data
        self.root = Path(root).expanduser() if root not in (None, "") else None
        self.batch_size, self.num_workers, self.crop_size = batch_size, num_workers, crop_size
        self.resize_size, self.center_crop, self.channels, self.seed = resize_size, center_crop, channels, seed
        self.eval_crops, self.max_bad_images, self.batch_augment = eval_crops, max_bad_images, batch_augment
        # The final test may take the paper's ten crops while the per-epoch
        # validation stays on the (ten times cheaper) centre crop.
        self.test_crops = eval_crops if test_crops is None else test_crops
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers
        self.decode, self.prefetch_factor = decode, prefetch_factor
        start_method.check(multiprocessing_context)
        self.multiprocessing_context = multiprocessing_context
        self._check(batch_size, num_workers, crop_size, resize_size, padding, pca_std, normalize, eval_crops, max_bad_images, channels)
        self._check_loading(decode, prefetch_factor, batch_augment)
        if self.test_crops not in (1, 10):
            raise ConfigError("data.test_crops", f"must be null (as data.eval_crops), 1 or 10, got {test_crops!r}")

        stats = PixelStats.load(pca_file) if pca_file else None
        mean, std = (stats.mean, stats.std) if stats else (self.mean, self.std)
        self.norm = Normalization(normalize, tuple(mean), tuple(std)).for_channels(channels)
        eig = (stats.eigval, stats.eigvec) if stats else (IMAGENET_EIGVAL, IMAGENET_EIGVEC)
        # The lighting noise is defined on 0-1 pixels; it scales with the range in use.
        self.lighting = Lighting(pca_std, *eig, scale=self.norm.scale, channels=channels)
        self.train_batch = BatchTrainAugment(crop_size, padding, flip, self.lighting, self.norm)
        self.eval_batch = BatchEvalTransform(crop_size, eval_crops, self.norm)
        self.test_batch = BatchEvalTransform(crop_size, self.test_crops, self.norm)
        self._bad: dict[str, str] = {}  # each unreadable file's path -> how it was first named
        # The sample indices of the training batch last handed to the model (for callbacks).
        self.batch_indices: torch.Tensor | None = None
        self.train_sampler: EpochSampler | None = None
        self._first_batch = False
        self._told_start_method = False
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    @staticmethod
    def _check(batch_size, num_workers, crop_size, resize_size, padding, pca_std, normalize, eval_crops, max_bad, channels):
        def need(ok: bool, key: str, message: str) -> None:
            if not ok:
                raise ConfigError(f"data.{key}", message)

        need(isinstance(batch_size, int) and batch_size > 0, "batch_size", f"must be a positive integer, got {batch_size!r}")
        need(isinstance(num_workers, int) and num_workers >= 0, "num_workers", f"must be >= 0, got {num_workers!r}")
        need(isinstance(crop_size, int) and crop_size > 0, "crop_size", f"must be a positive integer, got {crop_size!r}")
        need(
            isinstance(resize_size, int) and resize_size >= crop_size,
            "crop_size",
            f"crop_size {crop_size} is larger than data.resize_size {resize_size}",
        )
        need(isinstance(padding, int) and padding >= 0, "padding", f"must be >= 0, got {padding!r}")
        need(pca_std >= 0, "pca_std", f"must be >= 0 (0 disables lighting), got {pca_std}")
        need(normalize in NORMALIZE, "normalize", f"must be one of {', '.join(NORMALIZE)}, got {normalize!r}")
        need(eval_crops in (1, 10), "eval_crops", f"must be 1 (centre crop) or 10 (Section 4.1), got {eval_crops!r}")
        need(isinstance(max_bad, int) and max_bad >= 0, "max_bad_images", f"must be >= 0, got {max_bad!r}")
        need(channels in (1, 3), "channels", f"must be 3 (RGB) or 1 (grayscale), got {channels!r}")

    @staticmethod
    def _check_loading(decode: str, prefetch_factor, batch_augment: bool) -> None:
        if decode not in DECODE:
            raise ConfigError("data.decode", f"must be one of {', '.join(DECODE)}, got {decode!r}")
        if decode == "device" and not batch_augment:
            raise ConfigError("data.decode", "device decodes and crops each batch on the device, which needs "
                                             "data.batch_augment=true (the batch half of the transforms runs there)")
        if prefetch_factor is not None and (isinstance(prefetch_factor, bool) or not isinstance(prefetch_factor, int) or prefetch_factor < 1):
            raise ConfigError("data.prefetch_factor", f"must be a positive integer (batches each worker keeps ready), "
                                                      f"got {prefetch_factor!r}")

    # ---- what the model sees -------------------------------------------------

    def eval_transform(self, image) -> torch.Tensor:
        """Exactly what the model sees at evaluation for one PIL image:
        normalised float32 (C, crop, crop), or (10, C, crop, crop) with eval_crops=10."""
        x = load_eval(self.resize_size, self.channels)(image.convert("RGB"))
        return self.eval_batch(x.unsqueeze(0))[0]

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """A label outside 0..num_classes-1 fails here, on the CPU, with a message
        (on a GPU it would end as a device-side assert in the loss).

        With ``data.decode=device`` the batch arrives as file bytes
        (:class:`~alexnet.data.folder.EncodedSamples`) and is decoded and cropped
        here, on the training device, into uint8 Samples already there.
        """
        check_labels(batch, self.num_classes)
        if isinstance(batch, EncodedSamples):
            batch = self.decode_files(batch, self._device())
        return batch

    def decode_files(self, batch: EncodedSamples, device: torch.device) -> Samples:
        """File bytes -> the uint8 crops the workers would have made, on ``device``: the same
        load halves (training: shorter side, centre square, the draws' crop; evaluation: the
        square), on tensors decoded there. Files that cannot be decoded join ``bad``."""
        images, errors = decode_batch(batch.files(), batch.paths, device)
        training = batch.draws is not None
        keep, crops, bad = [], [], list(batch.bad)
        for i, (image, error) in enumerate(zip(images, errors)):
            if image is None:
                bad.append(error)
                continue
            keep.append(i)
            crops.append(self.load_train(image, batch.draws[i]) if training else self.load_eval(image))
        x = torch.stack(crops) if crops else torch.empty(0, dtype=torch.uint8, device=device)
        rows = torch.tensor(keep, dtype=torch.int64)
        return Samples(x, batch.y[rows], batch.index[rows], batch.draws[rows] if training else None, bad)

    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """The batch half of the transforms, on the device (Lightning calls this
        after moving the batch). Also counts the images the workers could not read.

        Samples -> (x, y): the images' draws decide the training crops, flips and lighting.
        A batch whose every file was unreadable (and ``max_bad_images`` allows them) is
        (x, y) with no images, x shaped as the batch half would have made it.
        """
        if not isinstance(batch, Samples):
            return batch
        if batch.bad:
            self._count_bad(batch.bad)
        x = batch.x
        training = self.trainer is not None and self.trainer.training
        if training:
            self._check_epoch()
            self.batch_indices = batch.index
        if not len(batch.y):
            crops = () if training or self._eval_transform().eval_crops == 1 else (10,)
            return torch.empty(0, *crops, self.channels, self.crop_size, self.crop_size, device=batch.y.device), batch.y
        if x.dtype == torch.uint8:  # with batch_augment=False the workers already did it
            x = self.train_batch(x, batch.draws) if training else self._eval_transform()(x)
        return x, batch.y

    def _check_epoch(self) -> None:
        # Lightning iterates a resumed run's loader once before it sets the epoch;
        # the DataModule sets it when building the loader. Something that builds the
        # loader before the checkpoint is restored (Lightning issue #20550: reading
        # trainer.estimated_stepping_batches in configure_optimizers) would train on
        # another epoch's order, or ignore the loader's saved position: stop instead.
        fit_loop = self.trainer.fit_loop
        epoch = self._epoch()
        drawn = self.train_sampler.iterated_epoch if self.train_sampler is not None else epoch
        pending = False
        if self._first_batch:  # of this fit: a mid-epoch resume must have handed the loader its position
            self._first_batch = False
            # (private: the position Lightning read from the checkpoint and has not given the loader;
            # tests/test_resume_exact.py fails if Lightning renames it)
            mid_epoch = fit_loop.epoch_loop.batch_progress.current.ready > 0
            pending = mid_epoch and bool(fit_loop._combined_loader_states_to_load)
        if drawn != epoch or pending:
            raise TrainingError(
                f"the training loader was built before the checkpoint was restored (it drew epoch {drawn}'s order "
                f"for epoch {epoch}{', and its saved position was not loaded' if pending else ''}): is "
                "trainer.estimated_stepping_batches read in configure_optimizers? (Lightning issue #20550)"
            )

    def _eval_transform(self):
        trainer = self.trainer
        return self.test_batch if trainer is not None and trainer.testing else self.eval_batch

    @property
    def bad_images(self) -> list[str]:
        """The unreadable files skipped so far, each once, as first named."""
        return list(self._bad.values())

    def _count_bad(self, paths: list[str]) -> None:
        # Distinct files: a bad file skipped again (every epoch, the sanity check, the test) counts
        # once and is warned about once, so max_bad_images bounds the files, not the run's length.
        for p in paths:
            key = getattr(p, "path", p)
            if key in self._bad:
                continue
            self._bad[key] = p
            warnings.warn(f"skipped unreadable image {p} ({len(self._bad)} so far)", stacklevel=2)
        if len(self._bad) > self.max_bad_images:
            # Counted per data-parallel copy, without a collective: each copy reads a shard of
            # its own, and Lightning's launcher stops the other processes when this one fails.
            rank, size = data_parallel(self.trainer)
            where = f" in the shard of data-parallel rank {rank} of {size} (each rank counts its own)" if size > 1 else ""
            raise ConfigError(
                "data.max_bad_images",
                f"{len(self._bad)} unreadable images{where}, more than the {self.max_bad_images} allowed:\n  "
                + "\n  ".join(self._bad.values()),
            )

    # ---- loaders -------------------------------------------------------------

    def _loader(self, dataset: Dataset, shuffle: bool, **kwargs) -> DataLoader:
        """The training loader (``shuffle=True``: resumable, in the epoch's order) or an evaluation one.

        Each loader has a generator of its own for its workers' base seed, so
        building one never draws from the global stream that dropout uses.
        """
        workers = kwargs.pop("num_workers", self.num_workers)
        common = dict(
            batch_size=self.batch_size,
            num_workers=workers,
            prefetch_factor=self.prefetch_factor if workers > 0 else None,
            pin_memory=kwargs.pop("pin_memory", self.pin_memory),
            persistent_workers=self.persistent_workers and workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
            multiprocessing_context=self._worker_context() if workers > 0 else None,
            **kwargs,
        )
        if not shuffle:
            return DataLoader(dataset, shuffle=False, **common)
        rank, size = data_parallel(self.trainer)
        self.train_sampler = EpochSampler(dataset, num_replicas=size, rank=rank, seed=self.seed)
        self._first_batch = True
        # Lightning sets the epoch at each epoch's start, but only after its first
        # iter() of a resumed run, which already draws the order with workers.
        self.train_sampler.set_epoch(self._epoch())
        with warnings.catch_warnings():  # torchdata 0.11 calls a deprecated torch function; nothing to act on
            warnings.filterwarnings("ignore", message=".*set_vital.*is deprecated")
            return StatefulDataLoader(dataset, sampler=self.train_sampler, **common)

    def _worker_context(self):
        processes = self.trainer.world_size if self.trainer is not None else 1
        distributed = processes > 1 or (torch.distributed.is_available() and torch.distributed.is_initialized())
        ctx = start_method.context(self.multiprocessing_context, distributed)
        if ctx is not None and not self._told_start_method:
            self._told_start_method = True
            how = f"data.multiprocessing_context={self.multiprocessing_context}"
            if self.multiprocessing_context == "auto" and distributed:
                how += (f", {processes} training process{'es' if processes > 1 else ''} in a process group: "
                        "forking a rank that runs communication threads can deadlock")
            if self.trainer is None or self.trainer.is_global_zero:
                log.info("data: loader workers start by %s (%s)", ctx.get_start_method(), how)
        return ctx

    def _epoch(self) -> int:
        """The epoch the next training iteration is for (restored on resume): what Lightning gives set_epoch."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_progress.current.processed

    def val_dataloader(self):
        self._need_setup()
        return self._eval_loader(self.eval_batch)

    def test_dataloader(self):
        # The test split is the evaluation split: ImageNet's validation set, a folder's val/
        # or test/ (in-memory data holds its own test_set: CIFAR's test split).
        self._need_setup()
        return self._eval_loader(self.test_batch)

    def _eval_loader(self, batch: BatchEvalTransform) -> DataLoader:
        """A loader over val_set; ``batch`` is the batch half that the workers
        apply when batch_augment=False (else on_after_batch_transfer does)."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        # The loader's position is saved by Lightning (the StatefulDataLoader's state).
        return {"sampling": SAMPLING}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("sampling") != SAMPLING:
            rank_zero_warn(
                "this checkpoint was written before training order and augmentation became functions of "
                "(seed, epoch, index): the run resumes, but the order of the epoch it stopped in restarts"
            )

    def _need_setup(self) -> None:
        if self.train_set is None:
            self.setup("fit")

    def per_image(self, load, batch):
        """The worker-side transform: the load half, plus the batch half when not batched."""
        return PerImage(load, None if self.batch_augment else batch)

    def train_pixels(self, max_images: int, batch_size: int = 256):
        """Training images without augmentation, uint8 (B, 3, H, W) batches, at
        most ``max_images`` of them drawn at random: for scripts/compute_pca.py."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={self.root}, classes={self.num_classes}, {self.train_batch!r}, {self.eval_batch!r})"
