"""Per-layer figures of a network: output shape, parameters, multiply-adds, receptive field.

The figures the users' notes work out by hand (SPEC.md, Section 3): output size
N = (W - F + 2P) / S + 1, weights and biases per layer, multiply-adds per image,
and the receptive field of each layer on the input image. Plain PyTorch.

    >>> s = summarize(create("paper_grouped"))
    >>> s.parameters, s.macs          # (60965224, 724406816)

What counts:

* multiply-adds: convolutions, out_elements * (in_channels / groups) * k * k
  (a grouped conv sees only its own tower's inputs), and fully connected
  layers, in * out. Bias additions, ReLU, LRN, pooling and dropout are not
  counted, as in the usual "GMAC" figures.
* receptive field: the standard recurrence r += (k - 1) * jump, jump *= stride
  over the layers that move or widen the window, convolutions and pooling
  (padding changes where the window sits, not its size). ReLU, LRN, BatchNorm
  and dropout are element- or channel-wise and leave it unchanged; a fully
  connected layer sees the whole image.
* activations: the elements of every layer's output, except in-place ReLUs,
  which overwrite their input; float32, so 4 bytes each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .layers import LocalResponseNorm

# The layers whose outputs the table lists, and the Caffe-style name stem of each.
_STEMS = {
    nn.Conv2d: "conv",
    nn.Linear: "fc",
    nn.ReLU: "relu",
    LocalResponseNorm: "norm",
    nn.LocalResponseNorm: "norm",
    nn.BatchNorm2d: "bn",
    nn.MaxPool2d: "pool",
    nn.AdaptiveAvgPool2d: "avgpool",
    nn.Dropout: "drop",
}


@dataclass
class Layer:
    """One row of the table: a layer's output for one image, and what it costs."""

    name: str  # conv1, relu1, norm1, pool1, ..., fc6, drop6, fc8 (Caffe's names)
    module: str  # the attribute path in the network, e.g. features.0
    kind: str  # the module class
    shape: tuple[int, ...]  # output shape without the batch dimension
    parameters: int
    macs: int  # multiply-adds per image
    receptive_field: int | None  # pixels on a side; None: the whole image
    jump: float | None  # input pixels between neighbouring outputs
    in_place: bool = False

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


@dataclass
class Summary:
    """The rows of a network and their totals, for one image of ``input_shape``."""

    input_shape: tuple[int, int, int]
    layers: list[Layer] = field(default_factory=list)

    @property
    def parameters(self) -> int:
        return sum(layer.parameters for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def macs_of(self, kind: str) -> int:
        return sum(layer.macs for layer in self.layers if layer.kind == kind)

    @property
    def activations(self) -> int:
        """Elements of all layer outputs per image (in-place ReLUs excluded)."""
        return sum(layer.elements for layer in self.layers if not layer.in_place)

    def activation_bytes(self, batch: int = 128, bytes_per_element: int = 4) -> int:
        return self.activations * batch * bytes_per_element

    def __getitem__(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r}; layers: {[layer.name for layer in self.layers]}")


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out[0].numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return 0


def _window(module: nn.Module, in_size: int) -> tuple[int, float]:
    """(kernel, stride) of a layer along one side; (1, 1) for point-wise layers."""
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
        k, s = module.kernel_size, module.stride
        k = k[0] if isinstance(k, tuple) else k
        s = s[0] if isinstance(s, tuple) else s
        if isinstance(module, nn.Conv2d):
            k = module.dilation[0] * (k - 1) + 1
        return k, s
    if isinstance(module, nn.AdaptiveAvgPool2d):
        out = module.output_size
        out = out[0] if isinstance(out, tuple) else out
        # torch's adaptive windows: [floor(i*W/out), ceil((i+1)*W/out)); at the
        # native input size W == out and the layer is the identity.
        k = max(math.ceil((i + 1) * in_size / out) - (i * in_size) // out for i in range(out))
        return k, in_size / out
    return 1, 1


def summarize(net: nn.Module, input_shape: tuple[int, int, int] | None = None) -> Summary:
    """Run one image through ``net`` with forward hooks and tabulate every layer.

    ``input_shape`` is (channels, height, width); by default the network's own
    ``in_channels`` and ``input_size`` (an :class:`alexnet.nn.models.AlexNet`).
    Only square inputs are supported by the receptive-field column.
    """
    if input_shape is None:
        input_shape = (net.in_channels, net.input_size, net.input_size)
    names = {module: name for name, module in net.named_modules()}
    summary = Summary(tuple(input_shape))
    state = {"rf": 1, "jump": 1.0, "size": input_shape[-1], "flat": False}

    def hook(module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        if isinstance(module, nn.Linear):
            state["flat"] = True
        if state["flat"]:
            rf, jump = None, None
        else:
            k, s = _window(module, state["size"])
            state["rf"] += (k - 1) * state["jump"]
            state["jump"] *= s
            state["size"] = out.shape[-1]
            rf, jump = state["rf"], state["jump"]
            rf = int(round(rf))
        summary.layers.append(
            Layer(
                name="",
                module=names[module],
                # the layer type it is (a subclass such as a faster pooling counts as its base)
                kind=next(k.__name__ for k in _STEMS if isinstance(module, k)),
                shape=tuple(out.shape[1:]),
                parameters=sum(p.numel() for p in module.parameters(recurse=False)),
                macs=_macs(module, out),
                receptive_field=rf,
                jump=jump,
                in_place=isinstance(module, nn.ReLU) and module.inplace,
            )
        )

    handles = [
        m.register_forward_hook(hook)
        for m in net.modules()
        if isinstance(m, tuple(_STEMS)) and not isinstance(m, nn.Identity)
    ]
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, *input_shape))
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    _name_layers(summary.layers)
    return summary


def _name_layers(layers: list[Layer]) -> None:
    """Caffe's names: conv1, relu1, norm1, pool1, ..., fc6, relu6, drop6, fc8.

    A layer takes the number of the conv or fc layer it follows; a dropout
    placed before an fc layer (torchvision) takes that layer's number.
    """
    kinds = [layer.kind for layer in layers]
    first_fc = kinds.index("Linear") if "Linear" in kinds else len(kinds)
    dropout_on_inputs = "Dropout" in kinds[:first_fc]
    number = 0
    for layer in layers:
        stem = next(v for k, v in _STEMS.items() if k.__name__ == layer.kind)
        if layer.kind in ("Conv2d", "Linear"):
            number += 1
            layer.name = f"{stem}{number}"
        elif layer.kind == "Dropout" and dropout_on_inputs:
            layer.name = f"{stem}{number + 1}"
        elif layer.kind == "AdaptiveAvgPool2d":
            layer.name = stem
        else:
            layer.name = f"{stem}{number}"


def saved_activation_bytes(net: nn.Module, input_shape: tuple[int, int, int] | None = None) -> int:
    """Bytes autograd keeps for backward per image in training mode, measured.

    Counts each storage once and leaves out the parameters; multiply by the
    batch size for a batch (every saved activation grows with it).
    """
    if input_shape is None:
        input_shape = (net.in_channels, net.input_size, net.input_size)
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    was_training = net.training
    try:
        net.train()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net(torch.zeros(1, *input_shape, requires_grad=False))
    finally:
        net.train(was_training)
    return sum(seen.values())


__all__ = ["Layer", "Summary", "saved_activation_bytes", "summarize"]
