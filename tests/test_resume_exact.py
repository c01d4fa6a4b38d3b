"""A run stopped in mid-epoch and resumed with `ckpt_path=last` ends exactly where an uninterrupted run ends.

Folder JPEGs decoded by two worker processes, dropout and every augmentation
on, a checkpoint every step; stopped by kill -9 of the whole job after a step
checkpoint, or by SIGTERM (which saves last.ckpt at the end of the batch),
in one process and in two DDP processes. The resumed run's final weights
and momentum must equal the uninterrupted run's bit for bit: the loader's
position, the order, the crops and the dropout stream all continue. A run
that decodes on the device (`data.decode=device`: the workers only read
bytes) is killed too, and must resume to the same weights as the
uninterrupted run that decoded in the workers.
"""

from __future__ import annotations

import signal

import lightning as L
import pytest
import torch
from test_sampling import QUIET, folder_dataset, run_recording
from test_train import scalars

STEPS = {"one process": 6, "two DDP processes": 3}  # per epoch: 21 images in batches of 4, per rank
DEVICES = {"one process": ["trainer.accelerator=cpu"],
           "two DDP processes": ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]}


def args(data, processes: str) -> list[str]:
    return ["data=folder", f"data.root={data}", "data.num_workers=2", "data.batch_size=4", "data.resize_size=36",
            "model.dropout=0.5", "data.pca_std=0.1", "trainer.max_epochs=2", "checkpoint.every_n_train_steps=1",
            *DEVICES[processes], *QUIET]


def final_state(run) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def assert_same_training(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"weights differ: {key}"
    for p, state in a["optimizer_states"][0]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer_states"][0]["state"][p]["momentum_buffer"]), f"momentum {p}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return folder_dataset(tmp_path_factory.mktemp("resume") / "data", classes=3, per_class=7, size=(40, 36))


@pytest.fixture(scope="module")
def uninterrupted_runs(data, tmp_path_factory) -> dict:
    runs = {}
    for processes in STEPS:
        run = tmp_path_factory.mktemp("uninterrupted") / "run"
        result = run_recording(run, run.parent / "records", *args(data, processes))
        assert result.returncode == 0, result.stderr[-3000:]
        runs[processes] = run
    return runs


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_runs):
    return {processes: final_state(run) for processes, run in uninterrupted_runs.items()}


# data.decode=device shares the sampler and the draws with worker (test_sampling runs it under DDP):
# its kill is in one process.
STOPS = [(stop, "worker", processes) for stop in ("kill -9", "SIGTERM") for processes in STEPS]
STOPS.append(("kill -9", "device", "one process"))


@pytest.mark.parametrize("stop, decode, processes", STOPS, ids=["-".join(s) for s in STOPS])
def test_a_run_stopped_mid_epoch_resumes_to_the_uninterrupted_runs_weights_and_momentum(stop, decode, processes, data, uninterrupted, tmp_path):
    steps = STEPS[processes]
    at = steps + steps // 2  # in the middle of the second epoch
    run = tmp_path / "run"
    env = {"KILL_AT_STEP": str(at)} if stop == "kill -9" else {"SIGTERM_AT_STEP": str(at)}
    stopped = run_recording(run, tmp_path / "records", *args(data, processes), f"data.decode={decode}", env=env)
    if stop == "kill -9":
        assert stopped.returncode == -signal.SIGKILL, stopped.stderr[-3000:]
        saved_at = at  # the step checkpoint written before the kill
    else:
        assert stopped.returncode == 143, stopped.stderr[-3000:]
        saved_at = at + 1  # SIGTERM saves at the end of the batch it arrived in
    checkpoint = final_state(run)
    assert checkpoint["global_step"] == saved_at and saved_at % steps, "the run was stopped in mid-epoch"

    resumed = run_recording(run, tmp_path / "records", *args(data, processes), "ckpt_path=last")  # decode inherited
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from a checkpoint that ended before the epoch ended" not in resumed.stderr  # Lightning's warning
    assert_same_training(final_state(run), uninterrupted[processes])


def test_a_run_killed_during_its_end_of_epoch_validation_resumes_to_the_uninterrupted_runs_weights_and_curves(data, uninterrupted_runs, tmp_path):
    # A step checkpoint at the epoch's last batch (step 6), written before the epoch's validation,
    # resumed into a run that skipped that validation and trained no batch of the next epoch.
    run = tmp_path / "run"
    steps = STEPS["one process"]
    killed = run_recording(run, tmp_path / "records", *args(data, "one process"), env={"KILL_AT_VALIDATION": str(steps)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    saved_at = final_state(run)["global_step"]
    resumed = run_recording(run, tmp_path / "records", *args(data, "one process"), "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training(final_state(run), final_state(uninterrupted_runs["one process"]))
    ours, theirs = scalars(run), scalars(uninterrupted_runs["one process"])
    assert len(theirs["val/top1_error"]) == 2
    assert ours["val/top1_error"] == theirs["val/top1_error"]  # both epochs validated, each once, as there
    assert saved_at == steps - 1  # it resumed from the step save before the last batch (StepCheckpoint)


def test_a_step_save_due_at_an_epochs_last_batch_is_made_at_its_end_when_the_epoch_saves_nothing(data, uninterrupted, tmp_path):
    # Every 3 steps, no epoch-end save in epoch 1 (every 2 epochs): the save due at step 6, the last
    # batch, is made at the epoch's end, so a kill at step 7 loses nothing (not steps 4-6).
    run = tmp_path / "run"
    every_3 = [a.replace("every_n_train_steps=1", "every_n_train_steps=3") for a in args(data, "one process")]
    killed = run_recording(run, tmp_path / "records", *every_3, "checkpoint.every_n_epochs=2",
                           env={"KILL_AT_STEP": str(STEPS["one process"] + 1)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert final_state(run)["global_step"] == STEPS["one process"]
    resumed = run_recording(run, tmp_path / "records", *every_3, "checkpoint.every_n_epochs=2", "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training(final_state(run), uninterrupted["one process"])


def test_a_sigterm_in_an_epochs_last_batch_stops_after_the_next_batch_and_resumes_to_the_uninterrupted_runs_weights(data, uninterrupted, tmp_path):
    # Acted on at the last batch's end, before the validation, it saved a checkpoint that
    # Lightning resumed without the next epoch (the run ended at step 6 of 12).
    run = tmp_path / "run"
    steps = STEPS["one process"]
    stopped = run_recording(run, tmp_path / "records", *args(data, "one process"), env={"SIGTERM_AT_STEP": str(steps - 1)})
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    saved_at = final_state(run)["global_step"]
    resumed = run_recording(run, tmp_path / "records", *args(data, "one process"), "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training(final_state(run), uninterrupted["one process"])
    assert saved_at == steps + 1  # after the validation and the next epoch's first batch


def test_after_a_kill_between_checkpoints_tensorboard_has_each_step_once_with_the_uninterrupted_runs_values(data, uninterrupted_runs, tmp_path):
    # A checkpoint every 4 steps and at the epoch's end (6 steps), killed after step 11: the killed
    # run logged steps 8-10 after its last checkpoint, and the resumed run logs them again.
    run = tmp_path / "run"
    every_4 = [a.replace("every_n_train_steps=1", "every_n_train_steps=4") for a in args(data, "one process")]
    killed = run_recording(run, tmp_path / "records", *every_4, env={"KILL_AT_STEP": "11"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert final_state(run)["global_step"] == 8
    resumed = run_recording(run, tmp_path / "records", *every_4, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # the killed run's and the resumed one's
    ours, theirs = scalars(run), scalars(uninterrupted_runs["one process"])
    for tag in ("train/loss", "train/top1_error", "val/top1_error", "lr", "epoch"):
        assert [step for step, _ in ours[tag]] == [step for step, _ in theirs[tag]], f"{tag}: steps"
        assert ours[tag] == theirs[tag], f"{tag}: values"


# ---------------------------------------------------------------- extending a run, older checkpoints


def test_extending_a_finished_cosine_run_anneals_on_to_the_floor_and_never_raises_the_rate(tmp_path):
    from conftest import TINY, compose_config

    import train as train_script

    base = [*TINY, "optim.schedule=cosine", "optim.min_lr=1e-4", "test_after_fit=false", "trainer.num_sanity_val_steps=0"]
    train_script.train(compose_config(*base, "trainer.max_epochs=3"), tmp_path)
    stopped = final_state(tmp_path)["lr_schedulers"][0]["_last_lr"][0]
    assert stopped == pytest.approx(1e-4)  # the first plan ended at its floor
    train_script.train(compose_config(*base, "trainer.max_epochs=5", "ckpt_path=last"), tmp_path)
    rates = [v for _, v in scalars(tmp_path)["lr"]]  # one per epoch
    assert len(rates) == 5
    assert all(later <= earlier for earlier, later in zip(rates, rates[1:])), rates
    assert final_state(tmp_path)["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(1e-4)


def test_extending_a_cosine_run_stopped_half_way_anneals_from_where_it_stood(tmp_path):
    from alexnet.training.optim import CosineToEnd

    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    schedule = CosineToEnd(optimizer, T_max=10, eta_min=0.0)
    for _ in range(5):
        optimizer.step()
        schedule.step()
    assert schedule.get_last_lr()[0] == pytest.approx(0.05)  # half-way down a 10-epoch plan
    state = schedule.state_dict()
    resumed = CosineToEnd(torch.optim.SGD([weight], lr=0.1), T_max=20)
    resumed.load_state_dict(state)
    assert resumed.replan(20)
    rates = []
    for _ in range(15):
        resumed.optimizer.step()
        resumed.step()
        rates.append(resumed.get_last_lr()[0])
    assert rates[0] < 0.05 and rates[0] > 0.049  # no jump: on from 0.05
    assert all(b <= a for a, b in zip(rates, rates[1:]))
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)  # the floor at epoch 20


def test_a_checkpoint_from_before_exact_resume_still_resumes_with_one_warning(tmp_path):
    from conftest import TINY, compose_config

    import train as train_script
    from alexnet.training.checkpoints import atomic_torch_save

    cfg = [*TINY, "trainer.max_epochs=1", "checkpoint.every_n_train_steps=3", "test_after_fit=false"]
    train_script.train(compose_config(*cfg), tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"
    old = torch.load(last, map_location="cpu", weights_only=False)
    # What the earlier code wrote: the DataModule's shuffle generator, no loader position.
    name = next(k for k in old if k.endswith("DataModule"))
    old[name] = {"shuffle_generator": torch.Generator().get_state()}
    old["loops"]["fit_loop"].pop("combined_loader", None)
    atomic_torch_save(old, last)
    with pytest.warns(UserWarning, match=r"written before training order and augmentation became functions of "
                      r"\(seed, epoch, index\): the run resumes, but the order of the epoch it stopped in restarts"):
        train_script.train(compose_config(*cfg, "trainer.max_epochs=2", "ckpt_path=last"), tmp_path)
    assert final_state(tmp_path)["global_step"] == 2 * 8


def test_a_loader_built_before_the_checkpoint_is_restored_stops_the_run_instead_of_drawing_other_batches(tmp_path, monkeypatch):
    # Lightning issue #20550: configure_optimizers reading trainer.estimated_stepping_batches builds the
    # training loader before the checkpoint is restored, so the loader's saved position would be dropped.
    from conftest import TINY, compose_config

    import train as train_script
    from alexnet.errors import TrainingError
    from alexnet.training.system import AlexNetSystem

    from test_faults import add_callback

    class Crash(Exception):
        pass

    class CrashAtStep10(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 10:
                raise Crash

    cfg = [*TINY, "trainer.max_epochs=2", "checkpoint.every_n_train_steps=3", "test_after_fit=false"]
    add_callback(monkeypatch, CrashAtStep10())
    with pytest.raises(Crash):
        train_script.train(compose_config(*cfg), tmp_path)  # 8 steps an epoch
    monkeypatch.undo()
    assert final_state(tmp_path)["global_step"] == 9  # the step save in the middle of the second epoch
    configure = AlexNetSystem.configure_optimizers

    def reads_the_stepping_batches(self):
        assert self.trainer.estimated_stepping_batches > 0
        return configure(self)

    monkeypatch.setattr(AlexNetSystem, "configure_optimizers", reads_the_stepping_batches)
    with pytest.raises(TrainingError, match=r"built before the checkpoint was restored .*Lightning issue #20550"):
        train_script.train(compose_config(*cfg, "ckpt_path=last"), tmp_path)
    monkeypatch.undo()
    train_script.train(compose_config(*cfg, "ckpt_path=last"), tmp_path)  # without it, the run resumes and ends
    assert final_state(tmp_path)["global_step"] == 16
