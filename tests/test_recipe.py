"""The paper's recipe as a specification: what `experiment=paper_imagenet` composes and builds.

Sections 3-5 (SPEC.md): the two-tower network with LRN (k=2, n=5, alpha=1e-4 on the
plain sum, beta=0.75) after the ReLUs of conv1 and conv2, dropout 0.5 on the outputs
of fc6 and fc7, the N(0, 0.01) / bias-1 initialisation, raw 0-255 pixels minus the
mean, PCA lighting 0.1, ten-patch testing, SGD with batch 128, lr 0.01, momentum 0.9,
weight decay 5e-4, lr / 10 on plateaus three times, ~90 epochs, float32.
"""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf
from torch import nn

from alexnet.training.callbacks import lrn_layers
from alexnet.config import build_datamodule
from alexnet.nn.models import create
from alexnet.training.optim import PaperPlateau, build_optimizer


@pytest.fixture(scope="module", params=["as the experiment says", "trainer=gpu"])
def paper(request):
    return compose_config("experiment=paper_imagenet", *(["trainer=gpu"] if request.param == "trainer=gpu" else []))


@pytest.fixture(scope="module")
def net():
    """The network that experiment=paper_imagenet builds (as AlexNetSystem builds it)."""
    model = OmegaConf.to_container(compose_config("experiment=paper_imagenet").model, resolve=True)
    torch.manual_seed(0)
    return create(model.pop("name"), 1000, **{k: v for k, v in model.items() if k != "num_classes"})


# ---------------------------------------------------------------- the network (Section 3)


def test_the_network_is_the_two_tower_paper_network(paper):
    m = paper.model
    assert (m.name, m.groups, m.pool, m.input_size) == ("paper_grouped", 2, "overlapping", 224)


def test_lrn_follows_the_relus_of_conv1_and_conv2_only(net):
    kinds = [type(m).__name__ for m in net.features]
    assert kinds[:4] == ["Conv2d", "ReLU", "LocalResponseNorm", "LeanMaxPool2d"]  # conv1: ReLU, LRN, pool
    assert kinds[4:8] == ["Conv2d", "ReLU", "LocalResponseNorm", "LeanMaxPool2d"]  # conv2
    assert kinds.count("LocalResponseNorm") == 2 and list(lrn_layers(net)) == ["conv1", "conv2"]


def test_lrn_has_the_papers_constants_and_stays_within_each_tower(net):
    for name, lrn in lrn_layers(net).items():
        assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 1e-4, 0.75, 2.0), name
        assert lrn.convention == "paper" and lrn.groups == 2, name


def test_lrn_alpha_multiplies_the_plain_sum_of_squares(net):
    # b_i = a_i / (k + alpha * SUM_j a_j^2)^beta, the sum over 5 channels as printed in
    # Section 3.3 (cuda-convnet and Caffe divide alpha by n; that would give (2 + 1e-4 c^2)^0.75).
    lrn = lrn_layers(net)["conv1"]
    c = 30.0
    out = lrn(torch.full((1, 96, 2, 2), c))
    assert out[0, 10, 0, 0].item() == pytest.approx(c / (2 + 1e-4 * 5 * c**2) ** 0.75, rel=1e-5)


def test_dropout_half_the_outputs_of_fc6_and_fc7(paper, net):
    assert paper.model.dropout == 0.5 and paper.model.dropout_position == "output"
    kinds = [type(m).__name__ for m in net.classifier]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]  # fc6, fc7, fc8
    assert [m.p for m in net.classifier if isinstance(m, nn.Dropout)] == [0.5, 0.5]


def test_the_initialisation_is_the_papers(paper, net):
    assert paper.model.init == "paper"
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    assert [c.bias.detach().mean().item() for c in convs] == [0.0, 1.0, 0.0, 1.0, 1.0]  # Section 5: bias 1 in conv2/4/5
    assert [m.bias.detach().mean().item() for m in net.classifier if isinstance(m, nn.Linear)] == [1.0, 1.0, 0.0]
    assert convs[2].weight.detach().std().item() == pytest.approx(0.01, rel=0.02)  # N(0, 0.01)


# ---------------------------------------------------------------- the data (Sections 2 and 4.1)


def test_the_data_is_raw_pixels_minus_the_mean_with_pca_lighting_and_ten_patch_testing(paper):
    d = paper.data
    assert (d.batch_size, d.resize_size, d.crop_size, d.flip) == (128, 256, 224, True)
    assert d.normalize == "paper" and d.pca_std == 0.1
    assert d.eval_crops == 10 and build_datamodule(d, require_data=False).test_crops == 10


# ---------------------------------------------------------------- training (Section 5)


def test_sgd_is_batch_128_lr_0_01_momentum_0_9_weight_decay_5e_4_on_every_weight(paper, net):
    o = paper.optim
    assert (o.lr, o.momentum, o.weight_decay, o.nesterov, o.decay_biases) == (0.01, 0.9, 5e-4, False, True)
    config = build_optimizer(net, OmegaConf.to_container(o), paper.trainer.max_epochs)
    (group,) = config["optimizer"].param_groups
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.01, 0.9, 5e-4)


def test_the_rate_drops_by_10_on_plateaus_three_times_in_about_90_epochs(paper, net):
    assert paper.trainer.max_epochs == 90
    assert (paper.optim.schedule, paper.optim.factor, paper.optim.max_drops) == ("plateau", 0.1, 3)
    scheduler = build_optimizer(net, OmegaConf.to_container(paper.optim), 90)["lr_scheduler"]["scheduler"]
    assert isinstance(scheduler, PaperPlateau) and scheduler.max_drops == 3


def test_it_trains_in_float32(paper):
    assert paper.trainer.precision == "32-true" and paper.tf32 is False

