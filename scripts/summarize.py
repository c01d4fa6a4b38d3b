"""Per-layer output shapes, parameters, multiply-adds and receptive fields of a model.

    python scripts/summarize.py model=paper_grouped
    python scripts/summarize.py model=cifar model.groups=2
    python scripts/summarize.py --compare torchvision paper_grouped

The model is composed by Hydra from conf/ exactly as train.py composes it, so
any ``model.KEY=VALUE`` override works here too; an unknown model or key gets
Hydra's own error and a non-zero exit. ``--compare A B`` puts two variants side
by side (the same overrides apply to both), with the activation memory of a
batch of 128 (Section 5). What is counted is written in alexnet/nn/summary.py.
"""

from __future__ import annotations

import sys


from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.table import Table

from alexnet.config import compose
from alexnet.nn.models import OPTIONS, create
from alexnet.nn.summary import Summary, saved_activation_bytes, summarize

BATCH = 128  # Section 5: "batch size of 128 examples"
IMAGENET_CLASSES = 1000  # when the model config leaves num_classes to the dataset
USAGE = "usage: summarize.py [--compare MODEL_A MODEL_B] [model=NAME] [model.KEY=VALUE ...]"


def compose_model(overrides: list[str]) -> DictConfig:
    """The ``model`` node of conf/config.yaml composed with ``overrides``, as train.py composes it."""
    return compose(overrides, "summarize").model


def build(model_cfg: DictConfig):
    """The network a model config describes; 1000 classes unless model.num_classes says."""
    try:
        num_classes = OmegaConf.select(model_cfg, "num_classes", default=None)
    except OmegaConfBaseException:  # interpolated from a dataset that is not composed
        num_classes = None
    options = {key: model_cfg[key] for key in model_cfg if key in OPTIONS}
    return create(model_cfg.name, num_classes or IMAGENET_CLASSES, **options)


def fmt_shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def fmt_rf(summary_layer) -> str:
    return "image" if summary_layer.receptive_field is None else str(summary_layer.receptive_field)


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def layer_table(name: str, s: Summary) -> Table:
    classes = s.layers[-1].shape[0]
    table = Table(title=f"{name}: input {fmt_shape(s.input_shape)}, {classes} classes", title_justify="left")
    for col, just in [("layer", "left"), ("output", "right"), ("parameters", "right"),
                      ("multiply-adds", "right"), ("RF", "right"), ("jump", "right")]:
        table.add_column(col, justify=just, no_wrap=True)
    for layer in s.layers:
        jump = "" if layer.jump is None else f"{layer.jump:g}"
        table.add_row(layer.name, fmt_shape(layer.shape), f"{layer.parameters:,}" if layer.parameters else "",
                      f"{layer.macs:,}" if layer.macs else "", fmt_rf(layer), jump)
    table.add_section()
    table.add_row("total", "", f"{s.parameters:,}", f"{s.macs:,}", "", "")
    return table


def totals(s: Summary, saved: int) -> list[tuple[str, str]]:
    return [
        ("input", fmt_shape(s.input_shape)),
        ("parameters", f"{s.parameters:,}"),
        ("multiply-adds per image", f"{s.macs:,} ({s.macs / 1e9:.3f} G)"),
        ("  in convolutions", f"{s.macs_of('Conv2d') / 1e9:.3f} G"),
        ("  in fully connected layers", f"{s.macs_of('Linear') / 1e9:.3f} G"),
        ("layer outputs per image", f"{s.activations:,} floats"),
        (f"layer outputs, batch {BATCH}, float32", mib(s.activation_bytes(BATCH))),
        (f"saved for backward, batch {BATCH} (measured)", mib(saved * BATCH)),
    ]


def summarize_one(console: Console, overrides: list[str]) -> None:
    model_cfg = compose_model(overrides)
    net = build(model_cfg)
    s = summarize(net)
    console.print(layer_table(model_cfg.name, s))
    for key, value in totals(s, saved_activation_bytes(net)):
        console.print(f"{key + ':':<44} {value}")
    console.print("RF: receptive field on the input in pixels (r += (k-1)*jump over conv and pool layers);"
                  " multiply-adds: conv and fc layers only.")


def compare(console: Console, a: str, b: str, overrides: list[str]) -> None:
    names, nets, sums, saved = [a, b], [], [], []
    for name in names:
        net = build(compose_model([f"model={name}", *overrides]))
        nets.append(net)
        sums.append(summarize(net))
        saved.append(saved_activation_bytes(net))
    table = Table(title=f"{a} vs {b}", title_justify="left")
    table.add_column("", no_wrap=True)
    for name in names:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column(f"{b} / {a}", justify="right", no_wrap=True)
    conv1 = [s["conv1"] for s in sums]
    rows = [("conv1 filters", conv1[0].shape[0], conv1[1].shape[0])]
    rows += [
        ("input", fmt_shape(sums[0].input_shape), fmt_shape(sums[1].input_shape)),
        ("parameters", sums[0].parameters, sums[1].parameters),
        ("multiply-adds per image", sums[0].macs, sums[1].macs),
        ("  in convolutions", sums[0].macs_of("Conv2d"), sums[1].macs_of("Conv2d")),
        ("  in fully connected layers", sums[0].macs_of("Linear"), sums[1].macs_of("Linear")),
        ("layer outputs per image (floats)", sums[0].activations, sums[1].activations),
        (f"layer outputs, batch {BATCH}, float32 (MiB)",
         sums[0].activation_bytes(BATCH) / 2**20, sums[1].activation_bytes(BATCH) / 2**20),
        (f"saved for backward, batch {BATCH} (MiB, measured)", saved[0] * BATCH / 2**20, saved[1] * BATCH / 2**20),
    ]
    for label, x, y in rows:
        if isinstance(x, str):
            table.add_row(label, x, y, "")
        else:
            cell = (lambda v: f"{v:,.1f}") if isinstance(x, float) else (lambda v: f"{v:,}")
            table.add_row(label, cell(x), cell(y), f"{y / x:.2f}" if x else "")
    console.print(table)

    # The weighted layers side by side: conv1 ... fc8 by Caffe's names.
    per_layer = Table(title="per layer (output / parameters / multiply-adds)", title_justify="left")
    per_layer.add_column("layer", no_wrap=True)
    for name in names:
        for col in ("output", "params", "MACs"):
            per_layer.add_column(f"{name} {col}" if col == "output" else col, justify="right", no_wrap=True)
    weighted = [[layer for layer in s.layers if layer.kind in ("Conv2d", "Linear")] for s in sums]
    layer_names = list(dict.fromkeys(layer.name for layers in weighted for layer in layers))
    for lname in layer_names:
        cells = [lname]
        for layers in weighted:
            layer = next((x for x in layers if x.name == lname), None)
            cells += ["", "", ""] if layer is None else [fmt_shape(layer.shape), f"{layer.parameters:,}", f"{layer.macs:,}"]
        per_layer.add_row(*cells)
    console.print(per_layer)


def main(argv: list[str]) -> int:
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__.strip())
        return 0
    pair = None
    if "--compare" in argv:
        i = argv.index("--compare")
        pair = argv[i + 1 : i + 3]
        if len(pair) != 2 or any(x.startswith("-") or "=" in x for x in pair):
            print(f"--compare needs two model names\n{USAGE}", file=sys.stderr)
            return 2
        argv = argv[:i] + argv[i + 3 :]
        if any(arg.startswith(("model=", "+model=", "++model=")) for arg in argv):
            print(f"--compare names both models; drop the model= override\n{USAGE}", file=sys.stderr)
            return 2
    console = Console(width=None if sys.stdout.isatty() else 160)
    try:
        if pair:
            compare(console, *pair, argv)
        else:
            summarize_one(console, argv)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        # The message Hydra would print from @hydra.main, without the traceback.
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
