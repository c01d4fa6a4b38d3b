"""Layers the paper uses that PyTorch does not provide in the paper's form.

Plain PyTorch: no Lightning or Hydra here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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
    """

    def __init__(
        self,
        size: int = 5,
        alpha: float = 1e-4,
        beta: float = 0.75,
        k: float | None = None,
        groups: int = 1,
        convention: str = "paper",
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
        self.groups, self.convention = groups, convention
        # torch's local_response_norm averages the window (divides by n), so
        # the literal sum of the paper is alpha * n in its terms.
        self._torch_alpha = alpha if divide_by_n else alpha * size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if c % self.groups:
            raise ValueError(f"{c} channels do not split into {self.groups} LRN groups")
        # Towers are contiguous channel blocks, so (B, G*C', H, W) -> (B*G, C', H, W)
        # is a view and torch's kernel then never mixes two towers.
        y = x.reshape(b * self.groups, c // self.groups, h, w)
        y = F.local_response_norm(y, self.size, self._torch_alpha, self.beta, self.k)
        return y.reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, "
            f"groups={self.groups}, convention={self.convention!r}"
        )
