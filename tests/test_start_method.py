"""How loader workers start (data.multiprocessing_context): from a fork server in a process of a
torch.distributed group, whose communication threads a fork can deadlock on.

tests/test_sampling.py shows it where it matters: under two gloo processes each rank's
workers are children of a fork server, not of the rank, and the weights trained do not
depend on how the workers started.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist
from data_fixtures import image_tree

from alexnet.data import FolderDataModule, start_method
from alexnet.errors import ConfigError
from conftest import compose_config, run_command


def test_auto_starts_workers_from_a_fork_server_in_a_distributed_process_and_else_as_the_platform_does(monkeypatch):
    assert start_method.method("auto", distributed=True) == "forkserver"
    monkeypatch.setattr(start_method, "_default_method", lambda: "fork")  # Linux up to Python 3.13
    assert start_method.method("auto", distributed=False) is None  # the DataLoader's default: fork
    monkeypatch.setattr(start_method, "_default_method", lambda: "forkserver")  # Python 3.14's default
    assert start_method.method("auto", distributed=False) == "forkserver"  # with the preload


def test_reading_the_default_start_method_does_not_fix_it():
    before = multiprocessing.get_start_method(allow_none=True)
    assert start_method._default_method() in multiprocessing.get_all_start_methods()
    assert multiprocessing.get_start_method(allow_none=True) == before


@pytest.mark.parametrize("setting", ["fork", "forkserver", "spawn"])
def test_a_named_start_method_is_used_in_a_distributed_process_or_not(setting):
    for distributed in (False, True):
        assert start_method.method(setting, distributed) == setting
        assert start_method.context(setting, distributed).get_start_method() == setting


def test_the_fork_server_imports_the_script_and_the_data_modules_before_it_forks_a_worker(monkeypatch):
    preloaded = []
    context = multiprocessing.get_context("forkserver")
    monkeypatch.setattr(type(context), "set_forkserver_preload", lambda self, modules: preloaded.append(modules))
    start_method.context("auto", distributed=True)
    assert preloaded == [["__main__", "alexnet.data.forkserver_guard", "alexnet.data"]]


def test_folder_data_defaults_to_auto_and_an_unknown_method_is_refused_naming_the_key():
    assert compose_config("data=folder", "data.root=/tmp").data.multiprocessing_context == "auto"
    assert compose_config("data=imagenet").data.multiprocessing_context == "auto"
    with pytest.raises(ConfigError, match=r"^data.multiprocessing_context: must be one of auto, fork, forkserver, spawn"):
        start_method.check("threads")


def test_a_process_in_a_group_of_one_is_distributed_too(tmp_path):
    # trainer=ddp on one device: a process group, and so gloo's or NCCL's threads, but one process
    data = FolderDataModule(root=str(image_tree(tmp_path / "data", per_class=1)), num_workers=2)
    assert data._worker_context() is None  # no group: the platform's default (fork on Linux)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        assert data._worker_context().get_start_method() == "forkserver"
    finally:
        dist.destroy_process_group()


# A process that starts loader workers as a rank does (from its fork server), writes the pids of
# the server and the workers, and, with "kill", SIGKILLs itself with its persistent workers alive.
RANK_WITH_WORKERS = '''
import os, signal, sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from alexnet.data import start_method


class Pids(Dataset):  # each item: the worker's pid and its parent's (the fork server)
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.tensor([os.getpid(), os.getppid()])


if __name__ == "__main__":
    loader = DataLoader(Pids(), batch_size=1, num_workers=2, persistent_workers=True,
                        multiprocessing_context=start_method.context("auto", distributed=True))
    pids = {int(p) for batch in loader for p in batch.flatten()}
    Path(sys.argv[1]).write_text(" ".join(map(str, sorted(pids))))
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)  # with its persistent workers alive, as the OOM killer would
'''


def run_rank(tmp_path, mode: str, *launcher: str) -> tuple[subprocess.CompletedProcess, list[int]]:
    """RANK_WITH_WORKERS run (under ``launcher``, if given): its result, and the pids it wrote."""
    script, pids = tmp_path / "rank.py", tmp_path / "pids"
    script.write_text(RANK_WITH_WORKERS)
    result = run_command([*launcher, sys.executable, str(script), str(pids), mode], env=dict(os.environ), timeout=120)
    return result, [int(p) for p in pids.read_text().split()] if pids.is_file() else []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has exited, whoever reaps it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_ranks_fork_server_and_workers_die_with_it(tmp_path):
    # Without alexnet/data/forkserver_guard.py they live on for good (each holds its fork server's
    # alive pipe, and its own index queue's writing end), and with them this command's output
    # pipes: run_command would time out.
    result, left = run_rank(tmp_path, "kill")
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert len(left) == 3  # the fork server and two workers
    deadline = time.monotonic() + 30
    while any(alive(p) for p in left) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p for p in left if alive(p)]


def test_a_rank_that_is_pid_1_as_a_containers_entrypoint_starts_its_workers_from_its_fork_server(tmp_path):
    # The Dockerfile's entrypoint is `python train.py`: pid 1, the parent of its fork server. The
    # guard must not read a parent pid of 1 as a dead rank (it did, and the server quit at start).
    unshare = shutil.which("unshare")
    as_pid_1 = [unshare, "--pid", "--fork", "--mount-proc"]
    if unshare is None or subprocess.run([*as_pid_1, "true"], capture_output=True).returncode:
        pytest.skip("needs unshare --pid (Linux, root) to run a process as pid 1")
    result, pids = run_rank(tmp_path, "exit", *as_pid_1)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(pids) == 3  # the fork server and two workers
