"""`python scripts/export.py`: a checkpoint as an ONNX model or an ExportedProgram that computes its logits.

ONNX's LRN divides alpha by the window size (alexnet/nn/export.py): each of the
layer's conventions maps onto it exactly, and with towers (groups=2) each
tower is normalised by an LRN of its own. The checkpoints are tiny runs of
train.py on the built-in data (in-process, to stay fast): the cifar network,
and the paper's grouped network at a 127-pixel input.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, compose_config
from test_layers import activations, reference_lrn

import train as train_script
from alexnet.errors import ExportError
from alexnet.inference import load_system, sample_images
from alexnet.nn.export import TOLERANCE, compare, export_onnx, onnx_lrn_attributes, onnx_ops, runner
from alexnet.nn.layers import LRN_CONVENTIONS, LocalResponseNorm

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SMALL = ["data.batch_size=8", "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
         "test_after_fit=false", "checkpoint.save_top_k=0"]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


export_script = load_script("export")


def tiny_checkpoint(run: Path, *overrides: str) -> Path:
    train_script.train(compose_config(*SMALL, *overrides), run)
    return run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def cifar_ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("cifar") / "run", "data.num_train=16", "data.num_val=16")


@pytest.fixture(scope="module")
def grouped_ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("grouped") / "run", "model=paper_grouped", "model.input_size=127",
                           "data.num_train=8", "data.num_val=8")


def export(capsys, *args: str) -> tuple[int, str, str]:
    """The command line, in this process: (exit status, stdout, stderr)."""
    status = export_script.main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def summary(stdout: str) -> str:
    (line,) = [line for line in stdout.splitlines() if line.startswith("format=")]
    return line


@functools.cache
def network(ckpt: Path) -> torch.nn.Module:
    """The checkpoint's network as PyTorch runs it: eval mode, float32, on the CPU."""
    return load_system(str(ckpt))[0].net


def logits(ckpt: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return network(ckpt)(x)


def images(ckpt: Path, n: int, seed: int = 1) -> torch.Tensor:
    size = network(ckpt).input_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def no_partial_files(folder: Path) -> bool:
    return not list(folder.glob(".partial-*"))


# ---------------------------------------------------------------- LRN: each convention, as ONNX's LRN


LAYERS = [(convention, groups) for convention in sorted(LRN_CONVENTIONS) for groups in (1, 2)]


class SideBySide(torch.nn.Module):
    """Every (convention, groups) LRN on the same input, outputs side by side: one export for all."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(LocalResponseNorm(5, 1e-4, 0.75, None, g, c) for c, g in LAYERS)

    def forward(self, x):
        return torch.cat([layer(x) for layer in self.layers], dim=1)


@pytest.fixture(scope="module")
def lrn_onnx(tmp_path_factory) -> tuple[Path, torch.Tensor, torch.Tensor]:
    path = tmp_path_factory.mktemp("lrn") / "lrn.onnx"
    x = activations(3, 12, 5, 4)  # large enough that the normalisation bites
    export_onnx(SideBySide(), x[:2], path)
    return path, x, runner("onnx", path)(x).double()


@pytest.mark.parametrize("convention", sorted(LRN_CONVENTIONS))
def test_each_convention_maps_onto_onnx_lrn_exactly(convention):
    # ONNX: x / (bias + alpha/size * SUM x^2)^beta; the paper's literal sum is alpha*n there.
    attrs = onnx_lrn_attributes(LocalResponseNorm(5, 1e-4, 0.75, None, 1, convention))
    divide_by_n, k = LRN_CONVENTIONS[convention]
    assert attrs == {"size": 5, "alpha": 1e-4 if divide_by_n else 5e-4, "beta": 0.75, "bias": k}


@pytest.mark.parametrize("convention,groups", LAYERS)
def test_onnxruntime_computes_the_papers_formula_for_each_convention_and_tower_count(lrn_onnx, convention, groups):
    _, x, out = lrn_onnx
    i = LAYERS.index((convention, groups))
    got = out[:, 12 * i : 12 * (i + 1)]
    divide_by_n, k = LRN_CONVENTIONS[convention]
    expected = reference_lrn(x, 5, 1e-4, 0.75, k, divide_by_n, groups)  # SPEC.md's formula, per tower, float64
    assert (expected - x.double()).abs().max() > 1.0, "the test input must be normalised noticeably"
    assert ((got - expected).abs() / expected.abs().clamp_min(1e-12)).max() < 1e-5


def test_the_onnx_graph_has_one_lrn_node_per_layer_and_tower_with_the_mapped_attributes(lrn_onnx):
    path, _, _ = lrn_onnx
    ops = onnx_ops(path)
    assert ops["LRN"] == sum(groups for _, groups in LAYERS)  # 9: towers split, normalised apart, concatenated
    assert ops["Split"] >= 1 and ops["Concat"] >= 1
    assert "AveragePool" not in ops  # not torch's decomposition of LRN
    found = {tuple(sorted((a.name, round(onnx.helper.get_attribute_value(a), 9)) for a in node.attribute))
             for node in onnx.load(str(path)).graph.node if node.op_type == "LRN"}
    assert found == {tuple(sorted(onnx_lrn_attributes(layer).items())) for layer in SideBySide().layers}


# ---------------------------------------------------------------- whole checkpoints


def test_a_cifar_checkpoint_exports_to_onnx_beside_it_with_the_checkpoints_logits(cifar_ckpt, capsys):
    status, out, err = export(capsys, f"ckpt_path={cifar_ckpt}", "format=onnx", "batch=4")
    assert status == 0, err
    path = cifar_ckpt.with_suffix(".onnx")  # the default: next to the checkpoint
    line = summary(out)
    assert line.startswith(f"format=onnx out={path} max_abs_diff=")
    assert "4 random images" in line and "4 validation images" in line  # the built-in data is always there
    onnx.checker.check_model(str(path), full_check=True)
    ops = onnx_ops(path)
    assert ops["LRN"] == 2 and "AveragePool" not in ops  # conv1 and conv2's LRN, one tower
    # Independently of the script's own check: any batch size, the checkpoint's logits.
    x = images(cifar_ckpt, 3)
    expected, got = logits(cifar_ckpt, x), runner("onnx", path)(x)
    largest, tolerance = compare(expected, got, "cifar")
    assert largest <= tolerance == TOLERANCE * max(1.0, expected.abs().max().item())
    assert no_partial_files(path.parent)


def test_a_cifar_checkpoint_exports_as_an_exported_program_that_torch_export_loads(cifar_ckpt, tmp_path, capsys):
    path = tmp_path / "cifar.pt2"
    status, out, err = export(capsys, f"ckpt_path={cifar_ckpt}", "format=exported_program", f"out={path}")
    assert status == 0, err
    assert summary(out).startswith(f"format=exported_program out={path} max_abs_diff=")
    x = images(cifar_ckpt, 5)
    with torch.no_grad():
        got = torch.export.load(str(path)).module()(x)
    compare(logits(cifar_ckpt, x), got, "cifar exported program")


def test_the_papers_grouped_network_exports_with_lrn_confined_to_each_tower(grouped_ckpt, tmp_path, capsys):
    path = tmp_path / "grouped.onnx"
    status, out, err = export(capsys, f"ckpt_path={grouped_ckpt}", "format=onnx", f"out={path}", "batch=2")
    assert status == 0, err
    ops = onnx_ops(path)
    assert ops["LRN"] == 4 and ops["Split"] >= 2  # conv1 and conv2's LRN, each tower on its own
    x = images(grouped_ckpt, 2)
    compare(logits(grouped_ckpt, x), runner("onnx", path)(x), "paper_grouped")


def test_a_two_device_checkpoint_exports_as_the_grouped_network(grouped_ckpt, tmp_path, capsys):
    # model=paper_dual_gpu stores paper_grouped's tensors (alexnet/parallel/placement.py).
    dual = tmp_path / "dual.ckpt"
    assert load_script("convert_checkpoint").main([str(grouped_ckpt), str(dual), "--to", "paper_dual_gpu"]) == 0
    capsys.readouterr()
    assert torch.load(dual, map_location="cpu", weights_only=True)["hyper_parameters"]["config"]["model"]["placement"] \
        == "tower_per_device"
    status, out, err = export(capsys, f"ckpt_path={dual}", "format=exported_program", "batch=2")
    assert status == 0, err
    x = images(grouped_ckpt, 2)
    with torch.no_grad():
        got = torch.export.load(str(dual.with_suffix(".pt2"))).module()(x)
    compare(logits(grouped_ckpt, x), got, "paper_dual_gpu")


def test_the_check_uses_the_checkpoints_validation_images_or_says_why_it_cannot(cifar_ckpt):
    checkpoint = torch.load(cifar_ckpt, map_location="cpu", weights_only=False)
    here = compose_config()
    batches, why = sample_images(checkpoint, here, [], 3)
    assert why is None and {name: tuple(x.shape) for name, x in batches.items()} == {
        "random": (3, 3, 32, 32), "validation": (3, 3, 32, 32)}
    # Data that is not on this machine is not downloaded: the random images alone, and the reason.
    elsewhere = ["data=cifar10", "data.root=/nonexistent/cifar10"]
    batches, why = sample_images(checkpoint, compose_config(*elsewhere), elsewhere, 3)
    assert set(batches) == {"random"} and "/nonexistent/cifar10" in why


# ---------------------------------------------------------------- refusals: one line, nothing written


def test_a_wrong_lrn_mapping_fails_naming_the_largest_difference_and_writes_nothing(cifar_ckpt, tmp_path, capsys,
                                                                                    monkeypatch):
    import alexnet.nn.export as export_module

    right = export_module.onnx_lrn_attributes
    monkeypatch.setattr(export_module, "onnx_lrn_attributes", lambda layer: {**right(layer), "bias": 1.0})  # Caffe's k
    path = tmp_path / "wrong.onnx"
    status, _, err = export(capsys, f"ckpt_path={cifar_ckpt}", "format=onnx", f"out={path}", "batch=2")
    assert status == 1
    (line,) = err.strip().splitlines()
    assert line.startswith("error: random images: the exported logits differ from the checkpoint's by up to ")
    assert "tolerance" in line
    assert not path.exists() and no_partial_files(tmp_path)


@pytest.mark.parametrize("fmt", ["tflite", ""])
def test_a_wrong_format_is_a_one_line_error_naming_the_key(cifar_ckpt, tmp_path, capsys, fmt):
    status, out, err = export(capsys, f"ckpt_path={cifar_ckpt}", f"format={fmt}", f"out={tmp_path / 'x.onnx'}")
    assert status == 1 and out == ""
    assert err.strip().splitlines() == [f"error: format: must be one of onnx, exported_program, got {fmt!r}"]
    assert list(tmp_path.iterdir()) == []


def test_a_missing_or_unreadable_checkpoint_is_a_one_line_error_naming_the_file(tmp_path, capsys):
    missing, junk = tmp_path / "missing.ckpt", tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    for ckpt in (missing, junk):
        status, _, err = export(capsys, f"ckpt_path={ckpt}", "format=onnx")
        (line,) = err.strip().splitlines()
        assert status == 1 and line.startswith("error: ckpt_path: ") and str(ckpt) in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.ckpt"]


def test_onnx_without_its_packages_is_a_one_line_error_naming_the_extra(cifar_ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    status, _, err = export(capsys, f"ckpt_path={cifar_ckpt}", "format=onnx", f"out={tmp_path / 'x.onnx'}")
    (line,) = err.strip().splitlines()
    assert status == 1 and "onnxruntime" in line and 'pip install -e ".[export]"' in line
    assert list(tmp_path.iterdir()) == []


def test_compare_names_the_image_and_logit_of_the_largest_difference():
    expected = torch.tensor([[1.0, 20.0], [3.0, -4.0]])
    got = expected.clone()
    got[1, 0] += 0.5
    with pytest.raises(ExportError, match=r"up to 0\.5 \(image 1, logit 0: 3\.5 against 3\).*tolerance is 0\.002 "):
        compare(expected, got, "batch")
    assert compare(expected, expected + 1e-3, "batch") == (pytest.approx(1e-3, rel=1e-4), pytest.approx(2e-3))
