"""Where a run's metrics go: the `logger` group (conf/logger/), one logger or several.

`logger=tensorboard` is the default and what a run always wrote (RUN/tensorboard,
tests/test_train.py checks its tags); `csv`, `wandb` and `mlflow` write under the
run folder too, and `logger=[tensorboard,csv]` writes to both. W&B and MLflow are
extras: asking for one that is not installed is a one-line error before anything runs.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from conftest import TINY, compose_config, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_train import REQUIRED_TAGS, scalars

import train as train_script
from alexnet.errors import ConfigError
from alexnet.training.loggers import TRACKERS, build_loggers, check_loggers
from alexnet.training.results import finished_results, write_results

RUN = [*TINY, "trainer.limit_train_batches=4"]  # a tiny run that still validates and tests


def train(run: Path, *overrides: str) -> dict:
    result = run_cli("train.py", f"hydra.run.dir={run}", *RUN, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run / "results.json").read_text())["results"]


@pytest.fixture(scope="module")
def tensorboard_and_csv(tmp_path_factory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("tb_csv") / "run"
    return run, train(run, "logger=[tensorboard,csv]")


@pytest.fixture(scope="module")
def wandb_and_mlflow(tmp_path_factory) -> tuple[Path, dict]:
    """No TensorBoard at all: W&B first (Lightning's trainer.logger), offline, and MLflow's file store."""
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    run = tmp_path_factory.mktemp("wandb_mlflow") / "run"
    return run, train(run, "logger=[wandb,mlflow]", "logger.wandb.offline=true")


# ---------------------------------------------------------------- the config


def test_the_default_is_tensorboard_alone_in_the_run_folder_as_before(tmp_path):
    cfg = compose_config()
    assert list(cfg.logger) == ["tensorboard"]
    (logger,) = build_loggers(cfg.logger, tmp_path)
    assert type(logger).__name__ == "TensorBoardLogger" and Path(logger.log_dir) == tmp_path / "tensorboard"


def test_a_resumed_run_marks_its_restart_in_tensorboard_unless_given_a_purge_step(tmp_path):
    # tests/test_resume_exact.py shows the curves a kill and a resume leave
    (resumed,) = build_loggers(compose_config().logger, tmp_path, resuming=True)
    assert type(resumed).__name__ == "ResumedTensorBoardLogger"
    (given,) = build_loggers(compose_config("+logger.tensorboard.purge_step=5").logger, tmp_path, resuming=True)
    assert type(given).__name__ == "TensorBoardLogger"  # SummaryWriter's own marker, at step 5


def test_after_a_resume_tensorboard_shows_the_new_runs_points_from_its_first_event_on_an_image_included(tmp_path):
    # A resumed run's first event may be conv1's kernels (an epoch end replayed), before any scalar.
    import torch
    from lightning.pytorch.loggers import TensorBoardLogger

    from alexnet.training.loggers import log_image

    stopped = TensorBoardLogger(save_dir=str(tmp_path), name="tensorboard", version="")
    for step in (4, 5, 6):
        log_image(stopped, "conv1", torch.zeros(3, 4, 4), step)
        stopped.log_metrics({"loss": 1.0}, step)
    stopped.finalize("failed")
    (resumed,) = build_loggers(compose_config().logger, tmp_path, resuming=True)
    log_image(resumed, "conv1", torch.ones(3, 4, 4), 5)
    resumed.log_metrics({"loss": 2.0}, 5)
    resumed.finalize("success")
    log = EventAccumulator(str(tmp_path / "tensorboard"))
    log.Reload()
    assert [(e.step, e.value) for e in log.Scalars("loss")] == [(4, 1.0), (5, 2.0)]
    assert [e.step for e in log.Images("conv1")] == [4, 5]


def test_keys_that_lightning_passes_on_are_accepted():
    check_loggers(compose_config("+logger.tensorboard.flush_secs=5").logger)  # to SummaryWriter
    if importlib.util.find_spec("wandb"):
        check_loggers(compose_config("logger=wandb", "+logger.wandb.group=ablation").logger)  # to wandb.init


def test_a_list_of_options_chooses_several_loggers_in_its_order(tmp_path):
    cfg = compose_config("logger=[csv,tensorboard]", "logger.csv.flush_logs_every_n_steps=7")
    assert list(cfg.logger) == ["csv", "tensorboard"]  # each option's keys under logger.NAME
    loggers = build_loggers(cfg.logger, tmp_path)
    assert [type(lg).__name__ for lg in loggers] == ["CSVLogger", "TensorBoardLogger"]
    assert Path(loggers[0].log_dir) == tmp_path / "csv" / "version_0"  # a resumed run writes version_1


def test_mlflow_tracks_to_a_file_store_in_the_run_folder_unless_given_a_uri(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # (a run sets it for itself: wandb_and_mlflow)
    (logger,) = build_loggers(compose_config("logger=mlflow").logger, tmp_path)
    assert logger._tracking_uri == (tmp_path / "mlruns").as_uri()
    server = "http://127.0.0.1:5000"
    (logger,) = build_loggers(compose_config("logger=mlflow", f"logger.mlflow.tracking_uri={server}").logger, tmp_path)
    assert logger._tracking_uri == server


@pytest.mark.parametrize("extra", ["wandb", "mlflow"])
def test_a_tracker_that_is_not_installed_is_a_one_line_error_naming_its_extra(extra, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, extra, None)  # `import wandb` now fails as if it were not installed
    cfg = compose_config(*TINY, f"logger=[tensorboard,{extra}]")
    with pytest.raises(ConfigError) as err:
        check_loggers(cfg.logger)
    assert f"error: {err.value}" == f'error: logger: {extra} is not installed: pip install -e ".[{extra}]"'
    with pytest.raises(ConfigError, match="is not installed"):  # in validation, before any data or trainer
        train_script.train(cfg, tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("overrides,key", [
    (["logger=csv", "+logger.csv.bogus=1"], "logger.csv.bogus"),  # not an argument of CSVLogger
    (["+logger.tensorboard.flush_sec=5"], "logger.tensorboard.flush_sec"),  # nor of SummaryWriter (flush_secs)
    (["+logger.tensorboard.save_dir=/elsewhere"], "logger.tensorboard.save_dir"),  # always the run folder
    (["+logger.neptune={}"], "logger.neptune"),  # a key that is no option of the group
    (["~logger"], "logger"),  # no logger at all
])
def test_a_wrong_logger_key_is_refused_naming_it(overrides, key, tmp_path):
    with pytest.raises(ConfigError) as err:
        train_script.train(compose_config(*TINY, *overrides), tmp_path)
    assert err.value.key == key
    assert not any(tmp_path.iterdir())


def test_a_finished_run_is_finished_whatever_its_loggers(tmp_path):
    # skip_finished compares what a run computed; where its metrics went is not part of that
    write_results(compose_config(*TINY), tmp_path, {"test/top1_error": 0.5, "test/top5_error": 0.1})
    assert finished_results(compose_config(*TINY, "logger=[csv,tensorboard]"), tmp_path)["test/top1_error"] == 0.5


def mlflow_runs(run_dir: Path, count: int) -> list[str]:
    """``count`` runs made in the run folder's MLflow file store, as a first start makes them."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    experiment = client.create_experiment("alexnet")
    return [client.create_run(experiment).info.run_id for _ in range(count)]


@pytest.mark.parametrize("resuming", [True, False])
def test_only_a_resume_continues_the_recorded_tracker_runs_and_a_given_id_wins(resuming, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    first, other = mlflow_runs(tmp_path, 2)
    (tmp_path / TRACKERS).write_text(json.dumps({"wandb": "w1", "mlflow": first}))
    wandb, mlflow = build_loggers(compose_config("logger=[wandb,mlflow]").logger, tmp_path, resuming=resuming)
    assert (wandb._wandb_init["id"], mlflow._run_id) == (("w1", first) if resuming else (None, None))
    given = compose_config("logger=[wandb,mlflow]", "logger.wandb.id=w2", f"logger.mlflow.run_id={other}").logger
    wandb, mlflow = build_loggers(given, tmp_path, resuming=resuming)
    assert (wandb._wandb_init["id"], mlflow._run_id) == ("w2", other)


def test_offline_wandb_cannot_resume_so_a_resumed_start_is_a_new_run_grouped_with_the_first(tmp_path):
    pytest.importorskip("wandb")
    (tmp_path / TRACKERS).write_text(json.dumps({"wandb": "w1"}))
    (wandb,) = build_loggers(compose_config("logger=wandb", "logger.wandb.offline=true").logger, tmp_path, resuming=True)
    assert wandb._wandb_init["id"] is None and wandb._wandb_init["group"] == "w1"
    grouped = compose_config("logger=wandb", "logger.wandb.offline=true", "+logger.wandb.group=sweep").logger
    (wandb,) = build_loggers(grouped, tmp_path, resuming=True)
    assert wandb._wandb_init["group"] == "sweep"  # a group given wins


@pytest.mark.parametrize("recorded", [True, False])
def test_an_mlflow_run_to_continue_that_is_gone_is_refused_naming_the_key_before_any_data_is_read(recorded, tmp_path,
                                                                                                  monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    deleted, = mlflow_runs(tmp_path, 1)
    MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri()).delete_run(deleted)
    for run_id, says in (("0123456789abcdef0123456789abcdef", "no MLflow run"), (deleted, "is deleted")):
        overrides = [] if recorded else [f"logger.mlflow.run_id={run_id}"]
        (tmp_path / TRACKERS).write_text(json.dumps({"mlflow": run_id}))
        with pytest.raises(ConfigError, match=says) as err:
            build_loggers(compose_config("logger=mlflow", *overrides).logger, tmp_path, resuming=recorded)
        assert err.value.key == "logger.mlflow.run_id" and run_id in str(err.value)
        assert (TRACKERS if recorded else "logger.mlflow.run_id") in str(err.value).split(" in ")[0]


def test_a_resume_with_fewer_trackers_keeps_the_others_ids_and_a_new_start_keeps_none(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from types import SimpleNamespace

    from alexnet.training.loggers import TrackerIds

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    first, = mlflow_runs(tmp_path, 1)
    (tmp_path / TRACKERS).write_text(json.dumps({"wandb": "w1", "mlflow": first}))
    (mlflow,) = build_loggers(compose_config("logger=mlflow").logger, tmp_path, resuming=True)
    TrackerIds(tmp_path, resuming=True).on_fit_start(SimpleNamespace(is_global_zero=True, loggers=[mlflow]), None)
    assert json.loads((tmp_path / TRACKERS).read_text()) == {"wandb": "w1", "mlflow": first}  # W&B's kept
    (mlflow,) = build_loggers(compose_config("logger=mlflow").logger, tmp_path)  # a new start: a new MLflow run
    TrackerIds(tmp_path).on_fit_start(SimpleNamespace(is_global_zero=True, loggers=[mlflow]), None)
    assert json.loads((tmp_path / TRACKERS).read_text()) == {"mlflow": mlflow.run_id} and mlflow.run_id != first
    TrackerIds(tmp_path).on_fit_start(SimpleNamespace(is_global_zero=True, loggers=[]), None)  # a new start, no trackers
    assert not (tmp_path / TRACKERS).exists()


def test_a_damaged_trackers_file_is_named_when_a_run_resumes(tmp_path):
    (tmp_path / TRACKERS).write_text("{not json")
    with pytest.raises(ConfigError, match=TRACKERS) as err:
        build_loggers(compose_config("logger=mlflow").logger, tmp_path, resuming=True)
    assert err.value.key == "ckpt_path"


# ---------------------------------------------------------------- what each writes


def test_tensorboard_and_csv_together_each_write_the_runs_metrics(tensorboard_and_csv):
    run, results = tensorboard_and_csv
    tags = scalars(run)
    assert REQUIRED_TAGS | {"test/top1_error"} <= set(tags)
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert acc.Tags()["images"] == ["conv1_kernels/tower_1"] and acc.PluginTagToContent("hparams")
    with open(run / "csv" / "version_0" / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert REQUIRED_TAGS | {"test/top1_error", "step", "epoch"} <= set(rows[0])  # one column per metric
    val = [float(row["val/top1_error"]) for row in rows if row["val/top1_error"]]
    assert len(val) == 1 and val[0] == pytest.approx(tags["val/top1_error"][0][1])  # the same figure as TensorBoard
    (test,) = [float(row["test/top1_error"]) for row in rows if row["test/top1_error"]]
    assert test == pytest.approx(results["test/top1_error"])
    assert (run / "csv" / "version_0" / "hparams.yaml").is_file()


def test_wandb_offline_keeps_the_run_in_the_run_folder_with_its_metrics_and_kernel_images(wandb_and_mlflow):
    run, _ = wandb_and_mlflow
    (folder,) = (run / "wandb").glob("offline-run-*")  # `wandb sync` uploads it later
    (history,) = folder.glob("run-*.wandb")
    records = history.read_bytes()
    for metric in ("train/loss", "val/top1_error", "test/top1_error", "lr"):
        assert metric.encode() in records, metric
    assert list((folder / "files" / "media" / "images" / "conv1_kernels").glob("tower_1_*.png"))
    assert not (run / "tensorboard").exists()  # only the loggers asked for


def test_mlflow_records_a_run_with_the_metrics_params_and_kernel_images_in_the_run_folder(wandb_and_mlflow, monkeypatch):
    from mlflow.tracking import MlflowClient

    run, results = wandb_and_mlflow
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads its file store only so
    client = MlflowClient(tracking_uri=(run / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("alexnet")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED"
    assert found.data.metrics["test/top1_error"] == pytest.approx(results["test/top1_error"])
    assert len(client.get_metric_history(found.info.run_id, "val/top1_error")) == 1  # once per epoch
    assert REQUIRED_TAGS <= set(found.data.metrics)
    assert found.data.params["config/model/name"] == "cifar"  # the run's config, as parameters
    kernels = [a.path for a in client.list_artifacts(found.info.run_id, "conv1_kernels/tower_1")]
    assert kernels and all(path.endswith(".png") for path in kernels)


def test_a_resumed_run_goes_on_logging_to_its_wandb_and_mlflow_runs(tmp_path, monkeypatch):
    """Resuming after a crash continues the trackers' runs: one MLflow run with the whole curve,
    W&B's offline starts in one group; and MLflow's write-once parameters do not stop the resume."""
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    train(run, "logger=[wandb,mlflow]", "logger.wandb.offline=true")
    ids = json.loads((run / TRACKERS).read_text())
    assert set(ids) == {"wandb", "mlflow"}
    # the original overrides are inherited (alexnet.config.inherit_run_overrides); a longer schedule
    resumed = run_cli("train.py", f"hydra.run.dir={run}", "ckpt_path=last", "trainer.max_epochs=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / TRACKERS).read_text()) == ids

    # offline, W&B cannot resume: the second start is a new run, grouped under the first one's id
    first, second = sorted((run / "wandb").glob("offline-run-*"))
    assert first.name.endswith(f"-{ids['wandb']}") and not second.name.endswith(f"-{ids['wandb']}")
    assert ids["wandb"].encode() in next(second.glob("run-*.wandb")).read_bytes()  # its group

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(run / "mlruns").as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("alexnet").experiment_id])
    assert found.info.run_id == ids["mlflow"] and found.info.status == "FINISHED"
    curve = client.get_metric_history(found.info.run_id, "val/top1_error")
    assert len(curve) == 2 and curve[0].step < curve[1].step  # epochs 0 and 1, in one run
    # changed parameters keep their first value, and the warning names them
    assert found.data.params["config/trainer/max_epochs"] == "1"
    (warning,) = [line for line in resumed.stdout.splitlines() if "write-once" in line]  # Hydra logs to stdout
    assert warning.endswith("config/ckpt_path, config/trainer/max_epochs")
    assert found.data.metrics["test/top1_error"] == pytest.approx(json.loads((run / "results.json").read_text())["results"]["test/top1_error"])


def test_each_run_in_one_process_is_its_own_wandb_run(tmp_path):
    """The jobs of `python train.py -m` run in one process: each must end its W&B run, or the
    next job's WandbLogger takes it over (it reuses wandb.run)."""
    pytest.importorskip("wandb")
    ids = []
    for job in ("a", "b"):
        train_script.train(compose_config(*RUN, "logger=wandb", "logger.wandb.offline=true", "test_after_fit=false"),
                           tmp_path / job)
        (start,) = (tmp_path / job / "wandb").glob("offline-run-*")
        ids.append(json.loads((tmp_path / job / TRACKERS).read_text())["wandb"])
        assert start.name.endswith(ids[-1])
    assert ids[0] != ids[1]
