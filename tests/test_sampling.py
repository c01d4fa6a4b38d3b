"""Which images an epoch trains on, and what each image looks like: functions of (seed, epoch, index).

Tested where users run: class-folder JPEGs decoded by worker processes, on
two DDP processes and on four model-parallel ones (two data-parallel copies
of the two towers), through the real command line.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import REPO, compose_config, run_command
from data_fixtures import random_image, save

import train as train_script
from alexnet.data import FolderDataModule
from alexnet.data.sampling import EpochSampler, sample_draws

QUIET = ["trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "test_after_fit=false"]


def folder_dataset(root: Path, classes: int, per_class: int, size: tuple[int, int], extra: int = 0) -> Path:
    """root/{train,val}/<class>/*.JPEG noise images; ``extra`` more in the first class, so that
    the training set does not divide by the number of ranks."""
    for s, (split, n) in enumerate((("train", per_class), ("val", 2))):
        for c in range(classes):
            for i in range(n + (extra if split == "train" and c == 0 else 0)):
                save(random_image(size, seed=10_000 * s + 100 * c + i), root / split / f"class{c}" / f"{i}.JPEG")
    return root


def run_recording(run: Path, records: Path, *args: str, env: dict | None = None, timeout: float = 400) -> subprocess.CompletedProcess:
    """tests/record_train.py (train.py plus a recording callback) as a user's command."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1",
                   "RECORD_DIR": str(records), **(env or {})}
    return run_command([sys.executable, str(REPO / "tests" / "record_train.py"), f"hydra.run.dir={run}", *args],
                       env=environment, timeout=timeout)


def read_records(records: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(records.glob("rank*.json"))]


def indices_by_epoch(record: dict) -> dict[int, list[int]]:
    epochs: dict[int, list[int]] = {}
    for epoch, _, indices in record["batches"]:
        epochs.setdefault(epoch, []).extend(indices)
    return epochs


def assert_every_image_once_per_epoch(records: list[dict], size: int, copies: int, epochs: int = 2) -> None:
    """Over the data-parallel copies, each epoch trains on every image once (DistributedSampler
    repeats a few to give every copy as many), and the epochs' orders differ."""
    per_copy = {}
    for r in records:
        per_copy.setdefault(r["data_parallel_rank"], r)
    assert sorted(per_copy) == list(range(copies))
    orders = []
    for epoch in range(epochs):
        seen = [i for r in per_copy.values() for i in indices_by_epoch(r)[epoch]]
        assert set(seen) == set(range(size)), f"epoch {epoch}: never trained on {sorted(set(range(size)) - set(seen))}"
        assert len(seen) == math.ceil(size / copies) * copies, f"epoch {epoch}: {len(seen)} samples for {size} images"
        repeated = sum(n - 1 for n in Counter(seen).values())
        assert repeated == len(seen) - size < copies, f"epoch {epoch}: {repeated} images twice"
        orders.append(seen)
    assert orders[0] != orders[1], "every epoch has its own order"


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    return folder_dataset(tmp_path_factory.mktemp("folder") / "data", classes=3, per_class=7, size=(40, 36), extra=0)


FOLDER_CIFAR = ["data=folder", "data.batch_size=4", "data.resize_size=36", "trainer.max_epochs=2"]


@pytest.mark.parametrize("decode", ["worker", "device"])
def test_under_ddp_the_ranks_share_each_epoch_and_every_image_is_trained_on_once(small_folder, tmp_path, decode):
    # 21 images on 2 ranks: 11 each, one image trained twice per epoch (DistributedSampler's padding).
    # data.decode=device: each rank decodes its own batches on its own device.
    result = run_recording(tmp_path / "run", tmp_path / "records", f"data.root={small_folder}", *FOLDER_CIFAR,
                           "data.num_workers=2", f"data.decode={decode}", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *QUIET)
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_records(tmp_path / "records")
    assert [r["global_rank"] for r in records] == [0, 1]
    assert_every_image_once_per_epoch(records, size=21, copies=2)
    for r in records:  # not forked from a rank that runs gloo's threads (alexnet/data/start_method.py)
        for loader in ("train", "val"):
            workers = r["workers"][loader]
            assert workers["start_method"] == "forkserver"
            assert len(workers["parents"]) == 2 and workers["pid"] not in workers["parents"], (loader, workers)


def test_two_data_parallel_copies_of_the_two_towers_share_each_epoch_and_the_towers_see_the_same_images(tmp_path_factory, tmp_path):
    data = folder_dataset(tmp_path_factory.mktemp("folder127") / "data", classes=4, per_class=4, size=(140, 132), extra=1)
    result = run_recording(
        tmp_path / "run", tmp_path / "records", "data=folder", f"data.root={data}", "data.num_workers=2",
        "data.batch_size=4", "data.resize_size=132", "trainer.max_epochs=2",
        "model=paper_dual_gpu", "model.input_size=127", "trainer=cpu", "trainer.devices=4", "trainer.num_sanity_val_steps=0",
        *QUIET, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_records(tmp_path / "records")
    assert [(r["global_rank"], r["data_parallel_rank"], r["tower"]) for r in records] == [(0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)]
    for copy in (0, 1):
        tower0, tower1 = (r for r in records if r["data_parallel_rank"] == copy)
        assert tower0["batches"] == tower1["batches"], f"copy {copy}: the towers trained on different images"
    assert_every_image_once_per_epoch(records, size=17, copies=2)


# ---------------------------------------------------------------- the same run, whatever the workers


def test_zero_or_two_workers_forked_or_from_a_fork_server_train_bit_identical_weights_on_folder_data(small_folder, tmp_path, caplog):
    # A fork server's workers inherit none of the training process's state (its random streams
    # included): the crops and flips must not depend on it.
    finals = []
    for workers, start in ((0, "auto"), (2, "fork"), (2, "forkserver")):
        run = tmp_path / f"workers{workers}-{start}"
        cfg = compose_config(f"data.root={small_folder}", *FOLDER_CIFAR, f"data.num_workers={workers}",
                             f"data.multiprocessing_context={start}", "trainer.accelerator=cpu",
                             "trainer.num_sanity_val_steps=0", *QUIET)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="alexnet.data.base"):
            train_script.train(cfg, run)
        said = [r.getMessage() for r in caplog.records if "loader workers start by" in r.getMessage()]
        assert said == ([f"data: loader workers start by {start} (data.multiprocessing_context={start})"] if workers else [])
        finals.append(torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True))
    a = finals[0]
    assert a["global_step"] == 2 * 6
    for b in finals[1:]:
        assert b["global_step"] == a["global_step"]
        for key in a["state_dict"]:
            assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
        for p, state in a["optimizer_states"][0]["state"].items():
            assert torch.equal(state["momentum_buffer"], b["optimizer_states"][0]["state"][p]["momentum_buffer"])


def test_an_images_crop_flip_and_lighting_depend_on_seed_epoch_and_index_alone(small_folder):
    dm = FolderDataModule(root=str(small_folder), crop_size=32, resize_size=36, batch_size=4, num_workers=0)
    dm.setup()
    key = (5, 3)  # image 5 in epoch 3
    first = dm.train_set[key]
    dm.train_set[(6, 3)], dm.train_set[(5, 2)]  # other draws in between change nothing
    torch.manual_seed(1234)  # nor does the global random state
    again = dm.train_set[key]
    assert torch.equal(first[0], again[0]) and torch.equal(first[3], again[3])
    assert torch.equal(first[3], sample_draws(0, 3, 5))
    together = dm.train_set.__getitems__([(6, 3), (5, 3), (5, 2)])  # as the DataLoader fetches a batch
    assert torch.equal(together[1][0], first[0]) and torch.equal(together[1][3], first[3])
    assert not torch.equal(sample_draws(0, 3, 5), sample_draws(0, 2, 5))
    assert not torch.equal(sample_draws(0, 3, 5), sample_draws(1, 3, 5))
    # Over many images every crop offset of the 36-pixel square appears.
    tops = {int((sample_draws(0, 0, i)[0] * 5).floor()) for i in range(200)}
    assert tops == {0, 1, 2, 3, 4}


def test_the_training_order_is_a_function_of_seed_and_epoch_not_of_the_global_seed(monkeypatch):
    data = list(range(50))
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")  # what per-rank seeding used to rewrite
    orders = {}
    for rank in (0, 1):
        sampler = EpochSampler(data, num_replicas=2, rank=rank, seed=0)
        sampler.set_epoch(4)
        orders[rank] = list(sampler)
    assert all(epoch == 4 for _, epoch in orders[0] + orders[1])
    assert sorted(i for i, _ in orders[0] + orders[1]) == data
    monkeypatch.setenv("PL_GLOBAL_SEED", "8")
    again = EpochSampler(data, num_replicas=2, rank=0, seed=0)
    again.set_epoch(4)
    assert list(again) == orders[0]
