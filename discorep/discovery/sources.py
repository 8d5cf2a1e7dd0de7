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

from discorep.discovery.align import align_masks
from discorep.discovery.kmeans import batched_kmeans
from discorep.discovery.pooling import mask_pool


def feature_kmeans_labels(features: Tensor, K: int, *, seed: int | Tensor, iters: int = 30) -> Tensor:
    """Odin §3.1: K-means (K clusters per image) on L2-normalised feature vectors.

    features: (B, D, h, w) → labels (B, h, w) int64 in [0, K). `seed`: an int, or (B,) per-image seeds.
    """
    B, D, h, w = features.shape
    points = features.flatten(2).transpose(1, 2)  # (B, h·w, D)
    result = batched_kmeans(points, K, iters=iters, seed=seed, normalize=True)
    return result.labels.view(B, h, w)


def region_embeddings(features: Tensor, prior: Tensor, num_regions: int) -> tuple[Tensor, Tensor]:
    """Mask-pooled embedding of every prior region (R2O §3.1, p_i).

    `features` (B, C, h, w) must be computed on the same frame the prior covers (the raw, whole-image
    view). Returns embeddings (B, R, C) and `present` (B, R): regions with any area on the grid.
    """
    B, _, h, w = features.shape
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=features.device).expand(B, 4)
    # Frame and view are the same box, so alignment reduces to area-downsampling the one-hot regions.
    no_flip = torch.zeros(B, dtype=torch.bool, device=features.device)
    aligned = align_masks(prior, whole, whole, no_flip, (h, w), num_regions, min_cells=1e-6)
    return mask_pool(features, aligned.soft.to(features.dtype)), aligned.present


def region_kmeans_labels(features: Tensor, prior: Tensor, num_regions: int, K: int, *,
                         seed: int, iters: int = 30) -> Tensor:
    """R2O mask prediction: pooled k-means over all regions of the batch, painted back per pixel.

    prior: (B, P, P) int64 region ids (−1 = none). Returns (B, P, P) int64 cluster ids (−1 where the
    region had no area on the feature grid). Hard labels: every pixel of a region gets its cluster.
    """
    B = prior.shape[0]
    emb, present = region_embeddings(features, prior, num_regions)
    result = batched_kmeans(emb.reshape(1, B * num_regions, -1), K,
                            valid=present.reshape(1, -1), iters=iters, seed=seed, normalize=True)
    region_cluster = result.labels.view(B, num_regions)  # −1 for absent regions
    painted = torch.gather(region_cluster, 1, prior.flatten(1).clamp(min=0)).view_as(prior)
    return painted.masked_fill(prior < 0, -1)
