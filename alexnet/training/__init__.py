"""The training system around the networks: ``system`` (the LightningModule),
``optim`` (SGD and schedules), ``trainer`` (the Trainer of a run), ``callbacks``,
``fast_path``, ``precision``, ``faults`` (non-finite losses, SIGTERM) and
``checkpoints`` (written whole, found, read and vetted)."""
