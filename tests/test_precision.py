"""Precision has one owner, trainer.precision: float32 as the paper unless the user asks, and said when not.

Section 5: the paper trained in float32 on GTX 580s. bf16 (trainer.precision=bf16-mixed)
and TF32 (tf32=true) are the user's explicit choices, logged at start; evaluate.py and
predict.py compute in what the run trained in.
"""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import TINY, compose_config, run_cli
from omegaconf import OmegaConf

import train as train_script
from alexnet.training.fast_path import configure
from alexnet.inference import run_precision
from alexnet.training.precision import Precision, describe, set_tf32

QUICK = [*TINY, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "test_after_fit=false"]


@pytest.mark.parametrize("trainer", [None, "auto", "cpu", "gpu", "ddp"])
def test_the_paper_experiment_trains_in_float32_with_any_trainer_option(trainer, monkeypatch):
    cfg = compose_config("experiment=paper_imagenet", *([f"trainer={trainer}"] if trainer else []))
    assert cfg.trainer.precision == "32-true"
    assert cfg.tf32 is False
    # and nothing on the way to lightning.Trainer changes it, on a CUDA machine either
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = OmegaConf.to_container(cfg.trainer, resolve=True)
    configure(cfg.fast_path, args)
    assert args["precision"] == "32-true"


def test_bf16_is_what_the_command_line_asks_for():
    cfg = compose_config("experiment=paper_imagenet", "trainer=gpu", "trainer.precision=bf16-mixed")
    assert cfg.trainer.precision == "bf16-mixed"


def test_the_line_names_any_precision_but_float32_and_tf32_on_cuda():
    assert describe("32-true", tf32=False, on_cuda=True) is None
    assert describe("32-true", tf32=True, on_cuda=False) is None  # TF32 is a CUDA mode
    assert describe("bf16-mixed", tf32=False, on_cuda=False) == (
        "training in bf16-mixed: not the paper's float32 (trainer.precision=32-true for the paper)")
    assert "16-mixed" in describe("16-mixed", False, True, verb="evaluating").removeprefix("evaluating in ")
    assert "TF32" in describe("32-true", tf32=True, on_cuda=True)


@pytest.mark.parametrize("on", [True, False])
def test_tf32_sets_both_the_matmul_and_the_convolution_flag(on):
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        set_tf32(on)
        assert torch.backends.cuda.matmul.allow_tf32 is on and torch.backends.cudnn.allow_tf32 is on
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _train_log(caplog, tmp_path, *overrides) -> list[str]:
    with caplog.at_level(logging.WARNING, logger="alexnet.training.precision"):
        train_script.train(compose_config(*QUICK, *overrides), tmp_path)
    return [r.getMessage() for r in caplog.records if r.name == "alexnet.training.precision"]


def test_a_float32_run_logs_no_precision_line(caplog, tmp_path):
    assert _train_log(caplog, tmp_path) == []


def test_a_bf16_run_says_so_in_one_line_at_start(caplog, tmp_path):
    lines = _train_log(caplog, tmp_path, "trainer.precision=bf16-mixed")
    assert lines == ["training in bf16-mixed: not the paper's float32 (trainer.precision=32-true for the paper)"]


def test_the_precision_callback_is_part_of_every_run(tmp_path):
    from alexnet.training.trainer import build_trainer

    trainer = build_trainer(compose_config(*QUICK, "tf32=true"), tmp_path)
    (callback,) = [c for c in trainer.callbacks if isinstance(c, Precision)]
    assert callback.tf32 is True


# ---------------------------------------------------------------- evaluate and predict


def test_evaluation_uses_the_runs_precision_unless_the_command_line_gives_one():
    cfg = compose_config()
    bf16_run = {"config": {"trainer": {"precision": "bf16-mixed"}, "tf32": True}}
    assert run_precision(bf16_run, cfg, []) == ("bf16-mixed", True)
    assert run_precision(bf16_run, cfg, ["trainer=gpu", "data.eval_crops=10"]) == ("bf16-mixed", True)
    told = compose_config("trainer.precision=32-true", "tf32=false")
    assert run_precision(bf16_run, told, ["trainer.precision=32-true", "tf32=false"]) == ("32-true", False)
    assert run_precision({}, cfg, []) == ("32-true", False)  # a checkpoint without its config


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("bf16") / "run"
    small = [o for o in TINY if not o.startswith(("data.num_train=", "data.num_val="))]  # bf16 on a CPU is slow
    result = run_cli("train.py", f"hydra.run.dir={run}", *small, "data.num_train=64", "data.num_val=16",
                     "trainer.precision=bf16-mixed", "test_after_fit=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training in bf16-mixed: not the paper's float32" in result.stdout + result.stderr
    return run / "checkpoints" / "last.ckpt"


def test_evaluate_on_a_bf16_run_evaluates_in_bf16(bf16_run):
    result = run_cli("scripts/evaluate.py", f"ckpt_path={bf16_run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "evaluating in bf16-mixed: not the paper's float32" in result.stderr
    told = run_cli("scripts/evaluate.py", f"ckpt_path={bf16_run}", "trainer.precision=32-true")
    assert told.returncode == 0, told.stderr[-3000:]
    assert "evaluating in" not in told.stderr


def test_predict_on_a_bf16_run_predicts_in_bf16(bf16_run, tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "red.jpg")
    result = run_cli("scripts/predict.py", f"ckpt_path={bf16_run}", f"images=[{tmp_path / 'red.jpg'}]")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "evaluating in bf16-mixed: not the paper's float32" in result.stderr
    assert sum(line.strip()[:2] in {f"{i}." for i in range(1, 6)} for line in result.stdout.splitlines()) == 5
