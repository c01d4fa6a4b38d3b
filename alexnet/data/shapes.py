"""The built-in synthetic dataset: seed 002's ten pattern classes, generated in memory.

Like seed 002's ``generate_simple_images``: a pattern in a random colour plus
Gaussian noise. Unlike it, each image also gets a random stripe period and
phase, shape position and size, and background, so that a network has to
learn the pattern rather than memorise ten images. Vectorised over the batch
(torch, no per-image Python), so thousands of images take well under a second.
"""

from __future__ import annotations

import torch

SHAPE_CLASSES = (
    "horizontal stripes",
    "vertical stripes",
    "diagonal stripes",
    "checkerboard",
    "circle",
    "square",
    "cross",
    "triangle",
    "noise",
    "solid colour",
)


def generate_shapes(num: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` images of the ten classes: (uint8 (num, 3, size, size), int64 labels (num,)).

    Deterministic for a seed; class counts differ by at most one.
    """
    if num < 0 or size < 8:
        raise ValueError(f"need num >= 0 and size >= 8, got num={num}, size={size}")
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    labels = torch.arange(num) % len(SHAPE_CLASSES)
    labels = labels[torch.randperm(num, generator=g)]
    s = float(size)
    yy = torch.arange(size, dtype=torch.float32).view(1, size, 1)
    xx = torch.arange(size, dtype=torch.float32).view(1, 1, size)
    mask = torch.zeros(num, size, size, dtype=torch.bool)

    def param(idx, low, high):  # one value per image of the class, (n, 1, 1)
        return (low + (high - low) * rand(len(idx))).view(-1, 1, 1)

    def stripes(coord, idx):  # period 1/8..1/4 of the side, random phase
        period = param(idx, s / 8, s / 4)
        return ((coord + param(idx, 0, s)) % period) < period / 2

    def centre(idx):  # the shape's centre, jittered by up to 1/8 of the side
        return param(idx, 3 * s / 8, 5 * s / 8), param(idx, 3 * s / 8, 5 * s / 8)

    for k in range(len(SHAPE_CLASSES)):
        idx = (labels == k).nonzero().flatten()
        if len(idx) == 0:
            continue
        if k == 0:
            m = stripes(yy, idx)
        elif k == 1:
            m = stripes(xx, idx)
        elif k == 2:  # either diagonal direction; the coordinate along it is x +- y
            sign = torch.where(rand(len(idx)) < 0.5, -1.0, 1.0).view(-1, 1, 1)
            m = stripes((xx + sign * yy) / 1.4142, idx)
        elif k == 3:
            cell = param(idx, s / 10, s / 5)
            m = ((torch.div(yy + param(idx, 0, s), cell, rounding_mode="floor")
                  + torch.div(xx + param(idx, 0, s), cell, rounding_mode="floor")) % 2) == 0
        elif k in (4, 5, 6, 7):
            cy, cx = centre(idx)
            r = param(idx, s / 5, s / 3)  # radius, half side or half height
            dy, dx = yy - cy, xx - cx
            if k == 4:
                m = dy**2 + dx**2 <= r**2
            elif k == 5:
                m = (dy.abs() <= r) & (dx.abs() <= r)
            elif k == 6:
                t = param(idx, s / 16, s / 8)  # half the bar thickness
                m = ((dy.abs() <= t) & (dx.abs() <= r)) | ((dx.abs() <= t) & (dy.abs() <= r))
            else:  # apex at the top, base at the bottom
                m = (dy.abs() <= r) & (dx.abs() <= (dy + r) / 2)
        elif k == 8:
            continue  # filled with random pixels below
        else:
            m = torch.ones(len(idx), size, size, dtype=torch.bool)
        mask[idx] = m.expand(len(idx), size, size)

    # Compose in uint8/int16 rather than float: at 224 pixels this is most of the cost.
    colour = (90 + 165 * rand(num, 3, 1, 1)).to(torch.uint8)  # bright enough for the pattern to show
    background = (64 * rand(num, 3, 1, 1)).to(torch.uint8)
    images = torch.where(mask.unsqueeze(1), colour, background)  # (num, 3, size, size)
    noise = (labels == 8).nonzero().flatten()  # seed 002's noise class: random pixels everywhere
    images[noise] = torch.randint(0, 256, (len(noise), 3, size, size), generator=g, dtype=torch.uint8)
    # Seed 002's Gaussian noise (std 0.1 of the range), drawn from a bank of 64
    # noise images: drawing a fresh one per image would cost more than all the rest.
    bank = (25.5 * torch.randn(min(num, 64), 3, size, size, generator=g)).round().to(torch.int16)
    pick = torch.randint(0, len(bank), (num,), generator=g)
    out = bank[pick]
    out += images
    return out.clamp_(0, 255).to(torch.uint8), labels
