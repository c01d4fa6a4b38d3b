"""The run's loggers: ``cfg.logger`` (conf/logger/) as Lightning loggers writing under the run folder.

One option or several (``logger=[tensorboard,csv]``): each chosen option is a
key of ``cfg.logger`` whose keys go to its Lightning class, with the run
folder as its ``save_dir``. The trackers that are not dependencies of the
project (W&B, MLflow) are extras; asking for one that is not installed is a
ConfigError raised by :func:`check_loggers` while the config is validated,
before any data is read.

A resumed run continues its trackers' runs: the first start records the W&B
and MLflow run ids in RUN/trackers.json (:class:`TrackerIds`), and a start
that resumes from a checkpoint passes them back (``logger.wandb.id``,
``logger.mlflow.run_id``) unless given others. W&B cannot resume an offline
run, so offline each start is a new run in a group named by the first one's
id. TensorBoard and CSV need no id: they append to, or version, files in the
run folder.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from tensorboard.compat.proto.event_pb2 import Event, SessionLog

from ..errors import ConfigError
from ..files import atomic_path

log = logging.getLogger(__name__)

# option -> (Lightning's class, the module it needs, the pyproject extra that installs it)
LOGGERS = {
    "tensorboard": (TensorBoardLogger, "tensorboard", None),  # a dependency of the project
    "csv": (CSVLogger, None, None),
    "wandb": (WandbLogger, "wandb", "wandb"),
    "mlflow": (MLFlowLogger, "mlflow", "mlflow"),
}
OWNED = ("save_dir",)  # every output is under the run folder
TRACKERS = "trackers.json"  # RUN/trackers.json: {"wandb": ID, "mlflow": RUN_ID}, the runs a resume continues
RUN_ID_KEYS = {"wandb": "id", "mlflow": "run_id"}  # the key of each tracker that names the run to continue


def chosen(logger: DictConfig | None) -> dict[str, dict]:
    """The chosen options and their keys: ``{"tensorboard": {...}, "csv": {...}}``."""
    return OmegaConf.to_container(logger, resolve=True) if logger else {}


def check_loggers(logger: DictConfig | None) -> None:
    """Each chosen logger is known, installed, and given only keys its Lightning class takes."""
    options = chosen(logger)
    if not options:
        raise ConfigError("logger", f"choose at least one logger ({', '.join(LOGGERS)}), e.g. logger=tensorboard")
    for name, keys in options.items():
        if name not in LOGGERS:
            raise ConfigError(f"logger.{name}", f"unknown logger; the options are {', '.join(LOGGERS)}")
        cls, module, extra = LOGGERS[name]
        if module is not None:
            try:
                importlib.import_module(module)
            except ImportError:
                install = f'pip install -e ".[{extra}]"' if extra else "reinstall the project: pip install -e ."
                raise ConfigError("logger", f"{name} is not installed: {install}") from None
        if not isinstance(keys, dict):
            raise ConfigError(f"logger.{name}", f"must be a mapping of {cls.__name__}'s arguments, got {keys!r}")
        for key in keys:
            if key in OWNED:
                raise ConfigError(f"logger.{name}.{key}", "is the run folder, always: give hydra.run.dir instead")
        accepts = arguments(name)
        for key in keys:
            if key not in accepts:
                raise ConfigError(f"logger.{name}.{key}", f"is not an argument of {cls.__name__}")


def arguments(name: str) -> set[str]:
    """The keys a logger takes: its class's arguments, and those of where it passes the rest."""
    def named(function) -> set[str]:
        return {p.name for p in inspect.signature(function).parameters.values()
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self"}

    keys = named(LOGGERS[name][0].__init__)
    if name == "tensorboard":  # TensorBoardLogger(**kwargs) -> SummaryWriter
        from torch.utils.tensorboard import SummaryWriter

        keys |= named(SummaryWriter.__init__)
    elif name == "wandb":  # WandbLogger(**kwargs) -> wandb.init
        import wandb

        keys |= named(wandb.init)
    return keys


def build_loggers(logger: DictConfig, run_dir: Path, resuming: bool = False) -> list[Logger]:
    """The chosen loggers, in the order given, all writing under ``run_dir``.

    ``resuming``: the run continues from a checkpoint, so W&B and MLflow continue
    the runs recorded in RUN/trackers.json, where their id keys are not given, and
    TensorBoard's curves continue from the checkpoint (:class:`ResumedTensorBoardLogger`).
    """
    recorded = tracker_ids(run_dir) if resuming else {}
    loggers = []
    for name, keys in chosen(logger).items():
        cls = LOGGERS[name][0]
        id_key = RUN_ID_KEYS.get(name)
        if id_key and keys.get(id_key) is None and recorded.get(name):
            if name == "wandb" and keys.get("offline"):
                # W&B ignores resume offline (wandb#2423), and `wandb sync` of two offline runs with one
                # id keeps one history, not both (wandb#3841): a new run, grouped with the first.
                if keys.get("group") is None:
                    keys = {**keys, "group": recorded[name]}
                log.info("resuming offline: a new W&B run in group %s (W&B cannot resume an offline run)",
                         keys["group"])
            else:
                keys = {**keys, id_key: recorded[name]}
                log.info("resuming: logging to the %s run %s again (from %s)", name, recorded[name], run_dir / TRACKERS)
        if name == "mlflow":
            keys = mlflow_keys(keys, run_dir)
            if keys.get("run_id"):
                source = run_dir / TRACKERS if keys["run_id"] == recorded.get("mlflow") else "logger.mlflow.run_id"
                check_mlflow_run(keys["tracking_uri"], keys["run_id"], source)
            cls = ResumableMLFlowLogger
        if name == "tensorboard" and resuming and keys.get("purge_step") is None:  # a purge_step given wins
            cls = ResumedTensorBoardLogger
        loggers.append(cls(save_dir=str(run_dir), **keys))
    return loggers


def check_mlflow_run(uri: str, run_id: str, source) -> None:
    """The MLflow run to log to again exists in ``uri`` and is not deleted; else a ConfigError,
    before any data is read (Lightning would raise MLflow's own error once fitting started)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    fix = f"give logger.mlflow.run_id=ID, or delete {TRACKERS} in the run folder to start a new run"
    try:
        run = MlflowClient(tracking_uri=uri).get_run(run_id)
    except MlflowException as err:
        raise ConfigError("logger.mlflow.run_id", f"no MLflow run {run_id} (from {source}) in {uri} "
                          f"({str(err).splitlines()[0]}): {fix}") from None
    if run.info.lifecycle_stage != "active":
        raise ConfigError("logger.mlflow.run_id", f"the MLflow run {run_id} (from {source}) in {uri} is "
                          f"{run.info.lifecycle_stage}: {fix}")


def finish_trackers(loggers: list[Logger], failed: bool) -> None:
    """End the W&B run of this process (rank 0's), as Lightning does not: otherwise the next
    run in the same process (the jobs of ``python train.py -m``, a notebook) logs into it."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger._experiment.finish(exit_code=1 if failed else 0)
            logger._experiment = None


def tracker_ids(run_dir: Path) -> dict[str, str]:
    """The tracker runs recorded in RUN/trackers.json; none if there is no such file."""
    path = run_dir / TRACKERS
    try:
        ids = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise ConfigError("ckpt_path", f"cannot read {path}, which names the W&B and MLflow runs to continue "
                          f"({err}); delete it to start new tracker runs") from err
    return {name: ids[name] for name in RUN_ID_KEYS if isinstance(ids, dict) and isinstance(ids.get(name), str)}


class TrackerIds(L.Callback):
    """Records the W&B and MLflow runs in RUN/trackers.json when fitting starts, for a resume to continue.

    A resumed start keeps the ids of trackers it does not use (a later start may
    use them again), and the first W&B run's id when offline (its group). A new
    start in the folder records only its own. Global rank 0 only: the other
    ranks' loggers make no runs.
    """

    def __init__(self, run_dir: Path, resuming: bool = False) -> None:
        self.run_dir, self.resuming = Path(run_dir), resuming

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        before = tracker_ids(self.run_dir) if self.resuming else {}
        ids = dict(before)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                grouped = "wandb" in before and logger._wandb_init.get("group") == before["wandb"]
                if not grouped:  # an offline resume's new run keeps the first id: its group
                    ids["wandb"] = logger.experiment.id
            elif isinstance(logger, MLFlowLogger):
                ids["mlflow"] = logger.run_id
        path = self.run_dir / TRACKERS
        if not ids:  # a new start without trackers: any ids there are an earlier run's
            path.unlink(missing_ok=True)
        elif ids != before or not self.resuming:
            with atomic_path(path) as partial:
                partial.write_text(json.dumps(ids, indent=1))


class ResumedTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoardLogger for a resumed run: its curves go on with one point per step.

    The run that stopped logged the steps after its last checkpoint too, and this
    one logs them again. Before its first event (a scalar, or an image through
    :func:`log_image`) this logger writes TensorBoard's restart marker (a SessionLog
    START event, what SummaryWriter's ``purge_step`` writes) at that event's step,
    and TensorBoard's Python reader (EventAccumulator: scripts/report.py,
    ``tensorboard --load_fast=false``) then hides the old events from there on.
    (Its web view's data server drops a step that goes back by itself, checked with
    TensorBoard 2.21; W&B drops steps below its current one; MLflow and CSV keep
    both.) The step is the first one this run logs, not read from the checkpoint:
    Lightning restores its logging step (``_batches_that_stepped``) with corrections
    of its own that depend on where the checkpoint was saved, and the marker must
    fall exactly where the new points begin.
    """

    _restart_pending = True

    @rank_zero_only
    def mark_restart(self, step: int) -> None:
        """Write the marker at ``step`` unless it is written: before this run's first event with a step."""
        if self._restart_pending:
            self._restart_pending = False
            # SummaryWriter's own file writer, as Lightning's log_hyperparams uses it
            self.experiment._get_file_writer().add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))

    @rank_zero_only
    def log_metrics(self, metrics, step: int | None = None) -> None:
        if step is not None:
            self.mark_restart(step)
        super().log_metrics(metrics, step)


class ResumableMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger, able to log the hyperparameters of a resumed run.

    MLflow's parameters are write-once: logging one again with another value
    raises, and a resume changes some (``ckpt_path``, a longer
    ``trainer.max_epochs``). So parameters the run already has keep their first
    value, the changed ones are named in a warning (once: Lightning logs the
    hyperparameters again for the test), and the new ones are logged.
    """

    _warned: frozenset = frozenset()

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        flat = _flatten_dict(_convert_params(params))
        logged = self.experiment.get_run(self.run_id).data.params
        changed = sorted(k for k, v in flat.items() if k in logged and logged[k] != str(v)[:250] and k not in self._warned)
        self._warned |= set(changed)
        if changed:
            log.warning("MLflow run %s keeps the first value of parameters this resume changed (MLflow's "
                        "parameters are write-once): %s", self.run_id, ", ".join(changed))
        new = {k: v for k, v in flat.items() if k not in logged}
        if new:
            super().log_hyperparams(new)


def mlflow_keys(keys: dict, run_dir: Path) -> dict:
    """No tracking URI: MLflow's file store in RUN/mlruns (MLFlowLogger's own default is ./mlruns,
    or $MLFLOW_TRACKING_URI, both outside the run folder)."""
    uri = keys.get("tracking_uri") or (run_dir / "mlruns").resolve().as_uri()
    if uri.startswith("file:"):
        # MLflow 3 refuses its file store unless this is set ("maintenance mode"); it is the
        # store a run folder can hold without a server or a database. Earlier versions ignore it.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return {**keys, "tracking_uri": uri}


def log_image(logger: Logger, key: str, image: torch.Tensor, step: int) -> None:
    """One (3, H, W) image with values in [0, 1] to a logger that takes images; CSV takes none."""
    if isinstance(logger, TensorBoardLogger):
        if isinstance(logger, ResumedTensorBoardLogger):  # a resumed run's first event may be an image
            logger.mark_restart(step)
        logger.experiment.add_image(key, image, step)
        return
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # (H, W, 3)
    if isinstance(logger, WandbLogger):
        logger.log_image(key, [pixels], step=step)
    elif isinstance(logger, MLFlowLogger):
        # An artifact per image (mlflow>=2; the key/step form of log_image needs a later MLflow)
        logger.experiment.log_image(logger.run_id, pixels, artifact_file=f"{key}/step{step:07d}.png")


def log_final_hyperparameters(loggers: list[Logger], config: dict, results: dict, step: int) -> None:
    """TensorBoard's HPARAMS tab: the run's config against its final test errors.

    Only TensorBoard needs this: Lightning gave every logger the system's
    hyperparameters (the config among them) when fitting started, and the
    test errors reach them as metrics.
    """
    errors = {key: results[key] for key in ("test/top1_error", "test/top5_error")}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(config, errors, step=step)
