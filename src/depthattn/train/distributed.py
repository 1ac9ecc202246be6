"""The processes of one training job: torchrun's environment, the process group (NCCL on GPUs,
gloo on CPU) and the device mesh, and the few collectives through which every rank takes the same
decision. Without torchrun (no ``RANK`` / ``WORLD_SIZE``) training is one plain process and none
of this runs. The mesh is ``("dp_shard",)`` (FSDP) or, with ``dp_replicate`` R > 1,
``("dp_replicate", "dp_shard")`` of shape (R, world / R): HSDP (docs/distributed.md).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from depthattn.utils.errors import DepthAttnError

log = logging.getLogger(__name__)

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in the job. The default is the single plain process."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    mesh: Any = None  # torch.distributed.device_mesh.DeviceMesh; None: no process group
    comm_device: torch.device = CPU  # where collective tensors live

    @property
    def enabled(self) -> bool:
        """Launched by torchrun: a process group exists (also for a world of one)."""
        return self.mesh is not None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, shows progress and writes run-level files."""
        return self.rank == 0

    def all_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        """``values`` summed (or their max) over the ranks, in float64; as given when alone."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return tensor.tolist()

    def all_reduce_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (on ``comm_device``) summed over the ranks, in place: unlike
        ``all_reduce``, the host does not wait for the result."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.comm_device)
        return box[0]

    def barrier(self) -> None:
        if self.enabled and self.comm_device.type == "cuda":
            dist.barrier(device_ids=[self.local_rank])
        elif self.enabled:
            dist.barrier()


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def world_size_from_environment() -> int:
    """torchrun's WORLD_SIZE, 1 for a plain process."""
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1


def check_layout(world_size: int, dp_replicate: int) -> None:
    if world_size % dp_replicate:
        raise DepthAttnError(f"dp_replicate ({dp_replicate}) must divide the world size "
                             f"({world_size} processes): the mesh is dp_replicate x dp_shard")


def setup(device: torch.device, dp_replicate: int = 1,
          timeout_s: float = 600) -> tuple[Distributed, torch.device]:
    """Join torchrun's process group, when launched by it; return where this rank stands and the
    device it trains on (``cuda:LOCAL_RANK`` on GPUs). A collective that waits longer than
    ``timeout_s`` (a rank that died or hangs) raises, so the job ends instead of hanging."""
    if not launched_by_torchrun():
        if dp_replicate != 1:
            raise DepthAttnError(f"dp_replicate ({dp_replicate}) needs several processes: launch "
                                 f"with torchrun, or leave dp_replicate at 1")
        return Distributed(), device
    from torch.distributed.device_mesh import init_device_mesh

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    check_layout(world, dp_replicate)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DepthAttnError(f"LOCAL_RANK {local_rank} has no GPU: this node has "
                                 f"{torch.cuda.device_count()}; start at most that many processes "
                                 f"per node (--nproc-per-node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise DepthAttnError(f"distributed training runs on cuda or cpu, not {device.type}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    shape, names = (((world,), ("dp_shard",)) if dp_replicate == 1 else
                    ((dp_replicate, world // dp_replicate), ("dp_replicate", "dp_shard")))
    mesh = init_device_mesh(device.type, shape, mesh_dim_names=names)
    if rank != 0:
        logging.getLogger("depthattn").setLevel(logging.WARNING)  # rank 0 speaks for the job
    return Distributed(rank, local_rank, world, mesh, device), device


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
