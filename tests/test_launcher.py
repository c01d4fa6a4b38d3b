"""Sweeps on a cluster: Hydra's submitit launcher runs each job of a multirun as a submitit job.

`hydra/launcher=submitit_slurm` submits them to SLURM (README, "Sweeps on a
cluster"); `hydra/launcher=submitit_local` runs the same jobs, pickled the same
way, as local processes, which is what can be tested without a cluster.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, run_cli

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

# Two tiny jobs: a few steps each, no final test.
JOB = [*TINY, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0",
       "test_after_fit=false"]


def test_a_two_job_sweep_on_submitits_local_launcher_trains_and_checkpoints_both_runs(tmp_path):
    sweep = tmp_path / "sweep"
    # logger=[tensorboard,csv]: the jobs build what the command asked for, with this checkout's code;
    # trainer.devices as the README has it on SLURM, from the launcher's tasks per node (1 here)
    result = run_cli("train.py", "-m", "hydra/launcher=submitit_local", "seed=0,1", *JOB, "logger=[tensorboard,csv]",
                     "trainer.devices=${hydra:launcher.tasks_per_node}", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "Submitit 'local' sweep output dir" in result.stdout + result.stderr
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2  # two submitit jobs, both returned
    for job, seed in ((0, 0), (1, 1)):  # hydra.sweep.subdir: the job number
        run = sweep / str(job)
        checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert checkpoint["config"]["seed"] == seed and checkpoint["global_step"] == 2
        assert checkpoint["config"]["trainer"]["devices"] == 1
        assert (run / "tensorboard").is_dir() and (run / "csv" / "version_0" / "metrics.csv").is_file()
