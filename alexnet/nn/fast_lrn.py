"""Local response normalisation with PyTorch's numbers in less time and memory.

PyTorch's ``F.local_response_norm`` is the reference (``impl="torch"``). It is
a chain of small ops (square, pad, avg_pool3d, mul, add, pow, div) that keeps
four input-sized tensors for the backward pass and reads and writes the
activations about ten times; in the paper's network, which is otherwise
cheap, that costs 40% of the training speed on a CPU. The others compute
the same function in one autograd node that keeps only its input ``x`` and
recomputes the normaliser ``s`` in the backward pass:

    s  = k + alpha * (window sum over channels of x^2)
    y  = x * s^-beta
    dx = g * s^-beta - 2 * alpha * beta * x * (window sum of g * x * s^(-beta-1))

(the window is symmetric, so the sum in the gradient is the same window sum).

``native``: ``csrc/lrn.c``, one pass per image that slides the channel window
    as a running sum per pixel, compiled with the system C compiler on first
    use (about a second) into a per-user cache folder and called through
    ctypes. CPU, float32/float64, contiguous NCHW.
``fused``: the same math in torch ops, for every other case (CUDA, bf16,
    channels_last); on CUDA it runs under ``torch.compile``, which fuses it.
``auto``: ``native`` where it applies and loads, ``fused`` elsewhere.

:func:`local_response_norm` takes PyTorch's arguments (alpha is divided by
the window size); :class:`alexnet.nn.layers.LocalResponseNorm` works them out
from the paper's convention.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from ..files import atomic_path, cache_dir

IMPLS = ("auto", "native", "fused", "torch")
SOURCE = Path(__file__).parent / "csrc" / "lrn.c"
# Tried in order: the first set the compiler accepts builds the library.
# -march=native is safe because the cache key includes this CPU's identity;
# -fno-math-errno lets sqrt vectorise.
FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp", "-fno-math-errno"],
    ["-O3", "-fopenmp", "-fno-math-errno"],
    ["-O3", "-fno-math-errno"],  # no OpenMP (e.g. Apple clang): one thread
)
NATIVE_DTYPES = {torch.float32: "f32", torch.float64: "f64"}


# ---------------------------------------------------------------- the native library


def _cpu_identity() -> str:
    try:  # the model name and instruction-set flags, for -march=native
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor()


class _CompileFailed(Exception):
    pass


def _compile(compiler: str, flags: list[str], target: Path) -> bool:
    # Compiled aside and renamed into place (alexnet.files.atomic_path), so processes
    # that start together (DDP ranks, DataLoader workers) never load a half-written file.
    try:
        with atomic_path(target, suffix=".partial.so") as partial:
            cmd = [compiler, *flags, "-shared", "-fPIC", "-o", str(partial), str(SOURCE), "-lm"]
            if subprocess.run(cmd, capture_output=True, text=True, timeout=120).returncode != 0:
                raise _CompileFailed
    except _CompileFailed:
        return False
    return True


@functools.cache
def native_library() -> ctypes.CDLL | None:
    """The compiled ``csrc/lrn.c``, built on first use; ``None`` (with one warning) if it cannot be."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        warnings.warn("no C compiler (cc or $CC) found: LocalResponseNorm uses the torch-ops path", stacklevel=2)
        return None
    source = SOURCE.read_bytes()
    errors = []
    for flags in FLAG_SETS:
        key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), compiler.encode(), _cpu_identity().encode()]))
        path = cache_dir() / f"lrn-{key.hexdigest()[:16]}.so"
        try:
            if path.exists() or _compile(compiler, flags, path):
                return _bind(ctypes.CDLL(str(path)))
        except (OSError, subprocess.SubprocessError) as err:
            errors.append(f"{' '.join(flags)}: {err}")
    warnings.warn(
        f"could not compile {SOURCE} with {compiler} ({'; '.join(errors) or 'compiler errors'}): "
        "LocalResponseNorm uses the torch-ops path",
        stacklevel=2,
    )
    return None


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    shape = [ctypes.c_int64] * 4 + [ctypes.c_double] * 3 + [ctypes.c_int]  # blocks, channels, plane, size, alpha, beta, k, threads
    for suffix in NATIVE_DTYPES.values():
        getattr(lib, f"lrn_forward_{suffix}").argtypes = [ctypes.c_void_p] * 2 + shape
        getattr(lib, f"lrn_backward_{suffix}").argtypes = [ctypes.c_void_p] * 3 + shape
    return lib


def _run_native(direction: str, tensors: list[torch.Tensor], groups: int, size: int, alpha, beta, k) -> None:
    x = tensors[0]
    b, c, h, w = x.shape
    fn = getattr(native_library(), f"lrn_{direction}_{NATIVE_DTYPES[x.dtype]}")
    # ctypes releases the GIL for the call; the kernel uses torch's own OpenMP pool.
    if fn(*(t.data_ptr() for t in tensors), b * groups, c // groups, h * w, size, alpha, beta, k, torch.get_num_threads()):
        raise MemoryError("the native LRN backward could not allocate its scratch buffers")


# A custom op (rather than a bare autograd.Function) so that torch.compile
# treats the native kernel as one opaque node instead of breaking the graph.
@torch.library.custom_op("alexnet::lrn", mutates_args=())
def native_lrn(x: torch.Tensor, groups: int, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    y = torch.empty_like(x)
    if x.numel():
        _run_native("forward", [x, y], groups, size, alpha, beta, k)
    return y


@torch.library.custom_op("alexnet::lrn_backward", mutates_args=())
def native_lrn_backward(
    x: torch.Tensor, grad: torch.Tensor, groups: int, size: int, alpha: float, beta: float, k: float
) -> torch.Tensor:
    dx = torch.empty_like(x)
    if x.numel():
        _run_native("backward", [x, grad.contiguous(), dx], groups, size, alpha, beta, k)
    return dx


@native_lrn.register_fake
def _(x, groups, size, alpha, beta, k):
    return torch.empty_like(x)


@native_lrn_backward.register_fake
def _(x, grad, groups, size, alpha, beta, k):
    return torch.empty_like(x)


def _save_input(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0])  # x only: s is recomputed
    ctx.args = inputs[1:]


def _native_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return native_lrn_backward(x, grad, *ctx.args), None, None, None, None, None


native_lrn.register_autograd(_native_backward, setup_context=_save_input)


# ---------------------------------------------------------------- the torch-ops path


def _window_sum(t: torch.Tensor, size: int) -> torch.Tensor:
    """(B, G, C, H, W) -> the sum over each channel's window, truncated at each
    tower's edges; in t's memory layout (channels_last stays channels_last)."""
    total = t.clone()
    for shift in range(1, size // 2 + 1):
        total[:, :, shift:] += t[:, :, :-shift]
        total[:, :, :-shift] += t[:, :, shift:]
    return total


def _fused_forward(x, size: int, alpha: float, beta: float, k: float):
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    s = _window_sum(xf * xf, size) * alpha + k
    return (xf * s.pow(-beta)).to(x.dtype)


def _fused_backward(x, g, size: int, alpha: float, beta: float, k: float):
    xf, gf = (x.float(), g.float()) if x.dtype in (torch.float16, torch.bfloat16) else (x, g)
    s = _window_sum(xf * xf, size) * alpha + k
    gt = gf * s.pow(-beta)
    return (gt - (2 * alpha * beta) * xf * _window_sum(gt * xf / s, size)).to(x.dtype)


_compile_failed = False


def _on_cuda(fn):
    """``fn`` under torch.compile (on CUDA: one fused kernel instead of a dozen
    passes); eager, with one warning, where compiling fails (no Triton, no C compiler)."""
    if _compile_failed or torch.compiler.is_compiling():  # inside a compiled model: traced there
        return fn
    compiled = _compiled(fn)

    def run(*args):
        global _compile_failed
        try:
            return compiled(*args)
        except Exception as err:  # the backend's errors have many types
            _compile_failed = True
            warnings.warn(f"torch.compile of the LRN failed ({type(err).__name__}: {err}); running it eagerly", stacklevel=2)
            return fn(*args)

    return run


@functools.cache
def _compiled(fn):
    return torch.compile(fn, dynamic=False)


class FusedLRN(torch.autograd.Function):
    """The torch-ops path: any device, dtype and memory layout; keeps only x.

    Half-precision inputs (bf16 autocast) are computed in float32 and returned
    in their own dtype. On CUDA the math runs under torch.compile.
    """

    @staticmethod
    def forward(ctx, x, groups: int, size: int, alpha: float, beta: float, k: float):
        ctx.save_for_backward(x)
        ctx.args = (groups, size, alpha, beta, k)
        forward = _on_cuda(_fused_forward) if x.is_cuda else _fused_forward
        b, c, h, w = x.shape
        # (B, G*C, H, W) -> (B, G, C, H, W) is a view in NCHW and NHWC alike; the way
        # back is too, unless a compiled kernel chose another layout (then a copy).
        return forward(x.reshape(b, groups, c // groups, h, w), size, alpha, beta, k).reshape(b, c, h, w)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        groups, size, alpha, beta, k = ctx.args
        backward = _on_cuda(_fused_backward) if x.is_cuda else _fused_backward
        b, c, h, w = x.shape
        shape = (b, groups, c // groups, h, w)
        dx = backward(x.reshape(shape), g.reshape(shape), size, alpha, beta, k)
        return dx.reshape(b, c, h, w), None, None, None, None, None


# ---------------------------------------------------------------- choosing one


@torch.compiler.assume_constant_result  # torch.compile asks once, outside the graph
def native_available() -> bool:
    return native_library() is not None


def uses_native(x: torch.Tensor, impl: str) -> bool:
    """Whether ``impl`` runs the native kernel on ``x``."""
    return (
        impl in ("auto", "native")
        and x.device.type == "cpu"
        and x.dtype in NATIVE_DTYPES
        and x.is_contiguous()
        and native_available()
    )


def local_response_norm(
    x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int = 1, impl: str = "auto"
) -> torch.Tensor:
    """``F.local_response_norm(x, size, alpha, beta, k)`` with the windows confined
    to each of ``groups`` contiguous channel blocks of (B, C, H, W) ``x``.

    As in PyTorch, ``alpha`` is divided by ``size`` (it scales the window's mean square).
    """
    if impl not in IMPLS:
        raise ValueError(f"lrn impl must be one of {IMPLS}, got {impl!r}")
    b, c, h, w = x.shape
    if impl == "torch":
        # Towers are contiguous channel blocks, so (B, G*C', H, W) -> (B*G, C', H, W)
        # is a view and torch's kernel never mixes two towers.
        y = F.local_response_norm(x.reshape(b * groups, c // groups, h, w), size, alpha, beta, k)
        return y.reshape(b, c, h, w)
    term = float(alpha) / size  # the factor of each term of the sum
    if uses_native(x, impl):
        return native_lrn(x, groups, size, term, float(beta), float(k))
    return FusedLRN.apply(x, groups, size, term, float(beta), float(k))
