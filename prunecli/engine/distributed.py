"""Process-group setup for torchrun (DDP), and the few collectives the engine needs.

A single process is simply world size 1: the same code path runs everywhere, so the
single-process and DDP runs cannot drift apart.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from prunecli.engine.slurm import adopt_slurm_environment
from prunecli.errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0, key: str = "trainer.device") -> torch.device:
    """``auto`` -> this rank's CUDA device when there is one, else the CPU. ``key`` is the
    config key errors name (``device`` for bench and lut)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{key}={name} but CUDA is not available here; use {key}=cpu or {key}=auto"
            )
        if name == "cuda":
            return torch.device("cuda", local_rank)
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ConfigError(f"{key}={name} is not one of auto, cpu, cuda, cuda:N")
    return torch.device(name)


def init_distributed(device_name: str) -> DistEnv:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); nccl on CUDA, gloo on
    CPU. Safe to call twice (a multirun of DDP jobs reuses the group). In a multi-task SLURM
    step without torchrun (srun, submitit), the ranks come from SLURM's variables."""
    adopt_slurm_environment()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world, device=device)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    """Send a small picklable object from ``src`` to every rank (e.g. the run directory)."""
    if dist.is_available() and dist.is_initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def gather_to_main(obj: object) -> list[object] | None:
    """Every rank's ``obj`` as a list on rank 0 (None elsewhere); ``[obj]`` in one process.

    For results too large to all-gather, such as every image's detections."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list[object] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 \
            else None
        dist.gather_object(obj, out, dst=0)
        return out
    return [obj]


def quiet_non_main_rank() -> None:
    """Ranks other than 0 log warnings only, and never to the run's log file."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
    logging.getLogger("prunecli").setLevel(logging.WARNING)
