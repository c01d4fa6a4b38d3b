"""A network as a file other runtimes run: ONNX, with LRN as ONNX's own operator, and torch.export.

Plain PyTorch (and, for ONNX, the optional onnx, onnxruntime and onnxscript:
``pip install -e ".[export]"``); no Lightning or Hydra here.

ONNX's ``LRN`` divides alpha by the window, as Caffe, cuda-convnet and
PyTorch do:

    y = x / (bias + alpha / size * SUM_{window} x^2) ** beta

so each convention of :class:`~alexnet.nn.layers.LocalResponseNorm` maps onto it
exactly (:func:`onnx_lrn_attributes`): size = n, bias = k, beta = beta, and
alpha = alpha * n for the paper's literal sum, alpha for ``cuda_convnet`` and
``caffe``. With towers (``groups=2``) no window may cross the tower boundary
(Section 3.3, SPEC.md), so the channels are split, each tower normalised by
its own ``LRN``, and the towers concatenated again.

How: the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, the default
since torch 2.9; the TorchScript one is deprecated) maps each node of a
``torch.export`` graph through a translation table. PyTorch has no LRN
operator of its own (``F.local_response_norm`` is pad, avg_pool3d, pow, div),
so for the export each LRN layer becomes one call of the custom op
:func:`export_lrn`, which ``torch.export`` keeps as one opaque node and
``custom_translation_table`` turns into ``Split`` / ``LRN`` / ``Concat``. The
ExportedProgram instead computes the LRN with PyTorch's own ops
(``impl="torch"``), so that loading it needs nothing but torch.

Both have a dynamic batch dimension; :func:`compare` checks a runtime's logits
against PyTorch's.
"""

from __future__ import annotations

import copy
import importlib
from collections import Counter
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import ExportError
from .fast_lrn import local_response_norm
from .layers import LRN_CONVENTIONS, LocalResponseNorm

FORMATS = {"onnx": ".onnx", "exported_program": ".pt2"}  # format: the suffix of its file
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")
INSTALL = 'pip install -e ".[export]"'
# The largest difference allowed between an export's logits and PyTorch's, as a
# fraction of the logits' scale (max |logit|, at least 1). float32 evaluated in
# another order differs by about 1e-6 of the scale (measured: cifar, paper_grouped); a wrong LRN constant by far more.
TOLERANCE = 1e-4


def missing_onnx_packages() -> list[str]:
    """The packages ONNX export needs that do not import here."""
    missing = []
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


# ---------------------------------------------------------------- LRN as ONNX's LRN


def onnx_lrn_attributes(layer: LocalResponseNorm) -> dict:
    """The attributes of ONNX's ``LRN`` that compute ``layer`` (per tower).

    ONNX divides alpha by size: the paper's literal sum (Section 3.3,
    ``k + alpha * SUM``) is alpha * n there; cuda-convnet and Caffe already
    divide by n, so their alpha is ONNX's.
    """
    divide_by_n, _ = LRN_CONVENTIONS[layer.convention]
    alpha = layer.alpha if divide_by_n else layer.alpha * layer.size
    return {"size": int(layer.size), "alpha": float(alpha), "beta": float(layer.beta), "bias": float(layer.k)}


@torch.library.custom_op("alexnet::export_lrn", mutates_args=())
def export_lrn(x: torch.Tensor, size: int, alpha: float, beta: float, bias: float, groups: int) -> torch.Tensor:
    """ONNX's ``LRN`` (alpha divided by size) on each of ``groups`` contiguous channel blocks."""
    return local_response_norm(x, size, alpha, beta, bias, groups, impl="torch")


@export_lrn.register_fake
def _(x, size, alpha, beta, bias, groups):
    return torch.empty_like(x)


def _onnx_export_lrn(x, size: int, alpha: float, beta: float, bias: float, groups: int):
    """The ONNX graph of :func:`export_lrn`: one ``LRN`` per tower."""
    from onnxscript import opset18 as op

    def lrn(t):
        return op.LRN(t, size=size, alpha=alpha, beta=beta, bias=bias)

    if groups == 1:
        return lrn(x)
    towers = op.Split(x, axis=1, num_outputs=groups)  # (B, C, H, W) -> groups x (B, C/groups, H, W)
    return op.Concat(*[lrn(t) for t in towers], axis=1)


class _ExportedLRN(nn.Module):
    """A :class:`LocalResponseNorm` as one :func:`export_lrn` node."""

    def __init__(self, layer: LocalResponseNorm) -> None:
        super().__init__()
        self.attributes, self.groups = onnx_lrn_attributes(layer), layer.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return export_lrn(x, groups=self.groups, **self.attributes)


def exportable(net: nn.Module, fmt: str) -> nn.Module:
    """A copy of ``net`` to export: eval mode, no gradients, and each LRN as ``fmt`` needs it.

    ``onnx``: one :func:`export_lrn` node per layer; ``exported_program``:
    PyTorch's own ops (not the native kernel, which only this package can load).
    """
    net = copy.deepcopy(net).eval().requires_grad_(False)
    for name, module in list(net.named_modules()):
        if not isinstance(module, LocalResponseNorm):
            continue
        if fmt != "onnx":
            module.impl = "torch"
        elif not name:  # net is the layer itself
            net = _ExportedLRN(module)
        else:
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent), child, _ExportedLRN(module))
    return net.eval()


def lrn_node_count(net: nn.Module) -> int:
    """The ``LRN`` nodes an ONNX export of ``net`` has: one per layer and tower."""
    return sum(m.groups for m in net.modules() if isinstance(m, LocalResponseNorm))


# ---------------------------------------------------------------- writing and running


def _batch_dim(example: torch.Tensor) -> tuple:
    if example.shape[0] < 2:  # torch.export fixes a dimension whose example is 0 or 1
        raise ValueError(f"the example batch must hold at least 2 images to export a dynamic batch, got {example.shape[0]}")
    return ({0: torch.export.Dim("batch")},)


def export_onnx(net: nn.Module, example: torch.Tensor, path: str | Path) -> None:
    """Write ``net`` as an ONNX model (input ``images``, output ``logits``) and check it with onnx.checker."""
    import onnx

    program = torch.onnx.export(
        exportable(net, "onnx"),
        (example,),
        dynamo=True,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=_batch_dim(example),
        custom_translation_table={torch.ops.alexnet.export_lrn.default: _onnx_export_lrn},
        verbose=False,
    )
    program.save(str(path), external_data=False)  # one file (AlexNet's 244 MB are under protobuf's 2 GB)
    onnx.checker.check_model(str(path), full_check=True)


def export_program(net: nn.Module, example: torch.Tensor, path: str | Path) -> None:
    """Write ``net`` as a ``torch.export`` ExportedProgram (``torch.export.save``)."""
    program = torch.export.export(exportable(net, "exported_program"), (example,), dynamic_shapes=_batch_dim(example))
    torch.export.save(program, str(path))


def onnx_ops(path: str | Path) -> Counter:
    """How many nodes of each operator type the ONNX model's graph has."""
    import onnx

    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def runner(fmt: str, path: str | Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function from images to logits that runs the exported file: onnxruntime, or torch.export.load."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])
    module = torch.export.load(str(path)).module()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    return run


def compare(expected: torch.Tensor, got: torch.Tensor, what: str) -> tuple[float, float]:
    """``(max abs difference, tolerance)``; :class:`ExportError` naming the largest difference if over.

    The tolerance is :data:`TOLERANCE` times the logits' scale (max |logit|, at least 1).
    """
    if got.shape != expected.shape:
        raise ExportError(f"{what}: the export gives logits of shape {tuple(got.shape)}, PyTorch {tuple(expected.shape)}")
    diff = (got.double() - expected.double()).abs()
    scale = max(1.0, expected.abs().max().item())
    tolerance, largest = TOLERANCE * scale, diff.max().item()
    if not largest <= tolerance:  # NaN fails too
        where = tuple(int(i) for i in torch.unravel_index(diff.nan_to_num(float("inf")).argmax(), diff.shape))
        raise ExportError(
            f"{what}: the exported logits differ from the checkpoint's by up to {largest:.3g} (image {where[0]}, "
            f"{'logit ' + str(where[1]) if len(where) == 2 else 'output ' + str(where[1:])}: "
            f"{got[where].item():.6g} against {expected[where].item():.6g}); "
            f"the tolerance is {tolerance:.3g} ({TOLERANCE:g} x logit scale {scale:.3g})"
        )
    return largest, tolerance


__all__ = ["FORMATS", "INSTALL", "TOLERANCE", "compare", "export_lrn", "export_onnx", "export_program", "exportable",
           "lrn_node_count", "missing_onnx_packages", "onnx_lrn_attributes", "onnx_ops", "runner"]
