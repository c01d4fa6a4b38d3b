"""What a run tells its user: a start flat at chance."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY, compose_config

import train as train_script
from alexnet.callbacks import FlatStart

LN10 = math.log(10)


# ---------------------------------------------------------------- a flat start


def feed(callback: FlatStart, losses, init: str = "paper", rank_zero: bool = True) -> None:
    """Drive the callback as Lightning does, with one loss per training step."""
    system = SimpleNamespace(hparams=SimpleNamespace(num_classes=10, model={"name": "cifar", "init": init}))
    trainer = SimpleNamespace(is_global_zero=rank_zero)
    for step, loss in enumerate(losses):
        callback.on_train_batch_end(trainer, system, {"loss": torch.tensor(loss)}, None, step)


def at_chance(n: int) -> list[float]:
    """A network stuck at chance: its loss jitters around and above ln(10) from batch to batch."""
    return [LN10 * (1.0 + (0.06, 0.01, -0.02, 0.08, 0.0)[i % 5]) for i in range(n)]


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "alexnet.callbacks" and r.levelno == logging.WARNING]


def test_a_loss_at_chance_for_the_given_steps_warns_once_naming_the_cause_and_the_alternatives(caplog):
    callback = FlatStart(steps=100)
    with caplog.at_level(logging.WARNING):
        feed(callback, at_chance(99))
        assert warnings_of(caplog) == []
        feed(callback, at_chance(400))  # 499 steps at chance: still one warning
    (line,) = warnings_of(caplog)
    assert "ln(10) = 2.303" in line and "for 100 steps" in line
    assert "model.init=paper" in line and "model.init=caffe" in line and "model.init=kaiming" in line


def test_a_learning_network_gets_no_warning(caplog):
    learning = [2.6 - 1.6 * i / 300 for i in range(300)]  # from above chance down to 1.0
    with caplog.at_level(logging.WARNING):
        feed(callback := FlatStart(steps=100), learning)
    assert warnings_of(caplog) == [] and callback.done


def test_only_the_start_is_watched(caplog):
    with caplog.at_level(logging.WARNING):
        feed(FlatStart(steps=50), [1.0] * 30 + at_chance(200))  # it learned, then came back to chance
    assert warnings_of(caplog) == []


def test_a_loss_far_above_chance_is_not_a_flat_start(caplog):
    with caplog.at_level(logging.WARNING):
        feed(FlatStart(steps=50), [2 * LN10] * 200)
    assert warnings_of(caplog) == []


def test_another_init_gets_no_blame_and_other_ranks_stay_silent(caplog):
    with caplog.at_level(logging.WARNING):
        feed(FlatStart(steps=20), at_chance(30), init="kaiming")
        feed(FlatStart(steps=20), at_chance(30), rank_zero=False)
    (line,) = warnings_of(caplog)
    assert "model.init=kaiming" in line and "model.init=paper" not in line


@pytest.mark.parametrize("value, present", [("1000", True), ("0", False), ("null", False)])
def test_flat_start_steps_turns_the_warning_on_and_off(value, present, tmp_path):
    from alexnet.trainer import build_trainer

    trainer = build_trainer(compose_config(f"flat_start_steps={value}"), tmp_path)
    found = [c for c in trainer.callbacks if isinstance(c, FlatStart)]
    assert bool(found) is present and (not found or found[0].steps == 1000)


def test_a_real_run_at_chance_with_the_paper_init_warns(caplog, tmp_path):
    # The cifar network with the paper's N(0, 0.01) init on standardised inputs: the signal
    # dies on the way to fc8, and the loss stays at ln(10) for these 16 steps.
    cfg = compose_config(*TINY, "model.init=paper", "data.batch_size=128", "data.num_train=1024", "trainer.max_epochs=2",
                         "flat_start_steps=12", "test_after_fit=false")
    with caplog.at_level(logging.WARNING):
        train_script.train(cfg, tmp_path)
    (line,) = warnings_of(caplog)
    assert "for 12 steps" in line and "model.init=paper" in line
