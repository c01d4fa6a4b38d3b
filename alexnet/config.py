"""Everything before and around Hydra: the command line, composing, and checking a config.

* Before ``@hydra.main`` runs: Hydra rewrites ``RUN/.hydra/`` when a job
  starts, so what we want from the original run's folder (its overrides, for
  a resume) is read first, and an unwritable run folder fails at once.
* :func:`compose`: the config as train.py composes it, for the scripts.
* :func:`validate`: values that are well-typed but wrong (lr <= 0, ...),
  before any data is read or trainer built; Hydra already refuses unknown
  options and keys. Each key is checked by the code that owns it where that
  code is built (the network's options by :func:`alexnet.nn.models.resolve_options`,
  the data's by the DataModule); this module checks the rest.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError
from .files import probe_writable
from .nn.models import resolve_options
from .parallel.placement import network, splits_towers
from .training.loggers import check_loggers
from .training.optim import check_optim

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
        probe_writable(path)
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


    try:
        main(argv)
    except (ConfigError, HydraException, OmegaConfBaseException) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


def validate(cfg: DictConfig) -> None:
    check_optim(cfg.optim)  # the optim.* keys, by the module that uses them
    check_loggers(cfg.get("logger"))  # the logger.* keys, and a tracker that is not installed

    epochs = cfg.trainer.get("max_epochs")
    _check(epochs is None or epochs == -1 or epochs >= 1, "trainer.max_epochs", f"must be >= 1 (or -1), got {epochs}")
    steps = cfg.trainer.get("max_steps", -1)
    _check(isinstance(steps, int) and not isinstance(steps, bool) and (steps == -1 or steps >= 1),
           "trainer.max_steps", f"must be >= 1 (or -1: no limit), got {steps!r}")

    model = OmegaConf.to_container(cfg.model, resolve=True)
    classes = model.pop("num_classes", None)
    _check(classes is None or classes >= 1, "model.num_classes", f"must be >= 1 or null, got {classes}")
    net = network(model)  # the model.* keys but model.placement, whose owner is splits_towers
    resolve_options(net.pop("name"), **net)  # the owner of the network's keys: raises ConfigError naming the key

    if splits_towers(model):  # model=paper_dual_gpu: checks model.placement and model.groups
        strategy = cfg.trainer.get("strategy", "auto")
        _check(strategy in ("auto", "ddp", None), "trainer.strategy",
               f"model=paper_dual_gpu brings its own strategy (alexnet.parallel.strategy); leave it `auto`, got {strategy!r}")
        devices = cfg.trainer.get("devices")
        count = device_count(cfg.trainer)
        _check(count is None or count == 1 or count % 2 == 0, "trainer.devices",
               f"model=paper_dual_gpu puts one tower on each device: give an even number of devices, got {devices}"
               + (f" ({count} devices here)" if count != devices else ""))

    flat = cfg.get("flat_start_steps")
    _check(flat is None or (isinstance(flat, int) and not isinstance(flat, bool) and flat >= 0), "flat_start_steps",
           f"must be an integer >= 0, or null to never warn, got {flat!r}")
    tf32 = cfg.get("tf32", False)
    _check(isinstance(tf32, bool), "tf32", f"must be true or false, got {tf32!r}")

    ckpt = cfg.get("ckpt_path")
    _check(ckpt is None or isinstance(ckpt, str), "ckpt_path", f"must be a path, `last` or `auto`, got {ckpt!r}")


def device_count(trainer: DictConfig) -> int | None:
    """The devices per node that ``trainer.devices`` asks for, or None if it cannot tell.

    ``-1`` and ``auto`` mean every GPU of this node when training on CUDA.
    """
    devices = trainer.get("devices", "auto")
    if isinstance(devices, str) and devices.strip() not in ("auto", "-1"):
        devices = [d for d in devices.split(",") if d.strip()] if "," in devices else int(devices)
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return len(devices)
    if devices in (-1, "-1", "auto"):
        import torch

        accelerator = trainer.get("accelerator", "auto")
        on_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
        return torch.cuda.device_count() if on_cuda else (1 if devices == "auto" else None)
    return int(devices)


def check_tower_classes(cfg: DictConfig, num_classes: int) -> None:
    """``model=paper_dual_gpu`` on two or more devices halves fc8: the classes must split in two."""
    if not splits_towers(cfg.model) or num_classes % 2 == 0:
        return
    count = device_count(cfg.trainer)
    if (count or 1) > 1 or cfg.trainer.get("num_nodes", 1) > 1:
        raise ConfigError(
            "model.num_classes",
            f"model=paper_dual_gpu on {count} devices gives each tower half of fc8's outputs, but the data has "
            f"{num_classes} classes, an odd number: train it on one device (trainer.devices=1), or with "
            "model=paper_grouped",
        )


def build_datamodule(data: DictConfig, **kwargs):
    """``hydra.utils.instantiate(data)``, letting a ConfigError through unwrapped.

    Hydra wraps whatever a ``_target_`` raises in an InstantiationException;
    the user should see the key that is wrong, not that wrapper.
    """
    import hydra
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate(data, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, ConfigError):
            raise err.__cause__ from None
        raise
