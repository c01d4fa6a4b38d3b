"""Training-set pixel statistics: the per-channel mean and the RGB PCA of Section 4.1.

``scripts/compute_pca.py`` computes them and writes a JSON file that
``data.pca_file`` reads. Every number is on a 0-1 pixel scale.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class PixelStats:
    mean: tuple[float, ...]  # per channel
    std: tuple[float, ...]
    eigval: tuple[float, ...]  # descending
    eigvec: tuple[tuple[float, ...], ...]  # rows R, G, B; column j belongs to eigval[j]
    num_pixels: int = 0

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, key: str = "data.pca_file") -> "PixelStats":
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(key, f"{path} does not exist; write it with: python scripts/compute_pca.py data=NAME data.root=PATH")
        try:
            raw = json.loads(path.read_text())
            stats = cls(**{k: raw[k] for k in ("mean", "std", "eigval", "eigvec")}, num_pixels=raw.get("num_pixels", 0))
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(key, f"{path} is not a pixel-statistics file ({e})") from e
        if len(stats.eigval) != 3 or len(stats.eigvec) != 3 or any(len(r) != 3 for r in stats.eigvec):
            raise ConfigError(key, f"{path}: need 3 eigenvalues and a 3x3 eigenvector matrix")
        return stats


class PixelMoments:
    """Running sums for the mean and covariance of RGB pixels (float64, so
    a billion pixels do not lose precision)."""

    def __init__(self) -> None:
        self.n = 0
        self.sum = torch.zeros(3, dtype=torch.float64)
        self.outer = torch.zeros(3, 3, dtype=torch.float64)

    def update(self, images: torch.Tensor) -> None:
        """images: uint8 (B, 3, H, W), or float already on a 0-1 scale."""
        x = images.double() / 255.0 if images.dtype == torch.uint8 else images.double()
        px = x.permute(1, 0, 2, 3).reshape(3, -1)  # (3, pixels)
        self.n += px.shape[1]
        self.sum += px.sum(dim=1)
        self.outer += px @ px.T

    def stats(self) -> PixelStats:
        if self.n < 2:
            raise ValueError("need at least two pixels")
        mean = self.sum / self.n
        cov = (self.outer - self.n * torch.outer(mean, mean)) / (self.n - 1)
        eigval, eigvec = torch.linalg.eigh(cov)  # ascending
        eigval, eigvec = eigval.flip(0), eigvec.flip(1)
        # Eigenvectors are defined up to sign; make each one's first entry
        # negative, as in the published ImageNet matrix.
        eigvec = eigvec * torch.where(eigvec[0] > 0, -1.0, 1.0)
        return PixelStats(
            mean=tuple(mean.tolist()),
            std=tuple(cov.diagonal().sqrt().tolist()),
            eigval=tuple(eigval.clamp(min=0).tolist()),
            eigvec=tuple(tuple(r) for r in eigvec.tolist()),
            num_pixels=self.n,
        )
