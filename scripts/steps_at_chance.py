"""How many steps each run's training loss sat at chance, read from its TensorBoard log.

    python scripts/steps_at_chance.py RUN [RUN ...]

A step is "at chance" as alexnet.training.callbacks.FlatStart judges it (the
same smoothing and band): the running mean of ``train/loss`` within its
tolerance of ln(classes). A run has left chance at the first step where the
running mean falls below the band. Needs ``trainer.log_every_n_steps=1`` to
see every step. docs/REPRODUCTION.md ("A flat start") reports the measurement
this was written for.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alexnet.training.callbacks import FlatStart


def losses(run: Path) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    if "train/loss" not in acc.Tags()["scalars"]:
        raise SystemExit(f"error: {run / 'tensorboard'} has no train/loss scalars")
    return [(e.step, e.value) for e in acc.Scalars("train/loss")]


def classes(run: Path) -> int:
    hparams = run / "tensorboard" / "hparams.yaml"
    if hparams.is_file():
        return int(yaml.safe_load(hparams.read_text())["num_classes"])
    raise SystemExit(f"error: {hparams} not found: cannot tell the number of classes")


def at_chance(series: list[tuple[int, float]], num_classes: int) -> dict:
    """The first step below the band (None: never), and the smoothed loss at the end."""
    judge = FlatStart(1)
    chance = math.log(num_classes)
    smoothed, left = None, None
    for step, loss in series:
        smoothed = loss if smoothed is None else judge.smoothing * smoothed + (1 - judge.smoothing) * loss
        if left is None and smoothed < chance * (1 - judge.tolerance):
            left = step
    return {"chance": chance, "band": judge.tolerance, "left_at": left, "steps": len(series),
            "last_step": series[-1][0] if series else None, "final_smoothed": smoothed,
            "finite": all(math.isfinite(v) for _, v in series)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for run in args.runs:
        r = at_chance(losses(run), classes(run))
        left = f"left chance at step {r['left_at']}" if r["left_at"] is not None else "never left chance"
        print(f"{run}: {left} (ln {classes(run)} = {r['chance']:.3f}, band {r['band']:.0%}); "
              f"{r['steps']} steps logged, to step {r['last_step']}; smoothed loss at the end "
              f"{r['final_smoothed']:.3f}{'' if r['finite'] else '; a non-finite loss was logged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
