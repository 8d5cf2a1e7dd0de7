"""Mask sources: turn features (and optionally a region prior) into label maps.

Each function is pure: networks are run by the caller, which passes their feature maps in. The label
maps returned cover a known frame box; `align.align_masks` maps them into each view.

* DetCon: the prior's label map itself (no function needed).
* Odin: `feature_kmeans_labels` — per-image k-means over the discovery network's dense features.
* R2O: `region_kmeans_labels` — mask-pool features inside each prior region, k-means over all region
  embeddings of the batch together, paint each region's cluster id back onto its pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.profiler import record_function

from discorep.discovery.align import AlignedMasks, align_masks
from discorep.discovery.kmeans import batched_kmeans
from discorep.discovery.pooling import mask_pool


def feature_kmeans_labels(features: Tensor, K: int, *, seed: int | Tensor, iters: int = 30) -> Tensor:
    """Odin §3.1: K-means (K clusters per image) on L2-normalised feature vectors.

    features: (B, D, h, w) → labels (B, h, w) int64 in [0, K). `seed`: an int, or (B,) per-image seeds.
    """
    B, D, h, w = features.shape
    points = features.flatten(2).transpose(1, 2)  # (B, h·w, D)
    with record_function("discorep/kmeans"):
        result = batched_kmeans(points, K, iters=iters, seed=seed, normalize=True)
    return result.labels.view(B, h, w)


def region_embeddings(features: Tensor, region_masks: Tensor) -> Tensor:
    """Mask-pooled embedding of every prior region (R2O §3.1, p_i): (B, R, C).

    `region_masks` (B, R, h, w) are the prior's regions aligned to the grid of `features`, which must be
    computed on the frame the prior covers (the raw, whole-image view).
    """
    return mask_pool(features, region_masks.to(features.dtype))


def region_clusters(features: Tensor, region_masks: Tensor, present: Tensor, K: int, *,
                    seed: int, iters: int = 30) -> Tensor:
    """R2O mask prediction: k-means over the embeddings of all regions of the batch together.

    Returns (B, R) int64 cluster ids, −1 for regions absent from the feature grid.
    """
    B, R = present.shape
    with record_function("discorep/align"):
        emb = region_embeddings(features, region_masks)
    with record_function("discorep/kmeans"):
        result = batched_kmeans(emb.reshape(1, B * R, -1), K, valid=present.reshape(1, -1), iters=iters,
                                seed=seed, normalize=True)
    return result.labels.view(B, R)


def paint(prior: Tensor, region_cluster: Tensor) -> Tensor:
    """Hard labels: every pixel takes its region's cluster id (−1 where the region has none)."""
    painted = torch.gather(region_cluster, 1, prior.flatten(1).clamp(min=0)).view_as(prior)
    return painted.masked_fill(prior < 0, -1)


def cluster_masks(region_masks: AlignedMasks, region_cluster: Tensor, K: int, *,
                  min_cells: float = 0.5) -> AlignedMasks:
    """Masks of the painted cluster labels in a view, from the regions' masks in that view.

    RoIAlign is linear, so aligning the painted label map equals summing the aligned masks of the
    regions in each cluster: the prior is aligned once and never re-rasterised per K.
    """
    assign = torch.zeros(*region_cluster.shape, K, device=region_cluster.device)
    assign.scatter_(2, region_cluster.clamp(min=0).unsqueeze(-1), (region_cluster >= 0).float().unsqueeze(-1))
    soft = torch.einsum("brk,brhw->bkhw", assign, region_masks.soft)
    return AlignedMasks(soft=soft, present=soft.sum(dim=(-2, -1)) >= min_cells)


def whole_frame_masks(prior: Tensor, num_regions: int, grid: tuple[int, int]) -> AlignedMasks:
    """The prior's regions on the grid of its own frame (frame box = view box, no flip)."""
    B = prior.shape[0]
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=prior.device).expand(B, 4)
    no_flip = torch.zeros(B, dtype=torch.bool, device=prior.device)
    return align_masks(prior, whole, whole, no_flip, grid, num_regions, min_cells=1e-6)


def region_kmeans_labels(features: Tensor, prior: Tensor, num_regions: int, K: int, *,
                         seed: int, iters: int = 30) -> Tensor:
    """R2O's label map (B, P, P): pooled k-means over region embeddings, painted back per pixel."""
    regions = whole_frame_masks(prior, num_regions, tuple(features.shape[-2:]))
    return paint(prior, region_clusters(features, regions.soft, regions.present, K, seed=seed, iters=iters))
