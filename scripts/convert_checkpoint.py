"""Convert a checkpoint between the two-device paper network and the grouped one.

    python scripts/convert_checkpoint.py RUN/checkpoints/last.ckpt grouped.ckpt   # paper_dual_gpu -> paper_grouped
    python scripts/convert_checkpoint.py grouped.ckpt dual.ckpt                   # paper_grouped -> paper_dual_gpu
    python scripts/convert_checkpoint.py IN OUT --to paper_grouped                # force the direction

The direction is read from IN (the model it was trained as). Both networks
store their tensors in the grouped layout (alexnet/parallel/towers.py: each tensor is
the two towers' halves one after the other, momentum included), so the
conversion checks every tensor against the target network and rewrites the
model the checkpoint declares: train.py resumes a checkpoint only as the
model it names (`python train.py model=paper_grouped ckpt_path=OUT`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


import torch

from alexnet.training.checkpoints import read_checkpoint
from alexnet.errors import ConfigError
from alexnet.nn.models import create

PAIRS = {"paper_dual_gpu": "paper_grouped", "paper_grouped": "paper_dual_gpu"}


def convert(checkpoint: dict, path: Path, to: str | None = None) -> tuple[dict, str, str]:
    """The checkpoint re-declared as ``to`` (default: the other of the pair); (checkpoint, from, to)."""
    model = dict(checkpoint["hyper_parameters"]["model"])
    source = model["name"]
    if source not in PAIRS:
        raise ConfigError("IN", f"{path} holds a {source!r} network; only {' and '.join(PAIRS)} convert")
    target = to or PAIRS[source]
    if target not in PAIRS:
        raise ConfigError("--to", f"must be one of {sorted(PAIRS)}, got {target!r}")
    options = {k: v for k, v in model.items() if k not in ("name", "num_classes")}
    net = create(target, checkpoint["hyper_parameters"]["num_classes"], **{**options, "init": "torch"})
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
    out["hyper_parameters"] = {**checkpoint["hyper_parameters"], "model": {**model, "name": target}}
    if isinstance(out["hyper_parameters"].get("config"), dict):
        config = out["hyper_parameters"]["config"]
        out["hyper_parameters"]["config"] = {**config, "model": {**config["model"], "name": target}}
    if isinstance(checkpoint.get("config"), dict):
        out["config"] = {**checkpoint["config"], "model": {**checkpoint["config"]["model"], "name": target}}
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
        partial = args.output.with_name(f".{args.output.name}.partial")
        torch.save(checkpoint, partial)
        os.replace(partial, args.output)  # never a half-written OUT
    except (ConfigError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.input} ({source}) -> {args.output} ({target})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
