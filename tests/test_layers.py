"""Local response normalisation as Section 3.3 of the paper writes it (SPEC.md)."""

import pytest
import torch
from torch import nn

from alexnet.nn.layers import LRN_CONVENTIONS, LocalResponseNorm


def reference_lrn(a, n, alpha, beta, k, divide_by_n, groups=1):
    """SPEC.md's formula, one channel at a time, in float64:

    b[i] = a[i] / (k + alpha' * SUM_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a[j]^2) ** beta

    alpha' = alpha / n where the convention divides by n. With towers, N is
    the tower's channel count and i, j run over the tower's own channels.
    """
    a = a.double()
    scale = alpha / n if divide_by_n else alpha
    b = torch.empty_like(a)
    per_tower = a.shape[1] // groups
    for t in range(groups):
        lo = t * per_tower
        for i in range(per_tower):
            total = torch.zeros_like(a[:, 0])
            for j in range(max(0, i - n // 2), min(per_tower - 1, i + n // 2) + 1):
                total += a[:, lo + j] ** 2
            b[:, lo + i] = a[:, lo + i] / (k + scale * total) ** beta
    return b


def activations(*shape, scale=30.0, seed=0):
    """Post-ReLU activations large enough that the normalisation bites:
    with raw 0-255 pixels minus the mean (Section 2), conv1 outputs are tens."""
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(*shape, generator=g)) * scale


@pytest.mark.parametrize("convention", sorted(LRN_CONVENTIONS))
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("size", [5, 3])
def test_lrn_equals_the_formula_of_each_convention(convention, groups, size):
    x = activations(2, 12, 5, 4)
    layer = LocalResponseNorm(size, 1e-4, 0.75, None, groups, convention)
    divide_by_n, k = LRN_CONVENTIONS[convention]
    expected = reference_lrn(x, size, 1e-4, 0.75, k, divide_by_n, groups)
    got = layer(x).double()
    assert (expected - x.double()).abs().max() > 1.0, "the test input must be normalised noticeably"
    rel = ((got - expected).abs() / expected.abs().clamp_min(1e-12)).max()
    assert rel < 1e-6


def test_lrn_with_an_explicit_k_alpha_and_beta_equals_the_formula():
    x = activations(1, 10, 3, 3, seed=1)
    layer = LocalResponseNorm(5, 2e-3, 0.5, 1.5, 1, "paper")
    expected = reference_lrn(x, 5, 2e-3, 0.5, 1.5, False)
    rel = ((layer(x).double() - expected).abs() / expected.abs().clamp_min(1e-12)).max()
    assert rel < 1e-6


def test_the_papers_constants_are_the_defaults():
    # Section 3.3: k = 2, n = 5, alpha = 1e-4, beta = 0.75.
    layer = LocalResponseNorm()
    assert (layer.size, layer.alpha, layer.beta, layer.k) == (5, 1e-4, 0.75, 2.0)
    assert layer.convention == "paper"


@pytest.mark.parametrize("convention, k", [("paper", 2.0), ("cuda_convnet", 2.0), ("caffe", 1.0)])
def test_each_convention_has_its_own_default_k(convention, k):
    assert LocalResponseNorm(convention=convention).k == k


def test_the_papers_literal_formula_is_torchs_lrn_with_alpha_times_n():
    # SPEC.md: torch's nn.LocalResponseNorm divides alpha by n, so the paper's
    # sum is nn.LocalResponseNorm(5, 5e-4, 0.75, 2).
    x = activations(2, 16, 6, 6)
    torch.testing.assert_close(LocalResponseNorm(convention="paper")(x), nn.LocalResponseNorm(5, 5e-4, 0.75, 2)(x))


def test_cuda_convnet_and_caffe_conventions_are_torchs_lrn():
    x = activations(2, 16, 6, 6)
    torch.testing.assert_close(LocalResponseNorm(convention="cuda_convnet")(x), nn.LocalResponseNorm(5, 1e-4, 0.75, 2)(x))
    torch.testing.assert_close(LocalResponseNorm(convention="caffe")(x), nn.LocalResponseNorm(5, 1e-4, 0.75, 1)(x))


@pytest.mark.parametrize("perturbed, other_tower", [(7, slice(8, 16)), (8, slice(0, 8))])
def test_with_two_towers_no_window_crosses_the_tower_boundary(perturbed, other_tower):
    # Section 3 / SPEC.md: each GPU normalised only its own channels. Channels
    # 7 and 8 are the two sides of the boundary of 16 channels in 2 towers.
    x = activations(2, 16, 4, 4)
    y = x.clone()
    y[:, perturbed] += 50.0
    grouped = LocalResponseNorm(groups=2)
    assert torch.equal(grouped(x)[:, other_tower], grouped(y)[:, other_tower])
    # ...while within the tower, and in one ungrouped layer, the neighbours change.
    neighbour = perturbed - 1 if perturbed == 7 else perturbed + 1
    assert not torch.equal(grouped(x)[:, neighbour], grouped(y)[:, neighbour])
    across = 8 if perturbed == 7 else 7
    ungrouped = LocalResponseNorm(groups=1)
    assert not torch.equal(ungrouped(x)[:, across], ungrouped(y)[:, across])


def test_the_grouped_layer_is_the_ungrouped_layer_applied_to_each_tower():
    x = activations(3, 96, 7, 7)  # conv1's 96 channels, 48 per tower
    grouped = LocalResponseNorm(groups=2)(x)
    single = LocalResponseNorm(groups=1)
    torch.testing.assert_close(grouped, torch.cat([single(x[:, :48]), single(x[:, 48:])], 1), rtol=0, atol=0)


def test_lrn_is_nearly_a_constant_division_by_k_to_the_beta_on_small_inputs():
    # SPEC.md: on 0-1 or standardised inputs LRN hardly bites.
    x = activations(1, 16, 4, 4, scale=0.01)
    torch.testing.assert_close(LocalResponseNorm()(x), x / 2**0.75, rtol=1e-5, atol=0)


@pytest.mark.parametrize("size", [0, 4, -1])
def test_lrn_rejects_an_even_or_non_positive_size(size):
    with pytest.raises(ValueError, match="odd"):
        LocalResponseNorm(size)


def test_lrn_rejects_an_unknown_convention():
    with pytest.raises(ValueError, match="lrn_convention"):
        LocalResponseNorm(convention="tensorflow")


def test_lrn_rejects_bad_groups():
    with pytest.raises(ValueError, match="groups"):
        LocalResponseNorm(groups=0)
    with pytest.raises(ValueError, match="do not split"):
        LocalResponseNorm(groups=2)(torch.ones(1, 5, 2, 2))


def test_lrn_repr_names_its_convention_and_towers():
    text = repr(LocalResponseNorm(groups=2, convention="caffe"))
    assert "convention='caffe'" in text and "groups=2" in text and "k=1.0" in text
