"""scripts/benchmark_data.py runs and reports every pipeline side by side."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_reports_paper_torchvision_and_batched_pipelines(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "scripts/benchmark_data.py", "--images", "8", "--repeats", "1", "--batch-size", "4",
           "--json", str(out)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    names = ["paper, per image", "paper, batched", "torchvision RandomResizedCrop", "in-memory 32x32, batched (CIFAR)", "shapes generated, 32x32"]
    for name in names:
        assert name in result.stdout
    results = json.loads(out.read_text())["results"]
    assert all(results[name]["median"] > 0 for name in names)
