"""The training system around the networks: ``system`` (the LightningModule),
``optim`` (SGD and schedules), ``trainer`` (the Trainer of a run), ``callbacks``,
``fast_path``, ``precision``, ``faults`` (non-finite losses, SIGTERM) and
``checkpoints`` (written whole, found, read and vetted)."""

import logging
import warnings

# Lightning 2.6's own pytree helper (lightning/pytorch/utilities/_pytree.py) builds torch's
# LeafSpec, deprecated since torch 2.10: a FutureWarning at every fit that a user cannot act
# on (Lightning-AI/pytorch-lightning#21326). Silenced for that module only.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning,
                        module=r"lightning\.pytorch\.utilities\._pytree")


class _NoAdvert(logging.Filter):
    """Lightning 2.6 logs a "💡 Tip" advertising its cloud logger at every fit; not a message about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):  # whichever logs it
    logging.getLogger(_name).addFilter(_NoAdvert())
