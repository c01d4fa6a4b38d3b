"""Layers the paper uses that PyTorch does not provide in the paper's form,
and the max-pool that follows an LRN, keeping less for the backward pass.

Plain PyTorch: no Lightning or Hydra here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from .fast_lrn import local_response_norm

# Section 3.3 of the paper: "k = 2, n = 5, alpha = 1e-4, beta = 0.75".
# The three published ways of writing the same layer differ only in whether
# alpha multiplies the plain sum of squares or their mean, and in k.
LRN_CONVENTIONS = {
    # name: (alpha is divided by n, default k)
    "paper": (False, 2.0),  # the formula as printed: k + alpha * SUM a_j^2
    "cuda_convnet": (True, 2.0),  # the authors' code: k + alpha/n * SUM a_j^2
    "caffe": (True, 1.0),  # bvlc_alexnet: k=1, alpha/n
}


class LocalResponseNorm(nn.Module):
    """Local response normalisation across channels (Section 3.3).

    b[i] = a[i] / (k + alpha' * SUM_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a[j]^2) ** beta

    where alpha' = alpha for the ``paper`` convention and alpha / n for the
    ``cuda_convnet`` and ``caffe`` ones. With ``groups > 1`` the channels are
    split into that many contiguous blocks (the paper's towers, one per GPU)
    and no window reaches across a block boundary, as when each GPU
    normalised only its own 48 or 128 channels.

    Args:
        size: n, the number of adjacent channels summed (odd).
        alpha: the scale of the sum of squares.
        beta: the exponent.
        k: the additive constant; ``None`` takes the convention's value
            (2 for ``paper`` and ``cuda_convnet``, 1 for ``caffe``).
        groups: the number of independent channel blocks (towers).
        convention: ``paper``, ``cuda_convnet`` or ``caffe``.
        impl: how it is computed (:mod:`alexnet.nn.fast_lrn`): ``torch``
            (PyTorch's own LRN, the reference), ``native`` (a C kernel for
            CPU tensors), ``fused`` (torch ops, compiled on CUDA) or
            ``auto`` (native where it applies, else fused). All give the
            same numbers; all but ``torch`` keep only the input for backward.
    """

    def __init__(
        self,
        size: int = 5,
        alpha: float = 1e-4,
        beta: float = 0.75,
        k: float | None = None,
        groups: int = 1,
        convention: str = "paper",
        impl: str = "torch",
    ) -> None:
        super().__init__()
        if convention not in LRN_CONVENTIONS:
            raise ValueError(
                f"lrn_convention must be one of {sorted(LRN_CONVENTIONS)}, got {convention!r}"
            )
        if size < 1 or size % 2 == 0:
            raise ValueError(f"LRN size must be a positive odd number, got {size}")
        if groups < 1:
            raise ValueError(f"LRN groups must be >= 1, got {groups}")
        divide_by_n, default_k = LRN_CONVENTIONS[convention]
        self.size, self.alpha, self.beta = size, alpha, beta
        self.k = default_k if k is None else float(k)
        self.groups, self.convention, self.impl = groups, convention, impl
        # torch's local_response_norm averages the window (divides by n), so
        # the literal sum of the paper is alpha * n in its terms.
        self._torch_alpha = alpha if divide_by_n else alpha * size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if c % self.groups:
            raise ValueError(f"{c} channels do not split into {self.groups} LRN groups")
        return local_response_norm(x, self.size, self._torch_alpha, self.beta, self.k, self.groups, self.impl)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, "
            f"groups={self.groups}, convention={self.convention!r}, impl={self.impl!r}"
        )


class _MaxPoolKeepingIndices(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel_size, stride):
        y, indices = F.max_pool2d(x, kernel_size, stride, return_indices=True)
        ctx.save_for_backward(indices)
        ctx.kernel_size, ctx.stride = kernel_size, stride
        ctx.input_layout = (x.shape, x.stride(), x.dtype, x.device)
        return y

    @staticmethod
    def backward(ctx, g):
        (indices,) = ctx.saved_tensors
        shape, strides, dtype, device = ctx.input_layout
        # PyTorch's own max-pool backward (same numbers, same determinism) reads
        # only the input's shape and layout: an uninitialised stand-in of that
        # layout, made now and never written, serves.
        stand_in = torch.empty_strided(shape, strides, dtype=dtype, device=device)
        dx = torch.ops.aten.max_pool2d_with_indices_backward(
            g, stand_in, _pair(ctx.kernel_size), _pair(ctx.stride), [0, 0], [1, 1], False, indices
        )
        return dx, None, None


class LeanMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that keeps only the argmax of each window for backward.

    PyTorch's max-pooling also keeps its input. After a ReLU that costs
    nothing (the ReLU keeps the same tensor), but after an LRN the input is
    the LRN's output, which nothing else keeps: 1.8 MiB per image in the
    paper's network. Same values and gradients as ``nn.MaxPool2d`` (no
    padding, dilation or ceil_mode).
    """

    def __init__(self, kernel_size: int, stride: int | None = None) -> None:
        super().__init__(kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or not x.requires_grad:
            return super().forward(x)
        return _MaxPoolKeepingIndices.apply(x, self.kernel_size, self.stride)
