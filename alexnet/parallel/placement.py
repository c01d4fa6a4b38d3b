"""Where a network's towers run: ``model.placement``, a key of the run, not of the network.

``model=paper_dual_gpu`` is ``paper_grouped`` placed one tower per device
(conf/model/paper_dual_gpu.yaml inherits conf/model/paper_grouped.yaml and adds
``placement: tower_per_device``): the same network, the same tensors in the same
(grouped) layout in its checkpoints. So the network of a config is its
``model.*`` keys without the placement, which is what the LightningModule is
built from and what a resume compares (alexnet/training/checkpoints.py): a
two-device checkpoint resumes as ``paper_grouped`` on one device, and back.
"""

from __future__ import annotations

from typing import Mapping

from ..errors import ConfigError

KEY = "placement"
ONE_DEVICE = "one_device"  # the default: the whole network (both towers, groups=2) on each device
TOWER_PER_DEVICE = "tower_per_device"  # Section 3.2: one tower per device (alexnet.parallel.strategy)
PLACEMENTS = (ONE_DEVICE, TOWER_PER_DEVICE)

# Checkpoints written before the placement was a key name the network `paper_dual_gpu`.
LEGACY_NAMES = {"paper_dual_gpu": ("paper_grouped", TOWER_PER_DEVICE)}


def placement(model: Mapping) -> str:
    """``model.placement`` of a model config (absent: one device), checked."""
    value = model.get(KEY) or ONE_DEVICE
    if model.get("name") in LEGACY_NAMES:
        value = LEGACY_NAMES[model["name"]][1]
    if value not in PLACEMENTS:
        raise ConfigError(f"model.{KEY}", f"must be one of {list(PLACEMENTS)}, got {value!r}")
    name = network(model).get("name")
    if value == TOWER_PER_DEVICE and name != "paper_grouped":  # the split tested, Section 3.2's
        raise ConfigError(f"model.{KEY}", f"{TOWER_PER_DEVICE} splits the paper's network (model=paper_dual_gpu); "
                          f"model {name!r} runs whole on each device: leave it {ONE_DEVICE}")
    if value == TOWER_PER_DEVICE and model.get("groups", 2) != 2:
        raise ConfigError("model.groups", f"model=paper_dual_gpu is two towers: must be 2, got {model.get('groups')}")
    return value


def splits_towers(model: Mapping) -> bool:
    """Whether this config puts one tower on each device (``model=paper_dual_gpu``)."""
    return placement(model) == TOWER_PER_DEVICE


def network(model: Mapping) -> dict:
    """The network a model config describes: its keys without the placement, an old name upgraded."""
    net = {k: v for k, v in model.items() if k != KEY}
    if net.get("name") in LEGACY_NAMES:
        net["name"] = LEGACY_NAMES[net["name"]][0]
    return net


def choice(model: Mapping) -> str:
    """The ``conf/model`` option a model config was composed from: ``paper_dual_gpu`` for the split."""
    return "paper_dual_gpu" if splits_towers(model) else network(model)["name"]


__all__ = ["KEY", "ONE_DEVICE", "PLACEMENTS", "TOWER_PER_DEVICE", "choice", "network", "placement", "splits_towers"]
