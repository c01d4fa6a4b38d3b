"""`python train.py`: runs, logs, checkpoints, resumes and refuses what it must.

Most tests run the real command line in a subprocess, as a user would; the
model-by-dataset smoke runs call train.train() in-process to stay fast.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_config, run_cli
from data_fixtures import cifar10_jpg, image_tree  # noqa: F401  (cifar10_jpg is a fixture)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train as train_script
from alexnet.errors import ConfigError
from alexnet.nn.models import VARIANTS

REQUIRED_TAGS = {"train/loss", "train/top1_error", "train/top5_error", "val/loss", "val/top1_error", "val/top5_error", "lr"}
LRN_TAGS = {"lrn/strength_conv1", "lrn/strength_conv2"}  # networks with LRN (the default cifar one has two)


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def summary_line(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith("top1_error=")]
    assert len(lines) == 1, f"expected one summary line, got {lines}\n{stdout[-2000:]}"
    return lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, str]:
    """One small training run on the built-in data, shared by the tests that only read it."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    result = run_cli("train.py", f"hydra.run.dir={run}", *TINY, "trainer.max_epochs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    return run, result.stdout


# ---------------------------------------------------------------- one run, what it writes


def test_a_run_logs_exactly_the_documented_tensorboard_tags(tiny_run):
    run, _ = tiny_run
    tags = scalars(run)
    # README, "Loggers": these and no others (Lightning adds `epoch`, the x-axis of per-epoch plots)
    assert set(tags) == REQUIRED_TAGS | LRN_TAGS | {"test/loss", "test/top1_error", "test/top5_error", "epoch"}
    for tag in REQUIRED_TAGS - {"train/loss", "val/loss", "lr"}:
        assert all(0.0 <= v <= 1.0 for _, v in tags[tag]), f"{tag} is not an error fraction"
    assert [v for _, v in tags["lr"]][0] == pytest.approx(0.01)
    assert len(tags["val/top1_error"]) == 2  # once per epoch
    for tag in LRN_TAGS:  # Section 3.3: how much each LRN layer divides, 1.0 = nothing; once per epoch
        assert len(tags[tag]) == 2 and all(0.0 < v <= 1.0 for _, v in tags[tag]), tag
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert acc.Tags()["images"] == ["conv1_kernels/tower_1"]  # Figure 3 (one tower here)
    assert len(acc.Images("conv1_kernels/tower_1")) == 2  # every epoch
    assert (run / "tensorboard" / "hparams.yaml").is_file()
    assert acc.PluginTagToContent("hparams"), "the hyperparameters reach TensorBoard's HPARAMS tab"


def test_a_run_folder_holds_hydra_config_tensorboard_and_checkpoints(tiny_run):
    run, stdout = tiny_run
    assert (run / ".hydra" / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    best = list((run / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["config"]["model"]["name"] == "cifar"  # the resolved config travels with it
    assert checkpoint["config"]["data"]["crop_size"] == 32
    line = summary_line(stdout)
    assert str(best[0]) in line and "top5_error=" in line


def test_every_checkpoint_of_a_run_loads_with_lightnings_load_from_checkpoint(tiny_run):
    from alexnet.training.system import AlexNetSystem

    run, _ = tiny_run
    paths = sorted((run / "checkpoints").glob("*.ckpt"))
    assert {p.name.split("-")[0] for p in paths} == {"last.ckpt", "best"}
    for path in paths:
        system = AlexNetSystem.load_from_checkpoint(path, map_location="cpu", weights_only=False)
        saved = torch.load(path, map_location="cpu", weights_only=False)
        assert system.hparams.model == saved["hyper_parameters"]["model"]
        for key, value in system.state_dict().items():
            assert torch.equal(value, saved["state_dict"][key]), f"{path.name}: {key}"


def test_evaluate_reports_the_same_summary_for_a_checkpoint(tiny_run):
    run, _ = tiny_run
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    result = run_cli("scripts/evaluate.py", f"ckpt_path={best}", "data.eval_crops=10")
    assert result.returncode == 0, result.stderr[-3000:]
    line = summary_line(result.stdout)
    assert "10 crops" in line


def test_predict_prints_the_top_5_classes_by_name(tiny_run, tmp_path):
    from PIL import Image

    run, _ = tiny_run
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "red.jpg")
    Image.new("L", (20, 20), 128).save(tmp_path / "grey.png")
    images = f"images=[{tmp_path / 'red.jpg'},{tmp_path / 'grey.png'}]"
    result = run_cli("scripts/predict.py", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", images)
    assert result.returncode == 0, result.stderr[-3000:]
    ranked = [line for line in result.stdout.splitlines() if line.strip()[:2] in {f"{i}." for i in range(1, 6)}]
    assert len(ranked) == 10  # five per image
    assert "solid colour" in result.stdout or "noise" in result.stdout  # names, not indices
    probabilities = [float(line.rsplit(None, 1)[1].rstrip("%")) for line in ranked[:5]]
    assert probabilities == sorted(probabilities, reverse=True)


def test_the_default_command_trains_to_at_most_10_percent_error(tmp_path):
    # The README's first command, exactly: no overrides but the run folder.
    run = tmp_path / "default"
    result = run_cli("train.py", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    top1 = float(summary_line(result.stdout).split()[0].removeprefix("top1_error="))
    assert top1 <= 0.10
    assert REQUIRED_TAGS <= set(scalars(run))
    assert (run / "checkpoints" / "last.ckpt").is_file()
    # A clean first run: no library deprecation warnings, no advert, and real FLOPs in the summary.
    output = result.stdout + result.stderr
    noise = [line for line in output.splitlines()
             if re.search(r"DeprecationWarning|FutureWarning|is deprecated|💡 Tip", line)]
    assert noise == []
    assert "Total FLOPs: 0 " not in output and re.search(r"Total FLOPs: [1-9][\d.]* M", output)


def test_lightnings_model_summary_counts_the_networks_multiply_adds_twice_per_image():
    # Its FLOPs column (a forward of system.example_input_array, one image) is 2 x the
    # multiply-adds that alexnet.nn.summary derives from the layer shapes.
    from lightning.pytorch.utilities.model_summary import ModelSummary

    from alexnet.nn.summary import summarize
    from alexnet.training.system import AlexNetSystem

    for name in ("cifar", "paper_grouped"):
        system = AlexNetSystem({"name": name, "init": "torch"}, {"name": "sgd"}, num_classes=10)
        assert tuple(system.example_input_array.shape) == (1, 3, system.net.input_size, system.net.input_size)
        assert ModelSummary(system).total_flops == 2 * summarize(system.net).macs, name


def test_evaluate_and_predict_name_a_missing_file_without_a_traceback(tiny_run, tmp_path):
    run, _ = tiny_run
    result = run_cli("scripts/evaluate.py", f"ckpt_path={tmp_path / 'gone.ckpt'}")
    assert result.returncode != 0 and "gone.ckpt" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("scripts/predict.py", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"images=[{tmp_path / 'gone.jpg'}]")
    assert result.returncode != 0 and "gone.jpg" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------- resume


def test_one_epoch_then_resume_equals_two_epochs_straight(tmp_path):
    # A schedule that does not depend on max_epochs, so both runs follow the same one.
    args = [*TINY, "optim.schedule=step", "checkpoint.save_top_k=0"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    first = run_cli("train.py", f"hydra.run.dir={straight}", *args, "trainer.max_epochs=2", "test_after_fit=false")
    assert first.returncode == 0, first.stderr[-3000:]
    part = run_cli("train.py", f"hydra.run.dir={resumed}", *args, "test_after_fit=false")
    assert part.returncode == 0, part.stderr[-3000:]
    steps_before = max(s for s, _ in scalars(resumed)["train/loss"])
    # The resumed command names only the folder, the checkpoint and the new epoch count:
    # the rest of the original run's overrides are inherited from its folder.
    rest = run_cli("train.py", f"hydra.run.dir={resumed}", "ckpt_path=last", "trainer.max_epochs=2", "test_after_fit=false")
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert "resuming" in rest.stderr and "data.num_train=256" in rest.stderr

    a = torch.load(straight / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"{key} differs after resuming"
    momentum_a = a["optimizer_states"][0]["state"][0]["momentum_buffer"]
    momentum_b = b["optimizer_states"][0]["state"][0]["momentum_buffer"]
    assert torch.equal(momentum_a, momentum_b)

    # TensorBoard continues the step count instead of starting again at 0.
    steps_a = [s for s, _ in scalars(straight)["train/loss"]]
    steps_b = sorted(s for s, _ in scalars(resumed)["train/loss"])
    assert steps_b == sorted(steps_a)
    assert min(s for s in steps_b if s > steps_before) > steps_before


def test_resume_last_without_a_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    cfg = compose_config(*TINY, "ckpt_path=last")
    with pytest.raises(ConfigError, match="no checkpoint at") as err:
        train_script.train(cfg, tmp_path)
    assert err.value.key == "ckpt_path"


def test_resume_auto_without_a_checkpoint_starts_afresh(tmp_path):
    cfg = compose_config(*TINY, "ckpt_path=auto", "test_after_fit=false")
    train_script.train(cfg, tmp_path)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 256 // 32  # one fresh epoch, nothing resumed


def test_a_checkpoint_of_another_network_is_refused_with_the_mismatch_listed(tiny_run, tmp_path):
    run, _ = tiny_run
    result = run_cli(
        "train.py", f"hydra.run.dir={tmp_path}", *TINY, "model=simple_cifar", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"
    )
    assert result.returncode != 0
    assert "model.name: checkpoint has 'cifar', this run has 'simple_cifar'" in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_a_checkpoint_with_another_class_count_is_refused(tiny_run, tmp_path):
    run, _ = tiny_run
    cfg = compose_config(*TINY, "model.num_classes=7", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    with pytest.raises(ConfigError, match="num_classes: checkpoint has 10, this run has 7"):
        train_script.train(cfg, tmp_path)


def test_a_file_that_is_not_a_checkpoint_is_refused_by_name(tmp_path):
    bogus = tmp_path / "notes.ckpt"
    bogus.write_text("not a checkpoint")
    cfg = compose_config(*TINY, f"ckpt_path={bogus}")
    with pytest.raises(ConfigError, match="notes.ckpt is not a readable checkpoint"):
        train_script.train(cfg, tmp_path / "run")
    assert bogus.read_text() == "not a checkpoint"


def test_warm_up_scales_each_steps_learning_rate_and_leaves_the_schedule_alone(tmp_path):
    import lightning as L

    seen: list[float] = []

    class RecordLR(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen.append(optimizer.param_groups[0]["lr"])

    cfg = compose_config(*TINY, "optim.schedule=step", "optim.step_size=1", "optim.warmup_epochs=1", "trainer.max_epochs=2")
    from alexnet.config import build_datamodule
    from alexnet.training.system import AlexNetSystem

    datamodule = build_datamodule(cfg.data)
    system = AlexNetSystem(model=dict(cfg.model), optim=dict(cfg.optim), num_classes=10)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, callbacks=[RecordLR()], num_sanity_val_steps=0)
    trainer.fit(system, datamodule=datamodule)
    steps = 256 // 32
    warm = [0.01 * (0.1 + 0.9 * (i + 1) / steps) for i in range(steps)]
    assert seen[:steps] == pytest.approx(warm)  # linear from 0.1 x lr to lr over epoch one
    assert seen[steps:] == pytest.approx([0.001] * steps)  # then the step schedule's own drop


# ---------------------------------------------------------------- every model, every dataset

FAST = ["trainer.fast_dev_run=true", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]


@pytest.mark.parametrize("model", sorted(VARIANTS))
def test_every_model_runs_a_fast_dev_run_on_the_built_in_data(model, tmp_path):
    cfg = compose_config(f"model={model}", "data.num_train=8", "data.num_val=4", "data.batch_size=4", *FAST)
    train_script.train(cfg, tmp_path)


def test_the_cifar_model_runs_on_the_real_cifar10_copy(cifar10_jpg, tmp_path):  # noqa: F811
    cfg = compose_config("experiment=cifar10", f"data.root={cifar10_jpg}", "data.batch_size=16", *FAST)
    train_script.train(cfg, tmp_path)


def test_the_paper_model_runs_on_an_imagenet_layout_folder(tmp_path):
    root = image_tree(tmp_path / "imagenet", size=(300, 260))
    cfg = compose_config(
        "model=paper_grouped", "data=imagenet", f"data.root={root}", "data.batch_size=2", "data.num_workers=0", *FAST
    )
    train_script.train(cfg, tmp_path / "run")


def test_a_folder_dataset_trains_the_cifar_model(tmp_path):
    root = image_tree(tmp_path / "folder", classes=("cats", "dogs"), size=(40, 36))
    cfg = compose_config("data=folder", f"data.root={root}", "data.batch_size=4", "data.num_workers=0", *FAST)
    train_script.train(cfg, tmp_path / "run")


def test_fewer_than_five_classes_clip_top5_to_the_class_count(tmp_path):
    root = image_tree(tmp_path / "folder", classes=("a", "b", "c"), size=(40, 36))
    cfg = compose_config("data=folder", f"data.root={root}", "data.batch_size=4", "data.num_workers=0", *FAST)
    train_script.train(cfg, tmp_path / "run")  # MulticlassAccuracy(top_k=5) would raise with 3 classes


# ---------------------------------------------------------------- several processes


def test_ddp_on_two_cpu_processes_trains_and_checkpoints(tmp_path):
    run = tmp_path / "ddp"
    result = run_cli(
        "train.py",
        f"hydra.run.dir={run}",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        *[a for a in TINY if not a.startswith("trainer.accelerator")],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary_line(result.stdout)  # printed once, by rank zero
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert REQUIRED_TAGS | LRN_TAGS <= set(scalars(run))  # rank zero logs its LRN strengths, no collective
