"""Section 5's schedule: lr / 10 when the validation error stopped improving with the current rate, three times.

The scheduler is driven with made-up validation errors, one per epoch, as Lightning
drives it with `val/top1_error`.
"""

from __future__ import annotations

import io

import pytest
import torch
from conftest import compose_config
from torch import nn
from torch.optim import SGD
from torch.optim.lr_scheduler import ReduceLROnPlateau

from alexnet.training.optim import MONITOR, PaperPlateau, build_optimizer


def scheduler(**kwargs) -> PaperPlateau:
    optimizer = SGD(nn.Linear(2, 2).parameters(), lr=0.01, momentum=0.9)
    return PaperPlateau(optimizer, **{"patience": 4, **kwargs})


def drive(sched: PaperPlateau, errors) -> list[float]:
    """The learning rate after each epoch's validation error."""
    lrs = []
    for error in errors:
        sched.step(error)
        lrs.append(sched.optimizer.param_groups[0]["lr"])
    return lrs


def learns_then_stalls(rounds: int, learn: int = 6, stall: int = 20) -> list[float]:
    """Each round: `learn` epochs of falling error, then `stall` epochs flat at the round's best."""
    errors, error = [], 0.9
    for _ in range(rounds):
        for _ in range(learn):
            error *= 0.9
            errors.append(error)
        errors += [error] * stall
    return errors


def drops(lrs: list[float], start: float = 0.01) -> int:
    return sum(1 for before, after in zip([start, *lrs], lrs) if after < before)


def test_errors_that_improve_then_stall_get_exactly_three_drops_never_more():
    sched = scheduler()
    lrs = drive(sched, learns_then_stalls(rounds=6))  # six plateaus, room for six drops
    assert drops(lrs) == 3 and sched.drops == 3
    assert lrs[-1] == pytest.approx(1e-5)  # Section 5: 0.01, reduced three times
    assert sorted(set(lrs), reverse=True) == pytest.approx([0.01, 1e-3, 1e-4, 1e-5])


def test_a_drop_comes_after_more_than_patience_epochs_without_a_new_best():
    sched = scheduler(patience=4)
    lrs = drive(sched, [0.9, 0.8, 0.7] + [0.7] * 6)
    # the best is epoch 3; epochs 4-7 are 4 bad epochs (tolerated), epoch 8 the fifth
    assert lrs[:7] == [0.01] * 7 and lrs[7] == pytest.approx(1e-3)


def test_errors_at_chance_from_the_start_get_no_drop():
    # A network at chance (10 classes: 0.9 error) for 60 epochs, with noise smaller than the threshold.
    noise = [0.0, 3e-4, -2e-4, 1e-4, -3e-4]
    lrs = drive(scheduler(), [0.9 + noise[i % 5] for i in range(60)])
    assert lrs == [0.01] * 60


def test_a_network_that_sits_at_chance_then_learns_is_first_dropped_after_it_learned_and_stalled():
    errors = [0.9] * 15 + [0.8, 0.6, 0.5] + [0.5] * 10
    lrs = drive(scheduler(patience=4), errors)
    assert lrs[:22] == [0.01] * 22  # 15 flat epochs, then 3 of learning, then 4 tolerated
    assert lrs[22] == pytest.approx(1e-3)


def test_after_a_drop_the_new_rate_must_improve_before_it_drops_again():
    errors = [0.9, 0.8] + [0.8] * 5 + [0.85] * 30  # after the drop the error never beats its first value
    lrs = drive(scheduler(patience=4), errors)
    assert drops(lrs) == 1


def test_max_drops_null_keeps_dropping_and_zero_never_drops():
    errors = learns_then_stalls(rounds=6)
    assert drops(drive(scheduler(max_drops=None), errors)) == 6
    assert drops(drive(scheduler(max_drops=0), errors)) == 0


def test_a_state_dict_round_trip_mid_way_continues_identically():
    errors = learns_then_stalls(rounds=5)
    half = 35  # three epochs into the second plateau, after one drop
    straight = scheduler()
    lrs = drive(straight, errors)

    first = scheduler()
    drive(first, errors[:half])
    buffer = io.BytesIO()
    torch.save({"scheduler": first.state_dict(), "optimizer": first.optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # as Lightning's checkpoints load
    resumed = scheduler()
    resumed.optimizer.load_state_dict(saved["optimizer"])
    resumed.load_state_dict(saved["scheduler"])
    assert resumed.drops == first.drops == 1
    assert drive(resumed, errors[half:]) == lrs[half:]
    assert resumed.state_dict() == straight.state_dict()


def test_the_paper_schedule_is_built_from_sgd_paper_and_watches_the_validation_error():
    cfg = compose_config("experiment=paper_imagenet")
    optim = dict(cfg.optim)
    config = build_optimizer(nn.Linear(2, 2), optim, cfg.trainer.max_epochs)["lr_scheduler"]
    sched = config["scheduler"]
    # Lightning passes the monitored metric to ReduceLROnPlateau and its subclasses
    assert isinstance(sched, ReduceLROnPlateau) and config["monitor"] == MONITOR == "val/top1_error"
    assert (sched.factor, sched.patience, sched.max_drops) == (0.1, 4, 3)
    assert compose_config().optim.max_drops == 3  # sgd_paper's default


def test_the_optim_keys_are_checked_by_the_module_that_builds_the_optimizer():
    from alexnet.errors import ConfigError
    from alexnet.training.optim import check_optim

    optim = dict(compose_config().optim)
    check_optim(optim)
    for key, bad in (("lr", 0.0), ("momentum", 1.0), ("schedule", "linear"), ("max_drops", -1), ("factor", 1.5)):
        with pytest.raises(ConfigError, match=rf"^optim\.{key}: "):
            check_optim({**optim, key: bad})
    with pytest.raises(ConfigError, match=r"^optim\.schedule: must be one of"):
        build_optimizer(nn.Linear(2, 2), {**optim, "schedule": "linear"}, 10)
