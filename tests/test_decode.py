"""data.decode (alexnet/data/decode.py): JPEG through torchvision.io, in the workers or batched on
the device, gives what PIL gave, trains as the worker path does, and tells the user what to change.

Issue 15. The decoders differ only by JPEG rounding (libjpeg-turbo's and PIL's IDCT and
upsampling) and by the resize (torchvision's uint8 kernel against PIL's); the bounds below
are measured on photo-like JPEGs, not guessed.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import REPO, compose_config, run_command
from data_fixtures import image_tree, photo_image, random_image, save
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_data_files import ODD_FILES
from test_train import REQUIRED_TAGS

import alexnet.data.base as base
import train as train_script
from alexnet.data import ShapesDataModule, workers
from alexnet.data.decode import decode, read_bytes
from alexnet.data.folder import ImageFiles, load_rgb
from alexnet.data.presets import load_eval, load_train
from alexnet.errors import ConfigError

# ---------------------------------------------------------------- torchvision.io and PIL: the same crops

# Largest |torchvision.io - PIL| over every pixel of the crops, measured on the images below
# (quality-90 photo-like JPEGs, torchvision 0.29.1, Pillow's libjpeg-turbo):
# * shorter side already 256 (a scripts/prepare_imagenet.py --resize 256 copy): no resize
#   happens, and the two decoders agree exactly;
# * full-size photos (~500x375): resized to 256 by torchvision's uint8 antialiased resize vs
#   PIL's, which round differently: off by one on about 0.2% of the pixels.
DECODER_BOUND = {"256-pixel copy": 0, "full-size photo": 1}
SIZES = {"256-pixel copy": [(341, 256), (256, 320)], "full-size photo": [(500, 375), (375, 500)]}
# The mean |difference| over all pixels: measured 0 and 0.002; rounding, not a shifted image.
MEAN_BOUND = 0.01


def photo_jpegs(root: Path, sizes, per_size: int = 3) -> list[tuple[str, int]]:
    samples = []
    for j, size in enumerate(sizes):
        for k in range(per_size):
            path = save(photo_image(size, seed=10 * j + k), root / f"{size[0]}x{size[1]}_{k}.JPEG", quality=90)
            samples.append((str(path), j))
    return samples


@pytest.mark.parametrize("kind", SIZES)
def test_torchvision_io_and_pil_give_the_same_uint8_crops_to_within_jpeg_rounding(tmp_path, kind):
    samples = photo_jpegs(tmp_path, SIZES[kind])
    # Two different decoders are compared: torchvision.io gives a tensor, PIL an image.
    assert isinstance(decode(read_bytes(samples[0][0])), torch.Tensor)
    assert isinstance(decode(read_bytes(samples[0][0]), decoder="pil"), Image.Image)
    train = load_train(256, 224, center_crop=True, channels=3)  # Section 2 and 4.1, as data=imagenet
    keys = [(i, epoch) for i in range(len(samples)) for epoch in range(3)]  # (index, epoch): the same draws
    crops = {}
    for decoder in ("auto", "pil"):
        train_set = ImageFiles(samples, train, min_size=256, seed=0, decoder=decoder)
        eval_set = ImageFiles(samples, load_eval(256, 3), min_size=256, decoder=decoder)
        crops[decoder] = (torch.stack([x for x, *_ in train_set.__getitems__(keys)]),
                          torch.stack([eval_set[i][0] for i in range(len(samples))]))
    for (a, b), shape in zip(zip(crops["auto"], crops["pil"]), [(len(keys), 3, 224, 224), (len(samples), 3, 256, 256)]):
        assert a.shape == b.shape == shape and a.dtype == b.dtype == torch.uint8
        diff = (a.int() - b.int()).abs()
        assert diff.max() <= DECODER_BOUND[kind], f"{kind}: max |torchvision.io - PIL| = {diff.max()}"
        assert diff.float().mean() <= MEAN_BOUND, f"{kind}: mean |torchvision.io - PIL| = {diff.float().mean():.4f}"


@pytest.mark.parametrize("name", ODD_FILES)
def test_every_odd_file_decodes_to_the_rgb_pixels_pil_gives(tmp_path, name):
    # Gray and CMYK JPEG data goes to torchvision.io, which converts to RGB as PIL's
    # convert("RGB") does: measured identical. The rest (PNG, GIF, palette, alpha, PNG data
    # named .JPEG) is decoded by PIL itself.
    mode, fmt = ODD_FILES[name]
    path = save(random_image((50, 30), mode=mode), tmp_path / name, fmt)
    image = decode(read_bytes(str(path)))
    expected = np.asarray(load_rgb(str(path)))
    assert isinstance(image, torch.Tensor) == (fmt == "JPEG")
    if isinstance(image, torch.Tensor):
        assert image.dtype == torch.uint8 and image.shape == (3, 30, 50)
        got = image.permute(1, 2, 0).numpy()
    else:
        assert image.mode == "RGB"
        got = np.asarray(image)
    assert got.shape == expected.shape == (30, 50, 3)
    assert np.array_equal(got, expected), f"{name}: max |difference| {np.abs(got.astype(int) - expected).max()}"


# ---------------------------------------------------------------- data.decode=device trains as worker does


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory) -> Path:
    """Class-folder photo-like JPEGs, larger than data.resize_size=36 so that the resize runs:
    3 classes x 7 training images (6 batches of 4 per epoch), 2 validation images each."""
    root = tmp_path_factory.mktemp("jpegs") / "data"
    for s, (split, n) in enumerate((("train", 7), ("val", 2))):
        for c in range(3):
            for i in range(n):
                size = (52, 40) if i % 2 else (40, 48)
                save(photo_image(size, seed=1000 * s + 100 * c + i), root / split / f"class{c}" / f"{i}.JPEG", quality=90)
    return root


def test_decode_on_the_device_trains_the_same_weights_and_logs_the_same_tags_as_decode_in_the_workers(
        jpeg_folder, tmp_path, monkeypatch):
    # Both paths decode with libjpeg-turbo on the CPU (torchvision.io) and run the same load
    # halves on the same uint8 tensors, so the batches, hence the weights, must be bit-identical.
    calls = []
    decode_batch = base.decode_batch
    monkeypatch.setattr(base, "decode_batch", lambda *a: calls.append(len(a[0])) or decode_batch(*a))
    finals, tags, batched = {}, {}, {}
    for where in ("worker", "device"):
        run = tmp_path / where
        calls.clear()
        cfg = compose_config("data=folder", f"data.root={jpeg_folder}", "data.batch_size=4", "data.resize_size=36",
                             "data.num_workers=2", f"data.decode={where}", "trainer.max_epochs=2",
                             "trainer.accelerator=cpu", "trainer.num_sanity_val_steps=0",
                             "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "test_after_fit=false")
        train_script.train(cfg, run)
        batched[where] = sum(calls)
        finals[where] = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        acc = EventAccumulator(str(run / "tensorboard"))
        acc.Reload()
        tags[where] = set(acc.Tags()["scalars"])
    # The worker run decoded in its workers; the device run in the main process, batched:
    # 2 epochs of 21 training images and 6 validation images.
    assert batched == {"worker": 0, "device": 2 * (21 + 6)}
    assert tags["device"] == tags["worker"]
    assert REQUIRED_TAGS <= tags["device"]  # README, "Loggers"
    a, b = finals["worker"], finals["device"]
    assert a["global_step"] == b["global_step"] == 2 * 6
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    momentum = [(p, s["momentum_buffer"]) for p, s in a["optimizer_states"][0]["state"].items()]
    assert momentum
    for p, buffer in momentum:
        assert torch.equal(buffer, b["optimizer_states"][0]["state"][p]["momentum_buffer"]), p


def test_on_cuda_the_decoder_waits_for_the_queued_work_before_it_writes(tmp_path, monkeypatch):
    # pytorch/vision#9606: nvJPEG can write into blocks that kernels still queued on the current
    # stream will read. decode_batch waits on that stream first; faked here (no GPU): the order.
    import alexnet.data.decode as decode_module

    events = []

    class Stream:
        def synchronize(self):
            events.append("synchronize")

    real = decode_module.decode_jpeg

    def fake_decode_jpeg(data, mode, device="cpu"):
        events.append(f"decode on {device}")
        return real(data, mode=mode)

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(decode_module, "decode_jpeg", fake_decode_jpeg)
    path = save(photo_image((40, 48), seed=3), tmp_path / "a.JPEG", quality=90)
    data = read_bytes(str(path))
    images, errors = decode_module.decode_batch([data, data], [str(path)] * 2, torch.device("cuda"))
    assert events == ["synchronize", "decode on cuda"] and errors == [None, None]
    events.clear()
    decode_module.decode_batch([data], [str(path)], torch.device("cpu"))
    assert events == ["decode on cpu"]  # nothing to wait for on the CPU


def test_the_readers_outside_lightning_see_the_same_validation_images_whichever_the_decode(jpeg_folder):
    # export.py's check (sample_images) and visualize.py read validation batches themselves, with the
    # data config of the checkpoint: a run trained with data.decode=device hands them file bytes.
    import importlib.util

    from alexnet.config import build_datamodule
    from alexnet.inference import sample_images

    spec = importlib.util.spec_from_file_location("visualize_script", REPO / "scripts" / "visualize.py")
    visualize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(visualize)
    checks, shown = {}, {}
    for where in ("worker", "device"):
        overrides = ["data=folder", f"data.root={jpeg_folder}", "data.resize_size=36", "data.num_workers=0",
                     f"data.decode={where}"]
        cfg = compose_config(*overrides)
        batches, why = sample_images({}, cfg, overrides, 4)
        assert why is None, why
        checks[where] = batches["validation"]
        shown[where] = visualize.validation_images(build_datamodule(cfg.data), 5)
    assert checks["worker"].shape == (4, 3, 32, 32) and torch.equal(checks["device"], checks["worker"])
    images, labels = shown["device"]
    assert images.dtype == torch.uint8 and images.shape == (5, 3, 36, 36)
    assert torch.equal(images, shown["worker"][0]) and labels == shown["worker"][1] == [0, 0, 1, 1, 2]


# ---------------------------------------------------------------- config errors, before any data is read

LOADING_ERRORS = [
    (["data.decode=gpu"], "data.decode", "worker, device"),
    (["data.decode=device", "data.batch_augment=false"], "data.decode", "data.batch_augment=true"),
    (["data.prefetch_factor=0"], "data.prefetch_factor", "positive integer"),
]


@pytest.mark.parametrize("overrides,key,says", LOADING_ERRORS, ids=["+".join(o) for o, _, _ in LOADING_ERRORS])
def test_a_bad_loading_option_is_an_error_naming_its_key_before_any_image_is_read(tmp_path, monkeypatch, overrides, key, says):
    image_tree(tmp_path / "data", per_class=1)
    monkeypatch.setattr("alexnet.data.folder.read_bytes", lambda *a: pytest.fail("read an image file"))
    cfg = compose_config("data=folder", f"data.root={tmp_path / 'data'}", "trainer.accelerator=cpu", *overrides)
    with pytest.raises(ConfigError) as e:
        train_script.train(cfg, tmp_path / "run")
    assert e.value.key == key and str(e.value).startswith(key)
    assert says in str(e.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_data_decode_on_in_memory_data_warns_that_it_does_nothing():
    # Its images are one uint8 tensor, never decoded: leaving the option set would mislead.
    with pytest.warns(UserWarning, match="data.decode=device does nothing for ShapesDataModule"):
        ShapesDataModule(decode="device", crop_size=32, num_train=8, num_val=8)


# ---------------------------------------------------------------- the worker advice of a GPU run


@pytest.fixture
def cores(monkeypatch):
    """Set the CPU cores this process may use."""
    def set_cores(n: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)
    set_cores(64)
    return set_cores


def test_a_gpu_run_with_too_few_workers_is_told_in_one_line_what_to_set(cores):
    need = workers.workers_needed()
    assert need > 1  # AlexNet trains faster on one GPU than one worker decodes
    for few in range(need):
        line = workers.advice(few, "worker", devices=1)
        assert line is not None and "\n" not in line, few
        assert f"data.num_workers={need}" in line and "data.decode=device" in line
        assert f"data.num_workers={few}" in line


def test_no_advice_with_enough_workers_or_with_decoding_on_the_device(cores):
    need = workers.workers_needed()
    assert workers.advice(need, "worker", devices=1) is None
    assert workers.advice(4 * need, "worker", devices=8) is None  # 64 cores: 8 per GPU
    for num_workers in (0, 1, need):
        assert workers.advice(num_workers, "device", devices=1) is None  # the workers only read files


def test_workers_beyond_the_cores_of_each_gpus_process_are_counted_as_the_cores(cores):
    need = workers.workers_needed()
    cores(8)
    line = workers.advice(4 * need, "worker", devices=8)  # 8 cores shared by 8 GPUs' processes: 1 each
    assert line is not None and "on 1 CPU core per GPU" in line
    cores(1)
    line = workers.advice(4 * need, "worker", devices=1)
    assert line is not None and f"data.num_workers={4 * need} on 1 CPU core per GPU" in line


def fake_trainer(device: str) -> SimpleNamespace:
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)), is_global_zero=True,
                           device_ids=[0])


def test_only_a_cuda_run_logs_the_advice(cores, caplog):
    with caplog.at_level(logging.WARNING, logger=workers.__name__):
        workers.advise_workers(fake_trainer("cpu"), 0, "worker")
        workers.advise_workers(None, 0, "worker")
        assert caplog.records == []
        workers.advise_workers(fake_trainer("cuda"), 0, "worker")  # only compared, no GPU needed
    assert [r.getMessage() for r in caplog.records] == [workers.advice(0, "worker", 1)]


# ---------------------------------------------------------------- torchvision 0.29's deprecation notice


def test_torchvisions_decoder_deprecation_warning_never_reaches_users():
    """As a user's process shows warnings outside pytest (``-W default``; pytest resets the
    filters of each test): torchvision alone warns on decoding, and after alexnet.data is
    imported nothing more is printed, in the workers' decode nor the device path's batch."""
    from alexnet.data.decode import DEPRECATION

    code = "\n".join([
        "import io, sys, numpy as np, torch",
        "from PIL import Image",
        "from torchvision.io import decode_jpeg",
        "b = io.BytesIO(); Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(b, 'JPEG')",
        "data = torch.frombuffer(bytearray(b.getvalue()), dtype=torch.uint8)",
        "decode_jpeg(data)",
        "print('--- alexnet', file=sys.stderr, flush=True)",
        "import alexnet.data",
        "from alexnet.data.decode import decode, decode_batch",
        "assert decode(data).shape == (3, 16, 16)",
        "images, errors = decode_batch([data, data], ['a', 'b'], torch.device('cpu'))",
        "assert errors == [None, None]",
        "decode_jpeg(data)",
        "print('decoded')",
    ])
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONWARNINGS", None)
    result = run_command([sys.executable, "-W", "default", "-c", code], env=env, timeout=180)
    assert result.returncode == 0 and "decoded" in result.stdout, result.stderr[-2000:]
    before, after = result.stderr.split("--- alexnet")
    # Without alexnet, torchvision 0.29 warns (if it no longer does, this filter and test can go).
    assert DEPRECATION in before
    assert "deprecated" not in after.lower(), after[-2000:]
