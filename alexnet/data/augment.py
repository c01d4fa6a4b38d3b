"""Batch augmentations of the paper that no library does as written.

Every function takes a batch (B, C, H, W) (uint8 or float) and runs on
whatever device the batch is on, so the DataModule can apply them after the
transfer to the GPU (airbench style: one kernel per batch, not per image).
Crops and flips are plain indexing; PCA lighting and ten-crop averaging are
hand-written because torchvision has neither.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

from .sampling import offsets

# Section 4.1: PCA of the training set's RGB pixels. These are the ImageNet
# values fb.resnet.torch computed on a 0-1 pixel scale (SPEC.md, "Data").
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (  # rows = R, G, B; column j is the j-th eigenvector
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale uses them.
LUMA = (0.299, 0.587, 0.114)


def random_crop(x: torch.Tensor, size: int, padding: int = 0, u: torch.Tensor | None = None) -> torch.Tensor:
    """A random size x size patch of each image, zero-padded by `padding` first.

    (B, C, H, W) -> (B, C, size, size). Every offset 0 .. H + 2*padding - size
    is equally likely. ``u``: (B, 2) uniforms in [0, 1) that choose the top
    and left offsets (the per-image draws of :mod:`alexnet.data.sampling`);
    None draws them from torch's global generator.
    """
    if padding:
        x = F.pad(x, (padding, padding, padding, padding))
    b, c, h, w = x.shape
    if size > h or size > w:
        raise ValueError(f"crop {size} is larger than the (padded) image {h}x{w}")
    if u is None:
        u = torch.rand(b, 2, dtype=torch.float64)
    top, left = offsets(u[:, 0], h - size + 1), offsets(u[:, 1], w - size + 1)
    if x.device.type == "cpu":  # on the CPU one slice copy per image beats an index kernel
        return torch.stack([x[i, :, t : t + size, l : l + size] for i, (t, l) in enumerate(zip(top.tolist(), left.tolist()))])
    top, left = top.to(x.device), left.to(x.device)
    windows = x.unfold(2, size, 1).unfold(3, size, 1)  # (B, C, h-size+1, w-size+1, size, size), a view
    return windows[torch.arange(b, device=x.device), :, top, left]  # one gather


def random_flip(x: torch.Tensor, p: float = 0.5, u: torch.Tensor | None = None) -> torch.Tensor:
    """Section 4.1: mirror each image left-right with probability p.

    ``u``: (B,) uniforms in [0, 1), an image is mirrored where u < p; None
    draws them from torch's global generator.
    """
    if u is None:
        u = torch.rand(x.shape[0], dtype=torch.float64)
    if x.device.type == "cpu":  # on the CPU a copy and one flip per mirrored image beat flipping all and selecting
        out = x.clone()
        for i in (u < p).nonzero().flatten().tolist():
            out[i] = x[i].flip(-1)
        return out
    flip = (u < p).to(x.device)
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def ten_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Section 4.1: the four corner patches, the centre patch and their mirrors.

    (B, C, H, W) -> (B, 10, C, size, size), in torchvision's order: top-left,
    top-right, bottom-left, bottom-right, centre, then the same five mirrored.
    """
    return torch.stack(TF.ten_crop(x, [size, size]), dim=1)


def average_crops(logits: torch.Tensor) -> torch.Tensor:
    """Section 4.1: average the softmax over the crops. (B, N, K) -> (B, K) probabilities."""
    # Averaging probabilities, not logits: the paper averages "the predictions".
    return logits.softmax(dim=-1).mean(dim=1)


class Lighting(nn.Module):
    """Section 4.1: PCA colour augmentation ("altering the intensities of the RGB channels").

    Adds ``eigvec @ (alpha * eigval)`` to every pixel of an image, with
    alpha ~ N(0, alphastd) drawn per image each time it is seen. Hand-written:
    torchvision has no PCA lighting.

    Args:
        alphastd: standard deviation of alpha (the paper: 0.1). 0 disables.
        eigval: the three eigenvalues of the training set's RGB covariance,
            on a 0-1 pixel scale.
        eigvec: 3x3, column j the eigenvector of eigval[j] (rows R, G, B).
        scale: the pixel range in use (1 for 0-1 input, 255 for raw pixels);
            the offset scales with it.
        channels: 3, or 1 for grayscale input, which gets the luma of the offset.

    Input float (B, C, H, W) or (C, H, W); returns a new tensor.
    """

    def __init__(
        self,
        alphastd: float = 0.1,
        eigval=IMAGENET_EIGVAL,
        eigvec=IMAGENET_EIGVEC,
        scale: float = 1.0,
        channels: int = 3,
    ) -> None:
        super().__init__()
        if alphastd < 0:
            raise ValueError(f"alphastd must be >= 0, got {alphastd}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        eigval = torch.as_tensor(eigval, dtype=torch.float32)
        eigvec = torch.as_tensor(eigvec, dtype=torch.float32)
        if eigval.shape != (3,) or eigvec.shape != (3, 3):
            raise ValueError(f"need 3 eigenvalues and a 3x3 eigenvector matrix, got {eigval.shape}, {eigvec.shape}")
        self.alphastd, self.scale, self.channels = float(alphastd), float(scale), channels
        self.register_buffer("eigval", eigval, persistent=False)
        self.register_buffer("eigvec", eigvec, persistent=False)

    def offset(self, alpha: torch.Tensor) -> torch.Tensor:
        """The colour shift for alphas (B, 3): (B, C) on the module's pixel scale."""
        rgb = (alpha * self.eigval.to(alpha)) @ self.eigvec.to(alpha).T * self.scale  # (B, 3)
        if self.channels == 1:
            return rgb @ torch.tensor(LUMA, device=rgb.device, dtype=rgb.dtype).view(3, 1)
        return rgb

    def sample_offset(self, batch: int, device=None, normal: torch.Tensor | None = None) -> torch.Tensor | None:
        """The offsets (B, C) of ``batch`` images, or None when disabled.

        normal: (B, 3) standard normals, alpha / alphastd of each image (the
        per-image draws of :mod:`alexnet.data.sampling`); None draws fresh ones.
        """
        if self.alphastd == 0:
            return None
        if normal is None:
            normal = torch.randn(batch, 3)
        return self.offset(normal.to(device=device, dtype=torch.float32) * self.alphastd)

    def forward(self, x: torch.Tensor, alpha: torch.Tensor | None = None) -> torch.Tensor:
        if self.alphastd == 0 and alpha is None:
            return x
        single = x.dim() == 3
        if single:
            x = x.unsqueeze(0)
        if alpha is None:
            alpha = torch.randn(x.shape[0], 3, device=x.device, dtype=x.dtype) * self.alphastd
        x = x + self.offset(alpha).view(x.shape[0], -1, 1, 1)
        return x[0] if single else x

    def extra_repr(self) -> str:
        return f"alphastd={self.alphastd}, scale={self.scale}, channels={self.channels}"
