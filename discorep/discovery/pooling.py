"""Mask pooling (Odin eq. 1) and DetCon-style sampling of mask ids.

Both are loop-free and device-agnostic; `mask_pool` is differentiable w.r.t. features (and masks).
"""

from __future__ import annotations

import torch
from torch import Tensor

from discorep.discovery.random import uniform
from discorep.precision import no_autocast

__all__ = ["mask_pool", "sample_mask_ids", "AREA_EPS"]

# Areas are clamped to this before dividing: an empty mask then pools to an exact zero vector.
AREA_EPS = 1e-6


def mask_pool(features: Tensor, masks: Tensor) -> Tensor:
    """Mask-weighted mean of features, Odin eq. (1): h_k = Σ_ij m_k[i,j] h[i,j] / Σ_ij m_k[i,j].

    features: (B, C, H, W); masks: (B, M, H, W) soft or hard weights on the same grid (callers align
    masks with `align.align_masks` first). Returns (B, M, C) in the features' dtype. The area is
    clamped to AREA_EPS, so an all-zero mask gives a zero vector, never NaN.

    Sums, areas and the division run in float32 with autocast off, whatever the features' dtype: an
    fp16 sum over a 56×56 FPN grid overflows once the mean |feature| exceeds 65504 / 3136 ≈ 21, and a
    bf16 one loses the low bits of every partial sum. The mean itself is bounded by the largest
    |feature|, so it is returned in the features' own dtype (and its gradient comes back in it too).
    """
    if not isinstance(features, Tensor) or features.dim() != 4:
        raise ValueError(f"features must be (B, C, H, W), got {getattr(features, 'shape', type(features))}")
    if not isinstance(masks, Tensor) or masks.dim() != 4:
        raise ValueError(f"masks must be (B, M, H, W), got {getattr(masks, 'shape', type(masks))}")
    if masks.shape[0] != features.shape[0]:
        raise ValueError(f"masks batch size {masks.shape[0]} != features batch size {features.shape[0]}")
    if masks.shape[-2:] != features.shape[-2:]:
        raise ValueError(f"masks grid {tuple(masks.shape[-2:])} != features grid "
                         f"{tuple(features.shape[-2:])}; align masks to the feature grid first "
                         "(discorep.discovery.align.align_masks)")
    if not features.is_floating_point():
        raise ValueError(f"features must be floating point, got dtype {features.dtype}")
    with no_autocast():  # autocast would run the bmm in fp16/bf16 again
        weights = masks.flatten(2).float()
        # (B, M, HW) @ (B, HW, C): one batched matmul for all masks of all images.
        summed = torch.bmm(weights, features.flatten(2).float().transpose(1, 2))
        area = weights.sum(-1).clamp(min=AREA_EPS)
        return (summed / area.unsqueeze(-1)).to(features.dtype)


def sample_mask_ids(present: Tensor, num_samples: int, generator: torch.Generator | None = None, *,
                    seeds: Tensor | None = None) -> Tensor:
    """Sample `num_samples` mask ids per image uniformly among its present masks (DetCon §3).

    present: (B, M) bool. Returns (B, S) int64. Without replacement when an image has ≥ S present
    masks; otherwise all its present masks (random order) and the rest drawn with replacement among
    them. An image with no present mask gets ids 0; callers mark those invalid via
    `present.gather(1, ids)`. The same ids serve the online and target networks. Deterministic given
    `generator` (which must live on present's device), or — with `seeds`, a (B,) int64 tensor — from
    per-image counter-based streams, so an image's draw does not depend on its batch neighbours.
    """
    if not isinstance(present, Tensor) or present.dim() != 2 or present.dtype != torch.bool:
        raise ValueError(f"present must be a (B, M) bool tensor, got "
                         f"{getattr(present, 'dtype', type(present))} {getattr(present, 'shape', '')}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
    B, M = present.shape
    if M == 0:
        raise ValueError("present has M = 0 masks; there is no id to sample")
    dev = present.device
    if seeds is not None:
        if seeds.shape != (B,):
            raise ValueError(f"seeds must have shape ({B},), got {tuple(seeds.shape)}")
        draws = (uniform(seeds.to(dev), M, 0), uniform(seeds.to(dev), num_samples, 1))
    else:
        draws = (torch.rand(B, M, generator=generator, device=dev),
                 torch.rand(B, num_samples, generator=generator, device=dev))
    keys = draws[0].masked_fill(~present, -1.0)
    # Present ids first, in uniformly random order (random keys → random permutation).
    order = keys.argsort(dim=1, descending=True, stable=True)  # (B, M)
    n = present.sum(1, keepdim=True)  # (B, 1)
    pos = torch.arange(num_samples, device=dev).expand(B, -1)
    extra = (draws[1] * n).long()
    extra = torch.minimum(extra, (n - 1).clamp(min=0))  # guard rand·n rounding up to n
    idx = torch.where(pos < n, pos, extra).clamp(max=M - 1)
    ids = order.gather(1, idx)
    return ids.masked_fill(n == 0, 0)
