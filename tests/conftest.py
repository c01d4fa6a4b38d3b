"""Shared helpers: compose the real config, run the real command line."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A tiny run of the default network on the built-in data: seconds, not minutes.
TINY = [
    "data.num_train=256",
    "data.num_val=64",
    "data.batch_size=32",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]


def compose_config(*overrides: str):
    from alexnet.config import compose

    return compose(list(overrides), "test")


def run_command(cmd: list[str], *, env: dict, timeout: float, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group and capture what it prints, like ``subprocess.run``.

    A command still running after ``timeout`` seconds fails the test with every
    Python process's stack: the group (the command, the DDP ranks it started,
    their loader workers) gets SIGABRT, which ``PYTHONFAULTHANDLER`` turns into a
    dump of each thread's stack on stderr, then SIGKILL. A hang in a run of
    several processes is then a traceback to read, not a bare timeout.
    """
    process = subprocess.Popen(cmd, cwd=cwd, env={**env, "PYTHONFAULTHANDLER": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
        return subprocess.CompletedProcess(cmd, process.returncode, out, err)
    except subprocess.TimeoutExpired:
        signal_group(process, signal.SIGABRT)
    try:
        out, err = process.communicate(timeout=10)  # the stacks, as each process aborts
    except subprocess.TimeoutExpired:
        signal_group(process, signal.SIGKILL)
        out, err = process.communicate()
    pytest.fail(f"still running after {timeout:.0f} s: {' '.join(cmd)}\n--- stdout (end)\n{out[-3000:]}\n"
                f"--- stderr, with each process's stack (end)\n{err[-30000:]}", pytrace=False)


def signal_group(process: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the process group that ``process`` leads (started with start_new_session)."""
    with contextlib.suppress(ProcessLookupError):  # the group ended meanwhile
        os.killpg(process.pid, sig)


def run_cli(script: str, *args: str, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a command of the project as a user would, and capture what it prints."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    return run_command([sys.executable, str(REPO / script), *args], env=env, timeout=timeout, cwd=cwd or REPO)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"
