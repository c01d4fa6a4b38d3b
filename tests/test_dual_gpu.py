"""`python train.py model=paper_dual_gpu`: the paper's two-GPU split, run as CPU processes.

Each test runs the real command line. The network is the paper's, at a
127-pixel input (conv5 gives 3x3 instead of 6x6) so that a run takes seconds.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from data_fixtures import image_tree
from test_train import REQUIRED_TAGS, scalars, summary_line

from alexnet.errors import ConfigError

DUAL = [
    "model=paper_dual_gpu",
    "trainer=cpu",
    "trainer.devices=2",
    "model.input_size=127",
    "data.num_train=64",
    "data.num_val=32",
    "data.batch_size=16",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]


def train(run: Path, *args: str):
    result = run_cli("train.py", f"hydra.run.dir={run}", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def dual_run(tmp_path_factory) -> tuple[Path, str]:
    run = tmp_path_factory.mktemp("dual") / "run"
    # a schedule that a longer resumed run continues; clipping by the norm of both towers
    result = train(run, *DUAL, "optim.schedule=step", "trainer.gradient_clip_val=1.0")
    return run, result.stdout + result.stderr  # every rank's log lines


def test_two_processes_train_and_log_the_same_tags_as_any_run(dual_run):
    run, stdout = dual_run
    assert REQUIRED_TAGS <= set(scalars(run))
    assert summary_line(stdout)


def test_each_rank_holds_one_tower_and_the_checkpoint_holds_both(dual_run):
    run, output = dual_run
    assert "rank 0 holds tower 0" in output and "rank 1 holds tower 1" in output
    state = load(run / "checkpoints" / "last.ckpt")["state_dict"]
    assert state["net.features.0.weight"].shape == (96, 3, 11, 11)  # both towers' conv1 kernels
    assert state["net.classifier.6.weight"].shape == (10, 4096)
    # Not one tower saved twice: the halves were trained on different ranks.
    for name in ("net.features.0.weight", "net.features.8.weight", "net.classifier.0.weight"):
        tower0, tower1 = state[name].chunk(2)
        assert not torch.equal(tower0, tower1), name


def test_a_two_device_checkpoint_evaluates_on_one_device_to_the_same_errors(dual_run):
    run, stdout = dual_run
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    result = run_cli("scripts/evaluate.py", f"ckpt_path={best}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary_line(result.stdout).split(" (")[0] == summary_line(stdout).split(" (")[0]


def test_a_two_device_checkpoint_resumes_as_paper_grouped_without_conversion(dual_run, tmp_path):
    # model=paper_dual_gpu is paper_grouped placed: a resume compares the network, not the placement.
    run, _ = dual_run
    dual = load(run / "checkpoints" / "last.ckpt")
    assert dual["hyper_parameters"]["model"]["name"] == "paper_grouped"
    assert dual["hyper_parameters"]["config"]["model"]["placement"] == "tower_per_device"
    resumed = train(tmp_path / "as_grouped", *[a for a in DUAL if a not in ("model=paper_dual_gpu", "trainer.devices=2")],
                    "model=paper_grouped", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=2",
                    "test_after_fit=false")
    assert "resuming" in resumed.stdout + resumed.stderr
    assert load(tmp_path / "as_grouped" / "checkpoints" / "last.ckpt")["global_step"] == 2 * dual["global_step"]


def test_convert_dual_to_grouped_and_back_is_exact(dual_run, tmp_path):
    run, _ = dual_run
    dual = run / "checkpoints" / "last.ckpt"
    grouped, back = tmp_path / "grouped.ckpt", tmp_path / "back.ckpt"
    first = run_cli("scripts/convert_checkpoint.py", str(dual), str(grouped))
    assert first.returncode == 0, first.stderr
    assert "(paper_dual_gpu)" in first.stdout and "(paper_grouped)" in first.stdout
    second = run_cli("scripts/convert_checkpoint.py", str(grouped), str(back))
    assert second.returncode == 0, second.stderr
    a, g, b = load(dual), load(grouped), load(back)
    assert "placement" not in g["hyper_parameters"]["config"]["model"]  # the run config of model=paper_grouped
    assert g["hyper_parameters"]["model"] == a["hyper_parameters"]["model"]  # the same network
    assert b["hyper_parameters"] == a["hyper_parameters"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]) and torch.equal(value, g["state_dict"][key]), key
    for i, state in a["optimizer_states"][0]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer_states"][0]["state"][i]["momentum_buffer"])


def legacy(checkpoint: dict) -> dict:
    """``checkpoint`` as written before model.placement: its network named paper_dual_gpu."""
    old = dict(checkpoint)
    model = {k: v for k, v in checkpoint["hyper_parameters"]["config"]["model"].items() if k != "placement"}
    model["name"] = "paper_dual_gpu"
    config = {**checkpoint["hyper_parameters"]["config"], "model": model}
    old["hyper_parameters"] = {**checkpoint["hyper_parameters"], "model": model, "config": config}
    return old


def test_a_checkpoint_from_before_the_placement_key_evaluates_converts_and_resumes(dual_run, tmp_path):
    from alexnet.training.checkpoints import check_compatible

    run, stdout = dual_run
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    old = tmp_path / "old.ckpt"
    torch.save(legacy(load(best)), old)
    evaluated = run_cli("scripts/evaluate.py", f"ckpt_path={old}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert summary_line(evaluated.stdout).split(" (")[0] == summary_line(stdout).split(" (")[0]
    converted = run_cli("scripts/convert_checkpoint.py", str(old), str(tmp_path / "grouped.ckpt"))
    assert converted.returncode == 0 and "(paper_dual_gpu)" in converted.stdout, converted.stderr
    assert load(tmp_path / "grouped.ckpt")["hyper_parameters"]["model"] == load(best)["hyper_parameters"]["model"]
    for placed in ("paper_dual_gpu", "paper_grouped"):  # either placement resumes it
        model = {**load(best)["hyper_parameters"]["config"]["model"]}
        if placed == "paper_grouped":
            model.pop("placement")
        check_compatible(legacy(load(best)), old, model, 10)


def test_resuming_compares_the_network_and_names_what_differs(dual_run):
    from alexnet.training.checkpoints import check_compatible

    run, _ = dual_run
    checkpoint = load(run / "checkpoints" / "last.ckpt")
    model = {**checkpoint["hyper_parameters"]["config"]["model"], "dropout": 0.1}
    with pytest.raises(ConfigError, match=r"model\.dropout: checkpoint has 0\.5, this run has 0\.1") as err:
        check_compatible(checkpoint, run / "last.ckpt", model, 10)
    assert "placement" not in str(err.value)


@pytest.mark.parametrize("overrides,message", [
    (["model=paper_dual_gpu", "model.placement=everywhere"],
     r"^model\.placement: must be one of \['one_device', 'tower_per_device'\], got 'everywhere'"),
    (["model=cifar", "+model.placement=tower_per_device"],
     r"^model\.placement: tower_per_device splits the paper's network \(model=paper_dual_gpu\); model 'cifar'"),
    (["model=paper_dual_gpu", "model.groups=1"], r"^model\.groups: model=paper_dual_gpu is two towers: must be 2, got 1"),
])
def test_a_placement_that_cannot_split_the_network_is_refused_naming_the_key(overrides, message):
    from conftest import compose_config

    from alexnet.config import validate

    with pytest.raises(ConfigError, match=message):
        validate(compose_config(*overrides))


def test_convert_refuses_another_network_by_name(tmp_path):
    path = tmp_path / "cifar.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"model": {"name": "cifar"}, "num_classes": 10}}, path)
    result = run_cli("scripts/convert_checkpoint.py", str(path), str(tmp_path / "out.ckpt"))
    assert result.returncode == 1 and "'cifar'" in result.stderr and str(path) in result.stderr
    assert not (tmp_path / "out.ckpt").exists()


def test_resume_on_two_processes_equals_two_epochs_straight(dual_run, tmp_path):
    # The fixture's one-epoch run (its own folder left as it is), resumed for a second epoch.
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    shutil.copytree(dual_run[0], resumed)
    train(straight, *DUAL, "optim.schedule=step", "trainer.gradient_clip_val=1.0", "trainer.max_epochs=2",
          "test_after_fit=false")
    rest = train(resumed, "ckpt_path=last", "trainer.max_epochs=2", "test_after_fit=false")
    assert "resuming" in rest.stdout + rest.stderr
    a, b = load(straight / "checkpoints" / "last.ckpt"), load(resumed / "checkpoints" / "last.ckpt")
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"{key} differs after resuming"


def test_four_processes_run_two_data_parallel_copies_of_the_two_towers(dual_run, tmp_path):
    # ... resuming the two-process run's checkpoint: another data-parallel size is supported.
    run, _ = dual_run
    four = tmp_path / "four"
    result = train(four, *DUAL, "trainer.devices=4", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                   "trainer.max_epochs=2", "test_after_fit=false")
    assert "rank 3 holds tower 1 of data-parallel copy 1 of 2" in result.stdout + result.stderr
    before, after = load(run / "checkpoints" / "last.ckpt"), load(four / "checkpoints" / "last.ckpt")
    # The second epoch took half the steps: two copies share each epoch's images.
    assert after["global_step"] == before["global_step"] + before["global_step"] // 2
    tower0, tower1 = after["state_dict"]["net.features.0.weight"].chunk(2)
    assert not torch.equal(tower0, tower1)
    assert not torch.equal(after["state_dict"]["net.classifier.6.weight"], before["state_dict"]["net.classifier.6.weight"])


def test_an_odd_device_count_is_refused_before_training(tmp_path):
    result = run_cli("train.py", f"hydra.run.dir={tmp_path / 'run'}", *DUAL, "trainer.devices=3")
    assert result.returncode == 1 and "trainer.devices" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_on_one_device_it_trains_the_grouped_network_and_says_so(tmp_path):
    run = tmp_path / "one"
    args = [a for a in DUAL if a != "trainer.devices=2"]
    result = train(run, *args, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "test_after_fit=false")
    assert (result.stdout + result.stderr).count("on one device: training the grouped network (groups=2)") == 1


def test_an_odd_class_count_on_two_devices_is_refused_before_training(tmp_path):
    # fc8 is halved between the towers: 3 classes do not split.
    data = image_tree(tmp_path / "data", classes=("a", "b", "c"), per_class=2, size=(140, 132))
    folder = ["data=folder", f"data.root={data}", "data.resize_size=132", "data.num_workers=0"]
    dual = [a for a in DUAL if not a.startswith(("data.num_train", "data.num_val"))]
    result = run_cli("train.py", f"hydra.run.dir={tmp_path / 'run'}", *dual, *folder)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "error: model.num_classes: model=paper_dual_gpu on 2 devices gives each tower half of fc8's outputs, " \
           "but the data has 3 classes" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_all_gpus_of_a_node_with_an_odd_count_are_refused_naming_trainer_devices(monkeypatch):
    from conftest import compose_config

    from alexnet.config import validate

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    with pytest.raises(ConfigError, match=r"trainer\.devices: model=paper_dual_gpu puts one tower on each device: "
                                          r"give an even number of devices, got -1 \(3 devices here\)"):
        validate(compose_config("model=paper_dual_gpu", "trainer=ddp"))  # devices: -1, every GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    validate(compose_config("model=paper_dual_gpu", "trainer=ddp"))


def test_skipped_non_finite_batches_with_clipping_across_the_towers_do_not_crash(tmp_path):
    # A skipped batch leaves no gradients; clipping over both towers must still meet in its all-reduce.
    result = train(tmp_path / "run", *DUAL, "optim.lr=1e10", "nonfinite_loss=skip", "trainer.gradient_clip_val=1.0",
                   "test_after_fit=false")
    assert "Traceback" not in result.stderr
    assert re.search(r"skipped the batch of training step \d+ \(epoch 0\)", result.stdout + result.stderr)
    assert load(tmp_path / "run" / "checkpoints" / "last.ckpt")["callbacks"]["NonFiniteGuard"]["skipped"] >= 1


def test_lightnings_load_from_checkpoint_rebuilds_a_two_device_run_as_the_grouped_network(dual_run):
    from alexnet.training.system import AlexNetSystem

    run, _ = dual_run
    for path in (run / "checkpoints").glob("*.ckpt"):
        system = AlexNetSystem.load_from_checkpoint(path, map_location="cpu", weights_only=False)
        saved = load(path)["state_dict"]
        assert system.net.groups == 2 and system.net.conv1.weight.shape == (96, 3, 11, 11)
        for key, value in system.state_dict().items():
            assert torch.equal(value, saved[key]), f"{path.name}: {key}"
