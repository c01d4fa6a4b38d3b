"""Train an AlexNet: compose the config, build data, system and trainer, fit, report.

    python train.py                                  # small run on built-in data
    python train.py experiment=paper_imagenet data.root=/data/imagenet trainer=ddp
    python train.py hydra.run.dir=RUN ckpt_path=last # continue RUN
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from alexnet.config import build_datamodule, check_run_dir_writable, check_tower_classes, inherit_run_overrides, validate
from alexnet.data.labels import check_class_count
from alexnet.errors import ConfigError, TrainingError
from alexnet.parallel.placement import network
from alexnet.training.checkpoints import check_compatible, read_checkpoint, resolve_ckpt_path
from alexnet.training.faults import EXIT_SIGTERM
from alexnet.training.loggers import finish_trackers, log_final_hyperparameters
from alexnet.training.results import RESULTS, finished_results, write_results
from alexnet.training.system import AlexNetSystem
from alexnet.training.trainer import build_trainer

log = logging.getLogger("train")


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Fit and test as ``cfg`` says, writing everything under ``run_dir``."""
    validate(cfg)
    if cfg.get("skip_finished") and (done := finished_results(cfg, run_dir)) is not None:
        print(f"skipped: {run_dir} is finished (top1_error={done['test/top1_error']:.4f} "
              f"top5_error={done['test/top5_error']:.4f}, from its {RESULTS})")
        return done
    ckpt = resolve_ckpt_path(cfg.ckpt_path, run_dir)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = build_datamodule(cfg.data)  # validates data.* and the folder layout
    model = OmegaConf.to_container(cfg.model, resolve=True)
    num_classes = model.get("num_classes") or datamodule.num_classes
    if ckpt is not None:
        check_compatible(read_checkpoint(ckpt), ckpt, model, num_classes)
        log.info("resuming from %s", ckpt)
    check_class_count(num_classes, datamodule.num_classes)  # labels out of range, before any batch
    check_tower_classes(cfg, num_classes)

    system = AlexNetSystem(
        model=network(model),  # the network; where its towers run is the strategy's (build_trainer)
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        num_classes=num_classes,
        class_names=list(datamodule.class_names),
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    trainer = build_trainer(cfg, run_dir, resuming=ckpt is not None)
    failed = True
    try:
        results = fit_and_test(cfg, run_dir, trainer, system, datamodule, ckpt)
        failed = False
    finally:
        finish_trackers(trainer.loggers, failed)
    return results


def fit_and_test(cfg: DictConfig, run_dir: Path, trainer: L.Trainer, system, datamodule, ckpt: Path | None) -> dict:
    """Fit (from ``ckpt`` if given), then test the best checkpoint and write RUN/results.json."""
    trainer.fit(system, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None)

    results: dict = {}
    if cfg.test_after_fit and not trainer.fast_dev_run:
        best = trainer.checkpoint_callback.best_model_path
        (results,) = trainer.test(system, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        # TensorBoard's HPARAMS tab: the run's config against its final errors.
        log_final_hyperparameters(trainer.loggers, OmegaConf.to_container(cfg, resolve=True), results, trainer.global_step)
        if trainer.is_global_zero:
            write_results(cfg, run_dir, {**results, "checkpoint": best or None, "test_crops": datamodule.test_crops})
            print(
                f"top1_error={results['test/top1_error']:.4f} top5_error={results['test/top5_error']:.4f} "
                f"({datamodule.test_crops} crop{'s' if datamodule.test_crops > 1 else ''}, "
                f"checkpoint {best or 'final weights'}, run folder {run_dir})"
            )
    return results


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        train(cfg, Path(HydraConfig.get().runtime.output_dir))
    except (ConfigError, TrainingError) as err:
        log.error("%s", err)
        sys.exit(f"error: {err}")
    except SIGTERMException:  # last.ckpt is saved (alexnet/training/faults.py)
        sys.exit(EXIT_SIGTERM)


if __name__ == "__main__":
    sys.argv = inherit_run_overrides(sys.argv)
    check_run_dir_writable(sys.argv)
    main()
