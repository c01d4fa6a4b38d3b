"""The paper's augmentations (Section 4.1) and test-time crops, against references."""

import numpy as np
import pytest
import torch

from alexnet.data.augment import (
    IMAGENET_EIGVAL,
    IMAGENET_EIGVEC,
    Lighting,
    average_crops,
    random_crop,
    random_flip,
    ten_crop,
)
from alexnet.data.presets import BatchEvalTransform, BatchTrainAugment, Normalization
from alexnet.data.sampling import batch_draws


def numpy_lighting(image, alpha, eigval, eigvec, scale):
    """Section 4.1 in NumPy: add [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T to every RGB pixel."""
    p = np.asarray(eigvec, dtype=np.float64)  # columns p1, p2, p3
    shift = p @ (np.asarray(alpha) * np.asarray(eigval)) * scale  # (3,)
    return image + shift[:, None, None]


@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_pca_lighting_equals_the_papers_formula_for_fixed_alphas(scale):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, scale, (4, 3, 5, 6))
    alphas = rng.normal(0, 0.1, (4, 3))
    got = Lighting(0.1, scale=scale)(torch.tensor(images, dtype=torch.float32), torch.tensor(alphas, dtype=torch.float32))
    for image, alpha, out in zip(images, alphas, got):
        want = numpy_lighting(image, alpha, IMAGENET_EIGVAL, IMAGENET_EIGVEC, scale)
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-4 * scale)


def test_pca_lighting_shifts_each_image_by_one_colour_with_spread_alphastd_times_eigenvalues():
    light = Lighting(0.1)
    x = torch.zeros(20000, 3, 2, 2)
    shift = light(x)
    assert torch.equal(shift[..., :1, :1].expand_as(shift), shift)  # the same offset at every pixel
    # In eigenvector coordinates the offsets are alpha_i * l_i with alpha_i ~ N(0, 0.1).
    coords = shift[:, :, 0, 0] @ torch.tensor(IMAGENET_EIGVEC)
    np.testing.assert_allclose(coords.std(0).numpy(), 0.1 * np.array(IMAGENET_EIGVAL), rtol=0.05)


def test_pca_lighting_off_at_zero_and_scaled_with_the_pixel_range():
    x = torch.rand(2, 3, 4, 4)
    assert torch.equal(Lighting(0.0)(x), x)
    alpha = torch.tensor([[1.0, -2.0, 0.5]])
    assert torch.allclose(Lighting(scale=255.0).offset(alpha), 255 * Lighting(scale=1.0).offset(alpha))


def test_ten_crop_yields_the_four_corners_the_centre_and_their_mirrors():
    x = torch.arange(2 * 3 * 6 * 8).view(2, 3, 6, 8)
    crops = ten_crop(x, 4)
    assert crops.shape == (2, 10, 3, 4, 4)
    top_left, top_right = x[..., :4, :4], x[..., :4, 4:]
    bottom_left, bottom_right = x[..., 2:, :4], x[..., 2:, 4:]
    centre = x[..., 1:5, 2:6]
    five = [top_left, top_right, bottom_left, bottom_right, centre]
    for i, patch in enumerate(five):
        assert torch.equal(crops[:, i], patch), f"crop {i}"
    # torchvision crops the mirrored image, so its top-left patch is the
    # mirror of the top-right one, and so on.
    for i, j in enumerate([1, 0, 3, 2, 4]):
        assert torch.equal(crops[:, 5 + i], five[j].flip(-1)), f"crop {5 + i}"


def test_average_crops_averages_the_softmax_not_the_logits():
    logits = torch.tensor([[[10.0, 0.0], [0.0, 1.0]]])  # one image, two crops, two classes
    probs = average_crops(logits)
    expected = (logits[0].softmax(-1)[0] + logits[0].softmax(-1)[1]) / 2
    assert torch.allclose(probs[0], expected)
    assert torch.allclose(average_crops(torch.randn(5, 10, 7)).sum(-1), torch.ones(5))


def test_random_crops_stay_inside_the_image_and_reach_every_position():
    h, w, size = 6, 5, 3
    # Each pixel holds its own (row, col), so a crop tells where it came from.
    rows = torch.arange(h).view(h, 1).expand(h, w)
    cols = torch.arange(w).view(1, w).expand(h, w)
    x = torch.stack([rows, cols]).unsqueeze(0).expand(2000, 2, h, w).contiguous()
    crops = random_crop(x, size)
    assert crops.shape == (2000, 2, size, size)
    top, left = crops[:, 0, 0, 0], crops[:, 1, 0, 0]
    # Contiguous windows: the crop is exactly x[top:top+size, left:left+size].
    assert torch.equal(crops[:, 0], top.view(-1, 1, 1) + torch.arange(size).view(1, size, 1).expand(-1, size, size))
    assert torch.equal(crops[:, 1], left.view(-1, 1, 1) + torch.arange(size).view(1, 1, size).expand(-1, size, size))
    positions = set(zip(top.tolist(), left.tolist()))
    assert positions == {(t, l) for t in range(h - size + 1) for l in range(w - size + 1)}


def test_random_crop_with_padding_reaches_the_padding_and_only_it():
    x = torch.ones(3000, 1, 4, 4)
    crops = random_crop(x, 4, padding=2)
    zeros_per_crop = (crops == 0).flatten(1).sum(1)
    assert zeros_per_crop.max() == 4 * 4 - 2 * 2  # the farthest shift keeps a 2x2 corner of the image
    assert (zeros_per_crop == 0).any()  # and the unshifted crop occurs
    assert crops.sum() == (crops != 0).sum()  # nothing but image and zeros


def test_flips_happen_about_half_the_time_and_mirror_left_right():
    x = torch.arange(4.0).view(1, 1, 1, 4).expand(4000, 1, 2, 4)
    out = random_flip(x)
    flipped = (out[:, 0, 0, 0] == 3).float()
    assert torch.equal(out[flipped.bool()], x[flipped.bool()].flip(-1))
    assert torch.equal(out[~flipped.bool()], x[~flipped.bool()])
    assert abs(flipped.mean().item() - 0.5) < 0.04  # 4000 draws: ~5 standard deviations


@pytest.mark.parametrize("kind", ["paper", "imagenet"])
def test_normalisation_paper_is_raw_pixels_minus_the_mean_and_imagenet_is_standardised(kind):
    norm = Normalization(kind, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 0.1))
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = norm(x)[0, :, 0, 0]
    if kind == "paper":
        assert torch.allclose(out, torch.tensor([255 - 127.5, 255 - 63.75, 255.0]))
    else:
        assert torch.allclose(out, torch.tensor([1.0, 3.0, 10.0]))


@pytest.mark.parametrize("kind", ["paper", "imagenet"])
def test_batched_training_augmentation_crops_flips_lights_and_normalises_each_image_as_its_draws_say(kind):
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    norm = Normalization(kind, mean, std)
    augment = BatchTrainAugment(24, 4, True, Lighting(0.1, scale=norm.scale), norm)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    draws = batch_draws(0, 3, range(16))
    out = augment(x, draws)
    assert out.shape == (16, 3, 24, 24) and out.dtype == torch.float32
    padded = np.pad(x.numpy().astype(np.float64), ((0, 0), (0, 0), (4, 4), (4, 4)))
    flips = 0
    for i, d in enumerate(draws.numpy()):
        top, left = int(d[0] * 17), int(d[1] * 17)  # 40 - 24 + 1 positions each way
        crop = padded[i, :, top : top + 24, left : left + 24] * norm.scale / 255
        if d[2] < 0.5:
            crop, flips = crop[..., ::-1], flips + 1
        lit = numpy_lighting(crop, d[3:6] * 0.1, IMAGENET_EIGVAL, IMAGENET_EIGVEC, norm.scale)
        expected = (lit - np.array(mean)[:, None, None] * norm.scale) / (np.array(std)[:, None, None] if kind == "imagenet" else 1.0)
        np.testing.assert_allclose(out[i].numpy(), expected, rtol=1e-5, atol=1e-4 * norm.scale)
    assert 0 < flips < 16  # the draws flip some images and not others
    assert torch.equal(augment(x, draws), out)  # the same draws, the same batch
    assert not torch.equal(augment(x, batch_draws(0, 4, range(16))), out)  # another epoch's, another
    assert "crop_size=24" in repr(augment)


def test_batched_evaluation_centre_crop_and_ten_crops():
    norm = Normalization("paper", mean=(0, 0, 0))
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    one = BatchEvalTransform(6, 1, norm)(x)
    ten = BatchEvalTransform(6, 10, norm)(x)
    assert one.shape == (2, 3, 6, 6) and ten.shape == (2, 10, 3, 6, 6)
    assert torch.equal(one, x[..., 1:7, 1:7].float())
    assert torch.equal(ten[:, 4], one) and torch.equal(ten[:, 9], one.flip(-1))
