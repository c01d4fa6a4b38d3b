"""The AlexNet family: the paper's network and the variants people use.

One parameterised network, :class:`AlexNet`, serves every variant; a variant
is a table of layer shapes (:data:`VARIANTS`) plus the options a user may
override from config (:data:`OPTIONS`). Plain PyTorch: no Lightning or Hydra.

    >>> net = create("paper_grouped")          # Section 3, Figure 2
    >>> net = create("cifar", num_classes=10, lrn=False)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from ..errors import ConfigError
from .fast_lrn import IMPLS as LRN_IMPLS
from .layers import LRN_CONVENTIONS, LeanMaxPool2d, LocalResponseNorm


@dataclass(frozen=True)
class Conv:
    """One convolutional layer of a variant and what follows it."""

    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    tower_local: bool = False  # sees only its own tower's channels (groups=towers)
    lrn: bool = False  # LRN after the ReLU (Section 3.3: layers 1 and 2)
    pool: bool = False  # max-pool after (and after the LRN)
    pool_before_lrn: bool = False  # cuda-convnet's CIFAR nets pool first, then normalise
    bias_one: bool = False  # Section 5: "biases 1 in conv2, conv4, conv5"


@dataclass(frozen=True)
class Variant:
    """The fixed shape of a variant plus the defaults of its options."""

    convs: tuple[Conv, ...]
    hidden: tuple[int, ...]  # widths of the hidden fully connected layers
    input_size: int
    description: str
    adaptive_pool: int | None = None  # torchvision pools to 6x6 before fc6
    options: dict = field(default_factory=dict)


# Section 3, Figure 2. SPEC.md's table: conv1 sees the image, conv2/4/5 only
# their own tower, conv3 and the fully connected layers see both towers.
PAPER_CONVS = (
    Conv(96, 11, 4, 2, lrn=True, pool=True),  # (B, 96, 55, 55) -> (B, 96, 27, 27)
    Conv(256, 5, 1, 2, tower_local=True, lrn=True, pool=True, bias_one=True),  # -> 13x13
    Conv(384, 3, 1, 1),  # (B, 384, 13, 13), both towers
    Conv(384, 3, 1, 1, tower_local=True, bias_one=True),
    Conv(256, 3, 1, 1, tower_local=True, pool=True, bias_one=True),  # -> (B, 256, 6, 6)
)

# The options every variant accepts, with their meaning. Values given here are
# the family defaults; a variant's `options` and then the caller override them.
OPTIONS = {
    "lrn": True,  # LRN where the variant has it (False: none there)
    "lrn_convention": "paper",  # paper | cuda_convnet | caffe
    "lrn_impl": "auto",  # auto | native | fused | torch: same numbers, see alexnet/nn/fast_lrn.py
    "norm": "lrn",  # lrn | batchnorm | none
    "pool": "overlapping",  # overlapping (3/2, Section 3.4) | non_overlapping (2/2)
    "dropout": 0.5,  # Section 4.2
    "dropout_position": "output",  # output (paper, Caffe) | input (torchvision)
    "init": "paper",  # paper | caffe | kaiming | torch
    "in_channels": 3,
    "groups": 1,  # towers: 2 for the paper's two-GPU layout
    "input_size": None,  # None: the variant's native size
}

VARIANTS: dict[str, Variant] = {
    "paper_grouped": Variant(
        PAPER_CONVS,
        (4096, 4096),
        224,
        "the paper's network on one device, two towers as groups=2",
        options={"groups": 2},
    ),
    # model=paper_dual_gpu is this network placed one tower per device (conf/model/paper_dual_gpu.yaml,
    # alexnet/parallel/placement.py): a placement, not another network.
    "paper_single_tower": Variant(
        PAPER_CONVS, (4096, 4096), 224, "the paper's widths without towers"
    ),
    # Krizhevsky's "one weird trick" single-GPU net, as torchvision builds it:
    # its state_dict keys are features.{0,3,6,8,10}.* and classifier.{1,4,6}.*
    "torchvision": Variant(
        (
            Conv(64, 11, 4, 2, pool=True),
            Conv(192, 5, 1, 2, pool=True),
            Conv(384, 3, 1, 1),
            Conv(256, 3, 1, 1),
            Conv(256, 3, 1, 1, pool=True),
        ),
        (4096, 4096),
        224,
        "torchvision.models.alexnet: 64 filters, no LRN, no towers",
        adaptive_pool=6,
        options={"lrn": False, "norm": "none", "dropout_position": "input", "init": "torch"},
    ),
    # After cuda-convnet's CIFAR-10 "layers-18pct" (5x5 convolutions of 32-32-64
    # kernels, overlapping 3/2 pooling, LRN after the pooling, which costs a
    # quarter of LRN before it), widened and given the paper's
    # conv3-conv5 stack and a small classifier so that it learns fast per
    # CPU-second. Towers are optional (model.groups=2).
    "cifar": Variant(
        (
            Conv(64, 5, 1, 2, lrn=True, pool=True, pool_before_lrn=True),  # (B, 64, 32, 32) -> (B, 64, 15, 15)
            Conv(96, 5, 1, 2, tower_local=True, lrn=True, pool=True, pool_before_lrn=True, bias_one=True),  # -> 7x7
            Conv(128, 3, 1, 1),
            Conv(128, 3, 1, 1, tower_local=True, bias_one=True),
            Conv(96, 3, 1, 1, tower_local=True, pool=True, bias_one=True),  # -> (B, 96, 3, 3)
        ),
        (512, 512),
        32,
        "an AlexNet for 32x32 images after cuda-convnet's layers-18pct",
        options={"lrn_convention": "cuda_convnet", "init": "kaiming"},
    ),
    # Seed 001 (d2l.ai): one input channel, conv1 padding 1, 5x5x256 = 6400 fc6 inputs.
    "d2l": Variant(
        (
            Conv(96, 11, 4, 1, pool=True),  # (B, 96, 54, 54) -> 26x26
            Conv(256, 5, 1, 2, pool=True),  # -> 12x12
            Conv(384, 3, 1, 1),
            Conv(384, 3, 1, 1),
            Conv(256, 3, 1, 1, pool=True),  # -> (B, 256, 5, 5)
        ),
        (4096, 4096),
        224,
        "d2l.ai's AlexNet for Fashion-MNIST (seed 001)",
        options={"lrn": False, "norm": "none", "in_channels": 1, "init": "kaiming"},
    ),
    # Seed 004: the paper's convolutions, no LRN, no towers, 2048-wide fc layers.
    "tutorial_2048": Variant(
        PAPER_CONVS,
        (2048, 2048),
        224,
        "the common tutorial network with 2048-wide fc layers (seed 004)",
        options={"lrn": False, "norm": "none", "dropout_position": "input", "init": "kaiming"},
    ),
    # Seed 002: 3x3 convolutions of 32-64-128, 2/2 pooling, 2048-512-10 classifier.
    "simple_cifar": Variant(
        (
            Conv(32, 3, 1, 1, pool=True),  # (B, 32, 16, 16)
            Conv(64, 3, 1, 1, pool=True),  # (B, 64, 8, 8)
            Conv(128, 3, 1, 1, pool=True),  # (B, 128, 4, 4) -> 2048
        ),
        (512,),
        32,
        "the simplified 32x32 AlexNet of seed 002",
        options={"lrn": False, "norm": "none", "pool": "non_overlapping", "init": "kaiming"},
    ),
}

POOLS = {"overlapping": (3, 2), "non_overlapping": (2, 2)}  # (window, stride)
NORMS = ("lrn", "batchnorm", "none")
INITS = ("paper", "caffe", "kaiming", "torch")


def conv_output_size(size: int, kernel: int, stride: int, padding: int = 0) -> int:
    """N = (W - F + 2P) / S + 1, rounded down as PyTorch does."""
    return (size - kernel + 2 * padding) // stride + 1


class AlexNet(nn.Module):
    """An AlexNet-shaped network: convolutions, then fully connected layers.

    ``features`` is conv -> [BatchNorm] -> ReLU -> [LRN] -> [max-pool] per
    layer, ``avgpool`` the optional adaptive pooling, ``classifier`` the fully
    connected layers with dropout on their outputs (or inputs). Build it with
    :func:`create`.
    """

    def __init__(
        self,
        variant: Variant,
        num_classes: int = 1000,
        *,
        lrn: bool,
        lrn_convention: str,
        lrn_impl: str,
        norm: str,
        pool: str,
        dropout: float,
        dropout_position: str,
        init: str,
        in_channels: int,
        groups: int,
        input_size: int,
    ) -> None:
        super().__init__()
        self.input_size, self.in_channels, self.groups = input_size, in_channels, groups
        window, stride = POOLS[pool]
        layers: list[nn.Module] = []
        self.bias_one: list[nn.Module] = []  # layers that Section 5 starts at bias 1
        channels, size = in_channels, input_size
        for spec in variant.convs:
            if spec.tower_local and (channels % groups or spec.out_channels % groups):
                raise ValueError(f"{channels}->{spec.out_channels} channels do not split into {groups} towers")
            conv = nn.Conv2d(
                channels,
                spec.out_channels,
                spec.kernel,
                spec.stride,
                spec.padding,
                groups=groups if spec.tower_local else 1,
            )
            layers.append(conv)
            if spec.bias_one:
                self.bias_one.append(conv)
            if norm == "batchnorm":
                layers.append(nn.BatchNorm2d(spec.out_channels))
            layers.append(nn.ReLU(inplace=True))
            # Section 3.3: LRN after the ReLU, windows confined to each tower;
            # Section 3.4: overlapping max-pooling after the LRN.
            block = []
            if spec.lrn and lrn and norm == "lrn":
                block.append(LocalResponseNorm(5, 1e-4, 0.75, None, groups, lrn_convention, lrn_impl))
            channels = spec.out_channels
            size = conv_output_size(size, spec.kernel, spec.stride, spec.padding)
            if spec.pool:
                # After an LRN, a pool that keeps only its argmax for backward:
                # the LRN's output is then kept by no one (1.8 MiB per image).
                lean = bool(block) and not spec.pool_before_lrn and lrn_impl != "torch"
                pooling = LeanMaxPool2d(window, stride) if lean else nn.MaxPool2d(window, stride)
                block.insert(0 if spec.pool_before_lrn else len(block), pooling)
                size = conv_output_size(size, window, stride)
            layers += block
            if size < 1:
                raise ValueError(f"input_size {input_size} is too small for this network")
        self.features = nn.Sequential(*layers)
        if variant.adaptive_pool:
            self.avgpool: nn.Module = nn.AdaptiveAvgPool2d(variant.adaptive_pool)
            size = variant.adaptive_pool
        else:
            self.avgpool = nn.Identity()
        self.feature_shape = (channels, size, size)

        # Section 4.2: dropout "in the first two fully-connected layers". A
        # Dropout module is kept even at p=0 so that state_dict keys do not
        # depend on the dropout setting.
        fc: list[nn.Module] = []
        width = channels * size * size
        self.hidden: list[nn.Linear] = []
        for out in variant.hidden:
            linear = nn.Linear(width, out)
            self.hidden.append(linear)
            if dropout_position == "input":
                fc += [nn.Dropout(dropout), linear, nn.ReLU(inplace=True)]
            else:
                fc += [linear, nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = out
        fc.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*fc)
        initialise(self, init)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The flattened input of the first fully connected layer."""
        return torch.flatten(self.avgpool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))

    @property
    def conv1(self) -> nn.Conv2d:
        return self.features[0]

    def conv1_kernels(self) -> tuple[torch.Tensor, int]:
        """conv1's weight, (96, 3, 11, 11) for the paper, and its number of towers (Figure 3)."""
        return self.conv1.weight.detach(), self.groups


def initialise(net: AlexNet, scheme: str) -> None:
    """Initialise weights and biases in place.

    paper (Section 5): every weight from N(0, 0.01); biases 1 in conv2, conv4,
        conv5 and the hidden fully connected layers, 0 elsewhere.
    caffe (bvlc_alexnet): as paper, but hidden fc weights N(0, 0.005) and 0.1
        where the paper has bias 1 (Caffe found bias 1 gave a flat loss).
    kaiming: He-normal (fan-in) convolutions and hidden fully connected
        layers, N(0, 0.01) output layer, biases 0.
    torch: PyTorch's own default initialisation, left as it is.
    """
    if scheme not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {scheme!r}")
    if scheme == "torch":
        return
    hidden = set(map(id, net.hidden))
    positive = set(map(id, net.bias_one)) | hidden
    bias_value = {"paper": 1.0, "caffe": 0.1, "kaiming": 0.0}[scheme]
    for m in net.modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        if scheme == "kaiming" and (isinstance(m, nn.Conv2d) or id(m) in hidden):
            # He et al. 2015, fan-in: keeps the signal's scale through the ReLUs,
            # whatever the input scaling (the paper's N(0, 0.01) relies on 0-255 pixels).
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif scheme == "caffe" and id(m) in hidden:
            nn.init.normal_(m.weight, 0.0, 0.005)
        else:
            nn.init.normal_(m.weight, 0.0, 0.01)
        nn.init.constant_(m.bias, bias_value if id(m) in positive else 0.0)


def resolve_options(name: str, **overrides) -> dict:
    """The full option set of a variant: family defaults < variant < overrides.

    The owner of every ``model.*`` key: a bad value raises :class:`ConfigError`
    naming it; an option that would do nothing on this variant is refused
    (``groups`` without towers) or warned about (``lrn`` with another ``norm``).
    """
    if name not in VARIANTS:
        raise ConfigError("model", f"unknown model {name!r}; choose one of {sorted(VARIANTS)}")
    unknown = set(overrides) - set(OPTIONS)
    if unknown:
        raise ConfigError("model", f"unknown option(s) for model {name!r}: {sorted(unknown)}; known: {sorted(OPTIONS)}")
    variant = VARIANTS[name]
    options = {**OPTIONS, **variant.options}
    options.update({k: v for k, v in overrides.items() if v is not None})
    if options["input_size"] is None:
        options["input_size"] = variant.input_size
    checks = {
        "lrn_convention": tuple(LRN_CONVENTIONS),
        "lrn_impl": LRN_IMPLS,
        "norm": NORMS,
        "pool": tuple(POOLS),
        "dropout_position": ("input", "output"),
        "init": INITS,
    }
    for key, allowed in checks.items():
        if options[key] not in allowed:
            raise ConfigError(f"model.{key}", f"must be one of {list(allowed)}, got {options[key]!r}")
    if not 0.0 <= float(options["dropout"]) < 1.0:
        raise ConfigError("model.dropout", f"must be in [0, 1), got {options['dropout']}")
    for key in ("in_channels", "groups", "input_size"):
        if int(options[key]) < 1:
            raise ConfigError(f"model.{key}", f"must be >= 1, got {options[key]}")
    if options["groups"] > 1 and not any(conv.tower_local for conv in variant.convs):
        raise ConfigError("model.groups", f"{name} has no towers, so groups={options['groups']} would change nothing; "
                          "leave it 1 (the networks with towers: cifar, paper_grouped)")
    if options["lrn"] and options["norm"] != "lrn" and any(conv.lrn for conv in variant.convs):
        warnings.warn(f"model.lrn=true does nothing with model.norm={options['norm']}: that norm layer takes LRN's place "
                      "(give model.lrn=false to say so)", stacklevel=2)
    return options


def create(name: str, num_classes: int = 1000, **overrides) -> AlexNet:
    """Build the variant ``name`` (an option of the Hydra group ``conf/model/``).

    ``overrides`` are any of :data:`OPTIONS`; ``None`` values keep the default.
    """
    options = resolve_options(name, **overrides)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    variant = VARIANTS[name]
    # Section 3 / SPEC.md: 224 input needs conv1 padding 2; the 227 input
    # that the paper's arithmetic implies needs none.
    if options["input_size"] == 227 and variant.convs is PAPER_CONVS:
        variant = replace(variant, convs=(replace(PAPER_CONVS[0], padding=0),) + PAPER_CONVS[1:])
    return AlexNet(variant, num_classes, **options)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


__all__ = ["AlexNet", "Conv", "OPTIONS", "VARIANTS", "Variant", "count_parameters", "create", "initialise", "resolve_options"]

