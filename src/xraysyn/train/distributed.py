"""Processes of a training run: a single process, or torchrun's DistributedDataParallel group.

Under ``torchrun`` (the ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` environment variables) the process group
is initialised with NCCL on CUDA and gloo on the CPU, each process uses ``cuda:LOCAL_RANK``; rank 0 alone
logs, draws samples and writes checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["ProcessGroup", "start_processes", "resolve_device"]


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the run: ``rank`` of ``world_size``, its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over processes of a dict of floats (the same keys on every process)."""
        if not self.distributed or not values:
            return values
        keys = sorted(values)
        tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                              device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(tensor)
        return {k: float(v) / self.world_size for k, v in zip(keys, tensor.tolist())}

    def any_flag(self, flag: bool) -> bool:
        """True on every process when any process's ``flag`` is true (e.g. a received SIGTERM)."""
        if not self.distributed:
            return flag
        tensor = torch.tensor([1 if flag else 0], dtype=torch.int32,
                              device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → CUDA when available; ``cuda`` without a GPU → a clear error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device cuda was requested but no CUDA GPU is available (use --device cpu)")
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    if name != "cpu":
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device("cpu")


def start_processes(device_name: str) -> ProcessGroup:
    """This process's :class:`ProcessGroup`: from torchrun's environment, else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return ProcessGroup(device=resolve_device(device_name))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return ProcessGroup(rank=rank, world_size=world_size, local_rank=local_rank, device=device)
