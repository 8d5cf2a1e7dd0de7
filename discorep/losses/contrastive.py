"""Object-level contrastive loss (DetCon; Odin eq. 2–4), with negatives gathered across processes.

For a valid anchor k = (b, m) of view 1, with q = online prediction and z = target projection:
    s_k^{1→2} = <q_k^1, z_k^2> / (α ‖q_k^1‖ ‖z_k^2‖)                               (eq. 2)
    ℓ_k^{1→2} = −log exp(s_k^{1→2}) / (exp(s_k^{1→2}) + Σ_n exp(s_k^{1→n}))         (eq. 3)
    L = Σ_k (ℓ_k^{1→2} + ℓ_k^{2→1}) / #valid anchors                                (eq. 4)
Negatives n: every other valid target mask of the same image and every valid mask of every other image
(of all processes when distributed). Same-image entries with the anchor's mask id (duplicates from
sampling with replacement) are never negatives.

`negatives="cross_and_same_view"` (DetCon's reference loss, logits `[ab, aa]`) also takes the
negatives from the anchor's own view: for an anchor of view 1 the keys are the target masks of view 2
*and* of view 1 (targets of the same image and mask id excluded, as above). `"cross_view"` (Odin's
eq. 3 as printed) uses view 2's keys only.

Distributed normalisation: each rank returns (Σ local anchor terms) · world / (global #valid anchors),
so the gradient DDP averages over ranks equals the single-process gradient on the concatenated batch.
With `rows` (the per-process batch size, the same on every rank) each rank's images are padded to it
before the gather and the padding rows gathered as invalid keys, so no rank reads a size back
(`losses.distributed.gather_padded`); without it the sizes are exchanged and read back first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from discorep.losses.distributed import gather_padded, gather_with_sizes, world_info
from discorep.precision import full_precision

NEGATIVES = ("cross_and_same_view", "cross_view")


def _check_inputs(pred1: Tensor, target2: Tensor, pred2: Tensor, target1: Tensor, valid: Tensor,
                  ids: Tensor | None, temperature: float) -> None:
    if pred1.ndim != 3:
        raise ValueError(f"contrastive_loss expects (B, M, D) inputs; got pred1 {tuple(pred1.shape)}")
    for name, t in (("target2", target2), ("pred2", pred2), ("target1", target1)):
        if t.shape != pred1.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(pred1.shape)} like pred1")
    if valid.shape != pred1.shape[:2]:
        raise ValueError(f"valid must be (B, M) = {tuple(pred1.shape[:2])}; got {tuple(valid.shape)}")
    if ids is not None and (ids.shape != valid.shape or ids.is_floating_point()):
        raise ValueError(f"ids must be an integer (B, M) tensor; got {ids.dtype} {tuple(ids.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _negative_mask(key_valid: Tensor, valid_shape: tuple[int, int], offset: int,
                   ids: Tensor | None) -> Tensor:
    """(B·M, G·M) bool: which gathered keys are negatives for each local anchor.

    Keys are laid out image-major over all G gathered images; this rank's images start at `offset`.
    """
    b, m = valid_shape
    n_keys = key_valid.numel()
    neg = key_valid.reshape(1, n_keys).expand(b * m, n_keys).clone()
    neg4 = neg.view(b, m, n_keys // m, m)  # (anchor image, anchor mask, key image, key mask)
    if ids is None:
        same = torch.eye(m, dtype=torch.bool, device=neg.device).expand(b, m, m)
    else:
        same = ids[:, :, None] == ids[:, None, :]  # includes the positive itself (m' = m)
    rows = torch.arange(b, device=neg.device)
    neg4[rows, :, offset + rows, :] &= ~same
    return neg


def _direction(pred: Tensor, target_local: Tensor, keys: list[Tensor], neg: Tensor, temperature: float) -> Tensor:
    """ℓ^{1→2} for every local anchor, shape (B, M) (eq. 3); `keys` are gathered targets (G·M, D) of the
    other view (and, for DetCon's same-view negatives, of the anchor's own view), all masked by `neg`."""
    q = F.normalize(pred.float(), dim=-1)
    pos = (q * F.normalize(target_local.detach().float(), dim=-1)).sum(-1) / temperature  # eq. 2, (B, M)
    parts = [pos.reshape(-1, 1)]
    for k in keys:
        logits = q.flatten(0, 1) @ F.normalize(k.detach().float(), dim=-1).t() / temperature
        parts.append(logits.masked_fill(~neg, float("-inf")))
    all_logits = torch.cat(parts, dim=1)
    return (torch.logsumexp(all_logits, dim=1) - pos.reshape(-1)).reshape(pos.shape)


def _gather(local: Tensor, rank: int, world: int, rows: int | None) -> tuple[Tensor, int]:
    """Every rank's (B, M, ·) rows and the index of this rank's first image among them."""
    if world == 1:
        return local, 0
    if rows is not None:  # padding rows carry validity 0: never negatives, never counted
        return gather_padded(local, rows), rank * rows
    gathered, sizes = gather_with_sizes(local)
    return gathered, sum(sizes[:rank])


@full_precision  # logits in fp32 under bf16/fp16 autocast (issue 12)
def contrastive_loss(pred1: Tensor, target2: Tensor, pred2: Tensor, target1: Tensor, valid: Tensor, *,
                     temperature: float = 0.1, ids: Tensor | None = None, gather: bool = True,
                     negatives: str = "cross_and_same_view", rows: int | None = None) -> Tensor:
    """Symmetrised object contrastive loss (Odin eq. 4) on (B, M, D) predictions / targets.

    `valid` (B, M) bool marks masks present in both views; `ids` (B, M) are the sampled mask ids.
    `negatives`: "cross_and_same_view" (DetCon's reference) or "cross_view" (module docstring).
    Targets are treated as stop-gradient. With gather=False (or without torch.distributed) negatives
    come from this process only and the loss is the local mean over valid anchors. `rows`: a bound on
    every process's B, the same on all (module docstring); the training step passes train.batch_size.
    Returns a float32 scalar; 0 (with a graph) when no anchor is valid.
    """
    _check_inputs(pred1, target2, pred2, target1, valid, ids, temperature)
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
    valid = valid.bool()
    b, m, d = pred1.shape
    rank, world = world_info() if gather else (0, 1)
    local = torch.cat([target1.detach().float(), target2.detach().float(), valid.float()[..., None]], -1)
    # One collective carries both views' targets and validity (the global anchor count comes with it).
    gathered, offset = _gather(local, rank, world, rows)
    keys1, keys2 = gathered[..., :d].flatten(0, 1), gathered[..., d:2 * d].flatten(0, 1)
    key_valid = gathered[..., 2 * d] > 0.5
    neg = _negative_mask(key_valid, (b, m), offset, ids)
    same_view = negatives == "cross_and_same_view"
    l12 = _direction(pred1, target2, [keys2, keys1] if same_view else [keys2], neg, temperature)
    l21 = _direction(pred2, target1, [keys1, keys2] if same_view else [keys1], neg, temperature)
    per_anchor = torch.where(valid, l12 + l21, torch.zeros_like(l12))
    n_valid = key_valid.sum().to(per_anchor.dtype).clamp_min(1.0)
    return per_anchor.sum() * world / n_valid
