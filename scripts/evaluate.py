"""Evaluate any checkpoint: top-1 and top-5 error on the validation or test split.

    python scripts/evaluate.py ckpt_path=outputs/2026-11-23/12-00-00/checkpoints/last.ckpt
    python scripts/evaluate.py ckpt_path=FILE data.eval_crops=10          # the paper's ten crops
    python scripts/evaluate.py ckpt_path=FILE data.test_crops=1           # centre crop only
    python scripts/evaluate.py ckpt_path=FILE data.root=/elsewhere/imagenet trainer=gpu

The data config is the checkpoint's own unless the command line changes a key
(data.KEY=VALUE) or names another dataset (data=NAME); so is the precision
(a run trained in bf16-mixed is evaluated in bf16-mixed) unless the command
line gives trainer.precision=... (or tf32=...). Prints the same
summary line that train.py ends with. The crops are data.test_crops, which
follows data.eval_crops unless set (an eval_crops given here wins over a
test_crops stored in the checkpoint).
"""

from __future__ import annotations

import sys


import lightning as L

from alexnet.config import compose, run_script
from alexnet.config import build_datamodule
from alexnet.errors import ConfigError
from alexnet.inference import data_config, load_system, run_precision
from alexnet.training.precision import Precision


def evaluate(overrides: list[str]) -> dict:
    cfg = compose(overrides, "evaluate")
    system, checkpoint, path = load_system(cfg.ckpt_path)
    datamodule = build_datamodule(data_config(checkpoint, cfg, overrides))
    if datamodule.num_classes != system.hparams.num_classes:
        raise ConfigError(
            "data",
            f"the checkpoint {path} has {system.hparams.num_classes} classes, the data {datamodule.num_classes}",
        )
    precision, tf32 = run_precision(checkpoint, cfg, overrides)
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=precision,
        callbacks=[Precision(tf32)],  # logs a precision that is not float32
        logger=False,
        enable_progress_bar=sys.stderr.isatty(),
    )
    (results,) = trainer.test(system, datamodule=datamodule, verbose=False)
    crops = datamodule.test_crops
    print(
        f"top1_error={results['test/top1_error']:.4f} top5_error={results['test/top5_error']:.4f} "
        f"({crops} crop{'s' if crops > 1 else ''}, checkpoint {path})"
    )
    return results


if __name__ == "__main__":
    sys.exit(run_script(evaluate, sys.argv[1:]))
