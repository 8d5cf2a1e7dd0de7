"""BYOL regression loss: 2 − 2·cos(q, z) between online predictions and (stop-gradient) targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

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
