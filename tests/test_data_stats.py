"""Pixel statistics for PCA lighting: compute_pca.py recovers a known covariance."""

import os
import sys

import numpy as np
import pytest
import torch
from conftest import run_command
from PIL import Image

from alexnet.data import FolderDataModule, PixelMoments, PixelStats
from alexnet.errors import ConfigError

MEAN = np.array([0.5, 0.45, 0.4])
# A covariance with distinct eigenvalues, small enough that no pixel clips.
COV = np.array([[0.0100, 0.0060, 0.0030], [0.0060, 0.0080, 0.0020], [0.0030, 0.0020, 0.0040]])


def pixels(n, seed=0):
    return np.random.default_rng(seed).multivariate_normal(MEAN, COV, size=n)


def check_recovered(stats: PixelStats, atol=4e-4):
    eigval, eigvec = np.linalg.eigh(COV)
    np.testing.assert_allclose(stats.mean, MEAN, atol=2e-3)
    np.testing.assert_allclose(np.square(stats.std), np.diag(COV), atol=atol)
    np.testing.assert_allclose(stats.eigval, eigval[::-1], atol=atol)
    v = np.array(stats.eigvec)
    # Each column is a unit eigenvector of COV (up to sign) for its eigenvalue.
    np.testing.assert_allclose(np.abs(v.T @ eigvec[:, ::-1]), np.eye(3), atol=0.05)
    np.testing.assert_allclose(v @ np.diag(stats.eigval) @ v.T, COV, atol=atol)


def test_pixel_moments_recover_a_known_covariance():
    moments = PixelMoments()
    x = torch.tensor(pixels(200_000)).T.reshape(1, 3, 400, 500)
    moments.update(x[..., :200, :])  # in two batches: running sums
    moments.update(x[..., 200:, :])
    stats = moments.stats()
    assert stats.num_pixels == 200_000
    assert stats.eigval[0] >= stats.eigval[1] >= stats.eigval[2]
    check_recovered(stats)


def test_compute_pca_script_recovers_a_known_covariance_from_image_files(tmp_path):
    # 2 classes x 20 lossless PNGs of 32x32 pixels drawn from N(MEAN, COV).
    px = np.clip(np.round(pixels(2 * 2 * 20 * 32 * 32, seed=1) * 255), 0, 255).astype(np.uint8)
    px = px.reshape(-1, 32, 32, 3)
    for i, image in enumerate(px):
        split, cls = ("train", "val")[i % 2], ("a", "b")[(i // 2) % 2]
        path = tmp_path / split / cls / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
    out = tmp_path / "stats.json"
    cmd = [sys.executable, "scripts/compute_pca.py", "data=folder", f"data.root={tmp_path}", "model=cifar",
           "data.resize_size=32", "data.num_workers=0", f"+out={out}", f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_command(cmd, env=dict(os.environ), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"data.pca_file={out}" in result.stdout
    check_recovered(PixelStats.load(out), atol=6e-4)

    # The file is what data.pca_file reads: its mean and eigenvectors replace ImageNet's.
    dm = FolderDataModule(root=str(tmp_path), crop_size=32, resize_size=32, pca_file=str(out))
    assert dm.norm.mean == pytest.approx(tuple(PixelStats.load(out).mean))
    assert torch.allclose(dm.lighting.eigvec, torch.tensor(PixelStats.load(out).eigvec, dtype=torch.float32))


def test_a_missing_or_malformed_pca_file_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="data.pca_file.*compute_pca.py"):
        PixelStats.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"mean": [0.5]}')
    with pytest.raises(ConfigError, match="data.pca_file.*not a pixel-statistics file"):
        PixelStats.load(bad)
