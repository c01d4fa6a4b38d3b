"""One benchmark for everything: training speed, the LRN, the Lightning loop, data, memory.

    python scripts/benchmark.py                 # about 6 minutes on a 2-core CPU; writes benchmark.json
    python scripts/benchmark.py --quick         # seconds, smallest settings (the test runs this)
    python scripts/benchmark.py --repeats 7 --batch-size 128 --out runs/bench.json

Every comparison is measured in the same run, interleaved: each repeat times
every contender once, one after the other, so that a busy machine slows them
alike. Figures are medians over the repeats with their min-max spread; a ratio
is the median of the per-repeat ratios. Sections:

* train: images/s of a training step (forward, backward, SGD) on in-memory
  random tensors: paper_grouped with the fast LRN (lrn_impl=auto), with
  PyTorch's LRN (lrn_impl=torch) and without LRN (lrn=false); torchvision;
  cifar (32x32). With their memory kept for backward, MiB per image in fp32
  (the tensors autograd saves, weights excluded).
* loop: the Lightning training loop (AlexNetSystem in a Trainer) against a
  plain PyTorch loop on the same model and the same in-memory tensors.
* data: the input pipeline, images/s per DataLoader worker (one core) on
  256-pixel JPEGs and on full-size photos, PIL against torchvision.io
  decoding, data.decode=device on the CPU, torchvision's RandomResizedCrop
  preset as the reference, and how many workers one GPU needs
  (scripts/benchmark_data.py).
* dual: paper_dual_gpu (one tower per GPU, or per process on the CPU)
  against paper_grouped (scripts/benchmark_towers.py: medians of its steps).
* gpu: the training rows on a CUDA device with the fast path (channels_last,
  cudnn.benchmark) and bf16 autocast (in a run: trainer.precision=bf16-mixed),
  with peak memory per model.
* memory: the peak resident memory of this process.

Sections that need hardware that is not there print "skipped: ..." instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


import benchmark_data

from alexnet.nn.fast_lrn import native_available
from alexnet.nn.models import create
from alexnet.training.host_memory import keep_freed_memory

# name: (variant, options, input size, classes)
TRAIN = {  # in the order they take turns: the fast LRN next to no LRN
    "paper_grouped, fast LRN": ("paper_grouped", {"lrn_impl": "auto"}, 224, 1000),
    "paper_grouped, no LRN": ("paper_grouped", {"lrn": False}, 224, 1000),
    "paper_grouped, PyTorch LRN": ("paper_grouped", {"lrn_impl": "torch"}, 224, 1000),
    "torchvision": ("torchvision", {}, 224, 1000),
    "cifar": ("cifar", {}, 32, 10),
}
TARGETS = {  # the issues' targets on the 2-core development machine
    "train: fast LRN / no LRN": 0.9,
    "loop: Lightning / plain": 0.95,
    **benchmark_data.TARGETS,  # the data path per core against torchvision's RandomResizedCrop preset
}
MEMORY_TARGET = ("paper_grouped, fast LRN", 6.0)  # MiB per image kept for backward, fp32


@dataclass
class Row:
    section: str
    name: str
    unit: str
    values: list[float]
    note: str = ""
    stats: dict = field(default_factory=dict)

    def __post_init__(self):
        self.stats = spread(self.values)


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- train


class Stepper:
    """One model, its optimizer and a fixed in-memory batch: ``step()`` trains once."""

    def __init__(self, variant, options, size, classes, batch, device, fast_path=False):
        torch.manual_seed(0)
        self.net = create(variant, classes, init="torch", **options).to(device)
        self.device, self.fast_path = device, fast_path
        if fast_path:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
        self.x = (torch.randn(batch, 3, size, size, device=device) * 50).contiguous(
            memory_format=torch.channels_last if fast_path else torch.contiguous_format)
        self.y = torch.randint(0, classes, (batch,), device=device)

    def step(self) -> None:
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.fast_path):
            loss = F.cross_entropy(self.net(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def seconds(self) -> float:
        """The time of one training step."""
        sync(self.device)
        start = time.perf_counter()
        self.step()
        sync(self.device)
        return time.perf_counter() - start


def saved_mib_per_image(variant, options, size, classes, batch=2) -> float:
    """MiB per image of the tensors autograd keeps for backward (weights excluded), fp32."""
    torch.manual_seed(0)
    net = create(variant, classes, init="torch", **options)
    weights = {p.untyped_storage().data_ptr() for p in net.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in weights:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(torch.randn(batch, 3, size, size) * 50)
    return sum(kept.values()) / batch / 2**20


def train_rows(args, device: torch.device, fast_path: bool, section: str) -> tuple[list[Row], dict]:
    steppers = {name: Stepper(*spec, args.batch_size, device, fast_path) for name, spec in TRAIN.items()}
    for s in steppers.values():  # warm-up: allocator, cuDNN autotuning, the native library's first build
        for _ in range(args.warmup):
            s.step()
    rates: dict[str, list[float]] = {name: [] for name in steppers}
    peaks: dict[str, list[float]] = {name: [] for name in steppers}
    for _ in range(args.repeats):
        # Step by step in turn, so that every contender meets the same moments
        # of a shared machine; a repeat's rate is over its steps.
        seconds = dict.fromkeys(steppers, 0.0)
        for _ in range(args.steps):
            for name, s in steppers.items():
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                seconds[name] += s.seconds()
                if device.type == "cuda":
                    peaks[name].append(torch.cuda.max_memory_allocated(device) / 2**30)
        for name in steppers:
            rates[name].append(args.steps * args.batch_size / seconds[name])
    rows = [Row(section, f"{name}", "images/s", r) for name, r in rates.items()]
    if device.type == "cuda":
        rows += [Row(section, f"{name}, peak memory", "GiB", p) for name, p in peaks.items()]
    else:
        rows += [Row(section, f"{name}, kept for backward", "MiB/image", [saved_mib_per_image(*spec)])
                 for name, spec in TRAIN.items()]
    per_repeat = lambda a, b: [x / y for x, y in zip(rates[a], rates[b])]  # noqa: E731
    ratios = {
        f"{section}: fast LRN / no LRN": per_repeat("paper_grouped, fast LRN", "paper_grouped, no LRN"),
        f"{section}: PyTorch LRN / no LRN": per_repeat("paper_grouped, PyTorch LRN", "paper_grouped, no LRN"),
        f"{section}: fast LRN / PyTorch LRN": per_repeat("paper_grouped, fast LRN", "paper_grouped, PyTorch LRN"),
    }
    return rows, ratios


# ---------------------------------------------------------------- loop


def loop_rows(args) -> tuple[list[Row], dict]:
    """AlexNetSystem in a Lightning Trainer against a plain loop: same model, data and optimizer."""
    import lightning as L

    from alexnet.training.system import AlexNetSystem

    batch, steps = args.loop_batch_size, args.loop_steps
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(batch * (steps + args.warmup), 3, 32, 32, generator=g),
                         torch.randint(0, 10, (batch * (steps + args.warmup),), generator=g))
    optim = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "constant", "warmup_epochs": 0}
    model = {"name": "cifar"}

    # The two loops take turns step by step, so that both meet the same moments
    # of a shared machine (two cores: one busy core halves a parallel step):
    # after each Lightning step a callback runs one step of the plain loop.
    # Lightning's step is the time from the end of that plain step to the end
    # of its next step (fetching the batch, hooks, forward, backward, update,
    # logging); each loop's rate is the batch over its median step.
    class PlainLoopInTurn(L.Callback):
        def __init__(self):
            torch.manual_seed(0)
            self.net = create("cifar", 10)
            self.opt = torch.optim.SGD(self.net.parameters(), lr=optim["lr"], momentum=optim["momentum"],
                                       weight_decay=optim["weight_decay"])
            self.batches = iter(DataLoader(data, batch_size=batch))
            self.plain, self.lightning, self.resumed = [], [], None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch_, batch_idx):
            start = time.perf_counter()
            if self.resumed is not None and batch_idx >= args.warmup:
                self.lightning.append(start - self.resumed)
            x, y = next(self.batches)  # the plain loop: fetch, forward, backward, update
            loss = F.cross_entropy(self.net(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.resumed = time.perf_counter()
            if batch_idx >= args.warmup:
                self.plain.append(self.resumed - start)

    def both() -> tuple[float, float]:
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        torch.manual_seed(0)
        system = AlexNetSystem(model=model, optim=optim, num_classes=10)
        turns = PlainLoopInTurn()
        trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                            limit_val_batches=0, callbacks=[turns])
        with warnings.catch_warnings():  # no validation data, no workers: as intended here
            warnings.simplefilter("ignore")
            trainer.fit(system, train_dataloaders=DataLoader(data, batch_size=batch))
        return batch / statistics.median(turns.plain), batch / statistics.median(turns.lightning)

    rates = {"plain PyTorch loop, cifar": [], "Lightning loop, cifar": []}
    for _ in range(args.repeats):
        plain, lightning = both()
        rates["plain PyTorch loop, cifar"].append(plain)
        rates["Lightning loop, cifar"].append(lightning)
    rows = [Row("loop", name, "images/s", r) for name, r in rates.items()]
    ratio = [a / b for a, b in zip(rates["Lightning loop, cifar"], rates["plain PyTorch loop, cifar"])]
    return rows, {"loop: Lightning / plain": ratio}


# ---------------------------------------------------------------- data


def data_rows(args) -> tuple[list[Row], dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        measured, ratios = benchmark_data.measure(args.data_images, args.repeats, args.batch_size, "cpu")
    finally:
        torch.set_num_threads(threads)
    return [Row("data", name.strip(), "images/s per worker", r) for name, r in measured.items()], ratios


# ---------------------------------------------------------------- dual
# paper_dual_gpu against paper_grouped: scripts/benchmark_towers.py trains the
# grouped network in one process and the two towers (alexnet/parallel/towers.py) as two
# processes on the same batch, NCCL on two GPUs or gloo on the CPU.


def dual_gpu_rows(args) -> tuple[list[Row], dict, str | None]:
    """Rows, ratios, and the reason the section was skipped (or None)."""
    gpus = torch.cuda.device_count()
    if gpus == 1:
        return [], {}, "skipped: paper_dual_gpu needs two GPUs, this machine has one"
    if gpus == 0 and args.quick:
        return [], {}, "skipped: on the CPU only in the full run (its two processes take half a minute to start)"
    try:
        import benchmark_towers
    except ImportError as err:
        return [], {}, f"skipped: scripts/benchmark_towers.py does not import ({err})"
    device = "cuda" if gpus >= 2 else "cpu"
    towers = argparse.Namespace(batch_size=args.batch_size, input_size=224, num_classes=1000, steps=args.steps * args.repeats,
                                warmup=args.warmup, device=device, threads=torch.get_num_threads(), json=None)
    r = benchmark_towers.measure(towers)
    where = "two GPUs" if device == "cuda" else "CPU, two processes"
    rows = [
        Row("dual", "paper_grouped, one process", "images/s", [r["grouped_images_per_s"]]),
        Row("dual", f"paper_dual_gpu, {where}", "images/s", [r["dual_images_per_s"]]),
        Row("dual", "paper_dual_gpu, exchanged per tower", "KiB/image", [r["bytes_per_image"] / 2**10]),
    ]
    return rows, {"dual: paper_dual_gpu / paper_grouped": [r["dual_over_grouped"]]}, None


# ---------------------------------------------------------------- the run


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=64, help="training batch (default 64)")
    p.add_argument("--steps", type=int, default=2, help="training steps per timing (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timings per contender (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--loop-batch-size", type=int, default=128, help="batch of the loop section (default 128)")
    p.add_argument("--loop-steps", type=int, default=15, help="timed steps of the loop section (default 15)")
    p.add_argument("--data-images", type=int, default=192, help="JPEGs of the data section (default 192)")
    p.add_argument("--skip", nargs="*", default=[], choices=["train", "loop", "data", "dual", "gpu"],
                   help="sections not to run")
    p.add_argument("--quick", action="store_true", help="the smallest settings: seconds, for tests")
    p.add_argument("--out", type=Path, default=Path("benchmark.json"), help="the JSON file (default benchmark.json)")
    args = p.parse_args(argv)
    if args.warmup < 1:
        p.error("--warmup must be at least 1 (a step is timed from the end of the one before)")
    if args.quick:
        args.batch_size, args.steps, args.repeats, args.warmup = 2, 1, 1, 1
        args.loop_batch_size, args.loop_steps, args.data_images = 8, 2, 4
    return args


def machine() -> dict:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    return {
        "cpu": cpu,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "native_lrn": native_available(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def print_table(rows: list[Row], ratios: dict, skipped: list[str]) -> None:
    width = max(len(r.name) for r in rows) if rows else 44
    print(f"{'section':8s} {'what':{width}s} {'median':>10s}  {'(min - max)':>21s}  unit")
    for r in rows:
        s = r.stats
        print(f"{r.section:8s} {r.name:{width}s} {s['median']:10.2f}  ({s['min']:9.2f} - {s['max']:9.2f})  {r.unit}")
    print()
    print(f"{'ratio':{width + 9}s} {'median':>10s}  {'(min - max)':>21s}  target")
    for name, r in ratios.items():
        target = f">= {r['target']}: {'met' if r['met'] else 'NOT met'}" if "target" in r else ""
        print(f"{name:{width + 9}s} {r['median']:10.3f}  ({r['min']:9.3f} - {r['max']:9.3f})  {target}")
    for note in skipped:
        print(note)


def main(argv=None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    keep_freed_memory()  # as a CPU training run does (fast_path.reuse_memory=auto): the CPU rows are a CPU run's
    rows: list[Row] = []
    ratios: dict[str, list[float]] = {}
    skipped: list[str] = []
    if "train" not in args.skip:
        more, r = train_rows(args, torch.device("cpu"), fast_path=False, section="train")
        rows, ratios = rows + more, {**ratios, **r}
    if "loop" not in args.skip:
        more, r = loop_rows(args)
        rows, ratios = rows + more, {**ratios, **r}
    if "data" not in args.skip:
        more, r = data_rows(args)
        rows, ratios = rows + more, {**ratios, **r}
    if "dual" not in args.skip:
        more, r, note = dual_gpu_rows(args)
        rows, ratios = rows + more, {**ratios, **r}
        skipped += [f"dual: {note}"] if note else []
    if "gpu" not in args.skip:
        if torch.cuda.is_available():
            torch.backends.cudnn.benchmark = True
            more, r = train_rows(args, torch.device("cuda"), fast_path=True, section="gpu")
            rows, ratios = rows + more, {**ratios, **r}
        else:
            skipped.append("gpu: skipped: no CUDA device")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    rows.append(Row("memory", "peak resident memory of this process", "GiB", [peak]))

    summary = {name: spread(v) for name, v in ratios.items()}
    for name, target in TARGETS.items():
        if name in summary:
            summary[name].update(target=target, met=summary[name]["median"] >= target)
    print_table(rows, summary, skipped)
    name, limit = MEMORY_TARGET
    kept = next((r.stats["median"] for r in rows if r.name == f"{name}, kept for backward"), None)
    if kept is not None:
        print(f"{name} keeps {kept:.2f} MiB per image for backward (limit {limit}: {'met' if kept <= limit else 'NOT met'})")
    if "data" not in args.skip:
        gpu = next((r.stats["median"] for r in rows if r.section == "gpu" and r.name == "paper_grouped, fast LRN"), None)
        print(benchmark_data.workers_line({r.name: r.stats for r in rows if r.section == "data"}, gpu))
    elapsed = time.perf_counter() - started
    print(f"{elapsed:.0f} s; figures in {args.out}")

    report = {
        "command": " ".join(["python", "scripts/benchmark.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": [asdict(r) for r in rows],
        "ratios": summary,
        "kept_for_backward": {"model": name, "mib_per_image": kept, "limit": limit, "met": kept <= limit} if kept else None,
        "skipped": skipped,
        "seconds": elapsed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
