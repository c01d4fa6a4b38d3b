"""The error users see for a bad configuration value or input path."""


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
