"""Using a finished checkpoint: rebuild its system and its data, evaluate, predict."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .checkpoints import read_checkpoint, resolve_ckpt_path
from .errors import ConfigError
from .system import AlexNetSystem


def load_system(ckpt_path: str | None) -> tuple[AlexNetSystem, dict, Path]:
    """The system stored in a checkpoint, in eval mode on the CPU, and the raw checkpoint."""
    if not ckpt_path:
        raise ConfigError("ckpt_path", "give the checkpoint to use: ckpt_path=FILE")
    path = resolve_ckpt_path(ckpt_path, Path.cwd())
    checkpoint = read_checkpoint(path)
    system = AlexNetSystem(**checkpoint["hyper_parameters"])
    system.load_state_dict(checkpoint["state_dict"])
    return system.eval(), checkpoint, path


def data_config(checkpoint: dict, cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The data config to evaluate with: the checkpoint's own, unless the command line says otherwise.

    ``data=NAME`` picks another dataset (composed from conf/data); ``data.KEY=VALUE``
    changes one key of the checkpoint's data config (say, data.root or data.eval_crops).
    """
    if any(o.split("=", 1)[0].lstrip("+") == "data" for o in overrides) or "config" not in checkpoint:
        return cfg.data
    data = OmegaConf.create(checkpoint["config"]["data"])
    changes = [o.lstrip("+") for o in overrides if o.lstrip("+").startswith("data.")]
    if any(c.startswith("data.eval_crops=") for c in changes) and not any(c.startswith("data.test_crops=") for c in changes):
        changes.append("data.test_crops=null")  # asking for N crops here means N crops in the test
    return OmegaConf.merge(data, OmegaConf.from_dotlist([c.removeprefix("data.") for c in changes]))
