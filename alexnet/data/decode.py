"""Reading and decoding image files: torchvision.io for JPEG, PIL for everything else.

``data.decode`` chooses where the decoding happens:

* ``worker`` (the default): each DataLoader worker reads and decodes its
  images (:func:`decode`), then takes the uint8 crop (alexnet.data.presets);
* ``device``: the workers only read the files' bytes (:func:`read_bytes`); the
  main process decodes each batch on the training device with one call
  (:func:`decode_batch`: nvJPEG on CUDA, libjpeg-turbo on the CPU), then the
  same crops run there on uint8 tensors.

JPEG data (whatever the file is called) goes to ``torchvision.io.decode_jpeg``
(libjpeg-turbo; grayscale and CMYK come out RGB, as PIL's ``convert("RGB")``
gives them, bit for bit). Anything it cannot decode (PNG data named ``.JPEG``,
GIF, palette and alpha images, truncated and unreadable files) goes to PIL
(:func:`alexnet.data.folder.load_rgb`), which decodes what it can and raises on
the rest, so that the file is skipped, named and counted as before.

Measured on one core, side by side (scripts/benchmark.py, README "Speed"),
torchvision.io with torchvision's uint8 resize is the faster path on both
256-pixel copies and 500x375 photos, so it is the only one for JPEG data;
``decoder="pil"`` keeps the PIL path for comparison.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as TF

# torchvision 0.29 deprecates its image decoders in favour of TorchCodec (0.16+),
# warning on every call. They are still torchvision's supported decoders for
# nvJPEG batches; silence that one message, nothing else.
DEPRECATION = "The image decoding and encoding capabilities of TorchVision are deprecated"
warnings.filterwarnings("ignore", message=DEPRECATION, category=DeprecationWarning)

DECODE = ("worker", "device")
DECODERS = ("auto", "pil")  # auto: torchvision.io for JPEG data, PIL for the rest
_SOI = (0xFF, 0xD8)  # a JPEG's first two bytes
# What PIL raises for a file it cannot read (torchvision raises RuntimeError, and PIL then decides).
PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class Unreadable(str):
    """How a batch names a file it had to skip, ``PATH (Error: message)``, with its ``path``:
    the same file skipped again (the next epoch, the test) is the same bad image, though the
    message may differ (PIL names the object it read from)."""

    path: str

    def __new__(cls, text: str, path: str):
        named = super().__new__(cls, text)
        named.path = path
        return named

    def __reduce__(self):  # from a DataLoader worker to the main process
        return (Unreadable, (str(self), self.path))


def unreadable(path: str, error: Exception) -> Unreadable:
    """How a batch names a file it had to skip (DataModule._count_bad warns with it)."""
    return Unreadable(f"{path} ({type(error).__name__}: {error})", path)


def read_bytes(path: str) -> torch.Tensor:
    """A file's bytes as a uint8 tensor (one read, writable, nothing decoded)."""
    return torch.from_numpy(np.fromfile(path, dtype=np.uint8))


def is_jpeg(data: torch.Tensor) -> bool:
    return len(data) > 2 and int(data[0]) == _SOI[0] and int(data[1]) == _SOI[1]


def decode(data: torch.Tensor, min_size: int | None = None, decoder: str = "auto"):
    """One file's bytes -> uint8 RGB tensor (3, H, W) from torchvision.io, or an RGB PIL
    image where PIL has to decode it. Raises what PIL raises for a file neither can read.

    ``min_size`` lets PIL decode a large JPEG at reduced size (``decoder="pil"`` only).
    """
    if decoder == "auto" and is_jpeg(data):
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # not decodable by libjpeg-turbo here: PIL decides (and names the error)
    from .folder import load_rgb

    return load_rgb(io.BytesIO(data.numpy().tobytes()), min_size)


def decode_batch(datas: list[torch.Tensor], paths: list[str], device: torch.device):
    """A batch's file bytes -> (images, errors): ``images[i]`` a uint8 RGB tensor (3, H, W)
    on ``device``, or None where ``errors[i]`` says why the file could not be read.

    The JPEGs go to ``decode_jpeg`` in one call (on CUDA, nvJPEG's batched
    decoder). If that call fails, each file is tried alone on the device, then
    on the CPU with :func:`decode` (torchvision.io, then PIL), and moved there.
    """
    images: list[torch.Tensor | None] = [None] * len(datas)
    errors: list[str | None] = [None] * len(datas)
    jpeg = [i for i, d in enumerate(datas) if is_jpeg(d)]
    if jpeg:
        wait_for_queued_work(device)
        try:
            decoded = decode_jpeg([datas[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            decoded = [_decode_one(datas[i], device) for i in jpeg]
        for i, image in zip(jpeg, decoded):
            images[i] = image
    for i, image in enumerate(images):
        if image is None:
            try:
                image = decode(datas[i])
                image = image if isinstance(image, torch.Tensor) else TF.pil_to_tensor(image)
                images[i] = image.to(device, non_blocking=True)
            except PIL_ERRORS as e:
                errors[i] = unreadable(paths[i], e)
    return images, errors


def wait_for_queued_work(device: torch.device) -> None:
    """Before nvJPEG writes on ``device``: wait until the work queued on its current stream has run.

    torchvision's CUDA decoder allocates its outputs on the caller's stream and
    decodes on a stream of its own without waiting for the caller's, and the
    hardware engine (A100, H100) does not honour stream order anyway. The caching
    allocator hands out a block as soon as it is freed on its stream, so the
    decoder can be given memory that kernels still queued (the last optimizer
    step) will read, and overwrite it: wrong numbers or NaNs elsewhere
    (pytorch/vision#9606, unmerged; torchcodec#1634 adds the same wait).
    Written here because torchvision 0.29 does not; the decoder synchronises
    its own stream before returning, so this moves a wait earlier more than it
    adds one.
    """
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None
