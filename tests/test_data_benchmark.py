"""scripts/benchmark_data.py runs and reports every pipeline side by side (issue 15's rows)."""

import json
import os
import sys

from conftest import run_command

PIPELINES = [
    "paper, per image, PIL", "paper, per image, torchvision.io",
    "paper, batched, PIL", "paper, batched, PIL: worker part",
    "paper, batched, torchvision.io", "paper, batched, torchvision.io: worker part",
    "paper, decode=device on the CPU", "paper, decode=device: worker part (reads files)",
    "torchvision RandomResizedCrop (PIL)",
]


def test_benchmark_reports_every_pipeline_on_both_image_sizes_the_ratios_and_the_workers_a_gpu_needs(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "scripts/benchmark_data.py", "--images", "8", "--repeats", "1", "--batch-size", "4",
           "--json", str(out)]
    result = run_command(cmd, env=dict(os.environ), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    names = [f"{size}: {p}" for size in ("256px", "500x375") for p in PIPELINES]
    names += ["in-memory 32x32, batched (CIFAR)", "shapes generated, 32x32",
              "batch half on the CPU, glibc default, fresh pages", "batch half on the CPU, fast_path.reuse_memory"]
    for name in names:
        assert name in result.stdout and report["results"][name]["median"] > 0, name
    # The two targets are printed with their verdict, whatever this machine measures.
    for ratio in ("256px: worker part, torchvision.io / RandomResizedCrop",
                  "256px: whole path on the CPU, torchvision.io / RandomResizedCrop"):
        line = next(line for line in result.stdout.splitlines() if line.startswith(ratio))
        assert "target >= " in line and report["ratios"][ratio]["median"] > 0
    assert "one GPU at 2,000 img/s" in result.stdout and "workers for 256px JPEGs" in result.stdout
