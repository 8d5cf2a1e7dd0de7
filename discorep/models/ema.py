"""Target-network updates: EMA ξ ← τ·ξ + (1−τ)·θ (BYOL; Odin eq. 6–7 with λ = 1 − τ) and hard copies.

Buffers: floating buffers (BN running mean/var) are averaged like parameters, so the target's
statistics track the online network's smoothly (BYOL averages its whole state); integer buffers
(`num_batches_tracked`) are copied, since averaging counters is meaningless.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


def _paired(target: nn.Module, online: nn.Module) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
    """(target floats, online floats, target ints, online ints) over parameters then buffers.

    Raises ValueError naming the first mismatch when the two modules are not structurally identical.
    """
    t_items = list(target.named_parameters()) + list(target.named_buffers())
    o_items = list(online.named_parameters()) + list(online.named_buffers())
    if len(t_items) != len(o_items):
        raise ValueError(f"target and online modules differ: {len(t_items)} vs {len(o_items)} tensors "
                         "(was the target made with make_ema_copy(online)?)")
    tf, of, ti, oi = [], [], [], []
    for (tn, t), (on, o) in zip(t_items, o_items):
        if tn != on or t.shape != o.shape:
            raise ValueError(f"target and online modules differ at {tn!r} {tuple(t.shape)} vs "
                             f"{on!r} {tuple(o.shape)}")
        if t.is_floating_point():
            tf.append(t)
            of.append(o.to(dtype=t.dtype, device=t.device) if o.dtype != t.dtype or o.device != t.device else o)
        else:
            ti.append(t)
            oi.append(o)
    return tf, of, ti, oi


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, tau: float) -> None:
    """In place: ξ ← τ·ξ + (1−τ)·θ for parameters and floating buffers; integer buffers copied."""
    tau = float(tau)
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"EMA decay tau must be in [0, 1], got {tau}")
    tf, of, ti, oi = _paired(target, online)
    if tf:
        # lerp(ξ, θ, w) = ξ + w(θ − ξ) = τξ + (1−τ)θ with w = 1 − τ; one fused kernel per dtype/device.
        torch._foreach_lerp_(tf, of, 1.0 - tau)
    if ti:
        torch._foreach_copy_(ti, oi)


@torch.no_grad()
def copy_params_(target: nn.Module, online: nn.Module) -> None:
    """In place: ξ ← θ for every parameter and buffer (Odin's discrete copy; τ = 0)."""
    tf, of, ti, oi = _paired(target, online)
    if tf:
        torch._foreach_copy_(tf, of)
    if ti:
        torch._foreach_copy_(ti, oi)


def make_ema_copy(module: nn.Module) -> nn.Module:
    """A deep copy whose parameters do not require gradients (the target network ξ)."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target
