"""BYOL regression loss: 2 − 2·cos(q, z) between online predictions and (stop-gradient) targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from discorep.losses.distributed import all_reduce_sum, world_info
from discorep.precision import full_precision


@full_precision
def regression_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Per-item loss (N,): ‖q/‖q‖ − z/‖z‖‖² = 2 − 2·cos(q, z); the target is detached."""
    if pred.ndim != 2 or pred.shape != target.shape:
        raise ValueError(f"pred and target must both be (N, D) with equal shapes; got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    q = F.normalize(pred.float(), dim=-1)
    z = F.normalize(target.detach().float(), dim=-1)
    return 2.0 - 2.0 * (q * z).sum(dim=-1)


@full_precision
def byol_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Weighted mean Σ wᵢ·lᵢ / Σ wᵢ of `regression_loss`; all-zero weights give 0 (with a graph, no NaN)."""
    per_item = regression_loss(pred, target)
    if weight is None:
        return per_item.mean() if per_item.numel() else per_item.sum()
    if weight.shape != per_item.shape:
        raise ValueError(f"weight must be (N,) = {tuple(per_item.shape)}; got {tuple(weight.shape)}")
    w = weight.detach().to(per_item.dtype)
    total = w.sum()
    # torch.where keeps the graph and avoids 0/0 when every weight is zero (no valid pair in the batch).
    denom = torch.where(total > 0, total, torch.ones_like(total))
    return (w * per_item).sum() / denom


@full_precision
def object_byol_loss(pred1: Tensor, target2: Tensor, pred2: Tensor, target1: Tensor, valid: Tensor, *,
                     gather: bool = True) -> Tensor:
    """Symmetrised object-level BYOL loss on (B, M, D) masks, normalised by the *global* valid count.

    Each rank returns Σ_valid [ℓ(q¹, z²) + ℓ(q², z¹)] · world / (#valid masks over all ranks), so the
    gradient DDP averages over ranks is that of one process holding the whole batch (the contrastive
    loss normalises the same way). One process: the two weighted means of `byol_loss` added. One small
    all-reduce per call when distributed (every rank calls it every step). 0 with a graph when no mask
    is valid anywhere.
    """
    if pred1.ndim != 3 or valid.shape != pred1.shape[:2]:
        raise ValueError(f"expected (B, M, D) inputs and a (B, M) valid mask; got {tuple(pred1.shape)} and "
                         f"{tuple(valid.shape)}")
    d = pred1.shape[-1]
    per_mask = (regression_loss(pred1.reshape(-1, d), target2.reshape(-1, d))
                + regression_loss(pred2.reshape(-1, d), target1.reshape(-1, d)))
    w = valid.reshape(-1).detach().to(per_mask.dtype)
    world = world_info().world_size if gather else 1
    total = all_reduce_sum(w.sum()) if world > 1 else w.sum()
    denom = torch.where(total > 0, total, torch.ones_like(total))
    return (w * per_mask).sum() * world / denom
