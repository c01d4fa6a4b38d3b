"""Command-line steps that must happen before Hydra composes the config.

Hydra rewrites ``RUN/.hydra/`` when a job starts, so anything we want from
the original run's folder has to be read before ``@hydra.main`` runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

RESUME_VALUES = ("last", "auto")


def _key(override: str) -> str:
    """The key an override sets: ``model=cifar`` -> ``model``, ``+a.b=1`` -> ``a.b``."""
    return override.split("=", 1)[0].lstrip("+~")


def _arg(argv: list[str], key: str) -> str | None:
    for arg in argv:
        if "=" in arg and _key(arg) == key:
            return arg.split("=", 1)[1]
    return None


def inherit_run_overrides(argv: list[str]) -> list[str]:
    """``train.py hydra.run.dir=RUN ckpt_path=last`` continues RUN as it was started.

    The original run's command-line overrides (``RUN/.hydra/overrides.yaml``)
    are put before the new ones, so the resumed job composes the same model,
    data and optimizer; anything given again on the command line wins.
    Idempotent, so DDP's re-launched processes may run it again.
    """
    args = argv[1:]
    run_dir = _arg(args, "hydra.run.dir")
    if _arg(args, "ckpt_path") not in RESUME_VALUES or not run_dir:
        return argv
    saved = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        return argv
    given = {_key(a) for a in args if "=" in a}
    inherited = [o for o in _read_overrides(saved) if _key(o) not in given]
    if inherited:
        print(f"resuming {run_dir} with its original overrides: {' '.join(inherited)}", file=sys.stderr)
    return argv[:1] + inherited + args


def _read_overrides(saved: Path) -> list[str]:
    """RUN/.hydra/overrides.yaml as Hydra wrote it (a list of ``key=value``); a damaged file is named."""
    try:
        overrides = yaml.safe_load(saved.read_text()) or []
    except (OSError, yaml.YAMLError) as err:
        overrides = err
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        sys.exit(
            f"error: {saved} is not the list of overrides Hydra writes ({(str(overrides).splitlines() or [''])[0][:100]}); "
            "repair or delete it and give the run's overrides on the command line"
        )
    return overrides


def check_run_dir_writable(argv: list[str]) -> None:
    """An unwritable output folder fails at start, with the folder named."""
    run_dir = _arg(argv[1:], "hydra.run.dir")
    if not run_dir or "${" in run_dir:
        return
    path = Path(run_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        sys.exit(f"error: hydra.run.dir: cannot write to {path}: {err.strerror or err}")


REPO = Path(__file__).resolve().parents[1]


def compose(overrides: list[str], job_name: str):
    """conf/config.yaml composed with ``overrides`` as train.py composes it, without a run folder.

    For the scripts that only read a config (evaluate, predict, summarize).
    Unknown options and keys raise Hydra's own errors.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3", job_name=job_name):
        return hydra_compose(config_name="config", overrides=overrides)


def run_script(main, argv: list[str]) -> int:
    """Run a script's ``main(argv)``; a config or Hydra error prints one line, not a traceback."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .errors import ConfigError

    try:
        main(argv)
    except (ConfigError, HydraException, OmegaConfBaseException) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
