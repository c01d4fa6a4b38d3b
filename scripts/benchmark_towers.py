"""The two-device split against the grouped network: throughput and bytes exchanged.

    python scripts/benchmark_towers.py                       # batch 32, 224 pixels, CPU (gloo)
    python scripts/benchmark_towers.py --batch-size 128 --device cuda   # two GPUs (NCCL)

Trains `paper_grouped` in one process and `paper_dual_gpu` as two processes
(one tower each) on the same in-memory batch, side by side, and prints
images/s of each, their ratio and the bytes each tower sends per training
step (forward activations and backward gradients where the towers meet).
On the CPU the comparison is fair in threads: the grouped network gets as
many threads as the two towers together.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path


import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from alexnet.nn.models import create
from alexnet.parallel.towers import Tower


def _steps(net, x, y, steps: int, warmup: int, sync) -> list[float]:
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    times = []
    for i in range(warmup + steps):
        sync()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def _batch(args, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.input_size, args.input_size, generator=g).to(device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=g).to(device)
    return x, y


def _sync(device):
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def _tower_worker(rank: int, port: int, args, queue) -> None:
    device = torch.device(f"cuda:{rank}") if args.device == "cuda" else torch.device("cpu")
    if device.type == "cpu":
        torch.set_num_threads(max(1, args.threads // 2))
    else:
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    net = create("paper_grouped", args.num_classes, input_size=args.input_size, init="kaiming")
    tower = Tower(net, rank, dist.group.WORLD).to(device)
    del net
    x, y = _batch(args, device)
    tower.exchanged = 0
    _steps(tower, x, y, 1, 0, _sync(device))  # one step, to count the bytes sent
    exchanged = tower.exchanged
    times = _steps(tower, x, y, args.steps, args.warmup, _sync(device))
    # A step ends when the slower tower ends.
    slowest = torch.tensor(times, dtype=torch.float64)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    if rank == 0:
        queue.put({"times": slowest.tolist(), "bytes_per_step": exchanged})
    dist.destroy_process_group()


def measure(args) -> dict:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    grouped = create("paper_grouped", args.num_classes, input_size=args.input_size, init="kaiming").to(device)
    x, y = _batch(args, device)
    grouped_times = _steps(grouped, x, y, args.steps, args.warmup, _sync(device))
    del grouped

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(_tower_worker, args=(port, args, queue), nprocs=2, join=True, start_method="spawn")
    towers = queue.get()

    def rate(times):
        return args.batch_size / statistics.median(times)

    result = {
        "device": args.device,
        "batch_size": args.batch_size,
        "input_size": args.input_size,
        "grouped_images_per_s": rate(grouped_times),
        "dual_images_per_s": rate(towers["times"]),
        "dual_over_grouped": rate(towers["times"]) / rate(grouped_times),
        "bytes_per_tower_per_step": towers["bytes_per_step"],
        "bytes_per_image": towers["bytes_per_step"] / args.batch_size,
    }
    return result


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads in all")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.device == "cuda" and torch.cuda.device_count() < 2:
        print("skipped: the two-device comparison on CUDA needs two GPUs")
        return 0
    r = measure(args)
    print(f"paper_grouped, 1 process:      {r['grouped_images_per_s']:8.1f} images/s")
    print(f"paper_dual_gpu, 2 processes:   {r['dual_images_per_s']:8.1f} images/s  ({r['dual_over_grouped']:.2f}x)")
    print(f"exchanged per tower per step:  {r['bytes_per_tower_per_step'] / 2**20:8.2f} MiB "
          f"({r['bytes_per_image'] / 2**10:.1f} KiB per image, batch {args.batch_size}, {args.device})")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
