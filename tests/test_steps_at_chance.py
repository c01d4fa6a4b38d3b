"""scripts/steps_at_chance.py: the flat-start measurement, judged as FlatStart judges it."""

from __future__ import annotations

import math

from conftest import run_cli
from torch.utils.tensorboard import SummaryWriter


def fake_run(path, losses, num_classes=10):
    writer = SummaryWriter(str(path / "tensorboard"))
    for step, loss in enumerate(losses):
        writer.add_scalar("train/loss", loss, step)
    writer.close()
    (path / "tensorboard" / "hparams.yaml").write_text(f"num_classes: {num_classes}\n")
    return path


def test_a_run_leaves_chance_where_its_running_mean_falls_below_the_band_and_a_flat_one_never(tmp_path):
    chance = math.log(10)
    learns = fake_run(tmp_path / "learns", [chance] * 30 + [1.0] * 30)  # steps 0-29 at chance, then 1.0
    flat = fake_run(tmp_path / "flat", [chance * (1 + 0.02 * (-1) ** i) for i in range(60)])
    result = run_cli("scripts/steps_at_chance.py", str(learns), str(flat))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # the running mean at step 30: 0.9 ln10 + 0.1 x 1.0 = 2.17 < 0.95 ln10 = 2.19
    assert lines[0].startswith(f"{learns}: left chance at step 30 ")
    assert lines[1].startswith(f"{flat}: never left chance ") and "60 steps logged" in lines[1]
