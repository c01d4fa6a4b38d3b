"""Compute the training set's RGB pixel statistics for PCA lighting (Section 4.1).

    python scripts/compute_pca.py data=imagenet data.root=/data/imagenet
    python scripts/compute_pca.py data=cifar10 data.root=data/cifar10 +max_images=50000 +out=cifar10_pca.json

Writes JSON with the per-channel mean and std and the eigenvalues and
eigenvectors of the 3x3 pixel covariance (0-1 pixel scale), read back with
``data.pca_file=PATH`` (it then also sets the mean that ``normalize`` removes).
Images are taken as evaluation sees them (shorter side resize_size, central
square), without augmentation. Options (with ``+``): max_images (default
10000, drawn at random), out (default: <data.root>/pixel_stats.json if
writable, else the Hydra run folder).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


from alexnet.data.stats import PixelMoments


def default_output(cfg: DictConfig) -> Path:
    root = cfg.data.get("root")
    if root and os.access(root, os.W_OK):
        return Path(root) / "pixel_stats.json"
    return Path(HydraConfig.get().runtime.output_dir) / "pixel_stats.json"


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    # Statistics of the raw pixels: three channels whatever the model takes.
    datamodule = hydra.utils.instantiate(cfg.data, channels=3)
    max_images = int(cfg.get("max_images", 10000))
    moments, seen = PixelMoments(), 0
    for batch in datamodule.train_pixels(max_images):
        moments.update(batch)
        seen += len(batch)
        print(f"\r{seen}/{max_images} images", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    stats = moments.stats()
    out = Path(cfg.get("out") or default_output(cfg))
    stats.save(out)
    print(f"mean {[round(m, 4) for m in stats.mean]}  std {[round(s, 4) for s in stats.std]}")
    print(f"eigenvalues {[round(v, 4) for v in stats.eigval]}")
    print(f"wrote {out}  (use: data.pca_file={out})")


if __name__ == "__main__":
    main()
