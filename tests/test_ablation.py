"""The paper's claims, measured: the ablation sweep, its report, and the pictures of a network."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import yaml
from conftest import TINY, compose_config, run_cli
from data_fixtures import cifar10_jpg, random_image  # noqa: F401  (cifar10_jpg is a fixture)
from torch.utils.tensorboard import SummaryWriter

ABLATIONS = {
    "baseline": {},
    "no_lrn": {"model.lrn": False},
    "no_overlap": {"model.pool": "non_overlapping"},
    "no_pca": {"data.pca_std": 0.0},
    "no_dropout": {"model.dropout": 0.0},
    "one_tower": {"model.groups": 1},
}


def value(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's header; fails on anything that is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


# ---------------------------------------------------------------- the sweep


def test_the_ablation_experiment_starts_from_every_ingredient_on():
    cfg = compose_config("experiment=ablation_cifar")
    assert (cfg.model.name, cfg.model.lrn, cfg.model.pool, cfg.model.groups) == ("cifar", True, "overlapping", 2)
    assert cfg.model.dropout == 0.5 and cfg.data.pca_std == 0.1


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_each_ablation_turns_off_exactly_its_ingredient(ablation):
    base = compose_config("experiment=ablation_cifar", "ablation=baseline")
    cfg = compose_config("experiment=ablation_cifar", f"ablation={ablation}")
    for key, expected in ABLATIONS[ablation].items():
        assert value(cfg, key) == expected and value(base, key) != expected
    changed = {f"{g}.{k}" for g in ("model", "data", "optim", "trainer") for k in cfg[g] if cfg[g][k] != base[g][k]}
    assert changed == set(ABLATIONS[ablation])


def test_the_sweep_covers_every_setting_over_two_seeds():
    experiment = yaml.safe_load((Path(__file__).parents[1] / "conf/experiment/ablation_cifar.yaml").read_text())
    params = experiment["hydra"]["sweeper"]["params"]
    assert set(params["ablation"].split(",")) == set(ABLATIONS)
    assert len(str(params["seed"]).split(",")) >= 2


def test_a_multirun_sweep_trains_each_setting_and_the_report_tabulates_it(cifar10_jpg, tmp_path):  # noqa: F811
    sweep = tmp_path / "sweep"
    result = run_cli(
        "train.py", "-m", "experiment=ablation_cifar", f"data.root={cifar10_jpg}", "ablation=baseline,no_lrn",
        "seed=0", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
        "trainer.max_epochs=1", "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["baseline-seed0", "no_lrn-seed0"]
    report = run_cli("scripts/report.py", str(sweep))
    assert report.returncode == 0, report.stderr[-3000:]
    rows = [line for line in (sweep / "report.md").read_text().splitlines() if line.startswith("| ")][1:]  # no header
    assert [row.split("|")[1].strip() for row in rows] == ["baseline", "no_lrn"]
    assert "+1.4 / +1.2" in rows[1]
    png_size(sweep / "curves.png")


# ---------------------------------------------------------------- the report


def fake_run(root: Path, setting: str | None, seed: int, top1: float, top5: float, test: bool = True) -> Path:
    run = root / f"{setting}-{seed}"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"ablation": setting}}}}))
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": seed}))
    writer = SummaryWriter(str(run / "tensorboard"))
    for step in (10, 20):
        writer.add_scalar("train/loss", 2.0 / step, step)
        writer.add_scalar("val/top1_error", top1 + 0.1 / step, step)
        writer.add_scalar("val/top5_error", top5 + 0.1 / step, step)
    if test:
        writer.add_scalar("test/top1_error", top1, 20)
        writer.add_scalar("test/top5_error", top5, 20)
    writer.close()
    return run


def test_the_report_gives_mean_spread_and_change_per_setting(tmp_path):
    sweep = tmp_path / "sweep"
    fake_run(sweep, None, 0, 0.30, 0.10)  # no ablation chosen: the baseline
    fake_run(sweep, "baseline", 1, 0.32, 0.12)
    fake_run(sweep, "no_lrn", 0, 0.34, 0.13)
    fake_run(sweep, "no_lrn", 1, 0.36, 0.13)
    result = run_cli("scripts/report.py", str(sweep), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "out" / "report.md").read_text()
    baseline = next(line for line in table.splitlines() if line.startswith("| baseline"))
    no_lrn = next(line for line in table.splitlines() if line.startswith("| no_lrn"))
    cells = [c.strip() for c in no_lrn.split("|")[1:-1]]
    assert cells[:6] == ["no_lrn", "2 (0,1)", "35.00 ± 1.41", "13.00 ± 0.00", "+4.00", "+2.00"]
    assert "31.00 ± 1.41" in baseline and "2 (0,1)" in baseline
    width, height = png_size(tmp_path / "out" / "curves.png")
    assert width > 500 and height > 200


def test_the_report_falls_back_to_validation_and_names_crashed_runs(tmp_path):
    sweep = tmp_path / "sweep"
    fake_run(sweep, "baseline", 0, 0.30, 0.10, test=False)
    crashed = sweep / "crashed"
    (crashed / ".hydra").mkdir(parents=True)
    (crashed / "tensorboard").mkdir()
    result = run_cli("scripts/report.py", str(sweep))
    assert result.returncode == 0, result.stderr
    assert str(crashed) in result.stderr and "30.50" in (sweep / "report.md").read_text()  # the last val/* value: 0.30 + 0.1 / 20
    assert "`val/*`" in (sweep / "report.md").read_text()


def test_the_report_leaves_out_an_unfinished_run(tmp_path):
    sweep = tmp_path / "sweep"
    fake_run(sweep, "baseline", 0, 0.30, 0.10)
    unfinished = fake_run(sweep, "baseline", 1, 0.60, 0.30, test=False)  # stopped mid-training
    result = run_cli("scripts/report.py", str(sweep))
    assert result.returncode == 0, result.stderr
    assert str(unfinished) in result.stderr and "unfinished" in result.stderr
    assert "| baseline | 1 (0) | 30.00 |" in (sweep / "report.md").read_text()


def test_the_report_names_a_folder_without_runs(tmp_path):
    result = run_cli("scripts/report.py", str(tmp_path))
    assert result.returncode != 0 and str(tmp_path) in result.stderr and "no run folders" in result.stderr


# ---------------------------------------------------------------- the pictures


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("vis") / "run"
    result = run_cli("train.py", f"hydra.run.dir={run}", *TINY, "model.groups=2", "test_after_fit=false")
    assert result.returncode == 0, result.stderr[-3000:]
    return run / "checkpoints" / "last.ckpt"


def test_visualize_writes_the_kernels_neighbours_and_feature_maps(small_checkpoint, tmp_path):
    image = random_image(size=(40, 40))
    image.save(tmp_path / "image.png")
    result = run_cli("scripts/visualize.py", f"ckpt_path={small_checkpoint}", "layer=conv2", f"image={tmp_path / 'image.png'}",
                     "queries=3", "neighbours=4", "max_train=64")
    assert result.returncode == 0, result.stderr[-3000:]
    figures = small_checkpoint.parents[1] / "figures"  # by default in the checkpoint's run folder
    names = {"conv1_kernels.png", "neighbours.png", "feature_maps_conv2.png"}
    assert names <= {p.name for p in figures.iterdir()}
    assert sorted(result.stdout.split()) == sorted(str(figures / n) for n in names)
    kernels_w, kernels_h = png_size(figures / "conv1_kernels.png")
    assert kernels_w > 1.5 * kernels_h  # two towers side by side
    neighbours_w, neighbours_h = png_size(figures / "neighbours.png")
    assert neighbours_w > neighbours_h  # 3 rows of 1 + 4 images


def test_visualize_writes_to_out_dir_and_names_a_wrong_layer(small_checkpoint, tmp_path):
    result = run_cli("scripts/visualize.py", f"ckpt_path={small_checkpoint}", "layer=conv9", f"out_dir={tmp_path}")
    assert result.returncode == 1 and "conv9" in result.stderr and "conv1" in result.stderr
    assert not list(tmp_path.iterdir())  # nothing written
    result = run_cli("scripts/visualize.py", f"ckpt_path={small_checkpoint}", "max_train=32", f"out_dir={tmp_path / 'figs'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "figs" / "feature_maps_conv1.png").is_file()
