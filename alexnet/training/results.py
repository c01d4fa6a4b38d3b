"""A finished run's results: RUN/results.json, written after the final test with the config it ran.

``skip_finished=true`` (experiment=ablation_cifar: a sweep run again) skips a
run whose results.json matches the config, and refuses one that finished
with another config. Options added to the tool after a run finished do not
make its config another one.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from ..files import atomic_path

RESULTS = "results.json"
# Keys that change how a run is driven, not what it trains and tests (a key here leaves out
# all of its subkeys: where the metrics go, logger.*, is not part of what a run computed).
NOT_COMPARED = ("ckpt_path", "skip_finished", "trainer.enable_progress_bar", "logger")


def _flat(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if f"{prefix}{key}" in NOT_COMPARED:
            continue
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def finished_results(cfg: DictConfig, run_dir: Path) -> dict | None:
    """The results of a finished run in ``run_dir``, or None; one finished with another config is an error."""
    path = run_dir / RESULTS
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    was, now = _flat(saved["config"]), _flat(OmegaConf.to_container(cfg, resolve=True))
    # A key the finished run's config lacks was added to the tool since: the run ran what the
    # option's default keeps (a new option defaults to the old behaviour), so it is no
    # difference. A key gone since, or a value changed, is.
    changed = sorted(k for k in was.keys() | now.keys() if k in was and was.get(k) != now.get(k))
    if changed:
        diff = ", ".join(f"{k}: {was.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise ConfigError("skip_finished", f"{run_dir} finished with another config ({diff}); give another "
                          f"run folder, or delete its {RESULTS} to train it again")
    return saved["results"]


def write_results(cfg: DictConfig, run_dir: Path, results: dict) -> None:
    """RUN/results.json, written aside and renamed into place: a run killed while writing it is not finished."""
    with atomic_path(run_dir / RESULTS) as partial:
        partial.write_text(json.dumps({"results": results, "config": OmegaConf.to_container(cfg, resolve=True)}, indent=1))
