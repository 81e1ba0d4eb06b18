"""DDP plumbing: process group from ``torchrun``'s environment, rank-0 helpers, reductions.

Under ``torchrun`` the variables ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` are set; a plain
``python train/main.py`` runs as a world of one without a process group.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from edgedet._io import DirectoryBusyError, exclusive_lock


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, on ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → this process's GPU when CUDA is available, else the CPU."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda: this torch build sees no CUDA device")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (nccl on GPU, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # Long timeout: rank 0 may spend minutes evaluating / saving while the others wait.
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=2),
                                **({"device_id": device} if device.type == "cuda" else {}))
    return DistInfo(rank, world_size, local_rank, device)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_true(flag: bool, info: DistInfo) -> bool:
    """True only when ``flag`` is true on every rank (so every rank takes the same branch)."""
    return all_true_each([flag], info)[0]


def all_true_each(flags: list[bool], info: DistInfo) -> list[bool]:
    """``all_true`` of several flags in one collective (one round trip per step, not one per
    flag)."""
    if not info.distributed:
        return list(flags)
    values = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=info.device)
    dist.all_reduce(values, op=dist.ReduceOp.MIN)
    return [value > 0.5 for value in values.tolist()]


def mean_over_ranks(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Average each value over the ranks (every rank must pass the same keys)."""
    if not info.distributed or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=info.device)
    dist.all_reduce(tensor)
    tensor /= info.world_size
    return dict(zip(keys, tensor.tolist(), strict=True))


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` on every rank (in-memory exchange; used for evaluation results)."""
    if not info.distributed:
        return [obj]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """Rank 0's ``flag`` on every rank."""
    if not info.distributed:
        return flag
    value = torch.tensor([1 if flag else 0], device=info.device)
    dist.broadcast(value, src=0)
    return bool(value.item())


@contextmanager
def locked_by_main_rank(folder: str | os.PathLike[str], holder: str, info: DistInfo
                        ) -> Iterator[None]:
    """Rank 0 holds ``exclusive_lock(folder, holder)`` for the block; every rank learns first
    whether it got it.

    Without that exchange a second ``torchrun`` job on a busy folder stopped on rank 0 while
    its other ranks waited in DDP's constructor for a rank 0 that had left, until torchrun
    killed them. Now rank 0 re-raises its own error (``DirectoryBusyError`` naming the
    holder, or whatever else stopped the lock) and the other ranks raise a
    ``DirectoryBusyError`` of their own, all before any training starts.
    """
    with ExitStack() as stack:
        problem: BaseException | None = None
        if info.is_main:
            try:
                stack.enter_context(exclusive_lock(folder, holder))
            except BaseException as error:  # any failure, an interrupt too: the other
                problem = error                # ranks must hear of it before rank 0 leaves
        if not broadcast_flag(problem is None, info):
            if problem is not None:
                raise problem
            raise DirectoryBusyError(f"rank {info.rank} stops: rank 0 could not take "
                                     f"{folder} (its error says why)")
        yield
