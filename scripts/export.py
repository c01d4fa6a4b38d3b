"""Export a checkpoint's network to ONNX or to a torch.export ExportedProgram, and check it.

    python scripts/export.py ckpt_path=FILE format=onnx                  # FILE with the suffix .onnx
    python scripts/export.py ckpt_path=FILE format=exported_program      # FILE with the suffix .pt2
    python scripts/export.py ckpt_path=FILE format=onnx out=model.onnx batch=16

ONNX (``pip install -e ".[export]"``): input ``images`` (B, C, H, W) float32,
output ``logits`` (B, classes); the LRN layers are ONNX's own ``LRN`` operator
(one per tower), mapped from the checkpoint's convention by
alexnet/nn/export.py; onnx.checker must pass. ExportedProgram:
``torch.export.load(out).module()(images)`` gives the logits; it needs only torch.
Both take any batch size.

The export checks itself before the file appears: onnxruntime (or the loaded
ExportedProgram) must give the checkpoint's logits (PyTorch, eval mode,
float32) to within 1e-4 of the logits' scale (max |logit|, at least 1) on
``batch`` images (default 8) of two kinds: random pixels through the
checkpoint's evaluation transform, and the first images of its validation data
when that is on this machine (data.KEY=VALUE changes the data config, as in
evaluate.py). A larger difference is an error naming it, and nothing is
written; the file is written aside and renamed into place, never half-written.
Ends with one line: format, out, the largest difference and the tolerance.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from alexnet.config import compose, run_script
from alexnet.errors import ConfigError, ExportError
from alexnet.files import atomic_path, probe_writable
from alexnet.inference import load_system, sample_images
from alexnet.nn.export import (FORMATS, INSTALL, compare, export_onnx, export_program, lrn_node_count,
                               missing_onnx_packages, onnx_ops, runner)

DEFAULT_BATCH = 8


def split_options(argv: list[str]) -> tuple[dict, list[str]]:
    """``format=``, ``out=`` and ``batch=`` (checked), and the overrides left for the config."""
    options, rest = {"format": None, "out": None, "batch": str(DEFAULT_BATCH)}, []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in options:
            options[key] = value
        else:
            rest.append(arg)
    if options["format"] not in FORMATS:
        raise ConfigError("format", f"must be one of {', '.join(FORMATS)}, got {options['format']!r}")
    batch = options["batch"]
    if not batch.isdigit() or int(batch) < 1:
        raise ConfigError("batch", f"must be a positive integer, got {batch!r}")
    options["batch"] = int(batch)
    return options, rest


def output_path(out: str | None, ckpt: Path, fmt: str) -> Path:
    """``out``, or the checkpoint's path with the format's suffix; its folder must be writable."""
    path = Path(out).expanduser() if out else ckpt.with_suffix(FORMATS[fmt])
    if path.resolve() == ckpt.resolve():
        raise ConfigError("out", f"{path} is the checkpoint itself; write the export elsewhere")
    try:
        probe_writable(path.parent)
    except OSError as err:
        raise ConfigError("out", f"cannot write to {path.parent}: {err.strerror or err}") from err
    return path


def export(argv: list[str]) -> dict:
    options, overrides = split_options(argv)
    fmt = options["format"]
    if fmt == "onnx" and (missing := missing_onnx_packages()):
        raise ConfigError("format", f"format=onnx needs {', '.join(missing)}, not installed here: {INSTALL}")
    cfg = compose(overrides, "export")
    system, checkpoint, ckpt = load_system(cfg.ckpt_path)  # names a missing or unreadable file
    out = output_path(options["out"], ckpt, fmt)
    net = system.net.float().eval()
    batches, no_validation = sample_images(checkpoint, cfg, overrides, options["batch"])
    if no_validation:
        print(f"checking on random images only: {no_validation}", file=sys.stderr)

    with atomic_path(out, suffix=f".partial{FORMATS[fmt]}") as partial:  # renamed to `out` only if it passes
        example = batches["random"][:1].repeat(2, 1, 1, 1)  # two images: the batch dimension stays dynamic
        (export_onnx if fmt == "onnx" else export_program)(net, example, partial)
        if fmt == "onnx":
            lrn = onnx_ops(partial)["LRN"]
            if lrn != lrn_node_count(net):
                raise ExportError(f"the ONNX graph has {lrn} LRN nodes, the network {lrn_node_count(net)} (one per layer and tower)")
        run = runner(fmt, partial)
        checked = {}
        with torch.no_grad():
            for name, x in batches.items():
                checked[name] = compare(net(x), run(x), f"{name} images")
    largest = max(d for d, _ in checked.values())
    each = ", ".join(f"{len(batches[name])} {name} images: {d:.2g} <= {t:.2g}" for name, (d, t) in checked.items())
    print(f"format={fmt} out={out} max_abs_diff={largest:.3g} ({each})")
    return {"format": fmt, "out": out, "max_abs_diff": largest, "checked": checked}


def main(argv: list[str]) -> int:
    try:
        return run_script(export, argv)
    except ExportError as err:  # the export does not compute the checkpoint's logits: nothing was written
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
