"""The GPU fast path is on by default on CUDA, off on the CPU, each part runs on the CPU when asked,
and none of it changes the precision (trainer.precision alone does: tests/test_precision.py)."""

import os
import re
import sys

import lightning as L
import pytest
import torch
from conftest import compose_config, run_command
from torch.utils.data import DataLoader, TensorDataset

from alexnet.data import ShapesDataModule
from alexnet.errors import ConfigError
import alexnet.training.fast_path
from alexnet.training.fast_path import FastPath, configure
from alexnet.nn.layers import LocalResponseNorm
from alexnet.training.system import AlexNetSystem

TRAINER_AUTO = {"accelerator": "auto", "precision": "32-true", "benchmark": None}


def test_the_config_has_a_fast_path_section_of_auto_switches():
    cfg = compose_config()
    assert dict(cfg.fast_path) == {"channels_last": "auto", "compile": False, "reuse_memory": "auto"}


def test_auto_turns_nothing_on_when_training_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = dict(TRAINER_AUTO)
    assert configure({}, args) == []
    assert args == TRAINER_AUTO


@pytest.mark.parametrize("accelerator", ["gpu", "cuda", "auto"])
def test_auto_turns_channels_last_on_when_training_on_cuda_and_leaves_the_trainers_arguments_alone(accelerator, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = {**TRAINER_AUTO, "accelerator": accelerator}
    (callback,) = configure({}, args)
    assert args == {**TRAINER_AUTO, "accelerator": accelerator}  # precision and benchmark are the Trainer's
    assert callback.channels_last and callback.compile is False


def test_cudnn_autotuning_is_the_trainers_benchmark_on_for_gpu_runs():
    assert compose_config("trainer=gpu").trainer.benchmark is True
    assert compose_config("trainer=ddp").trainer.benchmark is True
    assert compose_config().trainer.benchmark is None  # Lightning's default elsewhere


@pytest.mark.parametrize("key, instead", [("bf16", "trainer.precision=bf16-mixed"), ("cudnn_benchmark", "trainer.benchmark=true")])
def test_the_switches_the_trainer_owns_are_refused_naming_its_key(key, instead):
    with pytest.raises(ConfigError, match=rf"fast_path\.{key}: is gone: the Trainer owns it; give {re.escape(instead)}"):
        configure({key: True}, dict(TRAINER_AUTO))


def test_true_forces_a_switch_on_the_cpu_and_false_keeps_it_off_on_cuda(monkeypatch):
    args = {**TRAINER_AUTO, "accelerator": "cpu"}
    (callback,) = configure({"channels_last": True, "compile": "aot_eager"}, args)
    assert args["precision"] == "32-true" and callback.channels_last and callback.compile == "aot_eager"
    args = {**TRAINER_AUTO, "accelerator": "gpu"}
    assert configure({"channels_last": False}, args) == []
    assert args == {**TRAINER_AUTO, "accelerator": "gpu"}


@pytest.mark.parametrize("accelerator, value, reused", [
    ("cpu", "auto", True), ("gpu", "auto", False), ("cpu", False, False), ("gpu", True, True)])
def test_reuse_memory_keeps_freed_host_memory_when_training_on_the_cpu(accelerator, value, reused, monkeypatch):
    calls = []
    monkeypatch.setattr(alexnet.training.fast_path, "keep_freed_memory", lambda: calls.append(1))
    configure({"reuse_memory": value}, {**TRAINER_AUTO, "accelerator": accelerator})
    assert bool(calls) == reused


def test_reused_memory_is_set_for_the_process_and_changes_no_result():
    # In subprocesses: the glibc setting is for a whole process. Its speed is
    # scripts/benchmark_data.py's "batch half" rows, not a timed test.
    code = (
        "import sys, torch\n"
        "from alexnet.training.host_memory import keep_freed_memory\n"
        "ok = keep_freed_memory() if sys.argv[1] == 'on' else True\n"
        "x = torch.arange(64 * 3 * 224 * 224, dtype=torch.int64).remainder(251).to(torch.uint8).view(64, 3, 224, 224)\n"
        "ys = [x.float().mul_(0.5).sum() for _ in range(3)]\n"
        "print(ok, repr(float(ys[0])), len(set(float(y) for y in ys)))\n"
    )
    runs = {}
    for mode in ("off", "on"):
        out = run_command([sys.executable, "-c", code, mode], env=dict(os.environ), timeout=120)
        assert out.returncode == 0, out.stderr
        runs[mode] = out.stdout.split()
    assert runs["on"][0] == "True", "mallopt refused the thresholds (is this glibc?)"
    assert runs["on"][1:] == runs["off"][1:] and runs["on"][2] == "1"  # the same sums, every time


@pytest.mark.parametrize("key, value", [("channels_last", "yes"), ("channels_last", 1), ("compile", 3), ("fast", True),
                                        ("reuse_memory", "yes")])
def test_a_bad_fast_path_value_is_an_error_naming_the_key(key, value):
    with pytest.raises(ConfigError, match="fast_path"):
        configure({key: value}, dict(TRAINER_AUTO))


@pytest.mark.parametrize("value", [True, "auto"])
def test_the_removed_bf16_switch_is_refused_pointing_at_trainer_precision(value, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = {**TRAINER_AUTO, "accelerator": "gpu"}
    with pytest.raises(ConfigError, match="trainer.precision=bf16-mixed") as err:
        configure({"bf16": value}, args)
    assert err.value.key == "fast_path.bf16" and args["precision"] == "32-true"


def test_data_is_pinned_for_non_blocking_copies_exactly_when_cuda_is_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ShapesDataModule(num_train=8, num_val=8, crop_size=32).pin_memory
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not ShapesDataModule(num_train=8, num_val=8, crop_size=32).pin_memory


def fit_two_steps(callback, precision="32-true"):
    """Two training steps of the cifar model on in-memory tensors, recording conv1's input and the LRN's."""
    torch.manual_seed(0)
    system = AlexNetSystem(model={"name": "cifar"}, optim={"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
                                                           "schedule": "constant", "warmup_epochs": 0}, num_classes=10)
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen.setdefault(name, (inputs[0], output))  # the first call's; returns None: output unchanged
        return hook

    system.net.conv1.register_forward_hook(record("conv1"))
    next(m for m in system.net.modules() if isinstance(m, LocalResponseNorm)).register_forward_hook(record("lrn"))
    data = TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))
    trainer = L.Trainer(accelerator="cpu", max_steps=2, precision=precision, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[callback])
    trainer.fit(system, DataLoader(data, batch_size=8))
    return system, seen, trainer


def test_channels_last_and_bf16_train_on_the_cpu():
    system, seen, trainer = fit_two_steps(FastPath(channels_last=True), precision="bf16-mixed")
    assert seen["conv1"][0].is_contiguous(memory_format=torch.channels_last)
    assert system.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    lrn_in, lrn_out = seen["lrn"]
    assert lrn_in.dtype == lrn_out.dtype == torch.bfloat16  # bf16 in and out; float32 inside
    assert lrn_out.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_compile_trains_on_the_cpu_and_keeps_the_checkpoint_keys():
    torch._dynamo.reset()
    keys = set(AlexNetSystem(model={"name": "cifar"}, optim={}, num_classes=10).state_dict())
    # aot_eager: torch.compile's graph capture and autograd without code generation: seconds,
    # where inductor's C++ code generation takes a minute on a small CPU
    system, seen, trainer = fit_two_steps(FastPath(channels_last=False, compile="aot_eager"))
    assert system.net._compiled_call_impl is not None
    assert set(system.state_dict()) == keys
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
