"""Crisp masks: k-means over superpixel regions instead of feature-grid cells (the R2O mechanism).

Clustering the 14x14 feature grid of a 448-px image and upsampling the labels gives masks made of
32-px blocks. Here the image is first cut into superpixels (the project's region priors,
`data.priors`), the dense features are upsampled bilinearly and pooled inside each superpixel
(`discovery.align.align_masks` + `discovery.pooling.mask_pool`, as R2O pools its SLIC regions), the
regions are clustered per image for every K from one seeding (`discovery.kmeans.batched_kmeans_ks`) and
every pixel takes its region's cluster, so segment boundaries are superpixel boundaries, i.e. image edges.

Superpixels are computed on the evaluation-size image the network sees (`size` x `size`); the painted
map has that size and callers upsample it (nearest) to the original image, as they do the grid labels.
Pooling is defined on a `POOL_SIDE` grid (features bilinearly upsampled to it, superpixel area fractions
aligned to it) so that memory stays M x POOL_SIDE² per image whatever the image size; it is computed on
the feature grid with the area fractions carried down by the upsampling's transpose (`region_features`).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from discorep.data.priors import felzenszwalb_prior, slic_prior
from discorep.discovery.align import align_masks
from discorep.discovery.kmeans import batched_kmeans_ks
from discorep.discovery.pooling import mask_pool
from discorep.errors import UsageError

REFINE_METHODS = ("none", "slic", "felzenszwalb")
DEFAULT_SUPERPIXELS = 256  # ≥ 128, the largest K of Odin's list, before SLIC merges small segments
DEFAULT_COMPACTNESS = 10.0  # skimage's and R2O's SLIC compactness
FH_SCALE = 100.0  # Felzenszwalb scale for refinement (DetCon's 1000 gives ~10 regions: too coarse for K=128)
POOL_SIDE = 64  # side of the grid the pooling runs on (at least the feature grid)


@dataclass(frozen=True)
class Refine:
    """How masks are refined: `method` in REFINE_METHODS; `superpixels` is SLIC's segment count (for
    Felzenszwalb it sets min_size = size² / (4·superpixels), i.e. at most ~4·superpixels regions);
    `compactness` is SLIC's."""

    method: str = "none"
    superpixels: int = DEFAULT_SUPERPIXELS
    compactness: float = DEFAULT_COMPACTNESS

    def __post_init__(self) -> None:
        if self.method not in REFINE_METHODS:
            raise UsageError(f"--refine must be one of {', '.join(REFINE_METHODS)}, got {self.method!r}")
        if isinstance(self.superpixels, bool) or not isinstance(self.superpixels, int) or self.superpixels < 1:
            raise UsageError(f"--superpixels must be a positive integer, got {self.superpixels!r}")
        if not self.compactness > 0:
            raise UsageError(f"--compactness must be > 0, got {self.compactness!r}")

    @property
    def active(self) -> bool:
        return self.method != "none"

    def settings(self) -> dict:
        """What an eval JSON records (only the method when nothing is refined)."""
        if not self.active:
            return {"method": "none"}
        extra = {"felzenszwalb_scale": FH_SCALE} if self.method == "felzenszwalb" else {}
        return {**asdict(self), **extra, "pool_side": POOL_SIDE}


def to_uint8(images: Tensor) -> np.ndarray:
    """(B, 3, S, S) float in [0, 1] → uint8 (B, S, S, 3), what the priors take."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def superpixels(image: np.ndarray, refine: Refine) -> np.ndarray:
    """uint8 (S, S, 3) → int32 (S, S) superpixel ids 0..M-1 at the image's own resolution."""
    if refine.method == "slic":
        return slic_prior(image, n_segments=refine.superpixels, compactness=refine.compactness, resize=None)
    min_size = max(1, image.shape[0] * image.shape[1] // (4 * refine.superpixels))
    return felzenszwalb_prior(image, scale=FH_SCALE, min_size=min_size)


def batch_superpixels(images: np.ndarray, refine: Refine) -> list[np.ndarray]:
    """`superpixels` of every image of a uint8 (B, S, S, 3) batch, on up to torch.get_num_threads() threads.

    Threads pay off because skimage runs SLIC's and Felzenszwalb's loops without the GIL (`with nogil`
    in skimage 0.26's `_slic.pyx` and `_felzenszwalb_cy.pyx`; its numpy pre- and post-processing
    releases it too). Each image's map is computed exactly as alone, so results equal the sequential ones.
    """
    workers = min(len(images), torch.get_num_threads())
    if workers <= 1:
        return [superpixels(im, refine) for im in images]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="superpixels") as pool:
        return list(pool.map(superpixels, images, [refine] * len(images)))


def start_superpixels(pool: Executor, images: Tensor, refine: Refine) -> Future:
    """`batch_superpixels` of (B, 3, S, S) images in [0, 1] on `pool`, to overlap with their forward pass
    (superpixels depend on the image only; the result is the same as computing them afterwards)."""
    return pool.submit(batch_superpixels, to_uint8(images), refine)


def _fill_unpooled(painted: np.ndarray) -> np.ndarray:
    """Pixels of regions that received no pooling weight (-1) take the nearest labelled pixel's id."""
    missing = painted < 0
    if not missing.any() or missing.all():
        return np.where(missing, 0, painted)
    idx = ndimage.distance_transform_edt(missing, return_distances=False, return_indices=True)
    return painted[idx[0], idx[1]]


def interpolation_matrix(n_out: int, n_in: int, device: torch.device | None = None) -> Tensor:
    """(n_out, n_in) matrix U of 1-D linear resizing as `F.interpolate(..., align_corners=False)` does it;
    bilinear resizing of an (h, w) map X is separable: Uy @ X @ Ux.T."""
    eye = torch.eye(n_in, device=device)[None]  # channel i holds the i-th unit vector: column i of U
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T


def region_features(feats: Tensor, regions: Tensor, num_regions: int) -> tuple[Tensor, Tensor]:
    """Mean upsampled feature inside each region: (B, D, h, w), (B, S, S) ids → (B, M, D), present (B, M).

    The features are upsampled bilinearly (U) to the pool grid and averaged under each region's area
    fractions m there. U is linear and its rows sum to 1, so Σ m·(UF) / Σ m = Σ (Uᵀm)·F / Σ Uᵀm: the
    masks are carried down to the feature grid instead (pool_side²/hw times fewer multiply-adds: 84x
    for a 7x7 C5 grid, and no (B, D, pool_side²) copy of the features), same means up to rounding.
    """
    B, H, W = regions.shape
    h, w = feats.shape[-2:]
    side = (min(H, max(POOL_SIDE, h)), min(W, max(POOL_SIDE, w)))
    frame = torch.tensor([0.0, 0.0, W, H], device=feats.device).expand(B, 4)
    aligned = align_masks(regions, frame, frame, torch.zeros(B, dtype=torch.bool), side, num_regions,
                          min_cells=1e-6)
    u_y = interpolation_matrix(side[0], h, feats.device)
    u_x = interpolation_matrix(side[1], w, feats.device)
    weights = torch.einsum("yi,bmyx,xj->bmij", u_y, aligned.soft.float(), u_x)
    return mask_pool(feats, weights), aligned.present


def region_k_cap(refine: Refine) -> int:
    """The largest K clustered over an image's regions: a bound on its region count that depends on the
    settings only, never on the batch. SLIC merges segments under half its nominal size (so at most
    ~2·superpixels regions) and Felzenszwalb's min_size is S²/(4·superpixels) (~4·superpixels)."""
    return 4 * refine.superpixels


def cluster_regions(pooled: Tensor, present: Tensor, ks: Sequence[int], seeds: Tensor, *, cap: int,
                    iters: int = 50) -> dict[int, Tensor]:
    """Per-image k-means of pooled regions (B, M, D) for every K: {K: (B, ≥M) labels, -1 at absent regions}.

    All K start from one k-means++ seeding (`batched_kmeans_ks`: paid once, not once per K). K is clamped
    to `cap`, not to the batch's largest region count, and the regions are padded (absent) to at least
    that many, so the seeding (of max(ks) centres) does not depend on the other images of the batch
    (unless one has over 16·max K regions, where seeding subsamples: `discovery.seeding`). An image with
    fewer regions than K gets at most one segment per region.
    """
    clamped = {k: min(k, cap) for k in ks}
    rows = max(clamped.values())
    if rows > pooled.shape[1]:  # pad rows never take part (present False); labels there are -1
        extra = rows - pooled.shape[1]
        pooled = torch.cat([pooled, pooled.new_zeros(pooled.shape[0], extra, pooled.shape[2])], 1)
        present = torch.cat([present, present.new_zeros(present.shape[0], extra)], 1)
    results = batched_kmeans_ks(pooled, list(clamped.values()), valid=present, seed=seeds, iters=iters)
    return {k: results[c].labels for k, c in clamped.items()}


@torch.no_grad()
def refine_labels(feats: Tensor, images: Tensor, ks: Sequence[int], refine: Refine, seeds: Tensor, *,
                  iters: int = 50, maps: Future | None = None) -> tuple[dict[int, Tensor], list[int]]:
    """Per-image k-means over superpixel regions for each K, painted back per pixel.

    feats (B, D, h, w) dense features; images (B, 3, S, S) in [0, 1] (the network's input);
    seeds (B,) per-image k-means seeds. Returns ({K: (B, S, S) int64 labels}, regions per image).
    K larger than an image's number of regions yields at most one segment per region.
    `maps`: the images' superpixels already under way (`start_superpixels`), else computed here.
    """
    maps = maps.result() if maps is not None else batch_superpixels(to_uint8(images), refine)
    counts = [int(m.max()) + 1 for m in maps]
    regions = torch.from_numpy(np.stack(maps)).long().to(feats.device)
    pooled, present = region_features(feats.float(), regions, max(counts))
    clustered = cluster_regions(pooled, present, ks, seeds, cap=region_k_cap(refine), iters=iters)
    out = {}
    for k, labels in clustered.items():
        painted = labels.gather(1, regions.flatten(1)).view_as(regions).cpu().numpy()
        out[k] = torch.from_numpy(np.stack([_fill_unpooled(p) for p in painted])).long()
    return out, counts


@torch.no_grad()
def region_vote(probs: Tensor, image: np.ndarray, refine: Refine) -> np.ndarray:
    """Label propagation refined: (C, h, w) class distributions and the frame (H, W, 3) uint8 →
    (H, W) int64 class index, the argmax of each superpixel's mean distribution (video eval)."""
    regions = torch.from_numpy(superpixels(image, refine)).long()[None]
    pooled, present = region_features(probs[None].float().cpu(), regions, int(regions.max()) + 1)
    winner = pooled[0].argmax(-1).masked_fill(~present[0], -1)
    return _fill_unpooled(winner[regions[0]].numpy())
