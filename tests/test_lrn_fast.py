"""The fast LRN computes PyTorch's LRN, values and gradients, in less memory (alexnet/nn/fast_lrn.py)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alexnet.nn import fast_lrn
from alexnet.nn.fast_lrn import local_response_norm, native_library, uses_native
from alexnet.nn.layers import LRN_CONVENTIONS, LeanMaxPool2d, LocalResponseNorm
from alexnet.nn.models import create

FAST = ["native", "fused"]


def activations(*shape, scale=30.0, seed=0, dtype=torch.float32):
    """Post-ReLU activations large enough that the normalisation bites (tens, as
    conv1 gives on raw 0-255 pixels minus the mean, Section 2)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.relu(torch.randn(*shape, generator=g, dtype=torch.float64)) * scale).to(dtype)


def values_and_gradient(layer, x, seed=1):
    x = x.detach().clone().requires_grad_()
    y = layer(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    y.backward(g)
    return y.detach(), x.grad


@pytest.fixture
def native_available(request):
    """Skips what needs the native kernel where no C compiler can build it. A case
    parametrised with ``impl`` is skipped only when it is the native one: the
    fused (torch ops) cases and their gradchecks need no compiler and always run."""
    impl = getattr(request.node, "callspec", None) and request.node.callspec.params.get("impl")
    if impl not in (None, "native"):
        return
    if native_library() is None:
        pytest.skip("no C compiler here: the native LRN cannot be built")


def runnable(impls: list[str]) -> list[str]:
    """The implementations this machine can run: native only where it could be built."""
    return [i for i in impls if i != "native" or native_library() is not None]


@pytest.fixture
def fresh_library(monkeypatch, tmp_path):
    """native_library() forgets its cached result before and after the test."""
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path))
    native_library.cache_clear()
    yield
    monkeypatch.undo()
    native_library.cache_clear()


# ---------------------------------------------------------------- the same numbers


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("convention", sorted(LRN_CONVENTIONS))
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("size", [3, 5, 7])
def test_fast_lrn_equals_torchs_in_values_and_gradients(impl, convention, groups, size, native_available):
    x = activations(3, 12 * groups, 9, 7)
    reference = LocalResponseNorm(size, 1e-4, 0.75, None, groups, convention, impl="torch")
    fast = LocalResponseNorm(size, 1e-4, 0.75, None, groups, convention, impl=impl)
    y_ref, dx_ref = values_and_gradient(reference, x)
    y, dx = values_and_gradient(fast, x)
    assert (y_ref - x).abs().max() > 1.0, "the test input must be normalised noticeably"
    torch.testing.assert_close(y, y_ref, rtol=2e-6, atol=1e-5)
    torch.testing.assert_close(dx, dx_ref, rtol=2e-6, atol=1e-5)


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("seed", range(4))
def test_fast_lrn_equals_torchs_on_random_shapes_and_constants(impl, seed, native_available):
    g = torch.Generator().manual_seed(seed)
    groups, per_group, h, w = (int(v) for v in torch.randint(1, 5, (4,), generator=g))
    size = int(torch.randint(0, 5, (1,), generator=g)) * 2 + 1  # 1..9, wider than a tower too
    alpha, beta, k = 10 ** -float(torch.empty(1).uniform_(2, 4, generator=g)), [0.75, 0.5, 1.3][seed % 3], 0.5 + seed
    x = activations(2, groups * per_group, h, w, seed=seed)
    y_ref, dx_ref = values_and_gradient(lambda t: local_response_norm(t, size, alpha, beta, k, groups, "torch"), x)
    y, dx = values_and_gradient(lambda t: local_response_norm(t, size, alpha, beta, k, groups, impl), x)
    torch.testing.assert_close(y, y_ref, rtol=3e-6, atol=1e-5)
    torch.testing.assert_close(dx, dx_ref, rtol=3e-6, atol=1e-5)


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("convention", sorted(LRN_CONVENTIONS))
def test_fast_lrn_passes_gradcheck_in_float64(impl, convention, native_available):
    # alpha large enough that the window term of the gradient is not negligible
    layer = LocalResponseNorm(5, 0.05, 0.75, None, 2, convention, impl=impl)
    x = activations(2, 8, 3, 2, scale=3.0, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(layer, (x,))


def test_no_window_reaches_across_a_tower():
    x = activations(1, 8, 4, 4)
    spiked = x.clone()
    spiked[:, 3] += 1000.0  # the last channel of tower one
    for impl in ["torch", *runnable(FAST)]:
        layer = LocalResponseNorm(5, 1e-4, 0.75, None, 2, "paper", impl=impl)
        torch.testing.assert_close(layer(spiked)[:, 4:], layer(x)[:, 4:], rtol=0, atol=0)


def test_native_lrn_runs_the_native_kernel_on_contiguous_cpu_float(native_available):
    x = activations(1, 4, 3, 3)
    assert uses_native(x, "auto") and uses_native(x.double(), "native")
    assert not uses_native(x, "fused") and not uses_native(x, "torch")
    assert not uses_native(x.to(memory_format=torch.channels_last), "auto")  # NHWC: the torch-ops path
    assert not uses_native(x.bfloat16(), "auto")


# ---------------------------------------------------------------- memory


def saved_bytes(fn, x) -> int:
    """Bytes of the distinct tensors autograd keeps for backward while running fn(x)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(storages.values())


@pytest.mark.parametrize("impl", FAST)
def test_fast_lrn_keeps_only_its_input_for_backward(impl, native_available):
    x = activations(2, 16, 8, 8).requires_grad_()
    lrn = LocalResponseNorm(groups=2, impl=impl)
    assert saved_bytes(lrn, x) == x.numel() * 4
    assert saved_bytes(LocalResponseNorm(groups=2, impl="torch"), x) >= 4 * x.numel() * 4  # the reference


def test_lean_max_pool_keeps_only_its_indices_and_equals_max_pool():
    x = torch.randint(0, 4, (2, 3, 11, 11)).float()  # ties: overlapping windows share maxima
    y_ref, dx_ref = values_and_gradient(nn.MaxPool2d(3, 2), x)
    y, dx = values_and_gradient(LeanMaxPool2d(3, 2), x)
    assert torch.equal(y, y_ref) and torch.equal(dx, dx_ref)
    assert saved_bytes(LeanMaxPool2d(3, 2), x.requires_grad_()) == y.numel() * 8  # int64 indices


def test_the_paper_network_keeps_at_most_6_mib_per_image_for_backward_in_fp32():
    torch.manual_seed(0)
    net = create("paper_grouped", init="torch")
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    storages = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:  # weights are per model, not per image
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    batch = 2
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(torch.randn(batch, 3, 224, 224) * 50)
    per_image = sum(storages.values()) / batch / 2**20
    assert per_image <= 6.0  # PyTorch's LRN: 11.9 MiB; no LRN at all: 4.55 MiB


# ---------------------------------------------------------------- choosing the implementation


@pytest.mark.parametrize("impl", ["auto", "native", "fused", "torch"])
def test_the_model_option_lrn_impl_reaches_every_lrn_layer(impl):
    net = create("paper_grouped", lrn_impl=impl)
    lrns = [m for m in net.modules() if isinstance(m, LocalResponseNorm)]
    assert len(lrns) == 2 and all(m.impl == impl for m in lrns)
    # The reference is PyTorch's network throughout; the fast paths pool leanly after an LRN.
    after_lrn = [net.features[i + 1] for i, m in enumerate(net.features) if isinstance(m, LocalResponseNorm)]
    assert all(type(p) is (nn.MaxPool2d if impl == "torch" else LeanMaxPool2d) for p in after_lrn)


def test_the_models_default_is_auto_and_an_unknown_impl_is_an_error():
    assert all(m.impl == "auto" for m in create("cifar").modules() if isinstance(m, LocalResponseNorm))
    with pytest.raises(ValueError, match="lrn_impl"):
        create("paper_grouped", lrn_impl="cuda")


def test_every_lrn_impl_gives_the_same_network_output():
    x = torch.randn(2, 3, 32, 32) * 50
    outputs = []
    for impl in ["torch", *runnable(["native", "fused"])]:
        torch.manual_seed(0)
        net = create("cifar", num_classes=10, lrn_impl=impl).eval()
        outputs.append(net(x))
    assert len(outputs) >= 2
    for output in outputs[1:]:
        torch.testing.assert_close(output, outputs[0], rtol=1e-5, atol=1e-5)


def test_without_a_compiler_auto_falls_back_to_the_torch_ops_path_with_one_warning(fresh_library, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-anywhere")
    x = activations(1, 6, 3, 3)
    with pytest.warns(UserWarning, match="no C compiler"):
        assert native_library() is None
    assert not uses_native(x, "auto")
    expected = local_response_norm(x, 5, 1e-4, 0.75, 2.0, 1, "torch")
    torch.testing.assert_close(local_response_norm(x, 5, 1e-4, 0.75, 2.0, 1, "native"), expected)


def test_a_compiler_that_fails_falls_back_with_a_warning(fresh_library, monkeypatch):
    monkeypatch.setenv("CC", "false")  # exists, and fails every compilation
    with pytest.warns(UserWarning, match="could not compile"):
        assert native_library() is None


def test_the_native_library_is_compiled_once_into_the_cache_folder(fresh_library, tmp_path):
    if native_library() is None:
        pytest.skip("no C compiler here")
    built = list(tmp_path.glob("lrn-*.so"))
    assert len(built) == 1
    native_library.cache_clear()
    mtime = built[0].stat().st_mtime_ns
    assert native_library() is not None and built[0].stat().st_mtime_ns == mtime  # loaded, not rebuilt


# ---------------------------------------------------------------- the GPU fast path's cases, on the CPU


def test_the_torch_ops_path_keeps_channels_last_and_matches():
    x = activations(2, 8, 5, 5).to(memory_format=torch.channels_last)
    layer = LocalResponseNorm(groups=2, impl="auto")
    y_ref, dx_ref = values_and_gradient(LocalResponseNorm(groups=2, impl="torch"), x.contiguous())
    y, dx = values_and_gradient(layer, x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(dx, dx_ref)


def test_under_bf16_autocast_the_lrn_computes_in_float32_and_returns_bf16():
    x = activations(2, 8, 5, 5).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, dx = values_and_gradient(LocalResponseNorm(groups=2, impl="auto"), x)
    y_ref, _ = values_and_gradient(LocalResponseNorm(groups=2, impl="torch"), x.float())
    assert y.dtype == dx.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref, rtol=1e-2, atol=1e-2)


def test_the_native_lrn_is_one_node_for_torch_compile(native_available):
    torch._dynamo.reset()
    layer = LocalResponseNorm(groups=2, impl="native")
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)  # fullgraph: no graph break allowed
    x = activations(2, 8, 5, 5)
    y_ref, dx_ref = values_and_gradient(layer, x)
    y, dx = values_and_gradient(compiled, x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(dx, dx_ref)


def test_the_fused_path_under_torch_compile_equals_the_reference():
    torch._dynamo.reset()
    x = activations(2, 8, 5, 5)
    y_ref = F.local_response_norm(x.view(4, 4, 5, 5), 5, 5e-4, 0.75, 2.0).view_as(x)
    compiled = torch.compile(fast_lrn._fused_forward, backend="aot_eager")
    torch.testing.assert_close(compiled(x.view(2, 2, 4, 5, 5), 5, 1e-4, 0.75, 2.0).view_as(x), y_ref)


def test_where_torch_compile_fails_the_cuda_path_runs_eagerly_with_one_warning(monkeypatch):
    def broken_compile(fn):
        def run(*args):
            raise RuntimeError("no Triton here")
        return run

    monkeypatch.setattr(fast_lrn, "_compiled", broken_compile)
    monkeypatch.setattr(fast_lrn, "_compile_failed", False)
    x = activations(2, 2, 4, 5, 5)
    with pytest.warns(UserWarning, match="running it eagerly"):
        y = fast_lrn._on_cuda(fast_lrn._fused_forward)(x, 5, 1e-4, 0.75, 2.0)
    torch.testing.assert_close(y, fast_lrn._fused_forward(x, 5, 1e-4, 0.75, 2.0))
    assert fast_lrn._on_cuda(fast_lrn._fused_forward) is fast_lrn._fused_forward  # and eager from then on
