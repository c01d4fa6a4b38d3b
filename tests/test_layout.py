"""The package's folders are its layers, and imports only go down them.

    alexnet/nn        plain PyTorch: the networks and their layers (no Lightning, no Hydra)
    alexnet/parallel  the paper's two-device split; may use nn
    alexnet/data      datasets, presets, augmentation, DataModules; may use parallel (ranks), not nn
    alexnet/training  the LightningModule, optimisers, the Trainer, callbacks, faults, checkpoints
    alexnet/*.py      config, inference: everything before and around them
    errors.py, files.py   leaves that every layer may use

The test reads every module's imports (absolute and relative) from its source.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "alexnet"
LEAVES = {"alexnet.errors", "alexnet.files"}
# Which layers each layer may import from (besides itself and the leaves).
ALLOWED = {
    "nn": set(),
    "parallel": {"nn"},
    "data": {"parallel"},
    "training": {"nn", "parallel", "data"},
    "top": {"nn", "parallel", "data", "training", "top"},
}
NOT_IN_NN = ("lightning", "pytorch_lightning", "hydra", "omegaconf", "torchmetrics")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else "top"


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            if not node.module:  # from . import x
                found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def test_the_package_has_the_four_layers_and_the_leaves():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == {"nn", "parallel", "data", "training"}
    assert {module_name(p) for p in PACKAGE.glob("*.py")} >= LEAVES | {"alexnet.config", "alexnet.inference"}


def violations(module: str, imported: set[str]) -> list[str]:
    """The imports of ``module`` that go upward or across the layers."""
    here = layer(module)
    if module in LEAVES:
        return sorted(m for m in imported if m.startswith("alexnet"))
    wrong = []
    for name in sorted(imported):
        if not name.startswith("alexnet.") or name in LEAVES:
            continue
        there = layer(name)
        if there != here and there not in ALLOWED[here]:
            wrong.append(f"{name} ({there})")
    if here == "nn":
        wrong += sorted(m for m in imported if m.split(".")[0] in NOT_IN_NN)
    return wrong


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_imports_only_go_down_the_layers_and_the_networks_are_plain_pytorch(path: Path):
    module = module_name(path)
    wrong = violations(module, imports(path))
    assert not wrong, f"{module} ({layer(module)}) imports upward, across, or a framework: {wrong}"


def test_the_layer_check_sees_each_kind_of_violation():
    assert violations("alexnet.nn.models", {"alexnet.training.system"}) == ["alexnet.training.system (training)"]
    assert violations("alexnet.nn.layers", {"lightning.pytorch", "torch"}) == ["lightning.pytorch"]
    assert violations("alexnet.data.base", {"alexnet.nn.models"}) == ["alexnet.nn.models (nn)"]
    assert violations("alexnet.parallel.towers", {"alexnet.data.sampling"}) == ["alexnet.data.sampling (data)"]
    assert violations("alexnet.files", {"alexnet.errors"}) == ["alexnet.errors"]
    assert violations("alexnet.training.system", {"alexnet.nn.models", "alexnet.data.augment", "alexnet.errors"}) == []
    # relative imports are resolved against the module's package
    assert {"alexnet.parallel.strategy", "alexnet.training.callbacks"} <= imports(PACKAGE / "training" / "trainer.py")
