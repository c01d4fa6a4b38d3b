"""The paper's two-GPU split: one tower per device (Section 3.2, Figure 2).

"The GPUs communicate only in certain layers": each device holds half of
every layer's kernels, conv2, conv4 and conv5 see only their own tower's
channels, and the input of conv3, fc6, fc7 and fc8 is gathered from both
towers (SPEC.md, "Network"). :class:`Tower` is that half, built from the
grouped network (``paper_grouped``, ``groups=2``) of which it is a slice:

    grouped tensor (out, ...)  =  cat(tower 0's (out/2, ...), tower 1's (out/2, ...))

for every weight, bias, buffer and optimizer state, which is how a
two-device checkpoint is stored (:func:`merge_towers`, :func:`split_towers`)
and why it loads on one device as the grouped network. Plain PyTorch and
torch.distributed: no Lightning here (the strategy is in
:mod:`alexnet.parallel.strategy`).

    tower 0 (rank 2d)               tower 1 (rank 2d+1)
    conv1 48 -> LRN -> pool         conv1 48 -> LRN -> pool
    conv2 128 (own) -> LRN -> pool  conv2 128 (own) -> LRN -> pool
          \\_______ all-gather 256 channels _______/
    conv3 192 (both)                conv3 192 (both)
    conv4 192 (own)                 conv4 192 (own)
    conv5 128 (own) -> pool         conv5 128 (own) -> pool
          \\_______ all-gather 9216 features ______/
    fc6 2048 -> dropout             fc6 2048 -> dropout
          \\_______ all-gather 4096 _______________/
    fc7 2048 -> dropout             fc7 2048 -> dropout
          \\_______ all-gather 4096 _______________/
    fc8 500                         fc8 500
          \\_______ all-gather 1000 logits ________/
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn

from ..nn.layers import LocalResponseNorm
from ..nn.models import AlexNet

TOWERS = 2  # Section 3.2: two GTX 580 GPUs


def all_gather_cat(x: torch.Tensor, group, dim: int = 0) -> torch.Tensor:
    """Every rank's ``x`` of ``group``, concatenated along ``dim`` in rank order (no gradient)."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


class _GatherTowers(torch.autograd.Function):
    """All-gather along the channels, with one of two backward passes.

    ``replicated=False`` (conv3's and the fc layers' inputs): each tower's next
    layer uses the whole gathered tensor its own way, so the gradient of a
    tower's slice is the sum of every tower's gradient for it (a reduce-scatter).
    ``replicated=True`` (the logits): every tower computes the same loss from
    the same gathered logits, so a tower's slice gets its slice of its own
    gradient; summing would count the loss once per tower.
    Written here because torch.distributed.nn's autograd all_gather is
    deprecated, its replacement is private, and neither has the second form.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, group, replicated: bool) -> torch.Tensor:
        ctx.group, ctx.replicated = group, replicated
        ctx.rank, ctx.size = dist.get_rank(group), dist.get_world_size(group)
        return all_gather_cat(x, group, dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        chunks = [c.contiguous() for c in grad.chunk(ctx.size, dim=1)]
        if ctx.replicated:
            return chunks[ctx.rank], None, None
        if dist.get_backend(ctx.group) == dist.Backend.NCCL:
            out = torch.empty_like(chunks[ctx.rank])
            dist.reduce_scatter(out, chunks, group=ctx.group)
            return out, None, None
        grad = grad.contiguous()  # gloo has no reduce-scatter
        dist.all_reduce(grad, group=ctx.group)
        return grad.chunk(ctx.size, dim=1)[ctx.rank].contiguous(), None, None


def gather_towers(x: torch.Tensor, group, replicated: bool = False) -> torch.Tensor:
    """(B, C/T, ...) on each tower -> (B, C, ...) on every tower, tower 0's channels first."""
    return _GatherTowers.apply(x, group, replicated)


class TowerDropout(nn.Module):
    """Dropout on one tower's half of a layer that draws the whole layer's mask.

    Every tower draws the mask of all ``towers * C`` units from its random
    stream and keeps its own slice, so the two halves get independent masks,
    and towers whose streams are in step draw exactly the mask that the
    grouped network's ``nn.Dropout`` draws on the CPU (there, dropout is
    ``empty_like(x).bernoulli_(1 - p) / (1 - p)``).
    """

    def __init__(self, p: float, tower: int, towers: int = TOWERS) -> None:
        super().__init__()
        self.p, self.tower, self.towers = p, tower, towers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        b, c = x.shape
        keep = x.new_empty(b, c * self.towers).bernoulli_(1 - self.p).div_(1 - self.p)
        return x * keep[:, self.tower * c : (self.tower + 1) * c]

    def extra_repr(self) -> str:
        return f"p={self.p}, tower={self.tower} of {self.towers}"


def _slice(t: torch.Tensor, tower: int, towers: int) -> torch.Tensor:
    return t.chunk(towers, dim=0)[tower].clone()


class Tower(nn.Module):
    """One tower of a grouped AlexNet, for the device of rank ``tower`` in ``group``.

    Its modules carry the grouped network's names (``features.0`` is conv1,
    ``classifier.6`` is fc8) with half of each tensor along its output
    dimension, so that ``Tower.state_dict()`` and the grouped network's
    state_dict differ only in that split.

    Args:
        net: the grouped network (``groups == towers``) to take the slice of.
        tower: this device's tower, ``0 <= tower < towers``.
        group: the process group of the towers (one rank per tower), or
            ``None`` to build the slice without communicating (tests, conversion).
        towers: the number of towers (the paper's 2).
    """

    def __init__(self, net: AlexNet, tower: int, group=None, towers: int = TOWERS) -> None:
        super().__init__()
        if net.groups != towers:
            raise ValueError(f"a {towers}-tower split needs the grouped network (groups={towers}), got groups={net.groups}")
        fc8 = net.classifier[-1]
        if fc8.out_features % towers:
            raise ValueError(f"{fc8.out_features} classes do not split into {towers} towers' halves of fc8")
        self.tower, self.towers, self.group = tower, towers, group
        self.input_size, self.in_channels, self.groups = net.input_size, net.in_channels, 1
        self.feature_shape = (net.feature_shape[0] // towers,) + tuple(net.feature_shape[1:])
        self.features = nn.Sequential(*(self._split(m) for m in net.features))
        self.avgpool = copy.deepcopy(net.avgpool)
        self.classifier = nn.Sequential(*(self._split(m) for m in net.classifier))
        # Where the towers meet (SPEC.md's "sees BOTH towers"): the input of
        # every convolution that was not grouped, except conv1 (it sees the
        # image), and of every fully connected layer.
        convs = [i for i, m in enumerate(net.features) if isinstance(m, nn.Conv2d)]
        self.gather_before = {i for i in convs[1:] if net.features[i].groups == 1}
        self.linear_at = [i for i, m in enumerate(net.classifier) if isinstance(m, nn.Linear)]
        self.exchanged = 0  # bytes this tower has sent to the others (forward and backward)
        self._checked_inputs = False

    def _split(self, m: nn.Module) -> nn.Module:
        t, n = self.tower, self.towers
        if isinstance(m, nn.Conv2d):
            local = m.groups == n  # tower-local: its own tower's input channels only
            conv = nn.Conv2d(m.in_channels // n if local else m.in_channels, m.out_channels // n, m.kernel_size,
                             m.stride, m.padding, bias=m.bias is not None)
            conv.weight.data.copy_(_slice(m.weight.data, t, n))
            if m.bias is not None:
                conv.bias.data.copy_(_slice(m.bias.data, t, n))
            return conv
        if isinstance(m, nn.Linear):
            linear = nn.Linear(m.in_features, m.out_features // n)
            linear.weight.data.copy_(_slice(m.weight.data, t, n))
            linear.bias.data.copy_(_slice(m.bias.data, t, n))
            return linear
        if isinstance(m, nn.BatchNorm2d):
            bn = nn.BatchNorm2d(m.num_features // n, m.eps, m.momentum)
            state = {k: (_slice(v, t, n) if v.ndim else v.clone()) for k, v in m.state_dict().items()}
            bn.load_state_dict(state)
            return bn
        if isinstance(m, LocalResponseNorm):
            # Section 3.3 on two GPUs: each normalises its own channels.
            return LocalResponseNorm(m.size, m.alpha, m.beta, m.k, 1, m.convention, m.impl)
        if isinstance(m, nn.Dropout):
            return TowerDropout(m.p, t, n)
        return copy.deepcopy(m)

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        self.exchanged += 2 * x.numel() * x.element_size() * (self.towers - 1)  # forward + gradient
        return gather_towers(x, self.group)

    def _check_same_input(self, x: torch.Tensor) -> None:
        check_same_input(self.group, x)
        self._checked_inputs = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._checked_inputs:
            self._check_same_input(x)
        for i, layer in enumerate(self.features):
            x = layer(self._gather(x) if i in self.gather_before else x)
        x = torch.flatten(self.avgpool(x), 1)  # (B, C/T * 6 * 6): this tower's channels
        for i, layer in enumerate(self.classifier):
            x = layer(self._gather(x) if i in self.linear_at else x)
        self.exchanged += x.numel() * x.element_size() * (self.towers - 1)
        return gather_towers(x, self.group, replicated=True)  # (B, classes), the same on every tower

    @property
    def conv1(self) -> nn.Conv2d:
        return self.features[0]

    def conv1_kernels(self) -> tuple[torch.Tensor, int]:
        """Both towers' conv1 kernels, gathered (every tower must call it), and the number of towers."""
        return all_gather_cat(self.conv1.weight.detach(), self.group), self.towers


def check_same_input(group, *tensors: torch.Tensor) -> None:
    """The towers of ``group`` must see the same images: compare fingerprints of
    ``tensors`` (a batch's images, and labels), and stop if they differ.

    A stream out of step would otherwise train silently on mismatched halves.
    """
    fingerprint = torch.stack([s for t in tensors for s in (t.double().sum(), t.double().square().sum())])
    prints = all_gather_cat(fingerprint[None], group)  # (towers, 2 per tensor)
    if not all(torch.allclose(p, prints[0]) for p in prints):
        raise RuntimeError(
            f"the towers received different input batches ({[p.tolist() for p in prints]}): "
            "the ranks of one model-parallel group must read the same data"
        )


def clip_grad_norm_towers(parameters, max_norm: float, group) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for a tower: the norm is the whole
    network's, over both towers' gradients, so every tower scales alike.

    A tower without gradients (a skipped batch) still joins the all-reduce.
    """
    parameters = list(parameters)
    grads = [p.grad for p in parameters if p.grad is not None]
    squares = torch.zeros((), device=parameters[0].device)
    if grads:
        squares = torch.stack([g.detach().float().square().sum() for g in grads]).sum()
    dist.all_reduce(squares, group=group)
    norm = squares.sqrt()
    if grads:
        torch._foreach_mul_(grads, (max_norm / (norm + 1e-6)).clamp(max=1.0).to(grads[0].dtype))
    return norm


def split_towers(state: dict[str, torch.Tensor], tower: int, towers: int = TOWERS) -> dict[str, torch.Tensor]:
    """A grouped network's state (or a two-device checkpoint's) -> one tower's: every
    tensor's slice ``tower`` of ``towers`` along dimension 0; scalars are shared."""
    return {k: (_slice(v, tower, towers) if v.ndim else v.clone()) for k, v in state.items()}


def merge_towers(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The towers' states -> the grouped network's: the inverse of :func:`split_towers`."""
    return {k: (torch.cat([s[k] for s in states]) if v.ndim else v) for k, v in states[0].items()}


__all__ = ["TOWERS", "Tower", "TowerDropout", "all_gather_cat", "check_same_input", "clip_grad_norm_towers", "gather_towers", "merge_towers", "split_towers"]
