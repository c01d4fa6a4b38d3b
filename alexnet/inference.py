"""Using a finished checkpoint: rebuild its system and its data, evaluate, predict, export."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from .config import build_datamodule
from .errors import ConfigError
from .parallel.placement import network
from .training.checkpoints import read_checkpoint, resolve_ckpt_path
from .training.system import AlexNetSystem


def load_system(ckpt_path: str | None) -> tuple[AlexNetSystem, dict, Path]:
    """The system stored in a checkpoint, in eval mode on the CPU, and the raw checkpoint."""
    if not ckpt_path:
        raise ConfigError("ckpt_path", "give the checkpoint to use: ckpt_path=FILE")
    path = resolve_ckpt_path(ckpt_path, Path.cwd())
    checkpoint = read_checkpoint(path)  # names a truncated or foreign file
    # Lightning's own loader: every checkpoint the trainer writes rebuilds from its hyperparameters
    # (a two-device one too: its tensors are stored in the grouped network's layout).
    # A checkpoint from before model.placement names its network paper_dual_gpu: read it as paper_grouped.
    model = checkpoint["hyper_parameters"].get("model") or {}
    net = network(model)
    upgraded = {"model": net} if net != model else {}
    system = AlexNetSystem.load_from_checkpoint(path, map_location="cpu", weights_only=False, **upgraded)
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


def run_precision(checkpoint: dict, cfg: DictConfig, overrides: list[str]) -> tuple[str, bool]:
    """``(trainer.precision, tf32)`` to evaluate in: what the checkpoint's run trained in, unless
    the command line gives ``trainer.precision=...`` (or ``tf32=...``).

    A run trained in bf16 is evaluated in bf16, as it was validated during training.
    """
    given = {o.split("=", 1)[0].lstrip("+") for o in overrides if "=" in o}
    stored = checkpoint.get("config") or {}
    precision = cfg.trainer.precision if "trainer.precision" in given else stored.get("trainer", {}).get("precision", cfg.trainer.precision)
    tf32 = cfg.get("tf32", False) if "tf32" in given else stored.get("tf32", False)
    return str(precision), bool(tf32)


def sample_images(checkpoint: dict, cfg: DictConfig, overrides: list[str], count: int) -> tuple[dict[str, torch.Tensor], str | None]:
    """Batches of at most ``count`` images as the checkpoint's network sees them at evaluation
    (its data config, :func:`data_config`): for checking an export against the checkpoint.

    ``random``: uniformly random pixels (seed 0) through the evaluation transform
    (resize, centre crop, normalisation), always; ``validation``: the first images
    of the validation split, when the data is on this machine (never downloaded).
    With ten-crop evaluation each crop counts as an image. Returns the batches by
    name and, when there is no validation batch, why not.
    """
    data = data_config(checkpoint, cfg, overrides)
    preview = build_datamodule(data, require_data=False)  # a bad data.* value is an error here
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (count, preview.channels, preview.resize_size, preview.resize_size), generator=g)
    batches = {"random": _images(preview.eval_batch(pixels.to(torch.uint8)), count)}
    try:
        # one batch of `count` images, read in this process
        datamodule = build_datamodule(OmegaConf.merge(data, {"batch_size": count, "num_workers": 0}))
        # the DataModule's two hooks, as Lightning calls them: the first decodes file bytes (data.decode=device)
        batch = datamodule.on_before_batch_transfer(next(iter(datamodule.val_dataloader())), 0)
        x, _ = datamodule.on_after_batch_transfer(batch, 0)
    except (ConfigError, OSError, InstantiationException, StopIteration) as err:
        return batches, f"no validation images ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    batches["validation"] = _images(x, count)
    return batches, None


def _images(x: torch.Tensor, count: int) -> torch.Tensor:
    """(B, C, H, W), or ten crops (B, 10, C, H, W) as B*10 images: the first ``count``, float32."""
    return x.reshape(-1, *x.shape[-3:])[:count].float().contiguous()
