"""How loader workers start (data.multiprocessing_context): from a fork server when the run has
more than one process, whose ranks run communication threads that a fork can deadlock on.

tests/test_sampling.py shows it where it matters: under two gloo processes each rank's
workers are children of a fork server, not of the rank, and the weights trained do not
depend on how the workers started.
"""

from __future__ import annotations

import multiprocessing

import pytest

from alexnet.data import start_method
from alexnet.errors import ConfigError
from conftest import compose_config


def test_auto_starts_workers_from_a_fork_server_only_when_the_run_has_more_than_one_process():
    assert start_method.method("auto", processes=1) is None  # the platform's default: fork on Linux
    assert start_method.method("auto", processes=2) == "forkserver"
    assert start_method.method("auto", processes=8) == "forkserver"


@pytest.mark.parametrize("setting", ["fork", "forkserver", "spawn"])
def test_a_named_start_method_is_used_whatever_the_number_of_processes(setting):
    for processes in (1, 2):
        assert start_method.method(setting, processes) == setting
        assert start_method.context(setting, processes).get_start_method() == setting


def test_the_fork_server_imports_the_script_and_the_data_modules_before_it_forks_a_worker(monkeypatch):
    preloaded = []
    context = multiprocessing.get_context("forkserver")
    monkeypatch.setattr(type(context), "set_forkserver_preload", lambda self, modules: preloaded.append(modules))
    start_method.context("auto", processes=2)
    assert preloaded == [["__main__", "alexnet.data"]]


def test_folder_data_defaults_to_auto_and_an_unknown_method_is_refused_naming_the_key():
    assert compose_config("data=folder", "data.root=/tmp").data.multiprocessing_context == "auto"
    assert compose_config("data=imagenet").data.multiprocessing_context == "auto"
    with pytest.raises(ConfigError, match=r"^data.multiprocessing_context: must be one of auto, fork, forkserver, spawn"):
        start_method.check("threads")
