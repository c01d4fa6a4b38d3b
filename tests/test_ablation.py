"""The paper's claims, measured: the ablation sweep, its report, and the pictures of a network."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, TINY, compose_config, run_cli, run_command
from data_fixtures import cifar10_jpg, cifar10_jpg_subset, random_image  # noqa: F401  (fixtures)
from omegaconf import OmegaConf
from test_train import scalars
from torch.utils.tensorboard import SummaryWriter

from alexnet.training.callbacks import LRNProbe
from alexnet.config import build_datamodule
from alexnet.errors import ConfigError
from alexnet.training.results import finished_results, write_results
from alexnet.nn.models import count_parameters, create
from alexnet.nn.summary import summarize

# The CIFAR-10 sweep's settings (experiment=ablation_cifar) and what each changes from its baseline.
SWEEP = {
    "baseline": {},
    "no_lrn": {"model.lrn": False},
    "no_overlap": {"model.pool": "non_overlapping"},
    "one_tower": {"model.groups": 1},
    "with_dropout": {"model.dropout": 0.5},
    "with_pca": {"data.pca_std": 0.1},
}
# The paper's network has every ingredient on: these turn one off (experiment=paper_imagenet ablation=...).
PAPER = {"no_lrn": {"model.lrn": False}, "no_overlap": {"model.pool": "non_overlapping"},
         "no_pca": {"data.pca_std": 0.0}, "no_dropout": {"model.dropout": 0.0}, "one_tower": {"model.groups": 1}}


def value(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def setting_rows(report: str) -> dict[str, list[str]]:
    """The report's first table, setting -> its cells."""
    table = report.split("\n\n")[0].splitlines()[2:]  # no header, no rule
    return {cells[0]: cells for cells in ([c.strip() for c in line.split("|")[1:-1]] for line in table)}


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's header; fails on anything that is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


# ---------------------------------------------------------------- the sweep


def test_the_ablation_baseline_is_the_papers_network_on_the_papers_raw_pixels_tested_on_ten_patches():
    cfg = compose_config("experiment=ablation_cifar")
    assert (cfg.model.name, cfg.model.lrn, cfg.model.pool, cfg.model.groups) == ("cifar", True, "overlapping", 2)
    assert cfg.data.normalize == "paper"  # Section 2: raw 0-255 minus the mean, where LRN bites
    assert cfg.data.test_crops == 10 and cfg.seed == 0
    # 20 epochs: in so short a schedule dropout and lighting cost accuracy, so the
    # baseline has neither and with_dropout / with_pca add them.
    assert cfg.trainer.max_epochs == 20 and cfg.model.dropout == 0.0 and cfg.data.pca_std == 0.0


@pytest.mark.parametrize("ablation", sorted(SWEEP))
def test_each_setting_of_the_sweep_changes_exactly_its_ingredient(ablation):
    assert_changes_only("ablation_cifar", ablation, SWEEP[ablation])


@pytest.mark.parametrize("ablation", sorted(PAPER))
def test_each_ablation_of_the_papers_recipe_turns_off_exactly_its_ingredient(ablation):
    assert_changes_only("paper_imagenet", ablation, PAPER[ablation])


def assert_changes_only(experiment: str, ablation: str, changes: dict) -> None:
    base = compose_config(f"experiment={experiment}", "ablation=baseline")
    cfg = compose_config(f"experiment={experiment}", f"ablation={ablation}")
    for key, expected in changes.items():
        assert value(cfg, key) == expected and value(base, key) != expected
    changed = {f"{g}.{k}" for g in ("model", "data", "optim", "trainer") for k in cfg[g] if cfg[g][k] != base[g][k]}
    assert changed == set(changes)


def test_the_sweep_covers_every_setting_over_two_seeds():
    experiment = yaml.safe_load((Path(__file__).parents[1] / "conf/experiment/ablation_cifar.yaml").read_text())
    params = experiment["hydra"]["sweeper"]["params"]
    assert set(params["ablation"].split(",")) == set(SWEEP)
    assert len(str(params["seed"]).split(",")) >= 2


def test_overlapping_and_non_overlapping_pooling_give_the_same_maps_and_parameters_at_the_sweeps_patch_size():
    # Section 3.4 compared the two poolings at equal output size (55 -> 27 either way).
    cfg = compose_config("experiment=ablation_cifar")
    shapes, sizes = {}, {}
    for pool in ("overlapping", "non_overlapping"):
        net = create("cifar", 10, input_size=cfg.model.input_size, groups=cfg.model.groups, pool=pool)
        shapes[pool] = [layer.shape for layer in summarize(net).layers if layer.name.startswith("pool")]
        sizes[pool] = count_parameters(net)
    assert shapes["overlapping"] == shapes["non_overlapping"] == [(64, 11, 11), (96, 5, 5), (96, 2, 2)]
    assert sizes["overlapping"] == sizes["non_overlapping"] == 786_634
    at_24 = create("cifar", 10, input_size=24, groups=2, pool="non_overlapping")
    assert at_24.feature_shape == (96, 3, 3) and count_parameters(at_24) == 1_032_394  # why not 24 px


def test_lrn_bites_in_the_sweeps_baseline_on_real_cifar10_and_not_on_standardised_pixels(cifar10_jpg_subset):  # noqa: F811
    def strengths(*overrides: str) -> dict[str, float]:
        cfg = compose_config("experiment=ablation_cifar", f"data.root={cifar10_jpg_subset}", *overrides)
        data = build_datamodule(cfg.data)
        data.setup("fit")
        images = data.train_set.x[torch.randperm(len(data.train_set), generator=torch.Generator().manual_seed(0))[:256]]
        model = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k not in ("name", "num_classes")}
        torch.manual_seed(0)
        net = create("cifar", 10, **model)
        with torch.no_grad(), LRNProbe(net) as probe:
            net(data.eval_batch(images))
        return probe.strengths()

    raw, standardised = strengths(), strengths("data.normalize=imagenet")
    assert raw["conv1"] < 0.96 and raw["conv2"] < 0.998, raw  # measured 0.94 and 0.994 on 512 images
    assert all(s > 0.9995 for s in standardised.values()), standardised


# A tiny version of the sweep: two settings, one seed, two epochs of 4 batches of a real CIFAR-10 subset.
TINY_SWEEP = ["-m", "experiment=ablation_cifar", "ablation=baseline,no_lrn", "seed=0", "trainer.max_epochs=2",
              "trainer.limit_train_batches=4", "trainer.limit_val_batches=2", "trainer.limit_test_batches=1",
              "checkpoint.every_n_train_steps=1", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]
KILLED_AT = 2  # training steps done before the first run is killed: in its first epoch


def sweep(folder: Path, data: Path, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """The tiny sweep, as a user's command (train.py, plus the planned kill of tests/record_train.py)."""
    start = time.monotonic()
    result = run_command(  # in its own process group, which the planned kill takes
        [sys.executable, str(REPO / "tests" / "record_train.py"), *TINY_SWEEP, f"data.root={data}", f"hydra.sweep.dir={folder}"],
        env={**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1", **(env or {})},
        timeout=600)
    return result, time.monotonic() - start


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def killed_and_rerun(cifar10_jpg_subset, tmp_path_factory):  # noqa: F811
    """The tiny sweep killed (kill -9) in its first run, then the same command again."""
    folder = tmp_path_factory.mktemp("sweep") / "sweep"
    killed, _ = sweep(folder, cifar10_jpg_subset, env={"KILL_AT_STEP": str(KILLED_AT)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert [p.name for p in folder.iterdir() if p.is_dir()] == ["baseline-seed0"]  # no_lrn never started
    assert load_checkpoint(folder / "baseline-seed0")["global_step"] == KILLED_AT
    rerun, seconds = sweep(folder, cifar10_jpg_subset)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    return folder, rerun, seconds


def load_checkpoint(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def test_a_killed_sweep_rerun_with_the_same_command_continues_the_killed_run_and_trains_the_rest(killed_and_rerun):
    folder, rerun, _ = killed_and_rerun
    output = rerun.stdout + rerun.stderr
    assert f"resuming from {folder / 'baseline-seed0' / 'checkpoints' / 'last.ckpt'}" in output
    assert output.count("resuming from") == 1  # no_lrn starts afresh
    for run in ("baseline-seed0", "no_lrn-seed0"):
        assert load_checkpoint(folder / run)["global_step"] == 8, run  # both (tiny) epochs
        results = json.loads((folder / run / "results.json").read_text())
        assert set(results["results"]) >= {"test/top1_error", "test/top5_error"}
        assert results["config"]["ckpt_path"] == "auto" and results["config"]["data"]["test_crops"] == 10
    steps = [step for step, _ in scalars(folder / "baseline-seed0")["train/loss"]]
    assert steps == sorted(set(steps))  # one curve, continued (kill -9 loses the events TensorBoard had not flushed)


def test_a_finished_sweep_rerun_skips_every_run_and_leaves_its_folders_unchanged(killed_and_rerun, cifar10_jpg_subset):  # noqa: F811
    folder, _, trained_in = killed_and_rerun
    runs = sorted(p for p in folder.iterdir() if p.is_dir())
    before = {run.name: snapshot(run) for run in runs}
    again, seconds = sweep(folder, cifar10_jpg_subset)
    assert again.returncode == 0, again.stderr[-3000:]
    for run in runs:
        assert f"skipped: {run} is finished" in again.stdout
    assert "Restored all states" not in again.stdout + again.stderr and "resuming" not in again.stdout + again.stderr
    assert {run.name: snapshot(run) for run in runs} == before  # not a byte changed, nothing added
    assert seconds < trained_in


def test_a_finished_run_rerun_with_another_config_is_refused_not_skipped(tmp_path):
    import train as train_script

    cfg = compose_config(*TINY, "skip_finished=true")
    train_script.write_results(cfg, tmp_path, {"test/top1_error": 0.5, "test/top5_error": 0.1})
    assert train_script.train(compose_config(*TINY, "skip_finished=true", "ckpt_path=auto"), tmp_path)["test/top1_error"] == 0.5
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.01 -> 0\.02"):
        train_script.train(compose_config(*TINY, "skip_finished=true", "optim.lr=0.02"), tmp_path)
    assert not (tmp_path / "checkpoints").exists()  # neither trained


def test_a_run_finished_before_an_option_was_added_is_still_finished_but_not_one_with_an_option_since_removed(tmp_path):
    # A sweep outlives upgrades: results.json from before fast_path.reuse_memory existed.
    cfg = compose_config(*TINY, "skip_finished=true")
    write_results(cfg, tmp_path, {"test/top1_error": 0.5, "test/top5_error": 0.1})
    saved = json.loads((tmp_path / "results.json").read_text())
    del saved["config"]["fast_path"]["reuse_memory"]
    (tmp_path / "results.json").write_text(json.dumps(saved))
    assert finished_results(cfg, tmp_path)["test/top1_error"] == 0.5
    saved["config"]["model"]["an_option_since_removed"] = 3
    (tmp_path / "results.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match=r"model\.an_option_since_removed: 3 -> None"):
        finished_results(cfg, tmp_path)


def test_reproduction_md_reports_the_committed_sweep_as_report_py_writes_it(tmp_path):
    # docs/REPRODUCTION.md's table is report.py's output for the runs kept in docs/runs, not typed
    # by hand: a run added or removed, or a number edited, without regenerating it fails here.
    runs = REPO / "docs" / "runs" / "ablation_cifar"
    result = run_cli("scripts/report.py", str(runs), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    text = (REPO / "docs" / "REPRODUCTION.md").read_text()
    begin, end = "<!-- report.py's report.md: begin -->\n", "<!-- report.py's report.md: end -->"
    assert text[text.index(begin) + len(begin):text.index(end)] == (tmp_path / "report.md").read_text()
    rows = setting_rows((tmp_path / "report.md").read_text())
    assert len(rows) == 6 and all(row[1] == "2 (0,1)" for row in rows.values())  # 6 settings, 2 seeds each
    assert float(rows["baseline"][2].split(" ± ")[0]) <= 25.0  # the baseline the sweep needs (issue 13)


def test_the_report_tabulates_the_tiny_sweep_with_its_lrn_strengths(killed_and_rerun):
    folder, _, _ = killed_and_rerun
    report = run_cli("scripts/report.py", str(folder))
    assert report.returncode == 0, report.stderr[-3000:]
    rows = setting_rows((folder / "report.md").read_text())
    assert list(rows) == ["baseline", "no_lrn"]
    assert "+1.4 / +1.2" in rows["no_lrn"][-1] and rows["no_lrn"][4].endswith("(1 seed)")
    assert rows["baseline"][6].startswith("conv1 0.") and rows["no_lrn"][6] == "—"
    png_size(folder / "curves.png")


# ---------------------------------------------------------------- the report


def fake_run(root: Path, setting: str | None, seed: int, top1: float, top5: float, test: bool = True,
             lrn: dict[str, list[float]] | None = None) -> Path:
    """A run folder as train.py leaves it; ``lrn``: layer -> its lrn/strength_<layer> per epoch."""
    run = root / f"{setting}-{seed}"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"ablation": setting}}}}))
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": seed}))
    writer = SummaryWriter(str(run / "tensorboard"))
    for step in (10, 20):
        writer.add_scalar("train/loss", 2.0 / step, step)
        writer.add_scalar("val/top1_error", top1 + 0.1 / step, step)
        writer.add_scalar("val/top5_error", top5 + 0.1 / step, step)
    for layer, values in (lrn or {}).items():
        for epoch, strength in enumerate(values):
            writer.add_scalar(f"lrn/strength_{layer}", strength, 10 * (epoch + 1))
    if test:
        writer.add_scalar("test/top1_error", top1, 20)
        writer.add_scalar("test/top5_error", top5, 20)
    writer.close()
    return run


def test_the_report_gives_mean_spread_and_change_per_setting_and_marks_it_against_the_seed_spread(tmp_path):
    sweep = tmp_path / "sweep"
    fake_run(sweep, None, 0, 0.30, 0.10)  # no ablation chosen: the baseline
    fake_run(sweep, "baseline", 1, 0.32, 0.12)  # seed ranges 2 points (top-1), 2 points (top-5)
    fake_run(sweep, "no_lrn", 0, 0.34, 0.13)
    fake_run(sweep, "no_lrn", 1, 0.36, 0.13)  # 2 points, 0 points
    fake_run(sweep, "one_tower", 0, 0.31, 0.11)
    fake_run(sweep, "one_tower", 1, 0.335, 0.11)  # 2.5 points, 0 points
    result = run_cli("scripts/report.py", str(sweep), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    rows = setting_rows(report)
    # +4.00 exceeds both top-1 ranges (2, 2); +2.00 does not exceed the baseline's top-5 range (2)
    assert rows["no_lrn"][:6] == ["no_lrn", "2 (0,1)", "35.00 ± 1.41", "13.00 ± 0.00", "+4.00 (outside)", "+2.00 (inside)"]
    assert rows["one_tower"][4:6] == ["+1.25 (inside)", "+0.00 (inside)"]  # 1.25 < one_tower's own range 2.5
    assert rows["baseline"][1:3] == ["2 (0,1)", "31.00 ± 1.41"]
    assert "larger of the two settings' seed ranges" in report  # the rule, stated
    width, height = png_size(tmp_path / "out" / "curves.png")
    assert width > 500 and height > 200


def test_the_report_gives_each_runs_last_lrn_strength_and_each_settings_mean(tmp_path):
    sweep = tmp_path / "sweep"
    fake_run(sweep, "baseline", 0, 0.30, 0.10, lrn={"conv1": [0.94, 0.90], "conv2": [0.99, 0.97]})
    fake_run(sweep, "baseline", 1, 0.32, 0.12, lrn={"conv1": [0.94, 0.92], "conv2": [0.99, 0.95]})
    fake_run(sweep, "no_lrn", 0, 0.34, 0.13)  # no LRN, no strength
    result = run_cli("scripts/report.py", str(sweep))
    assert result.returncode == 0, result.stderr
    report = (sweep / "report.md").read_text()
    rows = setting_rows(report)
    assert rows["baseline"][6] == "conv1 0.910, conv2 0.960" and rows["no_lrn"][6] == "—"
    assert rows["no_lrn"][4] == "+3.00 (1 seed)"  # one seed: not judged against a spread
    assert "| baseline-0 | baseline | 0 | 30.00 | 10.00 | 0.900 | 0.970 | — |" in report  # no results.json: untold
    assert "| baseline-1 | baseline | 1 | 32.00 | 12.00 | 0.920 | 0.950 | — |" in report
    assert "| no_lrn-0 | no_lrn | 0 | 34.00 | 13.00 | — | — | — |" in report


def test_the_report_says_which_epochs_checkpoint_each_run_tested(tmp_path):
    sweep = tmp_path / "sweep"
    for seed, best in ((0, "best-epoch001-top1err0.3000.ckpt"), (1, "best-epoch000-top1err0.3300.ckpt")):
        run = fake_run(sweep, "baseline", seed, 0.30, 0.10)  # validated at 2 epochs
        checkpoint = str(run / "checkpoints" / best)
        (run / "results.json").write_text(json.dumps({"results": {"checkpoint": checkpoint}, "config": {}}))
    result = run_cli("scripts/report.py", str(sweep))
    assert result.returncode == 0, result.stderr
    report = (sweep / "report.md").read_text()
    assert "| baseline-0 | baseline | 0 | 30.00 | 10.00 | epoch 2 of 2 |" in report  # the last
    assert "| baseline-1 | baseline | 1 | 30.00 | 10.00 | epoch 1 of 2 |" in report  # chosen by validation
    assert "chosen on the test images" in report


def test_the_tested_epoch_is_counted_in_epochs_not_validations(tmp_path):
    # validated every second epoch (epochs 1 and 3 of 4), the log of a resume repeating step 20
    run = fake_run(tmp_path / "sweep", "baseline", 0, 0.30, 0.10)
    writer = SummaryWriter(str(run / "tensorboard"))
    for step, epoch in ((10, 1), (20, 3), (20, 3), (25, 4)):  # 25: the test, logged at epoch 4
        writer.add_scalar("epoch", epoch, step)
    writer.add_scalar("val/top1_error", 0.3, 20)
    writer.close()
    (run / "results.json").write_text(json.dumps({"results": {"checkpoint": "x/best-epoch003-top1err0.3000.ckpt"}}))
    result = run_cli("scripts/report.py", str(tmp_path / "sweep"))
    assert result.returncode == 0, result.stderr
    assert "| epoch 4 of 4 |" in (tmp_path / "sweep" / "report.md").read_text()


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
