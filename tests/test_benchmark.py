"""scripts/benchmark.py measures every comparison of issue 6 in one run, as one table and one JSON file."""

import json
import os
import sys

from conftest import run_command

TRAIN = ["paper_grouped, fast LRN", "paper_grouped, PyTorch LRN", "paper_grouped, no LRN", "torchvision", "cifar"]


def test_the_benchmark_prints_one_table_and_writes_every_figure_to_json(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "scripts/benchmark.py", "--quick", "--out", str(out)]
    result = run_command(cmd, env=dict(os.environ), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout
    for name in TRAIN + ["Lightning loop, cifar", "plain PyTorch loop, cifar", "paper, batched", "peak resident memory"]:
        assert name in table
    for ratio in ["train: fast LRN / no LRN", "train: PyTorch LRN / no LRN", "loop: Lightning / plain"]:
        assert ratio in table
    assert "dual: skipped" in table or "dual: paper_dual_gpu / paper_grouped" in table

    report = json.loads(out.read_text())
    assert set(report) >= {"command", "machine", "settings", "rows", "ratios", "skipped"}
    rows = {(r["section"], r["name"]): r for r in report["rows"]}
    for name in TRAIN:
        assert rows["train", name]["stats"]["median"] > 0  # images/s
        assert rows["train", f"{name}, kept for backward"]["unit"] == "MiB/image"
    assert rows["train", "paper_grouped, fast LRN, kept for backward"]["stats"]["median"] <= 6.0
    assert {"median", "min", "max", "target", "met"} <= set(report["ratios"]["train: fast LRN / no LRN"])
    assert {"median", "min", "max", "target", "met"} <= set(report["ratios"]["loop: Lightning / plain"])
    assert any(r["section"] == "data" for r in report["rows"])
    if not report["machine"]["cuda"]:
        assert "gpu: skipped: no CUDA device" in report["skipped"]
