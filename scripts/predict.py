"""Print the five most probable classes of each image, by name, with probabilities.

    python scripts/predict.py ckpt_path=FILE images=[cat.jpg,dog.png]
    python scripts/predict.py ckpt_path=FILE images=[cat.jpg] data.eval_crops=10

Each image goes through the checkpoint's evaluation transform (resize, centre
crop or the paper's ten crops, normalisation), and the network computes in the
precision its run trained in (trainer.precision=... on the command line
changes it), so the model sees and computes what it did at validation.
"""

from __future__ import annotations

import sys
from pathlib import Path


import lightning as L
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from PIL import Image, UnidentifiedImageError

from alexnet.config import compose, run_script
from alexnet.config import build_datamodule
from alexnet.errors import ConfigError
from alexnet.inference import data_config, load_system, run_precision
from alexnet.training.precision import Precision


def split_images(argv: list[str]) -> tuple[list[str], list[str]]:
    """``images=[a.jpg,b.jpg]`` (Hydra's list syntax) and the remaining overrides."""
    images, rest = [], []
    for arg in argv:
        if arg.startswith("images="):
            value = OverridesParser.create().parse_override(arg).value()
            images += [str(v) for v in (value if isinstance(value, list) else [value])]
        else:
            rest.append(arg)
    if not images:
        raise ConfigError("images", "give the images to classify: images=[a.jpg,b.jpg]")
    return images, rest


def predict(argv: list[str], k: int = 5) -> list[list[tuple[str, float]]]:
    images, overrides = split_images(argv)
    missing = [p for p in images if not Path(p).is_file()]
    if missing:
        raise ConfigError("images", f"no such file: {', '.join(missing)}")
    cfg = compose(overrides, "predict")
    system, checkpoint, _ = load_system(cfg.ckpt_path)
    # Only the evaluation transform is needed: no dataset on this machine is fine.
    datamodule = build_datamodule(data_config(checkpoint, cfg, overrides), require_data=False)
    inputs = []
    for path in images:
        try:
            with Image.open(path) as image:
                inputs.append(datamodule.eval_transform(image))
        except (UnidentifiedImageError, OSError) as err:
            raise ConfigError("images", f"cannot read {path}: {err}") from err
    # Lightning's predict loop applies the run's precision (autocast for *-mixed, cast weights for *-true).
    precision, tf32 = run_precision(checkpoint, cfg, overrides)
    trainer = L.Trainer(accelerator=cfg.trainer.accelerator, devices=1, precision=precision, callbacks=[Precision(tf32)],
                        logger=False, enable_progress_bar=False, enable_model_summary=False)
    batches = trainer.predict(system, dataloaders=torch.utils.data.DataLoader(inputs, batch_size=1))
    names = system.class_names
    results = []
    for path, probs in zip(images, batches):
        top = probs[0].float().cpu().topk(min(k, probs.shape[-1]))
        ranked = [(names[i], p) for p, i in zip(top.values.tolist(), top.indices.tolist())]
        print(path)
        for rank, (name, p) in enumerate(ranked, start=1):
            print(f"  {rank}. {name:<30} {p:6.2%}")
        results.append(ranked)
    return results


if __name__ == "__main__":
    sys.exit(run_script(predict, sys.argv[1:]))
