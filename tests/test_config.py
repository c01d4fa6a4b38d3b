"""The configuration: every option composes, and bad values are refused by name.

Hydra refuses unknown options and keys itself; out-of-range values get an
error naming the key before any data is read or the trainer is built.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
from conftest import REPO, TINY, compose_config, run_cli

import train as train_script
from alexnet.errors import ConfigError
from alexnet.nn.models import VARIANTS

GROUPS = ("model", "data", "trainer", "optim", "logger", "experiment")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


# conf/model options that place a network rather than define one (alexnet/parallel/placement.py)
PLACEMENTS = {"paper_dual_gpu": "paper_grouped"}


def test_the_model_group_lists_exactly_the_variants_of_alexnet_models_and_the_paper_split():
    assert options("model") == sorted([*VARIANTS, *PLACEMENTS])
    assert not set(PLACEMENTS) & set(VARIANTS)  # a placement is not a second network


def test_paper_dual_gpu_is_paper_grouped_placed_one_tower_per_device():
    from omegaconf import OmegaConf

    dual = OmegaConf.to_container(compose_config("model=paper_dual_gpu").model)
    grouped = OmegaConf.to_container(compose_config("model=paper_grouped").model)
    assert dual.pop("placement") == "tower_per_device"
    assert dual == grouped  # inherited, not restated: the same network, name included


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_of_every_group_composes(group, option):
    cfg = compose_config(f"{group}={option}")
    # Resolving every interpolation catches a key that refers to nothing.
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_container(cfg, resolve=True)
    if group != "experiment":
        chosen = resolved[group]
        assert chosen, f"{group}={option} composed to nothing"
    if group == "model":
        assert resolved["model"]["name"] == PLACEMENTS.get(option, option)


def test_the_default_run_is_the_quickstart_on_shapes_data():
    cfg = compose_config()
    assert cfg.model.name == "cifar"
    assert cfg.data._target_.endswith("ShapesDataModule")
    assert cfg.optim.lr == 0.01 and cfg.optim.momentum == 0.9 and cfg.optim.weight_decay == 5e-4


def test_the_paper_experiment_is_the_paper_setup():
    cfg = compose_config("experiment=paper_imagenet")
    assert cfg.model.name == "paper_grouped"
    assert cfg.data._target_.endswith("ImageNetDataModule")
    assert cfg.data.batch_size == 128 and cfg.data.eval_crops == 10 and cfg.data.normalize == "paper"
    assert cfg.optim.schedule == "plateau" and cfg.optim.factor == 0.1
    assert 80 <= cfg.trainer.max_epochs <= 100


def test_the_command_line_wins_over_the_experiment():
    assert compose_config("model=paper_grouped").model.name == "paper_grouped"
    assert compose_config("experiment=paper_imagenet", "model=torchvision").model.name == "torchvision"


def test_a_step_limit_needs_no_plus_and_reaches_lightnings_trainer(tmp_path):
    from alexnet.training.trainer import build_trainer

    assert build_trainer(compose_config(*TINY), tmp_path).max_steps == -1  # no limit, as Lightning's default
    assert build_trainer(compose_config(*TINY, "trainer.max_steps=7"), tmp_path).max_steps == 7


BAD_VALUES = [
    ("optim.lr=0", "optim.lr"),
    ("optim.lr=-0.1", "optim.lr"),
    ("optim.momentum=1.5", "optim.momentum"),
    ("optim.weight_decay=-1", "optim.weight_decay"),
    ("optim.schedule=linear", "optim.schedule"),
    ("optim.factor=2", "optim.factor"),
    ("trainer.max_epochs=0", "trainer.max_epochs"),
    ("trainer.max_steps=0", "trainer.max_steps"),
    ("trainer.max_steps=ten", "trainer.max_steps"),
    ("model.dropout=1.5", "model.dropout"),
    ("model.norm=layernorm", "model.norm"),
    ("model.lrn_convention=keras", "model.lrn_convention"),
    ("model.num_classes=0", "model.num_classes"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.eval_crops=5", "data.eval_crops"),
    ("data.resize_size=24", "data.crop_size"),  # the 32-pixel crop is larger than the resize
    ("data.pca_std=-0.1", "data.pca_std"),
    ("data.normalize=zscore", "data.normalize"),
    ("optim.max_drops=-1", "optim.max_drops"),
    ("optim.max_drops=1.5", "optim.max_drops"),
    ("optim.threshold=-0.1", "optim.threshold"),
    ("optim.min_lr=-1e-5", "optim.min_lr"),
    ("flat_start_steps=-5", "flat_start_steps"),
    ("flat_start_steps=many", "flat_start_steps"),
    ("tf32=yes", "tf32"),
]


@pytest.mark.parametrize("override,key", BAD_VALUES)
def test_an_out_of_range_value_is_refused_naming_its_key_before_training(override, key, tmp_path):
    cfg = compose_config(*TINY, override)
    with pytest.raises(ConfigError) as err:
        train_script.train(cfg, tmp_path)
    assert err.value.key == key
    assert not (tmp_path / "checkpoints").exists(), "nothing may be written before the check"


def test_a_bad_value_on_the_command_line_exits_non_zero_with_the_key(tmp_path):
    result = run_cli("train.py", f"hydra.run.dir={tmp_path}", "optim.lr=-1")
    assert result.returncode != 0
    assert "optim.lr" in result.stderr and "must be > 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_key_gets_hydras_error(tmp_path):
    result = run_cli("train.py", f"hydra.run.dir={tmp_path}", "optim.learning_rate=0.1")
    assert result.returncode != 0
    assert "Could not override 'optim.learning_rate'" in result.stderr


def test_an_unknown_option_gets_hydras_error(tmp_path):
    result = run_cli("train.py", f"hydra.run.dir={tmp_path}", "model=resnet50")
    assert result.returncode != 0
    assert "Could not find 'model/resnet50'" in result.stderr


def test_an_unwritable_output_folder_fails_at_start(tmp_path):
    # /sys is a kernel file system in which nobody, root included, may create a folder.
    locked = Path("/sys/alexnet-run")
    result = run_cli("train.py", f"hydra.run.dir={locked}")
    assert result.returncode == 1, result.stderr[-2000:]
    assert re.search(rf"error: hydra\.run\.dir: cannot write to {locked}: (Operation not permitted|Permission denied|"
                     "Read-only file system)", result.stderr), result.stderr[-2000:]
    assert not locked.exists()


def test_an_output_folder_below_a_file_fails_at_start(tmp_path):
    # Works for root too: nothing can create a folder below a regular file.
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run_cli("train.py", f"hydra.run.dir={blocker / 'run'}")
    assert result.returncode != 0
    assert "hydra.run.dir" in result.stderr and "cannot write" in result.stderr
    assert blocker.read_text() == "not a folder"


# ---------------------------------------------------------------- options that would do nothing


@pytest.mark.parametrize("model", ["torchvision", "d2l", "simple_cifar"])
def test_towers_on_a_network_without_towers_are_refused_naming_model_groups(model):
    from alexnet.config import validate

    with pytest.raises(ConfigError, match=rf"^model\.groups: {model} has no towers, so groups=2 would change nothing"):
        validate(compose_config(f"model={model}", "model.groups=2"))


def test_lrn_with_another_norm_layer_is_warned_about_naming_model_lrn():
    from alexnet.config import validate

    with pytest.warns(UserWarning, match=r"model\.lrn=true does nothing with model\.norm=batchnorm"):
        validate(compose_config("model.norm=batchnorm"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate(compose_config("model.norm=batchnorm", "model.lrn=false"))  # said so: no warning


@pytest.mark.parametrize("option", ["data.num_workers=2", "data.center_crop=false", "data.max_bad_images=5"])
def test_file_options_on_in_memory_data_are_warned_about_naming_the_key(option):
    from alexnet.config import build_datamodule

    key = re.escape(option.split("=")[0])
    with pytest.warns(UserWarning, match=rf"{key}=\S+ does nothing for ShapesDataModule: its images are held in memory"):
        build_datamodule(compose_config(option).data)
