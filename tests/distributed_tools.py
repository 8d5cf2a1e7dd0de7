"""Test-only tools for multi-process runs on CPU: a SyncBatchNorm stand-in and a collective recorder.

`torch.nn.SyncBatchNorm` refuses CPU tensors when it would synchronise (torch 2.14: "SyncBatchNorm
expected input tensor to be on GPU..."), so the paper-scale path (`model.norm: syncbn`, many processes)
cannot run in CI as it is. `cpu_syncbn()` patches SyncBatchNorm's forward, *only* where torch would
synchronise (train mode, >1 process), with a float64 reimplementation that issues the same collectives
as torch's GPU kernel: one all_gather of the per-rank statistics in the forward and one all_reduce of
their gradients in the backward. Eval mode and single-process runs keep torch's own code path.

`record_collectives()` wraps every `torch.distributed` collective so a test can compare the sequence
each rank issues (DDP's bucketed gradient all-reduces run inside its C++ reducer and are symmetric by
construction; they are not recorded).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "broadcast",
               "broadcast_object_list", "barrier", "monitored_barrier", "reduce", "reduce_scatter",
               "reduce_scatter_tensor", "gather", "scatter", "all_to_all", "all_to_all_single", "new_group")


class _AllGatherSum(torch.autograd.Function):
    """Σ over ranks of a statistics vector (all_gather, as SyncBN's forward); backward: all_reduce."""

    @staticmethod
    def forward(ctx, stats: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(stats) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, stats.contiguous())
        return torch.stack(parts).sum(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank's normalisation depends on every rank's statistics: d(Σ_r L_r)/ds = Σ_r dL_r/dS.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def _syncbn_forward_cpu(self: nn.SyncBatchNorm, x: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    flat = x.transpose(0, 1).reshape(c, -1).double()
    local = torch.cat([flat.sum(1), (flat * flat).sum(1), flat.new_tensor([flat.shape[1]])])
    total = _AllGatherSum.apply(local)
    count = total[-1]
    mean = total[:c] / count
    var = (total[c:2 * c] / count - mean * mean).clamp_min(0.0)  # biased, for normalising (as BN)
    y = ((flat - mean[:, None]) / torch.sqrt(var[:, None] + self.eps)).to(x.dtype)
    if self.affine:
        y = y * self.weight[:, None] + self.bias[:, None]
    if self.track_running_stats:
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
            unbiased = var * count / (count - 1).clamp_min(1.0)
            self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var.dtype))
    shape = (c, x.shape[0], *x.shape[2:])
    return y.reshape(shape).transpose(0, 1).contiguous()


@contextmanager
def cpu_syncbn():
    """Patch SyncBatchNorm so that `model.norm: syncbn` trains on CPU with gloo (see module docstring)."""
    original = nn.SyncBatchNorm.forward

    def forward(self, x):
        syncing = (self.training and x.device.type == "cpu" and dist.is_available() and dist.is_initialized()
                   and dist.get_world_size() > 1)
        if not syncing:
            return original(self, x)
        if self.momentum is None:
            raise NotImplementedError("the CPU SyncBN stand-in needs a momentum")
        return _syncbn_forward_cpu(self, x)

    ddp = torch.nn.parallel.DistributedDataParallel
    original_check = ddp._passing_sync_batchnorm_handle  # refuses SyncBN in CPU modules; only a check
    nn.SyncBatchNorm.forward = forward
    ddp._passing_sync_batchnorm_handle = lambda self, module: None
    try:
        yield
    finally:
        nn.SyncBatchNorm.forward = original
        ddp._passing_sync_batchnorm_handle = original_check


def _describe(args) -> list:
    """Shapes/dtypes of the tensor arguments (lists of tensors included), for comparing ranks."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append([list(a.shape), str(a.dtype)])
        elif isinstance(a, (list, tuple)) and a and all(isinstance(t, torch.Tensor) for t in a):
            out.append([[list(t.shape), str(t.dtype)] for t in a])
    return out


@contextmanager
def record_collectives(log: list):
    """Append (name, tensor shapes) to `log` for every torch.distributed collective called."""
    originals = {name: getattr(dist, name) for name in COLLECTIVES if hasattr(dist, name)}

    def wrap(name, fn):
        def recorded(*args, **kwargs):
            log.append([name, _describe(args)])
            return fn(*args, **kwargs)
        return recorded

    for name, fn in originals.items():
        setattr(dist, name, wrap(name, fn))
    try:
        yield log
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)


def dump(log: list, path: Path) -> None:
    path.write_text(json.dumps(log))
