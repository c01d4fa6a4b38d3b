"""The per-layer figures of alexnet/nn/summary.py and scripts/summarize.py (issue 2).

The users' notes work these out by hand: N = (W - F + 2P) / S + 1, weights,
multiply-adds, receptive fields. SPEC.md: 60,965,224 parameters and "about
0.72 GMAC per image" for the paper's network.
"""

import os
import sys

import pytest
import torch
from conftest import REPO, run_command
from torch import nn

from alexnet.nn.models import count_parameters, create
from alexnet.nn.summary import saved_activation_bytes, summarize


@pytest.fixture(scope="module")
def paper():
    return summarize(create("paper_grouped", init="torch"))


def test_the_grouped_model_costs_about_0_72_g_multiply_adds_per_image(paper):
    assert paper.parameters == 60_965_224
    assert paper.macs == 724_406_816
    assert paper.macs / 1e9 == pytest.approx(0.72, abs=0.005)


def test_towers_halve_the_multiply_adds_of_conv2_conv4_and_conv5(paper):
    single = summarize(create("paper_single_tower", init="torch"))
    assert single.parameters == 62_378_344
    assert single.macs == 1_135_256_096
    for name in ("conv2", "conv4", "conv5"):
        assert single[name].macs == 2 * paper[name].macs
    for name in ("conv1", "conv3", "fc6", "fc7", "fc8"):
        assert single[name].macs == paper[name].macs


def test_torchvisions_64_filter_model_costs_0_714_g_multiply_adds():
    s = summarize(create("torchvision"))
    assert (s.parameters, s.macs) == (61_100_840, 714_188_480)


def test_a_convolutions_multiply_adds_are_output_elements_times_its_inputs_per_tower_times_k_squared(paper):
    assert paper["conv1"].macs == 55 * 55 * 96 * 3 * 11 * 11
    assert paper["conv2"].macs == 27 * 27 * 256 * 48 * 5 * 5  # 96 inputs in 2 towers
    assert paper["conv3"].macs == 13 * 13 * 384 * 256 * 3 * 3  # both towers
    assert paper["fc6"].macs == 256 * 6 * 6 * 4096
    assert sum(layer.macs for layer in paper.layers if layer.kind not in ("Conv2d", "Linear")) == 0


def test_the_table_has_the_papers_shapes_and_parameters_per_layer(paper):
    expected = {
        "conv1": ((96, 55, 55), 96 * 3 * 11 * 11 + 96),
        "pool1": ((96, 27, 27), 0),
        "conv2": ((256, 27, 27), 256 * 48 * 5 * 5 + 256),
        "pool2": ((256, 13, 13), 0),
        "conv3": ((384, 13, 13), 384 * 256 * 3 * 3 + 384),
        "conv4": ((384, 13, 13), 384 * 192 * 3 * 3 + 384),
        "conv5": ((256, 13, 13), 256 * 192 * 3 * 3 + 256),
        "pool5": ((256, 6, 6), 0),
        "fc6": ((4096,), 9216 * 4096 + 4096),
        "fc7": ((4096,), 4096 * 4096 + 4096),
        "fc8": ((1000,), 4096 * 1000 + 1000),
    }
    for name, (shape, params) in expected.items():
        assert (paper[name].shape, paper[name].parameters) == (shape, params), name


def test_layers_take_caffes_names(paper):
    names = [layer.name for layer in paper.layers]
    assert names[:8] == ["conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "norm2", "pool2"]
    assert names[-7:] == ["fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8"]
    # torchvision drops the inputs of fc6 and fc7: drop6 comes before fc6.
    names = [layer.name for layer in summarize(create("torchvision")).layers]
    assert names[-8:] == ["avgpool", "drop6", "fc6", "relu6", "drop7", "fc7", "relu7", "fc8"]


def test_receptive_fields_follow_r_plus_k_minus_1_times_jump(paper):
    # conv1 11; pool1 11+2*4; conv2 19+4*8; pool2 51+2*8; conv3-5 +2*16 each; pool5 163+2*16.
    rf = {name: paper[name].receptive_field for name in ("conv1", "relu1", "norm1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5")}
    assert rf == {"conv1": 11, "relu1": 11, "norm1": 11, "pool1": 19, "conv2": 51, "pool2": 67, "conv3": 99, "conv4": 131, "conv5": 163, "pool5": 195}
    assert paper["pool5"].jump == 32
    assert paper["fc6"].receptive_field is None  # the whole image


def test_the_receptive_field_is_where_the_gradient_of_one_output_reaches():
    net = nn.Sequential(nn.Conv2d(1, 1, 5, 2), nn.ReLU(), nn.Conv2d(1, 1, 3, 2), nn.Conv2d(1, 1, 3, 1, dilation=2))
    for m in net:
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.weight, 1.0)
            nn.init.constant_(m.bias, 1.0)
    s = summarize(net, input_shape=(1, 64, 64))
    x = torch.ones(1, 1, 64, 64, requires_grad=True)
    net(x)[0, 0, 0, 0].backward()
    rows, cols = torch.nonzero(x.grad[0, 0], as_tuple=True)
    assert s.layers[-1].receptive_field == rows.max() + 1 == cols.max() + 1 == 5 + 2 * 2 + 4 * 4


def test_activations_count_every_layer_output_but_in_place_relus(paper):
    outputs = [layer for layer in paper.layers if layer.kind != "ReLU"]
    assert paper.activations == sum(layer.elements for layer in outputs)
    assert paper.activation_bytes(128) == paper.activations * 128 * 4


def test_saved_activation_bytes_counts_what_autograd_keeps_but_not_the_weights():
    # A convolution keeps its input for the weight gradient: 3*8*8 floats.
    assert saved_activation_bytes(nn.Conv2d(3, 4, 3), input_shape=(3, 8, 8)) == 3 * 8 * 8 * 4


# ---------------------------------------------------------------- scripts/summarize.py


def run(*args):
    return run_command([sys.executable, "scripts/summarize.py", *args], env=dict(os.environ), timeout=120)


def test_summarize_reports_60_965_224_parameters_and_0_72_g_multiply_adds():
    result = run("model=paper_grouped")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "60,965,224" in out
    assert "724,406,816 (0.724 G)" in out
    for row in ("conv1", "96x55x55", "pool5", "256x6x6", "fc8", "195"):
        assert row in out


def test_summarize_compares_64_and_96_conv1_filters_side_by_side():
    result = run("--compare", "torchvision", "paper_grouped")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "torchvision vs paper_grouped" in out
    assert "61,100,840" in out and "60,965,224" in out
    assert "714,188,480" in out and "724,406,816" in out
    filters = next(line for line in out.splitlines() if "conv1 filters" in line)
    assert "64" in filters and "96" in filters
    assert "batch 128" in out and "MiB" in out


@pytest.fixture(scope="module")
def script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("summarize_script", REPO / "scripts" / "summarize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summarize_applies_model_overrides(script, capsys):
    assert script.main(["model=cifar", "model.groups=2", "model.lrn=false"]) == 0
    out = capsys.readouterr().out
    net = create("cifar", groups=2)
    assert f"{count_parameters(net):,}" in out
    assert "norm1" not in out


def test_summarize_rejects_an_unknown_model_with_hydras_message(script, capsys):
    assert script.main(["model=resnet50"]) != 0
    assert "Could not find 'model/resnet50'" in capsys.readouterr().err


def test_summarize_rejects_an_unknown_key_with_hydras_message(script, capsys):
    assert script.main(["model=cifar", "model.widht=2"]) != 0
    assert "Could not override 'model.widht'" in capsys.readouterr().err


def test_summarize_rejects_a_bad_value_and_a_half_comparison(script, capsys):
    assert script.main(["model=cifar", "model.norm=layernorm"]) != 0
    assert "model.norm" in capsys.readouterr().err
    assert script.main(["--compare", "cifar"]) != 0
    assert "--compare" in capsys.readouterr().err
