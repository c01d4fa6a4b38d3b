"""`python train.py`, plus a callback that records what each rank trained on, and planned stops.

Run as a script, exactly like train.py (same arguments). Lightning's DDP
launcher starts the other ranks with this same script, so every process
carries the callback. Environment variables:

    RECORD_DIR       every rank writes rank<global rank>.json there when training ends:
                     {"global_rank", "tower", "data_parallel_rank", "batches": [[epoch, step, [index, ...]], ...],
                      "workers": {"train" | "val": {"start_method", "parents": [each worker's parent pid], "pid"}}}
    KILL_AT_STEP=N   once N training steps are done and their checkpoints written,
                     SIGKILL the whole process group (kill -9 of the job)
    SIGTERM_AT_STEP=N  during training step N+1, rank zero gets SIGTERM (as from a scheduler)
    KILL_AT_VALIDATION=N  SIGKILL the whole process group as the validation after step N starts
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import hydra  # noqa: E402
import lightning as L  # noqa: E402

import train as train_script  # noqa: E402
from alexnet.config import check_run_dir_writable, inherit_run_overrides  # noqa: E402
from alexnet.data import start_method  # noqa: E402
from alexnet.parallel.ranks import data_parallel  # noqa: E402


class Record(L.Callback):
    def __init__(self) -> None:
        self.batches: list = []
        self.workers: dict = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if os.environ.get("KILL_AT_STEP") == str(step):
            os.killpg(os.getpgid(0), signal.SIGKILL)  # step N's checkpoints are on disk: Lightning saves them at its batch end
        if os.environ.get("SIGTERM_AT_STEP") == str(step) and trainer.is_global_zero:
            os.kill(os.getpid(), signal.SIGTERM)
        self.batches.append([trainer.current_epoch, step, trainer.datamodule.batch_indices.tolist()])
        if not self.workers:
            self.workers = {"train": loader_workers(trainer.train_dataloader)}

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and os.environ.get("KILL_AT_VALIDATION") == str(trainer.global_step):
            os.killpg(os.getpgid(0), signal.SIGKILL)

    def on_train_end(self, trainer, pl_module) -> None:
        folder = os.environ.get("RECORD_DIR")
        if not folder:
            return
        rank, _ = data_parallel(trainer)
        if self.workers and trainer.val_dataloaders is not None:
            self.workers["val"] = loader_workers(trainer.val_dataloaders)
        record = {"global_rank": trainer.global_rank, "tower": getattr(trainer.strategy, "tower_rank", 0),
                  "data_parallel_rank": rank, "batches": self.batches, "workers": self.workers}
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def loader_workers(loader) -> dict:
    """How the loader's worker processes were started, and by which process (Linux's /proc)."""
    context = loader.multiprocessing_context
    # (private: a loader with persistent workers keeps its iterator, and that its worker processes)
    workers = getattr(getattr(loader, "_iterator", None), "_workers", [])
    parents = [int(Path(f"/proc/{w.pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) for w in workers]
    return {"start_method": context.get_start_method() if context else start_method._default_method(),
            "parents": parents, "pid": os.getpid()}


def build_recording_trainer(cfg, run_dir, **kwargs):
    trainer = build_trainer(cfg, run_dir, **kwargs)
    trainer.callbacks.append(Record())
    return trainer


build_trainer = train_script.build_trainer
train_script.build_trainer = build_recording_trainer

# train.py's main, its config found from here (Hydra resolves a relative path against the caller's module)
main = hydra.main(version_base="1.3", config_path=str(REPO / "conf"), config_name="config")(train_script.main.__wrapped__)

if __name__ == "__main__":
    sys.argv = inherit_run_overrides(sys.argv)
    check_run_dir_writable(sys.argv)
    main()
