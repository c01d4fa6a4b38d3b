"""Pictures of a trained network: the paper's Figures 3 and 4, and feature maps.

    python scripts/visualize.py ckpt_path=RUN/checkpoints/last.ckpt
    python scripts/visualize.py ckpt_path=FILE out_dir=figs layer=norm2 image=cat.jpg
    python scripts/visualize.py ckpt_path=FILE queries=6 neighbours=7 max_train=20000 data.root=/data/cifar10

Writes three PNGs to ``out_dir`` (by default ``figures/`` in the checkpoint's
run folder):

- ``conv1_kernels.png``: conv1's kernels, one panel per tower (Figure 3: in
  the paper, tower 1's are mostly colour-agnostic, tower 2's colour-specific);
- ``neighbours.png``: for a few validation images, the training images
  nearest by the Euclidean distance of their fc7 activations (Figure 4; the
  first ``max_train`` training images are searched);
- ``feature_maps_<layer>.png``: every channel of one layer's output for one
  image (``image=PATH``, or the first validation image); ``layer`` is a Caffe
  name as scripts/summarize.py prints them (conv1, relu1, norm1, pool1, ...).

The data are the checkpoint's own (``data.KEY=VALUE`` changes a key).
"""

from __future__ import annotations

import sys
from pathlib import Path


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.utils import make_grid

from alexnet.training.callbacks import conv1_kernel_grids
from alexnet.training.checkpoints import CHECKPOINT_DIR
from alexnet.config import compose, run_script
from alexnet.config import build_datamodule
from alexnet.errors import ConfigError
from alexnet.inference import data_config, load_system
from alexnet.nn.summary import summarize

OPTIONS = {"out_dir": None, "layer": "conv1", "image": None, "queries": 4, "neighbours": 5, "max_train": 5000}


def split_options(argv: list[str]) -> tuple[dict, list[str]]:
    """This script's own ``key=value`` options, and the config overrides."""
    options, rest = dict(OPTIONS), []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in OPTIONS:
            if isinstance(OPTIONS[key], int):
                if not value.isdigit() or int(value) < 1:
                    raise ConfigError(key, f"must be a positive integer, got {value!r}")
                value = int(value)
            options[key] = value
        else:
            rest.append(arg)
    return options, rest


def out_folder(options: dict, ckpt: Path) -> Path:
    if options["out_dir"]:
        return Path(options["out_dir"])
    # RUN/checkpoints/x.ckpt -> RUN/figures; a loose checkpoint file -> figures/ beside it
    parent = ckpt.resolve().parent
    return (parent.parent if parent.name == CHECKPOINT_DIR else parent) / "figures"


def display(x: torch.Tensor) -> torch.Tensor:
    """uint8 (C, H, W) -> float (H, W, 3) in 0-1 for imshow."""
    x = x.float() / 255
    return (x.expand(3, -1, -1) if x.shape[0] == 1 else x).permute(1, 2, 0)


# ---------------------------------------------------------------- Figure 3


def plot_kernels(system, path: Path) -> None:
    weight = system.net.conv1.weight.detach()
    grids = conv1_kernel_grids(weight, system.net.groups)
    fig, axes = plt.subplots(1, len(grids), figsize=(5 * len(grids), 4), squeeze=False)
    for tower, (ax, grid) in enumerate(zip(axes[0], grids), start=1):
        ax.imshow(grid.permute(1, 2, 0).numpy())
        ax.set_title(f"conv1, tower {tower}: {weight.shape[0] // len(grids)} kernels" if len(grids) > 1
                     else f"conv1: {weight.shape[0]} kernels")
        ax.axis("off")
    fig.suptitle(f"{tuple(weight.shape[1:])} kernels of the first layer (the paper's Figure 3)")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------- Figure 4


@torch.no_grad()
def fc7(system, datamodule, images: torch.Tensor) -> torch.Tensor:
    """The last hidden layer's activations (the input of the output layer) of uint8 images."""
    net = system.net
    x = datamodule.eval_batch(images)
    return net.classifier[:-1](net.forward_features(x))


def validation_images(datamodule, count: int) -> tuple[torch.Tensor, list[int]]:
    images, labels = [], []
    for batch in datamodule.val_dataloader():
        batch = datamodule.on_before_batch_transfer(batch, 0)  # file bytes decoded here (data.decode=device)
        x, y = batch[0], batch[1]
        images.append(x)
        labels += y.tolist()
        if len(labels) >= count:
            break
    if not labels:
        raise ConfigError("data", "the validation split has no images")
    return torch.cat(images)[:count], labels[:count]


def plot_neighbours(system, datamodule, queries: int, k: int, max_train: int, path: Path) -> None:
    query, labels = validation_images(datamodule, queries)
    query_features = fc7(system, datamodule, query)
    best = torch.full((len(query), k), float("inf")), torch.zeros(len(query), k, dtype=torch.long)
    pool: list[torch.Tensor] = []
    for batch in datamodule.train_pixels(max_train):
        distances = torch.cdist(query_features, fc7(system, datamodule, batch))  # Euclidean, as in Section 6.1
        offset = sum(len(p) for p in pool)
        pool.append(batch)
        joined = torch.cat([best[0], distances], dim=1)
        ids = torch.cat([best[1], torch.arange(offset, offset + len(batch)).expand(len(query), -1)], dim=1)
        order = joined.topk(min(k, joined.shape[1]), dim=1, largest=False).indices
        best = joined.gather(1, order), ids.gather(1, order)
    if not pool:
        raise ConfigError("data", "the training split has no images to search")
    train = torch.cat(pool)
    k = min(k, len(train))
    names = system.class_names
    fig, axes = plt.subplots(len(query), k + 1, figsize=(1.6 * (k + 1), 1.7 * len(query)), squeeze=False)
    for row in range(len(query)):
        axes[row][0].imshow(display(query[row]))
        axes[row][0].set_title(f"val: {names[labels[row]]}", fontsize=7)
        for col in range(k):
            axes[row][col + 1].imshow(display(train[best[1][row, col]]))
            axes[row][col + 1].set_title(f"d={best[0][row, col]:.1f}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"Validation images (left) and their {k} nearest training images by fc7 activations (Figure 4)",
                 fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------- feature maps


def layer_module(system, name: str):
    net = system.net
    layers = {layer.name: layer for layer in summarize(net).layers}
    if name not in layers:
        raise ConfigError("layer", f"no layer {name!r} in this network; choose one of {', '.join(layers)}")
    return net.get_submodule(layers[name].module)


@torch.no_grad()
def plot_feature_maps(system, datamodule, layer: str, image: str | None, path: Path) -> None:
    if image:
        try:
            with Image.open(image) as pil:
                x = datamodule.eval_transform(pil).unsqueeze(0)
        except (UnidentifiedImageError, OSError) as err:
            raise ConfigError("image", f"cannot read {image}: {err}") from err
    else:
        x = datamodule.eval_batch(validation_images(datamodule, 1)[0])
    module, seen = layer_module(system, layer), []
    handle = module.register_forward_hook(lambda m, i, out: seen.append(out.detach().clone()))
    try:
        system.net(x)
    finally:
        handle.remove()
    maps = seen[0][0]  # (C, H, W)
    if maps.ndim != 3:
        raise ConfigError("layer", f"{layer} is not a convolutional layer (its output is {tuple(maps.shape)})")
    grid = make_grid(maps.unsqueeze(1), nrow=16, normalize=True, scale_each=True, padding=1, pad_value=1.0)
    fig, ax = plt.subplots(figsize=(12, 12 * grid.shape[1] / grid.shape[2] + 0.5))
    ax.imshow(grid[0].numpy(), cmap="viridis")
    ax.set_title(f"{layer}: {maps.shape[0]} feature maps of {tuple(maps.shape[1:])} for {image or 'validation image 0'}")
    ax.axis("off")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def visualize(argv: list[str]) -> list[Path]:
    options, overrides = split_options(argv)
    if options["image"] and not Path(options["image"]).is_file():
        raise ConfigError("image", f"no such file: {options['image']}")
    cfg = compose(overrides, "visualize")
    system, checkpoint, ckpt = load_system(cfg.ckpt_path)
    layer_module(system, options["layer"])  # a wrong layer name fails before any data is read
    # Whole uint8 images from the loaders, centre-cropped at evaluation.
    data = data_config(checkpoint, cfg, overrides)
    data.batch_augment, data.eval_crops, data.test_crops = True, 1, 1
    datamodule = build_datamodule(data)
    datamodule.setup("fit")
    out = out_folder(options, ckpt)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError("out_dir", f"cannot create {out}: {err.strerror or err}") from err
    paths = [out / "conv1_kernels.png", out / "neighbours.png", out / f"feature_maps_{options['layer']}.png"]
    plot_kernels(system, paths[0])
    plot_neighbours(system, datamodule, options["queries"], options["neighbours"], options["max_train"], paths[1])
    plot_feature_maps(system, datamodule, options["layer"], options["image"], paths[2])
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    sys.exit(run_script(visualize, sys.argv[1:]))
