"""Faults and bad input: `python train.py` survives them without losing or corrupting what it wrote.

The matrix runs the real command line in a subprocess for each case and checks
the exit status, the message, and that earlier outputs are intact. Cases run
two at a time (each spends most of its seconds importing torch and Lightning).
The tests after it check what the command line cannot show cheaply: the
state a resumed run starts from, the guards one by one, SLURM's plumbing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml
from conftest import REPO, TINY, compose_config, signal_group
from data_fixtures import image_tree

import alexnet.training.trainer
import train as train_script
from alexnet.training.checkpoints import PARTIAL_SUFFIX, atomic_torch_save
from alexnet.errors import TrainingError

STEPS_PER_EPOCH = 256 // 32  # TINY
NO_BAR = [a for a in TINY if not a.startswith("trainer.accelerator")]
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true", *NO_BAR]


# ---------------------------------------------------------------- running and watching train.py


def launch(args: list[str], log_dir: Path, shell_prefix: str = "") -> subprocess.Popen:
    """Start train.py in its own process group; stdout and stderr go to files (no pipe to fill)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    # One thread each: cases run two at a time on a shared CPU, and oversubscribed torch crawls.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1",
           "PYTHONFAULTHANDLER": "1"}  # a SIGABRT (finish's timeout) prints each thread's stack
    cmd = [sys.executable, str(REPO / "train.py"), *args]
    if shell_prefix:  # e.g. `ulimit -f N`, set in a shell so no preexec_fn runs in a threaded test
        cmd = ["bash", "-c", f'{shell_prefix}; exec "$@"', "bash", *cmd]
    with open(log_dir / "stdout.txt", "w") as out, open(log_dir / "stderr.txt", "w") as err:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err, start_new_session=True)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def finish(proc: subprocess.Popen, log_dir: Path, timeout: float = 240) -> Result:
    """Wait for the run; one still running after ``timeout`` fails the test with its processes' stacks."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        signal_group(proc, signal.SIGABRT)  # as conftest.run_command: every process's stack on stderr
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        signal_group(proc, signal.SIGKILL)
        pytest.fail(f"still running after {timeout:.0f} s: {proc.args}\n--- stderr, with each process's stack (end)\n"
                    f"{(log_dir / 'stderr.txt').read_text()[-30000:]}", pytrace=False)
    finally:
        signal_group(proc, signal.SIGKILL)  # whatever is left of it: a DDP rank, a loader worker
    return Result(proc.returncode, (log_dir / "stdout.txt").read_text(), (log_dir / "stderr.txt").read_text())


def add_callback(monkeypatch, callback, first: bool = False) -> None:
    """Make train.py's trainer carry one more callback (first: before the project's own)."""
    build = alexnet.training.trainer.build_trainer

    def build_with_callback(cfg, run_dir, **kwargs):
        trainer = build(cfg, run_dir, **kwargs)
        trainer.callbacks.insert(0 if first else len(trainer.callbacks), callback)
        return trainer

    monkeypatch.setattr(train_script, "build_trainer", build_with_callback)


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120, poll: float = 0.05) -> bool:
    """Poll until ``condition()``; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for the run")


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def check_consistent(path: Path, steps_per_epoch: int = STEPS_PER_EPOCH) -> dict:
    """A checkpoint loads, its weights are finite, and epoch, step, lr and optimizer state agree."""
    c = load(path)
    assert all(torch.isfinite(v).all() for v in c["state_dict"].values() if v.is_floating_point()), path
    loops = c["loops"]["fit_loop"]
    steps = loops["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]["step"]["total"]["completed"]
    assert c["global_step"] == steps, f"{path}: global_step {c['global_step']} != optimizer steps {steps}"
    in_epoch = loops["epoch_loop.batch_progress"]["current"]["processed"]  # "completed" lags inside on_train_batch_end
    assert c["epoch"] * steps_per_epoch + in_epoch == c["global_step"], f"{path}: epoch and step disagree"
    (optimizer,) = c["optimizer_states"]
    (scheduler,) = c["lr_schedulers"]
    assert optimizer["param_groups"][0]["lr"] == pytest.approx(scheduler["_last_lr"][0]), f"{path}: lr"
    assert scheduler["last_epoch"] in (c["epoch"], c["epoch"] + 1), f"{path}: scheduler epoch"
    if c["global_step"]:
        params = optimizer["param_groups"][0]["params"]
        assert all("momentum_buffer" in optimizer["state"][p] for p in params), f"{path}: momentum missing"
    return c


def digest(folder: Path) -> dict[str, str]:
    """sha256 of the files a failed command must leave alone (not Hydra's own bookkeeping and logs)."""
    skip = (".hydra", "tensorboard")
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not set(p.relative_to(folder).parts) & set(skip) and p.suffix != ".log"
    }


# ---------------------------------------------------------------- the matrix


@dataclass
class Case:
    """One fault: what to prepare, what to run, and what must come out.

    ``args`` may say ``{run}`` (the run folder, passed as hydra.run.dir unless
    the case gives its own) and ``{dir}`` (the case's scratch folder). With
    ``previous`` the run folder starts as a copy of a finished one-epoch run.
    ``intact``: every file there before the command is byte-identical after it.
    """

    id: str
    args: list[str]
    code: int
    message: str  # a regular expression, searched in stderr and stdout
    previous: bool = False
    setup: Callable[[Path, Path], None] | None = None  # (scratch folder, run folder)
    intact: bool = True
    shell_prefix: str = ""
    signal_when_saved: int | None = None  # send this signal once the run has written last.ckpt
    check: Callable[[Path, Path, Result, re.Match, dict], None] | None = None  # (scratch, run, result, match, digest before)


def truncate_last(d: Path, run: Path) -> None:
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a non-atomic writer's leftover


def write_foreign(d: Path, run: Path) -> None:
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, d / "foreign.ckpt")  # loads, but not ours


def write_bad_images(d: Path, run: Path) -> None:
    image_tree(d / "images", classes=("a", "b"), per_class=3, size=(40, 36))
    for i in range(2):
        (d / "images" / "train" / "a" / f"broken{i}.JPEG").write_bytes(b"\xff\xd8\xff garbage")


def block_with_file(d: Path, run: Path) -> None:
    (d / "file").write_text("not a folder")


def checkpoints_is_a_file(d: Path, run: Path) -> None:
    run.mkdir(parents=True)
    (run / "checkpoints").write_text("not a folder")


def damage_overrides(d: Path, run: Path) -> None:
    (run / ".hydra" / "overrides.yaml").write_text("- [unclosed")


def kill_9_after_a_checkpoint(d: Path, run: Path) -> None:
    # Train with step checkpoints and SIGKILL it once a checkpoint is on disk and more are being written.
    args = [f"hydra.run.dir={run}", *TINY, "trainer.max_epochs=2", "checkpoint.every_n_train_steps=1", "test_after_fit=false"]
    proc = launch(args, d / "killed")
    last = run / "checkpoints" / "last.ckpt"
    assert wait_for(lambda: last.is_file() and load(last)["global_step"] >= 2, proc), "the run ended before the kill"
    proc.send_signal(signal.SIGKILL)
    finish(proc, d / "killed")
    d.joinpath("killed_at").write_text(str(check_consistent(last)["global_step"]))
    shutil.copytree(run, d / "killed_copy")  # as the kill left it, for the in-process test below


def nothing_written(d: Path, run: Path, result: Result, match, before: dict) -> None:
    assert not (run / "checkpoints").exists()


def no_checkpoint_from_the_failing_step(d: Path, run: Path, result: Result, match, before: dict, steps_per_epoch=STEPS_PER_EPOCH) -> None:
    step = int(match.group("step"))
    for ckpt in (run / "checkpoints").glob("*.ckpt"):
        c = check_consistent(ckpt, steps_per_epoch)  # finite weights among the rest
        unchanged = before.get(str(ckpt.relative_to(d))) == hashlib.sha256(ckpt.read_bytes()).hexdigest()
        assert unchanged or c["global_step"] <= step, f"{ckpt} holds the failing step {step} or later"


def counted_skips(d: Path, run: Path, result: Result, match, before: dict) -> None:
    c = check_consistent(run / "checkpoints" / "last.ckpt")
    assert c["callbacks"]["NonFiniteGuard"]["skipped"] >= 1


def saved_at_the_named_step(d: Path, run: Path, result: Result, match, before: dict, steps_per_epoch=STEPS_PER_EPOCH) -> None:
    c = check_consistent(run / "checkpoints" / "last.ckpt", steps_per_epoch)
    assert c["global_step"] == int(match.group("step"))
    assert "Traceback" not in result.stderr


def ddp_saved_both_ranks(d: Path, run: Path, result: Result, match, before: dict) -> None:
    saved_at_the_named_step(d, run, result, match, before, STEPS_PER_EPOCH // 2)  # each rank takes half
    output = result.stdout + result.stderr
    assert "[rank: 0] received SIGTERM" in output and "[rank: 1] received SIGTERM" in output  # forwarded by rank zero
    assert len(load(run / "checkpoints" / "last.ckpt")["rng_states"]) == 2  # every rank's random state


def ddp_both_ranks_stopped(d: Path, run: Path, result: Result, match, before: dict) -> None:
    no_checkpoint_from_the_failing_step(d, run, result, match, before, STEPS_PER_EPOCH // 2)
    errors = re.findall(r"^error: the (training loss|weights)", result.stderr, re.M)
    assert len(errors) == 2, f"every rank stops with the error, got {errors}"


def resumed_where_killed(d: Path, run: Path, result: Result, match, before: dict) -> None:
    killed_at = int((d / "killed_at").read_text())
    final = check_consistent(run / "checkpoints" / "last.ckpt")
    assert final["global_step"] == 2 * STEPS_PER_EPOCH > killed_at
    assert not list((run / "checkpoints").glob(f"*{PARTIAL_SUFFIX}"))  # the kill's leftovers are cleared


CASES = [
    # -- checkpoints to resume from
    Case("truncated last.ckpt, ckpt_path=last", ["ckpt_path=last"], 1,
         r"error: ckpt_path: \S+/last\.ckpt is not a readable checkpoint", previous=True, setup=truncate_last),
    Case("truncated last.ckpt, ckpt_path=auto is no fresh start", ["ckpt_path=auto"], 1,
         r"error: ckpt_path: \S+/last\.ckpt is not a readable checkpoint", previous=True, setup=truncate_last),
    Case("foreign checkpoint file", [*TINY, "ckpt_path={dir}/foreign.ckpt"], 1,
         r"\S+/foreign\.ckpt is not a checkpoint written by this tool", setup=write_foreign, check=nothing_written),
    Case("ckpt_path=last with no checkpoint", [*TINY, "ckpt_path=last"], 1, r"`last` asks to resume, but there is no checkpoint at",
         check=nothing_written),
    Case("checkpoint of another network", ["model=simple_cifar", "ckpt_path=last"], 1,
         r"model\.name: checkpoint has 'cifar', this run has 'simple_cifar'", previous=True),
    Case("damaged .hydra/overrides.yaml when resuming", ["ckpt_path=last"], 1,
         r"error: \S+/\.hydra/overrides\.yaml is not the list of overrides", previous=True, setup=damage_overrides),
    # -- configuration and data
    Case("labels beyond model.num_classes", [*TINY, "model.num_classes=5"], 1,
         r"error: model\.num_classes: is 5, but the data has 10 classes \(labels 0-9\)", check=nothing_written),
    Case("out-of-range value", [*TINY, "optim.lr=0"], 1, r"error: optim\.lr: must be > 0, got 0", check=nothing_written),
    Case("unreadable images past data.max_bad_images",
         ["data=folder", "data.root={dir}/images", "data.max_bad_images=1", "data.num_workers=0", "data.batch_size=4",
          *TINY[3:], "test_after_fit=false"], 1,
         r"error: data\.max_bad_images: 2 unreadable images, more than the 1 allowed:\s+\S+/broken\d\.JPEG .*\s+\S+/broken\d\.JPEG",
         setup=write_bad_images),
    # -- where outputs go
    Case("run folder below a file", ["hydra.run.dir={dir}/file/run", *TINY], 1, r"error: hydra\.run\.dir: cannot write to \S+/file/run",
         setup=block_with_file),
    Case("checkpoint folder that is a file", [*TINY], 1, r"error: cannot write checkpoints to \S+/run/checkpoints: File exists",
         setup=checkpoints_is_a_file),
    Case("full disk (file size limit) during a checkpoint", ["ckpt_path=last", "trainer.max_epochs=2", "checkpoint.every_n_train_steps=1"], 1,
         r"error: cannot write the checkpoint \S+/last\.ckpt: File too large; the previous last\.ckpt is intact", previous=True,
         shell_prefix="ulimit -f 4096"),  # 4 MiB: the logs fit, a 10 MB checkpoint does not
    # -- training that goes wrong
    Case("NaN loss stops the run naming the step", [*TINY, "optim.lr=1e10", "checkpoint.every_n_train_steps=1"], 1,
         r"error: the (training loss is (nan|inf)|weights are not finite) (at|after) training step (?P<step>\d+)",
         previous=True, intact=False, check=no_checkpoint_from_the_failing_step),  # a fresh start there: its step-1 save may replace last.ckpt
    Case("NaN loss skipped and counted with nonfinite_loss=skip",
         [*TINY, "data.num_train=96", "data.num_val=32", "optim.lr=1e10", "nonfinite_loss=skip", "test_after_fit=false"], 0,
         r"skipped the batch of training step \d+ \(epoch 0\): the loss is nan \(\d+ skipped so far\)", check=counted_skips),
    Case("SIGTERM saves last.ckpt and exits 143", [*TINY, "trainer.max_epochs=50", "checkpoint.every_n_train_steps=1"], 143,
         r"stopped by SIGTERM at training step (?P<step>\d+) \(epoch \d+\); saved \S+/last\.ckpt",
         signal_when_saved=signal.SIGTERM, check=saved_at_the_named_step),
    Case("kill -9, then ckpt_path=last resumes", ["ckpt_path=last"], 0, r"Restored all states from the checkpoint at \S+/last\.ckpt",
         setup=kill_9_after_a_checkpoint, intact=False, check=resumed_where_killed),
    # -- several processes: every rank stops, at the same step
    Case("DDP: SIGTERM saves and stops both ranks", [*DDP, "trainer.max_epochs=50", "checkpoint.every_n_train_steps=1"], 143,
         r"stopped by SIGTERM at training step (?P<step>\d+)", signal_when_saved=signal.SIGTERM, check=ddp_saved_both_ranks),
    Case("DDP: NaN loss stops both ranks at one step", [*DDP, "optim.lr=1e10", "checkpoint.every_n_train_steps=1"], 1,
         r"error: the (training loss is (nan|inf)|weights are not finite)[^\n]* (at|after) training step (?P<step>\d+)",
         check=ddp_both_ranks_stopped),
]


def run_case(case: Case, scratch: Path, previous_run: Path) -> tuple[Result, dict, dict]:
    run = scratch / "run"
    scratch.mkdir(parents=True)
    if case.previous:
        shutil.copytree(previous_run, run)
    if case.setup:
        case.setup(scratch, run)
    before = digest(scratch)
    args = [a.format(run=run, dir=scratch) for a in case.args]
    if not any(a.startswith("hydra.run.dir=") for a in args):
        args.insert(0, f"hydra.run.dir={run}")
    proc = launch(args, scratch / "log", case.shell_prefix)
    if case.signal_when_saved is not None:
        last = run / "checkpoints" / "last.ckpt"
        if wait_for(last.is_file, proc):
            time.sleep(0.5)
            proc.send_signal(case.signal_when_saved)  # to rank zero only, as a scheduler would
    result = finish(proc, scratch / "log")
    return result, before, digest(scratch)


@pytest.fixture(scope="module")
def previous_run(tmp_path_factory) -> Path:
    """A finished one-epoch run: tensorboard/, checkpoints/last.ckpt and a best-*.ckpt, and the
    .hydra/overrides.yaml Hydra writes. Trained in this process, which has torch imported already."""
    run = tmp_path_factory.mktemp("previous") / "run"
    overrides = [*TINY, "test_after_fit=false"]
    train_script.train(compose_config(*overrides), run)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return run


@pytest.fixture(scope="module")
def matrix(request, previous_run, tmp_path_factory) -> dict[str, tuple]:
    """Every selected case, run two at a time."""
    wanted = {
        item.callspec.params["case"].id
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_fault_matrix" and hasattr(item, "callspec")
    }
    cases = [c for c in CASES if c.id in wanted]
    root = tmp_path_factory.mktemp("matrix")
    scratch = {c.id: root / f"case{i:02d}" for i, c in enumerate(cases)}
    # The long ones (several processes, a kill and a resume) first, so the two workers end together.
    cases.sort(key=lambda c: not (c.id.startswith("DDP") or c.setup is kill_9_after_a_checkpoint))
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {c.id: pool.submit(run_case, c, scratch[c.id], previous_run) for c in cases}
        return {cid: (scratch[cid], future.exception() or future.result()) for cid, future in futures.items()}


def test_the_matrix_has_at_least_15_cases():
    assert len(CASES) >= 15 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault_matrix(case: Case, matrix):
    scratch, outcome = matrix[case.id]
    if isinstance(outcome, BaseException):
        raise outcome
    result, before, after = outcome
    output = result.stderr + result.stdout
    assert result.returncode == case.code, f"exit {result.returncode}, expected {case.code}\n{result.stderr[-3000:]}"
    match = re.search(case.message, output)
    assert match, f"no {case.message!r} in the output:\n{result.stderr[-3000:]}"
    if case.code == 1:
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if case.intact:
        changed = [name for name, sha in before.items() if after.get(name) != sha]
        assert not changed, f"earlier outputs changed or vanished: {changed}"
    leftovers = [name for name in after if name.endswith(PARTIAL_SUFFIX)]
    assert not leftovers, f"partial files left: {leftovers}"
    if case.check:
        case.check(scratch, scratch / "run", result, match, before)


# ---------------------------------------------------------------- the pieces, one by one


def test_an_interrupted_write_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": torch.tensor(1)}, path)

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(TrainingError, match=r"cannot write the checkpoint \S+last\.ckpt: No space left on device; the previous last\.ckpt is intact"):
        atomic_torch_save({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # the partial file is gone


def test_a_checkpoint_gets_the_file_mode_of_an_ordinary_file(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({}, path)
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    assert path.stat().st_mode == probe.stat().st_mode  # not mkstemp's 0600


def test_after_kill_9_resume_starts_from_the_checkpoints_epoch_step_lr_and_optimizer_state(matrix, tmp_path, monkeypatch):
    import lightning as L

    run = tmp_path / "run"
    killed = "kill -9, then ckpt_path=last resumes"
    if killed in matrix:  # the matrix killed a run already: start from a copy of what it left
        shutil.copytree(matrix[killed][0] / "killed_copy", run)
    else:
        kill_9_after_a_checkpoint(tmp_path, run)
    saved = check_consistent(run / "checkpoints" / "last.ckpt")
    seen = {}

    class Recorded(Exception):
        pass

    class Record(L.Callback):
        def on_train_start(self, trainer, pl_module):
            optimizer = trainer.optimizers[0]
            seen.update(epoch=trainer.current_epoch, step=trainer.global_step, lr=optimizer.param_groups[0]["lr"],
                        state=optimizer.state_dict()["state"],
                        weights={k: v.clone() for k, v in pl_module.state_dict().items()})
            raise Recorded  # enough: Lightning tears the run down and re-raises it

    add_callback(monkeypatch, Record())
    cfg = compose_config(*TINY, "trainer.max_epochs=2", "checkpoint.every_n_train_steps=1", "test_after_fit=false", "ckpt_path=last")
    with pytest.raises(Recorded):
        train_script.train(cfg, run)
    assert (seen["epoch"], seen["step"]) == (saved["epoch"], saved["global_step"])
    assert seen["lr"] == saved["optimizer_states"][0]["param_groups"][0]["lr"]
    for p, state in saved["optimizer_states"][0]["state"].items():
        assert torch.equal(seen["state"][p]["momentum_buffer"], state["momentum_buffer"])
    for key, value in saved["state_dict"].items():
        assert torch.equal(seen["weights"][key], value), key


def test_weights_that_turn_non_finite_are_never_saved(tmp_path, monkeypatch):
    import lightning as L

    class Poison(L.Callback):  # what a finite loss with a huge gradient can do to a weight
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                with torch.no_grad():
                    pl_module.net.conv1.weight[0, 0, 0, 0] = float("inf")

    add_callback(monkeypatch, Poison(), first=True)
    cfg = compose_config(*TINY, "checkpoint.every_n_train_steps=1", "test_after_fit=false")
    with pytest.raises(TrainingError, match=r"the weights are not finite after training step 3 \(epoch 0; net\.\S+\.weight\)"):
        train_script.train(cfg, tmp_path)
    assert check_consistent(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 2


def test_labels_outside_the_class_count_are_caught_on_the_cpu():
    from alexnet.data.labels import check_labels

    check_labels((torch.zeros(4, 3, 8, 8), torch.tensor([0, 1, 9, 3])), 10)
    with pytest.raises(TrainingError, match=r"labels outside 0-9 \(-1, 12\)"):
        check_labels((torch.zeros(4, 3, 8, 8), torch.tensor([0, 12, -1, 3])), 10)
    check_labels(torch.zeros(2, 3, 8, 8), 10)  # a predict batch has no labels


def test_under_slurm_the_requeue_signal_saves_an_hpc_checkpoint_and_auto_resumes_the_newest(tmp_path, monkeypatch):
    # SLURM's variables, as srun sets them for one task; no cluster: `scontrol requeue` is not found and only warns.
    import lightning as L
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from alexnet.training.checkpoints import AtomicCheckpointIO
    from alexnet.training.checkpoints import resolve_ckpt_path

    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "alexnet", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(key, value)
    seen = {}

    class Requeue(L.Callback):  # SLURM's warning signal, in the middle of step 3
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen["environment"] = trainer._accelerator_connector.cluster_environment
            seen["io"] = trainer.strategy.checkpoint_io
            if trainer.global_step == 2:
                os.kill(os.getpid(), signal.SIGUSR1)

    add_callback(monkeypatch, Requeue())
    train_script.train(compose_config(*TINY, "test_after_fit=false"), tmp_path)
    assert isinstance(seen["environment"], SLURMEnvironment) and seen["environment"].auto_requeue
    assert isinstance(seen["io"], AtomicCheckpointIO)
    hpc = tmp_path / "hpc_ckpt_1.ckpt"  # saved by Lightning's handler, at the end of the interrupted step
    assert check_consistent(hpc)["global_step"] == 3

    # The requeued job runs the same command: ckpt_path=auto takes the newer of last.ckpt and hpc_ckpt_N.ckpt.
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert resolve_ckpt_path("auto", tmp_path) == last
    os.utime(last, (1000, 1000))
    assert resolve_ckpt_path("auto", tmp_path) == hpc


def test_a_slurm_job_id_names_the_run_folder_so_a_requeued_job_finds_it(monkeypatch):
    # The README's sbatch line: python train.py hydra.run.dir=outputs/slurm-${oc.env:SLURM_JOB_ID} ckpt_path=auto
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3", job_name="test"):
        cfg = compose("config", ["hydra.run.dir=outputs/slurm-${oc.env:SLURM_JOB_ID}", "ckpt_path=auto"], return_hydra_config=True)
    assert OmegaConf.select(cfg, "hydra.run.dir") == "outputs/slurm-4242"


def test_the_sigterm_deferral_takes_over_the_handlers_this_lightning_registers():
    # SignalsAtBatchEnd replaces two private attributes of Lightning's signal connector; if a
    # Lightning release renames them, this fails (the callback would otherwise quietly do nothing).
    import inspect

    import lightning as L

    from alexnet.training.faults import SignalsAtBatchEnd

    deferral = SignalsAtBatchEnd()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, callbacks=[deferral])
    deferral.setup(trainer, None, "fit")
    connector = trainer._signal_connector
    assert connector._sigterm_notifier_fn == deferral._note_sigterm
    assert connector._slurm_sigusr_handler_fn == deferral._note_requeue
    registering = inspect.getsource(type(connector).register_signal_handlers)
    assert "self._sigterm_notifier_fn" in registering and "self._slurm_sigusr_handler_fn" in registering
