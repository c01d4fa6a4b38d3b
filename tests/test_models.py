"""The AlexNet family against the paper (Section 3, Figure 2; SPEC.md)."""

import pytest
import torch
import torchvision
from torch import nn

from alexnet.nn.layers import LocalResponseNorm
from alexnet.nn.models import VARIANTS, conv_output_size, count_parameters, create


@pytest.fixture(scope="module")
def grouped():
    return create("paper_grouped")


@pytest.fixture(scope="module")
def single_tower():
    return create("paper_single_tower")


def convs(net):
    return [m for m in net.features if isinstance(m, nn.Conv2d)]


def output_shapes(net, kinds, size=224, batch=1):
    """Output shapes (without batch) of every module of ``kinds``, in forward order,
    recorded by forward hooks on the real modules."""
    shapes, handles = [], []
    for m in net.modules():
        if isinstance(m, kinds):
            handles.append(m.register_forward_hook(lambda m, i, o: shapes.append((type(m).__name__, tuple(o.shape[1:])))))
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(batch, net.in_channels, size, size))
    finally:
        for h in handles:
            h.remove()
    return shapes


# ---------------------------------------------------------------- parameter counts


def test_the_grouped_model_has_60_965_224_parameters(grouped):
    assert count_parameters(grouped) == 60_965_224  # SPEC.md; Caffe's bvlc_alexnet too


def test_the_single_tower_model_has_62_378_344_parameters(single_tower):
    assert count_parameters(single_tower) == 62_378_344


def test_the_torchvision_model_has_61_100_840_parameters():
    assert count_parameters(create("torchvision")) == 61_100_840


# ---------------------------------------------------------------- shapes (SPEC.md's table)


def test_the_output_size_formula_is_w_minus_f_plus_2p_over_s_plus_1():
    assert conv_output_size(224, 11, 4, 2) == 55
    assert conv_output_size(227, 11, 4, 0) == 55
    assert conv_output_size(224, 11, 4, 0) == 54  # PyTorch rounds down; cuda-convnet rounded up
    assert conv_output_size(55, 3, 2) == 27
    assert conv_output_size(13, 3, 2) == 6


@pytest.mark.parametrize("name", ["paper_grouped", "paper_single_tower"])
def test_every_layer_has_the_papers_output_shape_at_224(name, grouped, single_tower):
    net = grouped if name == "paper_grouped" else single_tower
    shapes = output_shapes(net, (nn.Conv2d, LocalResponseNorm, nn.MaxPool2d))
    assert shapes == [
        ("Conv2d", (96, 55, 55)),  # conv1
        ("LocalResponseNorm", (96, 55, 55)),
        ("LeanMaxPool2d", (96, 27, 27)),  # nn.MaxPool2d that keeps only its argmax
        ("Conv2d", (256, 27, 27)),  # conv2
        ("LocalResponseNorm", (256, 27, 27)),
        ("LeanMaxPool2d", (256, 13, 13)),
        ("Conv2d", (384, 13, 13)),  # conv3
        ("Conv2d", (384, 13, 13)),  # conv4
        ("Conv2d", (256, 13, 13)),  # conv5
        ("MaxPool2d", (256, 6, 6)),
    ]
    assert net.feature_shape == (256, 6, 6)
    assert output_shapes(net, nn.Linear) == [("Linear", (4096,)), ("Linear", (4096,)), ("Linear", (1000,))]


def test_conv1_has_stride_4_and_pads_224_inputs_by_2(grouped):
    conv1 = grouped.conv1
    assert (conv1.kernel_size, conv1.stride, conv1.padding) == ((11, 11), (4, 4), (2, 2))


def test_a_227_input_without_conv1_padding_gives_55x55():
    net = create("paper_grouped", input_size=227, init="torch")
    assert net.conv1.padding == (0, 0)
    shapes = output_shapes(net, (nn.Conv2d, nn.MaxPool2d), size=227)
    assert shapes[0] == ("Conv2d", (96, 55, 55))
    assert shapes[-1] == ("MaxPool2d", (256, 6, 6))
    assert count_parameters(net) == 60_965_224


# ---------------------------------------------------------------- the two towers


def test_conv2_conv4_and_conv5_have_no_weights_across_towers(grouped):
    # groups=2: each kernel sees only its own tower's half of the input channels.
    conv1, conv2, conv3, conv4, conv5 = convs(grouped)
    assert conv2.groups == conv4.groups == conv5.groups == 2
    assert conv2.weight.shape == (256, 48, 5, 5)
    assert conv4.weight.shape == (384, 192, 3, 3)
    assert conv5.weight.shape == (256, 192, 3, 3)


def test_conv1_conv3_and_the_fully_connected_layers_see_both_towers(grouped):
    conv1, conv2, conv3, conv4, conv5 = convs(grouped)
    assert conv1.groups == conv3.groups == 1
    assert conv1.weight.shape == (96, 3, 11, 11)
    assert conv3.weight.shape == (384, 256, 3, 3)
    assert grouped.classifier[0].in_features == 256 * 6 * 6


def perturb_tower_one(conv, size=13):
    x = torch.randn(1, conv.in_channels, size, size)
    y = x.clone()
    y[:, : conv.in_channels // 2] += torch.randn_like(y[:, : conv.in_channels // 2])
    with torch.no_grad():
        return conv(x), conv(y)


@pytest.mark.parametrize("index", [1, 3, 4], ids=["conv2", "conv4", "conv5"])
def test_tower_one_inputs_do_not_reach_tower_two_outputs(grouped, index):
    conv = convs(grouped)[index]
    before, after = perturb_tower_one(conv)
    half = conv.out_channels // 2
    assert torch.equal(before[:, half:], after[:, half:])
    assert not torch.equal(before[:, :half], after[:, :half])


def test_conv3_mixes_the_towers(grouped):
    conv3 = convs(grouped)[2]
    before, after = perturb_tower_one(conv3)
    assert not torch.equal(before[:, 192:], after[:, 192:])


def test_the_grouped_models_lrn_stays_within_each_tower(grouped, single_tower):
    lrns = [m for m in grouped.modules() if isinstance(m, LocalResponseNorm)]
    assert len(lrns) == 2 and all(m.groups == 2 for m in lrns)
    assert all(m.groups == 1 for m in single_tower.modules() if isinstance(m, LocalResponseNorm))


# ---------------------------------------------------------------- torchvision compatibility


def test_torchvisions_state_dict_loads_strictly_and_computes_the_same():
    reference = torchvision.models.alexnet(weights=None).eval()  # no download
    net = create("torchvision").eval()
    net.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x), rtol=0, atol=0)


# ---------------------------------------------------------------- initialisation (Section 5)


def weighted(net):
    """conv1 ... conv5, fc6, fc7, fc8 by the paper's names."""
    layers = convs(net) + [m for m in net.classifier if isinstance(m, nn.Linear)]
    return dict(zip(["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"], layers))


def assert_std(weight, expected):
    # The sample std of n >= 34,848 normal draws is within 5% of sigma with
    # overwhelming probability (standard error sigma / sqrt(2n) < 0.4%).
    assert weight.std().item() == pytest.approx(expected, rel=0.05)
    assert abs(weight.mean().item()) < expected / 20


def test_paper_init_starts_biases_at_1_in_conv2_conv4_conv5_fc6_fc7_and_0_elsewhere(grouped):
    expected = {"conv1": 0, "conv2": 1, "conv3": 0, "conv4": 1, "conv5": 1, "fc6": 1, "fc7": 1, "fc8": 0}
    for name, layer in weighted(grouped).items():
        assert torch.all(layer.bias == expected[name]), name


def test_paper_init_draws_every_weight_from_n_0_0_01(grouped):
    for name, layer in weighted(grouped).items():
        assert_std(layer.weight, 0.01)


def test_caffe_init_uses_bias_0_1_and_std_0_005_in_fc6_and_fc7():
    net = create("paper_grouped", init="caffe")
    expected = {"conv1": 0, "conv2": 0.1, "conv3": 0, "conv4": 0.1, "conv5": 0.1, "fc6": 0.1, "fc7": 0.1, "fc8": 0}
    for name, layer in weighted(net).items():
        assert torch.all(layer.bias == expected[name]), name
        assert_std(layer.weight, 0.005 if name in ("fc6", "fc7") else 0.01)


def test_kaiming_init_is_he_normal_fan_in_for_convolutions_and_hidden_layers_with_zero_biases():
    net = create("tutorial_2048", init="kaiming")
    for name, layer in weighted(net).items():
        assert torch.all(layer.bias == 0), name
        if name == "fc8":
            assert_std(layer.weight, 0.01)
        else:
            fan_in = layer.weight[0].numel()  # in_channels/groups * k * k, or in_features
            assert_std(layer.weight, (2 / fan_in) ** 0.5)


def test_unknown_init_is_an_error():
    with pytest.raises(ValueError, match="init"):
        create("cifar", init="xavier")


# ---------------------------------------------------------------- every variant trains


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_runs_forward_and_backward_at_its_native_size(name):
    torch.manual_seed(0)
    net = create(name).train()
    x = torch.randn(2, net.in_channels, net.input_size, net.input_size)
    out = net(x)
    assert out.shape == (2, 1000)
    out.logsumexp(1).sum().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in net.parameters())


# ---------------------------------------------------------------- options of create()


def test_lrn_false_removes_the_lrn_layers():
    assert any(isinstance(m, LocalResponseNorm) for m in create("cifar").modules())
    assert not any(isinstance(m, LocalResponseNorm) for m in create("cifar", lrn=False).modules())


def test_the_lrn_convention_reaches_the_lrn_layers():
    lrns = [m for m in create("cifar", lrn_convention="caffe").modules() if isinstance(m, LocalResponseNorm)]
    assert len(lrns) == 2 and all(m.convention == "caffe" and m.k == 1.0 for m in lrns)


def test_norm_batchnorm_puts_batchnorm_after_every_conv_instead_of_lrn():
    net = create("cifar", norm="batchnorm")
    kinds = [type(m) for m in net.features]
    assert kinds.count(nn.BatchNorm2d) == 5
    assert LocalResponseNorm not in kinds
    assert all(kinds[i + 1] is nn.BatchNorm2d for i, k in enumerate(kinds) if k is nn.Conv2d)
    assert not any(isinstance(m, (LocalResponseNorm, nn.BatchNorm2d)) for m in create("cifar", norm="none").modules())


def test_non_overlapping_pooling_uses_2x2_windows_with_stride_2():
    net = create("paper_grouped", pool="non_overlapping", init="torch")
    pools = [m for m in net.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3 and all((p.kernel_size, p.stride) == (2, 2) for p in pools)
    assert [shape for _, shape in output_shapes(net, nn.MaxPool2d)] == [(96, 27, 27), (256, 13, 13), (256, 6, 6)]
    assert all((p.kernel_size, p.stride) == (3, 2) for p in create("cifar").modules() if isinstance(p, nn.MaxPool2d))


def test_the_dropout_value_reaches_the_dropout_layers():
    drops = [m for m in create("cifar", dropout=0.3).modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 2 and all(m.p == 0.3 for m in drops)


def test_the_paper_drops_the_outputs_of_fc6_and_fc7():
    # Section 4.2 and Caffe's drop6/drop7: Linear -> ReLU -> Dropout.
    kinds = [type(m) for m in create("cifar").classifier]
    assert kinds == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]


def test_torchvision_drops_the_inputs_of_fc6_and_fc7():
    kinds = [type(m) for m in create("torchvision").classifier]
    assert kinds == [nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Linear]
    kinds = [type(m) for m in create("cifar", dropout_position="input").classifier]
    assert kinds[0] is nn.Dropout


def test_dropout_is_off_in_eval_mode():
    net = create("simple_cifar", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))


def test_two_towers_work_on_the_cifar_model():
    net = create("cifar", num_classes=10, groups=2)
    assert [c.groups for c in convs(net)] == [1, 2, 1, 2, 2]
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_towers_that_do_not_divide_the_channels_are_an_error():
    with pytest.raises(ValueError, match="towers"):
        create("cifar", groups=3)


def test_an_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        create("resnet")


def test_an_unknown_option_is_an_error():
    with pytest.raises(ValueError, match="unknown option"):
        create("cifar", widht=2)


@pytest.mark.parametrize(
    "option", [{"norm": "layernorm"}, {"pool": "average"}, {"dropout_position": "middle"}, {"dropout": 1.0}, {"groups": 0}]
)
def test_a_bad_option_value_is_an_error(option):
    with pytest.raises(ValueError, match=f"model.{next(iter(option))}"):
        create("cifar", **option)


def test_num_classes_sets_the_width_of_the_last_layer():
    assert create("simple_cifar", num_classes=10).classifier[-1].out_features == 10
    with pytest.raises(ValueError, match="num_classes"):
        create("simple_cifar", num_classes=0)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_each_variants_yaml_states_exactly_the_options_its_variant_builds_with(name):
    # A variant's options are written twice, in conf/model/NAME.yaml (what users read and
    # override) and in VARIANTS (what create() builds without overrides): they must agree.
    from conftest import compose_config
    from omegaconf import OmegaConf

    from alexnet.nn.models import OPTIONS, resolve_options

    yaml_options = OmegaConf.to_container(compose_config(f"model={name}").model, resolve=True)
    assert yaml_options.pop("name") == name and yaml_options.pop("num_classes") is None
    assert set(yaml_options) == set(OPTIONS), f"conf/model/{name}.yaml lists other keys than the options"
    built = resolve_options(name)
    assert {k: v for k, v in yaml_options.items() if built[k] != v} == {}, f"conf/model/{name}.yaml and VARIANTS disagree"
