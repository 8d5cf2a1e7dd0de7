"""torch.distributed set-up for `torchrun` (nccl on GPU, gloo on CPU) and a plain single process."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(preference: str, local_rank: int) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but no CUDA device is available; use 'cpu' or 'auto'")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(preference: str = "auto", timeout_s: float = 600.0) -> DistInfo:
    """Initialise from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) when present.

    The timeout bounds how long a rank waits for a dead peer: a collective that cannot complete
    raises instead of hanging forever.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(preference, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local_rank, device)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def long_barrier(hours: float = 24.0) -> None:
    """A barrier for one-off set-up work longer than the process-group timeout (e.g. building region
    priors for ImageNet): it runs on its own gloo group whose timeout is `hours`, so the short timeout
    that detects dead peers during training stays as it is."""
    if dist.is_available() and dist.is_initialized():
        group = dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=hours))
        dist.barrier(group=group)
        dist.destroy_process_group(group)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
