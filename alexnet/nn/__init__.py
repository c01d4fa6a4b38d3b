"""The networks and their layers: plain PyTorch, no Lightning or Hydra.

``models`` (the AlexNet family, :func:`~alexnet.nn.models.create`), ``layers``
(the paper's LRN, the lean max-pool), ``fast_lrn`` (LRN's implementations and
the native kernel in ``csrc/lrn.c``), ``summary`` (shapes, parameters,
multiply-adds per layer), ``export`` (ONNX with LRN as ONNX's own operator,
torch.export, and the check of their logits).
"""
