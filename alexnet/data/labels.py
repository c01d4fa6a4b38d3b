"""Labels a network can take: the class count at start, every batch's labels on the CPU."""

from __future__ import annotations

import torch

from ..errors import ConfigError, TrainingError


def check_class_count(num_classes: int, data_classes: int) -> None:
    """A network with fewer outputs than the data has classes would see labels out of range."""
    if num_classes < data_classes:
        raise ConfigError(
            "model.num_classes",
            f"is {num_classes}, but the data has {data_classes} classes (labels 0-{data_classes - 1}); "
            "leave it null to take the data's class count",
        )


def check_labels(batch, num_classes: int) -> None:
    """Labels of a CPU batch outside ``0..num_classes-1`` fail here, named, before they reach the device.

    With :func:`check_class_count` at start, every label that passes has an
    output of the network; on a GPU a bad one would end as a device-side assert
    in the loss. Batches already on the device (in-memory datasets on the GPU)
    are not checked: their labels were made in range by their DataModule.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        return
    y = batch[1]
    if not isinstance(y, torch.Tensor) or y.device.type != "cpu" or y.is_floating_point() or y.numel() == 0:
        return
    bad = y[(y < 0) | (y >= num_classes)]
    if len(bad):
        shown = ", ".join(str(v) for v in bad.unique()[:5].tolist())
        raise TrainingError(
            f"a batch has labels outside 0-{num_classes - 1} ({shown}), but the data has {num_classes} classes: "
            "the dataset's labels are wrong"
        )
