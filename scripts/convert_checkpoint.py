"""Relabel a checkpoint between the two-device paper network and the grouped one.

    python scripts/convert_checkpoint.py RUN/checkpoints/last.ckpt grouped.ckpt   # paper_dual_gpu -> paper_grouped
    python scripts/convert_checkpoint.py grouped.ckpt dual.ckpt                   # paper_grouped -> paper_dual_gpu
    python scripts/convert_checkpoint.py IN OUT --to paper_grouped                # force the direction

`model=paper_dual_gpu` is `paper_grouped` placed one tower per device
(alexnet/parallel/placement.py), and both store their tensors in the grouped
layout (each tensor the two towers' halves one after the other, momentum
included). So a checkpoint of either resumes as the other without conversion;
this script rewrites the run config a checkpoint carries (`model.placement`,
what evaluate.py and a resumed run folder read), checks every tensor against
the paper's network, and upgrades a checkpoint written before the placement
was a key (its network was named `paper_dual_gpu`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alexnet.errors import ConfigError, TrainingError
from alexnet.nn.models import create
from alexnet.parallel.placement import KEY, TOWER_PER_DEVICE, choice, network
from alexnet.training.checkpoints import atomic_torch_save, read_checkpoint

NETWORK = "paper_grouped"
PAIRS = {"paper_dual_gpu": "paper_grouped", "paper_grouped": "paper_dual_gpu"}


def _placed(model: dict, target: str) -> dict:
    """``model`` (a run's model config) as the conf/model option ``target``."""
    net = network(model)
    return {**net, KEY: TOWER_PER_DEVICE} if target == "paper_dual_gpu" else net


def convert(checkpoint: dict, path: Path, to: str | None = None) -> tuple[dict, str, str]:
    """The checkpoint re-declared as ``to`` (default: the other of the pair); (checkpoint, from, to)."""
    hparams = checkpoint["hyper_parameters"]
    model = dict(hparams["model"])
    config = checkpoint.get("config") if isinstance(checkpoint.get("config"), dict) else hparams.get("config")
    source = choice({**model, **((config or {}).get("model") or {})})
    net_keys = network(model)  # a checkpoint from before model.placement: its name upgraded
    if net_keys["name"] != NETWORK:
        raise ConfigError("IN", f"{path} holds a {model['name']!r} network; only {' and '.join(PAIRS)} convert")
    target = to or PAIRS[source]
    if target not in PAIRS:
        raise ConfigError("--to", f"must be one of {sorted(PAIRS)}, got {target!r}")
    options = {k: v for k, v in net_keys.items() if k not in ("name", "num_classes")}
    net = create(NETWORK, hparams["num_classes"], **{**options, "init": "torch"})
    expected = {f"net.{k}": tuple(v.shape) for k, v in net.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    if found != expected:
        wrong = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        raise ConfigError(
            "IN",
            f"{path} does not hold both towers of {target}: "
            + ", ".join(f"{k} is {found.get(k)}, expected {expected.get(k)}" for k in wrong[:5]),
        )
    out = dict(checkpoint)
    out["hyper_parameters"] = {**hparams, "model": net_keys}
    if isinstance(hparams.get("config"), dict):
        run = hparams["config"]
        out["hyper_parameters"]["config"] = {**run, "model": _placed(run["model"], target)}
    if isinstance(checkpoint.get("config"), dict):
        out["config"] = {**checkpoint["config"], "model": _placed(checkpoint["config"]["model"], target)}
    return out, source, target


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path, help="the checkpoint to convert")
    parser.add_argument("output", type=Path, help="where to write the converted checkpoint")
    parser.add_argument("--to", choices=sorted(PAIRS), help="the target network (default: the other one)")
    args = parser.parse_args(argv)
    try:
        if args.input.resolve() == args.output.resolve():
            raise ConfigError("OUT", f"{args.output} is the input checkpoint; write the conversion elsewhere")
        if not args.input.is_file():
            raise ConfigError("IN", f"no checkpoint file at {args.input}")
        checkpoint, source, target = convert(read_checkpoint(args.input), args.input, args.to)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(checkpoint, args.output)  # never a half-written OUT
    except (ConfigError, TrainingError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.input} ({source}) -> {args.output} ({target})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
