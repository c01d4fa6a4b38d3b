"""The two-device model computes what the grouped model computes (Section 3.2).

Two CPU processes on the gloo backend stand for the paper's two GPUs. Each
builds the grouped network from the same seed, keeps its own tower of it,
and checks its logits, loss, gradients and SGD steps against the grouped
network that it also runs whole.
"""

import copy
import json
import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import run_cli

from alexnet.nn.models import create
from alexnet.parallel.towers import Tower, TowerDropout, clip_grad_norm_towers, merge_towers, split_towers



def assert_close(actual, expected, what: str) -> None:
    # float32: the same sums in another order, so a tolerance on the tensor's scale
    scale = float(expected.abs().max()) or 1.0
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * scale, msg=lambda m: f"{what}: {m}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, world: int, *args) -> None:
    mp.spawn(fn, args=(world, free_port(), *args), nprocs=world, join=True)


def init(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)


def _same_as_grouped(rank, world, port, dropout, steps):
    init(rank, world, port)
    torch.manual_seed(0)
    grouped = create("paper_grouped", num_classes=10, init="kaiming", dropout=dropout)
    tower = Tower(copy.deepcopy(grouped), rank, dist.group.WORLD)
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 3, 7, 9])
    sgd = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
    opt_g, opt_t = torch.optim.SGD(grouped.parameters(), **sgd), torch.optim.SGD(tower.parameters(), **sgd)
    for step in range(steps):
        torch.manual_seed(100 + step)  # the same dropout masks, drawn in the same order
        logits_g = grouped(x)
        loss_g = F.cross_entropy(logits_g, y)
        torch.manual_seed(100 + step)
        logits_t = tower(x)
        loss_t = F.cross_entropy(logits_t, y)
        assert_close(logits_t, logits_g, f"step {step}, logits")
        assert_close(loss_t, loss_g, f"step {step}, loss")
        opt_g.zero_grad(), opt_t.zero_grad()
        loss_g.backward(), loss_t.backward()
        grads_g = {n: p.grad for n, p in grouped.named_parameters()}
        for name, p in tower.named_parameters():
            assert_close(p.grad, grads_g[name].chunk(world)[rank], f"step {step}, gradient of {name}")
        opt_g.step(), opt_t.step()
    weights = split_towers(grouped.state_dict(), rank, world)
    for name, w in tower.state_dict().items():
        assert_close(w, weights[name], f"{name} after {steps} SGD steps")
    dist.destroy_process_group()


def test_two_towers_on_two_processes_compute_the_grouped_networks_logits_loss_gradients_and_steps():
    spawn(_same_as_grouped, 2, 0.0, 3)


def test_with_dropout_in_step_the_towers_draw_the_grouped_networks_masks():
    spawn(_same_as_grouped, 2, 0.5, 2)


def test_a_tower_holds_half_of_every_layer_under_the_grouped_names():
    grouped = create("paper_grouped", num_classes=1000, init="torch")
    towers = [Tower(grouped, t) for t in (0, 1)]
    shapes = {n: tuple(p.shape) for n, p in towers[0].named_parameters()}
    assert shapes["features.0.weight"] == (48, 3, 11, 11)  # conv1: the image, 48 kernels
    assert shapes["features.4.weight"] == (128, 48, 5, 5)  # conv2: its own tower's 48 channels
    assert shapes["features.8.weight"] == (192, 256, 3, 3)  # conv3: both towers' 256 channels
    assert shapes["features.10.weight"] == (192, 192, 3, 3)  # conv4: its own tower
    assert shapes["features.12.weight"] == (128, 192, 3, 3)  # conv5: its own tower
    assert shapes["classifier.0.weight"] == (2048, 9216)  # fc6 sees both towers
    assert shapes["classifier.3.weight"] == (2048, 4096)
    assert shapes["classifier.6.weight"] == (500, 4096)  # fc8: half of the 1000 classes
    assert sum(p.numel() for t in towers for p in t.parameters()) == 60_965_224
    assert merge_towers([t.state_dict() for t in towers]).keys() == grouped.state_dict().keys()
    for name, tensor in merge_towers([t.state_dict() for t in towers]).items():
        assert torch.equal(tensor, grouped.state_dict()[name]), name


def test_towers_need_the_grouped_network_and_classes_that_split_in_two():
    with pytest.raises(ValueError, match="groups=2"):
        Tower(create("paper_single_tower", num_classes=10, init="torch"), 0)
    with pytest.raises(ValueError, match="3 classes"):
        Tower(create("paper_grouped", num_classes=3, init="torch"), 0)


def test_tower_dropout_keeps_its_half_of_a_whole_layer_mask():
    x = torch.ones(3, 8)
    torch.manual_seed(5)
    whole = F.dropout(torch.ones(3, 16), 0.5)
    halves = []
    for t in (0, 1):
        torch.manual_seed(5)
        halves.append(TowerDropout(0.5, t)(x))
    assert torch.equal(torch.cat(halves, dim=1), whole)
    assert torch.equal(TowerDropout(0.5, 0).eval()(x), x)


def _one_step(rank, world, port, queue):
    init(rank, world, port)
    torch.manual_seed(0)
    tower = Tower(create("paper_grouped", num_classes=1000, init="torch"), rank, dist.group.WORLD)
    calls = []  # every collective this rank calls, with the tensor it puts in
    real = {name: getattr(dist, name) for name in ("all_gather", "all_reduce", "reduce_scatter", "broadcast")}

    def recording(name):
        def call(*args, **kwargs):
            tensor = args[1] if name in ("all_gather", "reduce_scatter") else args[0]
            calls.append((name, tuple(tensor.shape)))
            return real[name](*args, **kwargs)
        return call

    for name in real:
        setattr(dist, name, recording(name))
    F.cross_entropy(tower(torch.zeros(2, 3, 224, 224)), torch.tensor([1, 2])).backward()
    for name, fn in real.items():
        setattr(dist, name, fn)
    queue.put((tower.exchanged, calls))
    dist.destroy_process_group()


def test_the_towers_exchange_only_conv3_fc6_fc7_fc8_inputs_and_the_logits():
    queue = mp.get_context("spawn").SimpleQueue()
    spawn(_one_step, 2, queue)
    (counted, calls), other = queue.get(), queue.get()
    assert other[1] == calls  # both towers make the same calls
    # What torch.distributed was really asked to move, batch 2 (gloo: the backward is an all-reduce
    # of the whole gradient; NCCL reduce-scatters it, sending one tower's half, as counted).
    forward = [("all_gather", (1, 2)),  # the towers compare their input batches, once
               ("all_gather", (2, 128, 13, 13)),  # conv3's input: conv2's output, each tower's half
               ("all_gather", (2, 128 * 6 * 6)),  # fc6's input
               ("all_gather", (2, 2048)),  # fc7's input
               ("all_gather", (2, 2048)),  # fc8's input
               ("all_gather", (2, 500))]  # the logits
    backward = [("all_reduce", (2, 4096)), ("all_reduce", (2, 4096)), ("all_reduce", (2, 256 * 6 * 6)),
                ("all_reduce", (2, 256, 13, 13))]  # fc8, fc7, fc6, conv3 inputs' gradients; none for the logits
    assert calls == forward + backward
    float32 = 4
    sent = sum(math.prod(shape) for op, shape in forward[1:]) * float32  # this tower's halves, to the other tower
    gradients = sum(math.prod(shape) for op, shape in forward[1:-1]) * float32  # their gradients, half each way
    assert counted == other[0] == sent + gradients
    meeting_points = 128 * 13 * 13 + 128 * 6 * 6 + 2048 + 2048  # conv3, fc6, fc7, fc8 inputs
    assert counted == 2 * (2 * meeting_points * float32 + 500 * float32)  # 238.9 KiB per image


def test_the_benchmark_prints_throughput_and_bytes_exchanged(tmp_path):
    out = tmp_path / "towers.json"
    result = run_cli("scripts/benchmark_towers.py", "--batch-size", "2", "--input-size", "127", "--steps", "1",
                     "--warmup", "0", "--num-classes", "10", "--json", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "paper_dual_gpu, 2 processes" in result.stdout and "exchanged per tower per step" in result.stdout
    figures = json.loads(out.read_text())
    assert figures["bytes_per_image"] == 2 * (128 * 7 * 7 + 128 * 3 * 3 + 2048 + 2048) * 4 + 5 * 4
    assert figures["dual_images_per_s"] > 0 and figures["grouped_images_per_s"] > 0


def _clipped(rank, world, port):
    init(rank, world, port)
    torch.manual_seed(0)
    grouped = create("paper_grouped", num_classes=10, init="kaiming", dropout=0.0, input_size=127)
    tower = Tower(copy.deepcopy(grouped), rank, dist.group.WORLD)
    x, y = torch.randn(2, 3, 127, 127, generator=torch.Generator().manual_seed(1)), torch.tensor([1, 2])
    for net in (grouped, tower):
        F.cross_entropy(net(x), y).backward()
    full = torch.nn.utils.clip_grad_norm_(grouped.parameters(), 0.5)
    norm = clip_grad_norm_towers(list(tower.parameters()), 0.5, dist.group.WORLD)
    assert_close(norm, full, "the gradient norm")
    assert full > 0.5  # the clipping did something
    grads = {n: p.grad for n, p in grouped.named_parameters()}
    for name, p in tower.named_parameters():
        assert_close(p.grad, grads[name].chunk(world)[rank], f"clipped gradient of {name}")
    dist.destroy_process_group()


def test_clipping_by_norm_takes_the_whole_networks_norm_across_towers():
    spawn(_clipped, 2)


def _mismatched_inputs(rank, world, port):
    init(rank, world, port)
    torch.manual_seed(0)
    tower = Tower(create("paper_grouped", num_classes=10, init="torch", input_size=127), rank, dist.group.WORLD)
    with pytest.raises(RuntimeError, match="different input batches"):
        tower(torch.full((2, 3, 127, 127), float(rank)))
    dist.destroy_process_group()


def test_towers_refuse_to_train_on_different_images():
    spawn(_mismatched_inputs, 2)
