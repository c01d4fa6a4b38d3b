"""Finding, reading and vetting checkpoints before anything is trained on them."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import ConfigError

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> Path | None:
    """``ckpt_path`` as a file: a path, ``last`` (must exist) or ``auto`` (may not)."""
    if ckpt_path in (None, ""):
        return None
    if ckpt_path in ("last", "auto"):
        last = run_dir / CHECKPOINT_DIR / LAST
        # Lightning's SLURM requeue signal saves RUN/hpc_ckpt_N.ckpt: the newest of those and last.ckpt wins.
        found = [p for p in (last, *run_dir.glob("hpc_ckpt_*.ckpt")) if p.is_file()]
        if found:
            return max(found, key=lambda p: p.stat().st_mtime)
        if ckpt_path == "auto":
            return None
        raise ConfigError(
            "ckpt_path",
            f"`last` asks to resume, but there is no checkpoint at {last}. Give the run folder "
            "of the run to continue with hydra.run.dir=RUN, or use ckpt_path=auto to start "
            "afresh when there is nothing to resume.",
        )
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError("ckpt_path", f"no checkpoint file at {path}")
    return path


def read_checkpoint(path: Path) -> dict:
    """Load a checkpoint on the CPU; a truncated or foreign file gets an error naming it."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # torch raises several types for a bad zip or pickle
        raise ConfigError("ckpt_path", f"{path} is not a readable checkpoint ({err.__class__.__name__}: {err})") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise ConfigError("ckpt_path", f"{path} is not a checkpoint written by this tool (no state_dict or hyper_parameters)")
    return checkpoint


def check_compatible(checkpoint: dict, path: Path, model: dict, num_classes: int) -> None:
    """Refuse to resume a checkpoint of another variant, option set or class count."""
    saved = checkpoint["hyper_parameters"]
    theirs = {**saved["model"], "num_classes": saved["num_classes"]}
    ours = {**model, "num_classes": num_classes}
    mismatches = [
        f"  model.{key}: checkpoint has {theirs.get(key)!r}, this run has {ours.get(key)!r}"
        for key in sorted(set(theirs) | set(ours))
        # dropout, init and the like do not change the weights' shapes, but the
        # run would not be the same run: refuse any difference in the network.
        # lrn_impl only chooses how the same numbers are computed.
        if key not in ("num_classes", "lrn_impl") and theirs.get(key) != ours.get(key)
    ]
    if theirs["num_classes"] != num_classes:
        mismatches.append(f"  num_classes: checkpoint has {theirs['num_classes']}, this run has {num_classes}")
    if mismatches:
        raise ConfigError(
            "ckpt_path",
            f"{path} was trained with a different network:\n" + "\n".join(mismatches)
            + "\nResume with the checkpoint's model and data options (they are in its run folder's .hydra/overrides.yaml).",
        )
