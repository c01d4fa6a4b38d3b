"""The errors users see: a bad configuration value or input path, a run that cannot go on, an export that is wrong."""


class ConfigError(ValueError):
    """A configuration value or input is wrong; the message names the key or path.

    Raised before any expensive work starts, so nothing already written is lost.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")


class TrainingError(RuntimeError):
    """Training cannot go on safely: a non-finite loss or weights, a checkpoint that cannot be written.

    The message names the step or the file, and what was kept; ``train.py``
    prints it as one line and exits with status 1.
    """


class ExportError(RuntimeError):
    """An exported file does not compute what its checkpoint computes (alexnet/nn/export.py).

    The message names the largest difference and the tolerance; the file is not written.
    """
