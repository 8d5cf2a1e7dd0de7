"""torch.distributed helpers for losses; every function is the identity when not initialised.

Two gathers for tensors whose first dimension may differ between ranks (a batch with images given up):
`gather_padded` pads every rank to a bound all ranks know (the per-process batch size) and keeps the
padding, which the caller marks invalid — no host read-back, so the training step uses it;
`gather_with_sizes` exchanges the sizes first and reads them back (one host-device sync per call on an
accelerator), then drops the padding — for callers without such a bound.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor


class WorldInfo(NamedTuple):
    rank: int
    world_size: int


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_info() -> WorldInfo:
    """(rank, world_size); (0, 1) when torch.distributed is not initialised."""
    if not is_distributed():
        return WorldInfo(0, 1)
    return WorldInfo(dist.get_rank(), dist.get_world_size())


def _gather_sizes(x: Tensor) -> list[int]:
    """First-dimension sizes of `x` on every rank; clear error if the trailing dimensions differ."""
    world = dist.get_world_size()
    shape = torch.tensor([x.ndim, *x.shape], dtype=torch.int64, device=x.device)
    shape = torch.nn.functional.pad(shape, (0, 8 - shape.numel())) if shape.numel() < 8 else shape
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    rows = [s.tolist() for s in shapes]
    if any(r[0] != rows[0][0] or r[2:] != rows[0][2:] for r in rows):
        raise ValueError(f"all_gather needs equal trailing shapes on every rank; got "
                         f"{[tuple(r[1:r[0] + 1]) for r in rows]} (ndim <= 7 supported)")
    return [r[1] for r in rows]


def _gather_padded(x: Tensor, sizes: list[int]) -> Tensor:
    """all_gather of `x` (padded along dim 0 to max(sizes)), concatenated with the padding removed."""
    x = _pad_rows(x.contiguous(), max(sizes))
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


def gather_with_sizes(x: Tensor) -> tuple[Tensor, list[int]]:
    """(concatenation over ranks along dim 0 without gradient, each rank's dim-0 size)."""
    if not is_distributed():
        return x.detach(), [x.shape[0]]
    if x.ndim > 7 or x.ndim == 0:
        raise ValueError(f"all_gather supports 1 to 7 dims, got shape {tuple(x.shape)}")
    with torch.no_grad():
        sizes = _gather_sizes(x)
        return _gather_padded(x.detach(), sizes), sizes


def gather_padded(x: Tensor, rows: int) -> Tensor:
    """(world·rows, ...) concatenation over ranks without gradient; rank r's rows start at r·rows and
    its `rows − len(x)` padding rows are zeros. Every rank must pass the same `rows` >= its own len(x)."""
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < x.shape[0]:
        raise ValueError(f"rows must be an int >= this rank's {x.shape[0]} rows, got {rows!r}")
    if not is_distributed():
        return _pad_rows(x.detach(), rows)
    with torch.no_grad():
        x = _pad_rows(x.detach().contiguous(), rows)
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts)


def _pad_rows(x: Tensor, rows: int) -> Tensor:
    return torch.cat([x, x.new_zeros((rows - x.shape[0], *x.shape[1:]))]) if x.shape[0] < rows else x


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum over ranks (a new tensor; the input is untouched). Identity when not initialised."""
    if not is_distributed():
        return x
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out
