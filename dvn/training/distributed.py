"""DistributedDataParallel under torchrun: NCCL on GPUs, gloo on CPUs; nothing when alone."""

from __future__ import annotations

import os
import time
import warnings
import weakref
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # Tensors this process handed to a gloo collective from Python, as weak references: see
    # ``shutdown``.
    sent: list = field(default_factory=list, compare=False, repr=False)

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
    world.sent.append(weakref.ref(t))
    return t.tolist()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def shutdown(world: World, timeout_s: float = 60.0) -> None:
    """Leaves the process group once every rank is done and no gloo worker thread still holds
    a tensor that this process created in Python.

    Why the wait: releasing such a tensor needs the GIL, and the process group's destructor
    joins its worker threads while holding the GIL (when the last DDP reducer is freed). A
    worker still holding the last collective's tensor then waits for the GIL forever (seen
    under torch 2.11 on a loaded 2-core machine). Sleeping here releases the GIL until the
    workers have let go of every tensor in ``world.sent``."""
    if not (world.distributed and dist.is_initialized()):
        return
    dist.barrier()
    deadline = time.monotonic() + timeout_s
    while any(ref() is not None for ref in world.sent):
        if time.monotonic() > deadline:
            warnings.warn(f"distributed.shutdown: a collective's tensor was not released "
                          f"within {timeout_s:.0f} s; leaving the process group anyway")
            break
        time.sleep(0.001)
    world.sent.clear()
    dist.destroy_process_group()


def average_buffers(module: nn.Module, world: World) -> None:
    """Averages floating-point buffers (batch norm running statistics) over ranks, so every
    rank ends an epoch with the same model and the saved statistics reflect all the data."""
    if not world.distributed:
        return
    bufs = [b for b in module.buffers() if b.is_floating_point()]
    if not bufs:
        return
    # One collective on a temporary tensor: ``shutdown`` can then tell when gloo released it.
    flat = torch.cat([b.detach().reshape(-1).to(torch.float64) for b in bufs])
    dist.all_reduce(flat)
    flat.div_(world.world_size)
    offset = 0
    with torch.no_grad():
        for b in bufs:
            b.copy_(flat[offset:offset + b.numel()].view_as(b))
            offset += b.numel()
    world.sent.append(weakref.ref(flat))
