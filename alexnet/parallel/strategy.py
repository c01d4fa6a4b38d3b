"""Model parallelism for ``model=paper_dual_gpu``: a Lightning strategy over a (data, tower) device mesh.

Ranks form a two-dimensional mesh, ``data_parallel x tower``: each row of
two adjacent ranks (0-1, 2-3, ...) holds one copy of the paper's network,
one tower per device (:class:`alexnet.parallel.towers.Tower`), and the rows are
data-parallel copies of it. So 2 devices are the paper's setup, 4 or 8 run
2 or 4 copies, and several nodes work as with DDP (torchrun or SLURM through
Lightning's cluster environments). Gradients are averaged by
DistributedDataParallel within each tower's data-parallel group; the towers
of a row exchange activations in the tower group.

Checkpoints hold both towers in the grouped network's layout (each tensor
the concatenation of the towers' halves): they load on one device as
``paper_grouped`` and resume on any even number of devices. Lightning's own
model-parallel checkpointing (torch.distributed.checkpoint) would keep one
of two same-named tower tensors as "replicated": this strategy gathers the
halves itself instead.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
import torch.distributed as dist
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch.distributed.device_mesh import init_device_mesh

from .towers import TOWERS, Tower, all_gather_cat, check_same_input, clip_grad_norm_towers, split_towers

log = logging.getLogger(__name__)

NET = "net."  # the system's attribute holding the network


class TowerParallelStrategy(DDPStrategy):
    """DDP over data-parallel rows of towers; see the module docstring.

    With a single process it runs the grouped network, unsplit.
    """

    strategy_name = "tower_parallel"

    def __init__(self, towers: int = TOWERS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.towers = towers
        self.device_mesh = None
        self.tower_group = None
        self.tower_rank, self.data_parallel_rank, self.data_parallel_size = 0, 0, 1
        self._check_next_batch = True

    # -- the mesh ---------------------------------------------------------
    def setup_environment(self) -> None:
        super().setup_environment()  # starts the processes' default group
        if self.world_size == 1:
            log.info("model=paper_dual_gpu on one device: training the grouped network (groups=2) there")
            return
        if self.world_size % self.towers:
            raise ValueError(
                f"model=paper_dual_gpu splits each network over {self.towers} devices; "
                f"{self.world_size} processes do not divide into towers (use an even trainer.devices)"
            )
        self.data_parallel_size = self.world_size // self.towers
        self.device_mesh = init_device_mesh(
            self.root_device.type, (self.data_parallel_size, self.towers), mesh_dim_names=("data_parallel", "tower")
        )
        self.tower_group = self.device_mesh.get_group("tower")
        self.tower_rank = self.device_mesh.get_local_rank("tower")
        self.data_parallel_rank = self.device_mesh.get_local_rank("data_parallel")
        # Gradients are averaged only between copies of the same tower.
        self._ddp_kwargs["process_group"] = self.device_mesh.get_group("data_parallel")
        log.info(
            "model=paper_dual_gpu: rank %d holds tower %d of data-parallel copy %d of %d",
            self.global_rank, self.tower_rank, self.data_parallel_rank, self.data_parallel_size,
        )
        # The grouped network becomes this rank's tower now that the ranks are known,
        # before Lightning restores a checkpoint into it (load_model_state_dict splits it).
        self.split_module(self.lightning_module)
        # trainer.gradient_clip_val clips by the norm over both towers' gradients, so that
        # every tower scales alike (by value it acts per element: the same on a tower).
        plugin, group = self.precision_plugin, self.tower_group
        plugin.clip_grad_by_norm = lambda optimizer, clip_val: clip_grad_norm_towers(
            plugin.main_params(optimizer), clip_val, group)

    @property
    def split(self) -> bool:
        return self.tower_group is not None

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        # The towers of a copy read the same batches.
        return {"num_replicas": self.data_parallel_size, "rank": self.data_parallel_rank}

    def split_module(self, system) -> None:
        """Replace ``system.net`` (the grouped network) by this rank's tower, once."""
        if self.split and not isinstance(system.net, Tower):
            system.net = Tower(system.net, self.tower_rank, self.tower_group, self.towers)

    # -- the towers read the same batches ----------------------------------
    def on_train_start(self) -> None:
        super().on_train_start()
        self._check_next_batch = True  # the first batch of a fit, resumed or not

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        # The first training batch of every epoch and of every (re)start: the
        # towers' data streams are in step there, or training stops.
        if self.split and (self._check_next_batch or batch_idx == 0):
            check_same_input(self.tower_group, batch[0], batch[1])
            self._check_next_batch = False

    # -- set-up -----------------------------------------------------------
    def setup(self, trainer) -> None:
        if trainer.state.fn == TrainerFn.FITTING or not self.split:
            return super().setup(trainer)
        # Evaluation: DDPStrategy would broadcast rank 0's weights to every
        # rank, overwriting the other towers; only copies of a tower are synced.
        self.accelerator.setup(trainer)
        self.precision_plugin.convert_module(self.model)
        self.model_to_device()
        self._broadcast_within_tower(self.model)
        self.setup_precision_plugin()

    def _broadcast_within_tower(self, module) -> None:
        group = self._ddp_kwargs.get("process_group")
        src = dist.get_global_rank(group, 0)
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=src, group=group)

    # -- checkpoints: both towers, in the grouped layout --------------------
    def _gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return all_gather_cat(tensor, self.tower_group)

    def lightning_module_state_dict(self) -> dict[str, Any]:
        state = super().lightning_module_state_dict()
        if not self.split:
            return state
        return {k: (self._gather(v) if k.startswith(NET) and v.ndim else v) for k, v in state.items()}

    def optimizer_state(self, optimizer) -> dict[str, Any]:
        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer.optimizer
        state = optimizer.state_dict()
        if not self.split:
            return state
        # Every parameter of the system is the network's: each state tensor
        # (the momentum) is split like its parameter.
        merged = {
            i: {k: (self._gather(v) if torch.is_tensor(v) and v.ndim else v) for k, v in s.items()}
            for i, s in state["state"].items()
        }
        return {"state": merged, "param_groups": state["param_groups"]}

    def load_model_state_dict(self, checkpoint: Mapping[str, Any], strict: bool = True) -> None:
        if not self.split:
            return super().load_model_state_dict(checkpoint, strict)
        state = checkpoint["state_dict"]
        nets = split_towers({k: v for k, v in state.items() if k.startswith(NET)}, self.tower_rank, self.towers)
        self.lightning_module.load_state_dict({**state, **nets}, strict=strict)

    def load_optimizer_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        if not self.split:
            return super().load_optimizer_state_dict(checkpoint)
        states = []
        for state in checkpoint["optimizer_states"]:
            local = {i: split_towers({k: v for k, v in s.items() if torch.is_tensor(v)}, self.tower_rank, self.towers)
                     | {k: v for k, v in s.items() if not torch.is_tensor(v)} for i, s in state["state"].items()}
            states.append({"state": local, "param_groups": state["param_groups"]})
        super().load_optimizer_state_dict({"optimizer_states": states})


__all__ = ["TowerParallelStrategy"]
