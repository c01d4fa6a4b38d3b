"""Soak: a few hundred steps, a checkpoint every few, SIGKILL at random moments, resume each time.

Whatever moment the kill hits (a forward pass, a checkpoint half written),
the next `ckpt_path=auto` run must start from a complete checkpoint, never go
back in steps, and the run must end where an uninterrupted one ends.
"""

from __future__ import annotations

import random
import signal
import time

from test_faults import check_consistent, finish, launch, wait_for

from alexnet.training.checkpoints import PARTIAL_SUFFIX

STEPS_PER_EPOCH, EPOCHS = 320 // 16, 12  # 240 steps
ARGS = [
    "data.num_train=320", "data.num_val=32", "data.batch_size=16", f"trainer.max_epochs={EPOCHS}",
    "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=5",
    "trainer.num_sanity_val_steps=0", "checkpoint.every_n_train_steps=2", "test_after_fit=false", "ckpt_path=auto",
]
KILLS = 4


def test_training_survives_random_kills_and_never_leaves_a_corrupt_checkpoint(tmp_path):
    rng = random.Random(2012)
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    steps, partial_files_seen, kills = [0], 0, 0
    for attempt in range(KILLS + 1):
        proc = launch([f"hydra.run.dir={run}", *ARGS], tmp_path / f"log{attempt}")
        if kills < KILLS:
            before = last.stat().st_mtime_ns if last.is_file() else 0
            # Once this process has saved at least once (so it resumed and moved on), kill it:
            # at a random moment of the next second and a half, or, every other time, as soon
            # as a checkpoint is being written.
            if wait_for(lambda: last.is_file() and last.stat().st_mtime_ns != before, proc):
                if kills % 2:
                    wait_for(lambda: any(last.parent.glob(f"*{PARTIAL_SUFFIX}")), proc, poll=0.002)
                else:
                    time.sleep(rng.uniform(0, 1.5))
                proc.send_signal(signal.SIGKILL)
                kills += 1
        result = finish(proc, tmp_path / f"log{attempt}")
        if result.returncode == 0:
            break
        assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
        partial_files_seen += len(list(last.parent.glob(f"*{PARTIAL_SUFFIX}")))
        for ckpt in last.parent.glob("*.ckpt"):  # every file under a final name loads and agrees with itself
            check_consistent(ckpt, STEPS_PER_EPOCH)
        steps.append(check_consistent(last, STEPS_PER_EPOCH)["global_step"])
        assert steps[-1] > steps[-2], f"no progress, or progress lost, between kills: {steps}"
    else:
        raise AssertionError(f"the run never finished; checkpoints at steps {steps}")

    assert kills == KILLS
    final = check_consistent(last, STEPS_PER_EPOCH)
    assert final["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert not list(last.parent.glob(f"*{PARTIAL_SUFFIX}"))
    print(f"killed at steps {steps[1:]}, {partial_files_seen} half-written checkpoint(s) found after kills")
