"""The paper's transform pipelines, split where the data lives.

A training image goes through two halves:

* the *load* half, per image in a DataLoader worker, on uint8: decode,
  shorter side to ``resize_size``, the central square, a random
  ``crop_size`` patch (for files; in-memory datasets skip it);
* the *batch* half, per batch on the device after transfer (the DataModule's
  ``on_after_batch_transfer``): random crop with padding (in-memory data),
  flip, uint8 -> float, PCA lighting, normalisation.

With ``batch_augment=False`` both halves run per image in the workers (the
classic path, kept for comparison: scripts/benchmark_data.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .augment import LUMA, Lighting, random_crop, random_flip, ten_crop
from .sampling import CROP_LEFT, CROP_TOP, FLIP, LIGHTING, offsets

NORMALIZE = ("paper", "imagenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # 0-1 scale, torchvision's values
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalization:
    """Input scaling. ``paper``: raw 0-255 RGB minus the training-set mean
    (Section 2; per channel here, the paper subtracts a mean *image*).
    ``imagenet``: 0-1 pixels, minus mean, divided by std.

    mean and std are per channel on a 0-1 scale, whatever the kind.
    """

    kind: str = "paper"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @property
    def scale(self) -> float:
        """The pixel range the network sees before the mean is removed."""
        return 255.0 if self.kind == "paper" else 1.0

    def for_channels(self, channels: int) -> "Normalization":
        """The same scaling for grayscale input: the luma of the mean, the mean std."""
        if channels == len(self.mean):
            return self
        mean = sum(w * m for w, m in zip(LUMA, self.mean))
        return Normalization(self.kind, (mean,), (sum(self.std) / len(self.std),))

    @property
    def divisor(self) -> tuple[float, ...]:
        return self.std if self.kind == "imagenet" else (1.0,) * len(self.std)

    def to_float(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 0-255 -> float32 on this scale."""
        return x.float() * (self.scale / 255.0)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """Remove the mean (and for ``imagenet`` divide by std); x float (..., C, H, W) on this scale."""
        mean = torch.tensor(self.mean, device=x.device).view(-1, 1, 1) * self.scale
        return (x - mean) / torch.tensor(self.divisor, device=x.device).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (..., C, H, W) -> standardise(to_float(x) + offset), in one fused pass.

        offset: per-image colour shifts (B, C) on this scale (PCA lighting), or None.
        Fused because on a CPU these elementwise passes cost more than the crop.
        """
        div = torch.tensor(self.divisor, device=x.device).view(-1, 1, 1)
        gain = (self.scale / 255.0) / div  # (C, 1, 1)
        bias = -torch.tensor(self.mean, device=x.device).view(-1, 1, 1) * self.scale / div
        if offset is not None:
            bias = bias + offset.view(*offset.shape, 1, 1) / div  # (B, C, 1, 1)
        # In place on one new float tensor: on a CPU each pass over a batch costs more
        # than the crop, and the paper's scaling (gain 1) needs only the addition.
        # Decided on the host from the config's numbers: reading the gain tensor back would
        # make every CUDA batch wait for the device.
        y = x.to(torch.float32, copy=True)
        if any(self.scale / 255.0 / d != 1 for d in self.divisor):
            y.mul_(gain)
        return y.add_(bias)


class BatchTrainAugment(nn.Module):
    """The batch half of training: crop, flip, lighting, normalisation.

    Args:
        crop_size: output side. Images larger than that, or any image when
            ``padding`` > 0, get a random crop (Section 4.1).
        padding: zero padding before the crop (CIFAR's 4; the paper uses none).
        flip: mirror half of the images (Section 4.1).
        lighting: the PCA lighting module (its scale must match ``norm``).
        norm: the input scaling.
        resize: in-memory datasets only: first resize square images of another
            size to resize x resize (CIFAR's 32x32 for a 224-pixel model).

    uint8 (B, C, H, W) in, normalised float32 (B, C, crop_size, crop_size) out.
    ``draws``: the images' (B, 6) random numbers (:mod:`alexnet.data.sampling`),
    which decide the crop, the flip and the lighting; None draws fresh ones.
    """

    def __init__(self, crop_size: int, padding: int, flip: bool, lighting: Lighting, norm: Normalization, resize=None):
        super().__init__()
        self.crop_size, self.padding, self.flip, self.resize = crop_size, padding, flip, resize
        self.lighting, self.norm = lighting, norm

    def forward(self, x: torch.Tensor, draws: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected a batch (B, C, H, W), got shape {tuple(x.shape)}")
        if draws is None:
            draws = torch.cat([torch.rand(len(x), 3, dtype=torch.float64), torch.randn(len(x), 3, dtype=torch.float64)], 1)
        draws = draws.cpu()  # (B, 6): a few numbers, read on the host
        x = _resize(x, self.resize)
        if self.padding or x.shape[-1] != self.crop_size or x.shape[-2] != self.crop_size:
            x = random_crop(x, self.crop_size, self.padding, draws[:, [CROP_TOP, CROP_LEFT]])
        if self.flip:
            x = random_flip(x, u=draws[:, FLIP])
        return self.norm(x, self.lighting.sample_offset(len(x), x.device, draws[:, LIGHTING]))

    def extra_repr(self) -> str:
        return f"crop_size={self.crop_size}, padding={self.padding}, flip={self.flip}, norm={self.norm.kind}"


class BatchEvalTransform(nn.Module):
    """The batch half of evaluation: the centre crop or the ten crops, normalised.

    uint8 (B, C, H, W) in; out float32 (B, C, s, s) for ``eval_crops=1`` or
    (B, 10, C, s, s) for ``eval_crops=10`` (Section 4.1), s = crop_size.
    """

    def __init__(self, crop_size: int, eval_crops: int, norm: Normalization, resize=None):
        super().__init__()
        self.crop_size, self.eval_crops, self.norm, self.resize = crop_size, eval_crops, norm, resize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _resize(x, self.resize)
        if self.eval_crops == 10:
            x = ten_crop(x, self.crop_size)
        elif x.shape[-1] != self.crop_size or x.shape[-2] != self.crop_size:
            x = TF.center_crop(x, [self.crop_size, self.crop_size])
        return self.norm(x)

    def extra_repr(self) -> str:
        return f"crop_size={self.crop_size}, eval_crops={self.eval_crops}, norm={self.norm.kind}"


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or x.shape[-2:] == (size, size):
        return x
    return TF.resize(x, [size, size], antialias=True)


class LoadTrain:
    """The load half of training for image files: the decoded image (a uint8 tensor
    (3, H, W) on any device, or a PIL image) and its draws in, uint8 (C, crop, crop) out.

    Section 2: shorter side to 256 and the central 256x256 square; Section 4.1:
    a random 224x224 patch of it (without ``center_crop``: of the whole image),
    its position from the image's draws (CROP_TOP, CROP_LEFT). Picklable, so
    DataLoader workers can run it.
    """

    def __init__(self, resize_size: int, crop_size: int, center_crop: bool, channels: int) -> None:
        self.crop_size = crop_size
        steps = [v2.Resize(resize_size)] + ([v2.CenterCrop(resize_size)] if center_crop else [])
        self.resize = v2.Compose(steps)
        self.to_tensor = v2.Compose(_to_tensor(channels))

    def __call__(self, image, draws: torch.Tensor) -> torch.Tensor:
        image = self.resize(image)
        h, w = TF.get_size(image)
        s = self.crop_size
        if s > h or s > w:
            raise ValueError(f"crop {s} is larger than the resized image {w}x{h}")
        top, left = offsets(draws[CROP_TOP], h - s + 1), offsets(draws[CROP_LEFT], w - s + 1)
        return self.to_tensor(TF.crop(image, int(top), int(left), s, s))

    def __repr__(self) -> str:
        return f"LoadTrain(resize={self.resize!r}, crop_size={self.crop_size})"


def load_train(resize_size: int, crop_size: int, center_crop: bool, channels: int) -> LoadTrain:
    """:class:`LoadTrain`, the load half of training for image files."""
    return LoadTrain(resize_size, crop_size, center_crop, channels)


def load_eval(resize_size: int, channels: int) -> v2.Compose:
    """The load half of evaluation for image files: shorter side to resize_size
    and the central square, the decoded image in (a uint8 tensor or a PIL image),
    uint8 (C, resize_size, resize_size) out.
    Evaluation crops (one or ten) come from that square, as in Section 4.1."""
    return v2.Compose([v2.Resize(resize_size), v2.CenterCrop(resize_size)] + _to_tensor(channels))


def _to_tensor(channels: int) -> list:
    gray = [v2.Grayscale(1)] if channels == 1 else []
    return gray + [v2.PILToTensor()]


class PerImage:
    """Runs a load half and then a batch half on one image (the classic path).

    Training halves take the image's draws (:mod:`alexnet.data.sampling`),
    evaluation halves do not. Picklable, so DataLoader workers can run it.
    """

    def __init__(self, load, batch: nn.Module | None = None):
        self.load, self.batch = load, batch

    def __call__(self, image, draws: torch.Tensor | None = None) -> torch.Tensor:
        x = self.load(image) if draws is None else self.load(image, draws)
        if self.batch is None:
            return x
        if draws is None:
            return self.batch(x.unsqueeze(0))[0]
        return self.batch(x.unsqueeze(0), draws.unsqueeze(0))[0]

    def __repr__(self) -> str:
        return f"PerImage(load={self.load!r}, batch={self.batch!r})"
