"""How loader workers start (data.multiprocessing_context): from a fork server in a process of a
torch.distributed group, whose communication threads a fork can deadlock on.

tests/test_sampling.py shows it where it matters: under two gloo processes each rank's
workers are children of a fork server, not of the rank, and the weights trained do not
depend on how the workers started.
"""

from __future__ import annotations

import multiprocessing

import pytest
import torch.distributed as dist
from data_fixtures import image_tree

from alexnet.data import FolderDataModule, start_method
from alexnet.errors import ConfigError
from conftest import compose_config


def test_auto_starts_workers_from_a_fork_server_in_a_distributed_process_and_else_as_the_platform_does(monkeypatch):
    assert start_method.method("auto", distributed=True) == "forkserver"
    monkeypatch.setattr(start_method, "_default_method", lambda: "fork")  # Linux up to Python 3.13
    assert start_method.method("auto", distributed=False) is None  # the DataLoader's default: fork
    monkeypatch.setattr(start_method, "_default_method", lambda: "forkserver")  # Python 3.14's default
    assert start_method.method("auto", distributed=False) == "forkserver"  # with the preload


def test_reading_the_default_start_method_does_not_fix_it():
    before = multiprocessing.get_start_method(allow_none=True)
    assert start_method._default_method() in multiprocessing.get_all_start_methods()
    assert multiprocessing.get_start_method(allow_none=True) == before


@pytest.mark.parametrize("setting", ["fork", "forkserver", "spawn"])
def test_a_named_start_method_is_used_in_a_distributed_process_or_not(setting):
    for distributed in (False, True):
        assert start_method.method(setting, distributed) == setting
        assert start_method.context(setting, distributed).get_start_method() == setting


def test_the_fork_server_imports_the_script_and_the_data_modules_before_it_forks_a_worker(monkeypatch):
    preloaded = []
    context = multiprocessing.get_context("forkserver")
    monkeypatch.setattr(type(context), "set_forkserver_preload", lambda self, modules: preloaded.append(modules))
    start_method.context("auto", distributed=True)
    assert preloaded == [["__main__", "alexnet.data"]]


def test_folder_data_defaults_to_auto_and_an_unknown_method_is_refused_naming_the_key():
    assert compose_config("data=folder", "data.root=/tmp").data.multiprocessing_context == "auto"
    assert compose_config("data=imagenet").data.multiprocessing_context == "auto"
    with pytest.raises(ConfigError, match=r"^data.multiprocessing_context: must be one of auto, fork, forkserver, spawn"):
        start_method.check("threads")


def test_a_process_in_a_group_of_one_is_distributed_too(tmp_path):
    # trainer=ddp on one device: a process group, and so gloo's or NCCL's threads, but one process
    data = FolderDataModule(root=str(image_tree(tmp_path / "data", per_class=1)), num_workers=2)
    assert data._worker_context() is None  # no group: the platform's default (fork on Linux)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        assert data._worker_context().get_start_method() == "forkserver"
    finally:
        dist.destroy_process_group()
