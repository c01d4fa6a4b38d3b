"""Tabulate a sweep: each ingredient's effect on top-1 / top-5 error beside the paper's claim.

    python train.py -m experiment=ablation_cifar data.root=/data/cifar10 hydra.sweep.dir=multirun/ablation_cifar
    python scripts/report.py multirun/ablation_cifar
    python scripts/report.py RUN_A RUN_B ... --out docs/ablation

Reads every run folder found under the given folders (a folder with a
``tensorboard/`` log and a ``.hydra/`` config), groups the runs by their
``ablation`` choice (``baseline`` when none), and writes ``report.md`` (the
mean and spread of top-1 and top-5 error per setting, the change each makes
against the baseline in percentage points, whether that change is inside or
outside the seed spread, the LRN strength, and the paper's claim; then each
run's errors and LRN strength) and ``curves.png`` (validation top-1 error
and training loss, mean over seeds).

A change is *outside the seed spread* when its size exceeds the larger of
the two settings' seed ranges (max - min over seeds): a difference that the
seeds alone did not produce in this sweep. With two seeds a setting this
is a rule of thumb, not a significance test; with one seed it is not judged.
A run's LRN strength is its last ``lrn/strength_<layer>`` scalar (measured
on the first training batch of its last epoch: 1.0 means LRN only divides
by the constant k^beta).
A run's tested checkpoint is the epoch whose checkpoint its final test used
(the best by validation top-1 error, from its ``results.json``), of the
epochs up to its last validation. The final test runs on the validation
images (ImageNet's validation set, a folder's val/ or test/, CIFAR's test
split) except on CIFAR with ``data.val_size`` > 0, which validates on
training images held out: elsewhere, a test of any epoch but the last is of a
checkpoint chosen on the images it is tested on.
A run's error is its final test result (``test/*``, the best checkpoint),
or its last validation error when no run of the sweep has a test (a run
without a test among runs with one is unfinished, and is left out). Both go to ``--out``, by
default the first folder given.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

BASELINE = "baseline"
# What the paper says each setting does to top-1 / top-5 error: removing an ingredient
# (no_*) raises it, adding one (with_*, for a baseline without it) lowers it.
CLAIMS = {
    "no_lrn": "+1.4 / +1.2 (Section 3.3)",
    "no_overlap": "+0.4 / +0.3 at equal output size (Section 3.4)",
    "no_pca": "over +1 top-1 (Section 4.1)",
    "no_dropout": '"substantial overfitting" (Section 4.2)',
    "one_tower": "two towers beat one tower of half the kernels by 1.7 / 1.2 (Section 3.2); here one tower of the same width",
    "with_pca": "over -1 top-1 (Section 4.1)",
    "with_dropout": 'lower, once the network would overfit: without it "substantial overfitting" (Section 4.2)',
}
ORDER = [BASELINE, "no_lrn", "no_overlap", "one_tower", "with_dropout", "with_pca", "no_pca", "no_dropout"]
LRN_TAG = "lrn/strength_"


@dataclass
class Run:
    folder: Path
    setting: str
    seed: int | None
    top1: float
    top5: float
    source: str  # test or val
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    lrn: dict[str, float] = field(default_factory=dict)  # layer -> its last lrn/strength_<layer>
    tested_epoch: int | None = None  # 0-based: the epoch of the checkpoint the final test used


def tested_epoch(folder: Path) -> int | None:
    """The epoch of the checkpoint RUN/results.json says was tested (``best-epochNNN-...``); None if not known."""
    try:
        checkpoint = json.loads((folder / "results.json").read_text())["results"].get("checkpoint") or ""
    except (OSError, ValueError, KeyError, AttributeError):
        return None
    found = re.search(r"best-epoch(\d+)", Path(checkpoint).name)
    return int(found.group(1)) if found else None


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders at or under ``paths``, in a stable order."""
    runs = []
    for path in paths:
        if not path.is_dir():
            raise SystemExit(f"error: {path}: no such folder")
        found = sorted({p.parent for p in path.rglob("tensorboard") if (p.parent / ".hydra").is_dir()})
        if not found:
            raise SystemExit(f"error: {path}: no run folders (a folder with tensorboard/ and .hydra/) under it")
        runs += found
    return runs


def _yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def read_run(folder: Path) -> Run | None:
    """One run's setting, seed, final errors and curves; None if it logged no errors (a crashed run)."""
    acc = EventAccumulator(str(folder / "tensorboard"))
    acc.Reload()
    curves = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    choices = _yaml(folder / ".hydra" / "hydra.yaml").get("hydra", {}).get("runtime", {}).get("choices", {})
    config = _yaml(folder / ".hydra" / "config.yaml")
    for stage in ("test", "val"):
        if curves.get(f"{stage}/top1_error") and curves.get(f"{stage}/top5_error"):
            return Run(
                folder,
                choices.get("ablation") or BASELINE,
                config.get("seed"),
                curves[f"{stage}/top1_error"][-1][1],
                curves[f"{stage}/top5_error"][-1][1],
                stage,
                curves,
                {tag.removeprefix(LRN_TAG): values[-1][1] for tag, values in sorted(curves.items())
                 if tag.startswith(LRN_TAG) and values},
                tested_epoch(folder) if stage == "test" else None,
            )
    return None


def by_setting(runs: list[Run]) -> dict[str, list[Run]]:
    """The runs grouped by setting: the paper's ingredients in ORDER, then any others by name."""
    by = defaultdict(list)
    for run in runs:
        by[run.setting].append(run)
    return {s: by[s] for s in [s for s in ORDER if s in by] + sorted(s for s in by if s not in ORDER)}


def _mean_spread(values: list[float]) -> str:
    mean = 100 * statistics.mean(values)
    spread = f" ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{mean:.2f}{spread}"


def seed_range(values: list[float]) -> float:
    """max - min over the seeds, in percentage points (0 for one seed)."""
    return 100 * (max(values) - min(values))


def change(values: list[float], base: list[float] | None) -> str:
    """The setting's mean minus the baseline's in points, and whether it is outside the seed spread."""
    if not base:
        return "n/a"
    delta = 100 * (statistics.mean(values) - statistics.mean(base))
    if len(values) < 2 or len(base) < 2:
        return f"{delta:+.2f} (1 seed)"
    outside = abs(delta) > max(seed_range(values), seed_range(base))
    return f"{delta:+.2f} ({'outside' if outside else 'inside'})"


def _strengths(group: list[Run]) -> str:
    """Each LRN layer's strength, mean over the runs that logged it; a dash for a network without LRN."""
    layers = sorted({layer for r in group for layer in r.lrn})
    if not layers:
        return "—"
    return ", ".join(f"{layer} {statistics.mean(r.lrn[layer] for r in group if layer in r.lrn):.3f}" for layer in layers)


def table(runs: list[Run]) -> str:
    """The Markdown tables: one row per setting (errors in percent, mean ± sample std over
    seeds), then one per run."""
    by = by_setting(runs)
    base = by.get(BASELINE)
    lines = [
        "| setting | runs (seeds) | top-1 error % | top-5 error % | top-1 change | top-5 change | LRN strength | the paper's claim |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s, group in by.items():
        top1, top5 = [r.top1 for r in group], [r.top5 for r in group]
        seeds = ",".join(str(r.seed) for r in sorted(group, key=lambda r: (r.seed is None, r.seed)))
        changes = ("", "") if s == BASELINE else (
            change(top1, base and [r.top1 for r in base]), change(top5, base and [r.top5 for r in base]))
        lines.append(
            f"| {s} | {len(group)} ({seeds}) | {_mean_spread(top1)} | {_mean_spread(top5)} | "
            f"{changes[0]} | {changes[1]} | {_strengths(group)} | {CLAIMS.get(s, '')} |"
        )
    sources = {r.source for r in runs}
    lines += [
        "",
        "Errors are each run's final "
        + (" or ".join(f"`{s}/*`" for s in sorted(sources)))
        + " result; ± is the sample standard deviation over seeds. A change is the setting's mean minus the "
        "baseline's, in percentage points: positive means the setting raised the error (for a no_* setting, "
        "the ingredient it removes helped; for a with_* setting, the one it adds hurt). It is *outside* the seed "
        "spread when its size exceeds the larger of the two settings' seed ranges (max - min over seeds), "
        "*inside* otherwise: a rule of thumb for two seeds, not a significance test. LRN strength: each "
        "run's last `lrn/strength_<layer>` (mean |output| / mean |input / k^beta| on the first training batch "
        "of its last epoch; 1.0 means LRN only divides by the constant k^beta), mean over seeds. Tested: "
        "the epoch of the checkpoint the final test used (the best by validation top-1 error), of the epochs "
        "up to the last validation. The test images are the validation images (but on CIFAR with "
        "`data.val_size` > 0), so a tested epoch but the last was chosen on the test images.",
        "",
    ]
    layers = sorted({layer for r in runs for layer in r.lrn})
    header = ["run", "setting", "seed", "top-1 error %", "top-5 error %", *(f"LRN {layer}" for layer in layers), "tested"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s, group in by.items():
        for r in sorted(group, key=lambda r: (r.seed is None, r.seed)):
            cells = [r.folder.name, s, str(r.seed), f"{100 * r.top1:.2f}", f"{100 * r.top5:.2f}",
                     *(f"{r.lrn[layer]:.3f}" if layer in r.lrn else "—" for layer in layers), _tested(r)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def last_validated_epoch(run: Run) -> int:
    """The last epoch (0-based) with a validation: Lightning's ``epoch`` scalar at the steps of
    ``val/top1_error`` (every epoch or not, a resumed log's repeats too); without it, the count
    of distinct validation steps."""
    steps = {step for step, _ in run.curves.get("val/top1_error", [])}
    epochs = {step: value for step, value in run.curves.get("epoch", [])}
    validated = [int(epochs[s]) for s in steps if s in epochs]
    return max(validated) if validated else len(steps) - 1


def _tested(run: Run) -> str:
    """``epoch E of N``, 1-based, N the last epoch validated; a dash when no results.json names the checkpoint."""
    if run.tested_epoch is None:
        return "—"
    return f"epoch {run.tested_epoch + 1} of {last_validated_epoch(run) + 1}"


def plot(runs: list[Run], path: Path) -> None:
    """Validation top-1 error and training loss against the step, mean over each setting's seeds."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    by = by_setting(runs)
    for ax, tag, title in ((axes[0], "val/top1_error", "validation top-1 error"), (axes[1], "train/loss", "training loss")):
        for setting, group in by.items():
            series = [dict(r.curves.get(tag, [])) for r in group]
            steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
            if steps:
                ax.plot(steps, [statistics.mean(s[k] for s in series) for k in steps], label=setting,
                        marker="o" if tag.startswith("val") else None, markersize=3)
        ax.set_xlabel("training step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{len(runs)} runs, mean over seeds")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="sweep or run folders")
    parser.add_argument("--out", type=Path, help="where to write report.md and curves.png (default: the first folder)")
    args = parser.parse_args(argv)
    runs, skipped = [], []
    for folder in find_runs(args.folders):
        run = read_run(folder)
        (runs.append(run) if run else skipped.append(folder))
    for folder in skipped:
        print(f"warning: {folder} logged no top-1/top-5 errors (did it crash?); left out", file=sys.stderr)
    if any(r.source == "test" for r in runs):
        # Where runs end with a test, one without it has not finished (or was stopped):
        # its last validation error is not comparable.
        for run in [r for r in runs if r.source != "test"]:
            print(f"warning: {run.folder} has no final test result (unfinished?); left out", file=sys.stderr)
        runs = [r for r in runs if r.source == "test"]
    if not runs:
        raise SystemExit("error: none of the runs logged top-1/top-5 errors")
    out = args.out or args.folders[0]
    out.mkdir(parents=True, exist_ok=True)
    markdown = table(runs)
    (out / "report.md").write_text(markdown + "\n")
    plot(runs, out / "curves.png")
    print(markdown)
    print(f"\nwrote {out / 'report.md'} and {out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
