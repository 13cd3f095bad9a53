"""DistributedDataParallel under torchrun: NCCL on GPUs, gloo on CPUs; nothing when alone."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init(device: torch.device) -> World:
    """Joins the process group that torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); a plain
    single process (no WORLD_SIZE, or 1) needs and starts nothing."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend)
    return World(rank, world_size, local_rank)


def wrap(module: nn.Module, world: World, device: torch.device) -> nn.Module:
    """``module`` in DDP when distributed. Unused parameters are allowed: an independent
    network trains one (task, level) and leaves the other heads and norms alone."""
    if not world.distributed:
        return module
    ids = [device.index if device.index is not None else world.local_rank] \
        if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids,
                                               find_unused_parameters=True)


def all_sum(values: list[float], world: World, device: torch.device) -> list[float]:
    """Sum of ``values`` over ranks (for metrics)."""
    if not world.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64,
                     device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def average_buffers(module: nn.Module, world: World) -> None:
    """Averages floating-point buffers (batch norm running statistics) over ranks, so every
    rank ends an epoch with the same model and the saved statistics reflect all the data."""
    if not world.distributed:
        return
    for buf in module.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf)
            buf.div_(world.world_size)
