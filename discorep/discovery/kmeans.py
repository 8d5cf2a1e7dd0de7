"""Batched, masked k-means in torch: many small k-means problems solved at once (GPU or CPU).

Odin (§3.1, A.4) clusters every image's dense features separately (K clusters per image): that is B
independent problems, solved here in one batched pass. R2O (§3.1) clusters all region embeddings of a
device's batch together: `pooled_kmeans`, i.e. one problem (B=1). Points are L2-normalised first by
default (Odin A.4: "vectors are L2 normalized before applying k-means"), so Euclidean k-means on unit
vectors is cosine k-means.

Padding: `valid` (B, N) marks real points; padded rows never influence initialisation, centroids or
inertia, whatever values they hold (they are zeroed before any arithmetic, so inf/NaN padding is fine).

Memory (float32, R = B·n_init): points (R, N, D) + the distance matrix (R, N, K) (+ the same again for
the one-hot assignment on CUDA) + centroids and their sums (R, K, D) + k-means++ candidate distances
(R, L, N) with L = 2 + ⌊ln K⌋, plus two (R, N, D) temporaries for the exact final inertia.
E.g. R2O pooled, N=6400, K=128, D=1024: 26 MB points + 3.3 MB (+3.3 MB) + 1 MB (+52 MB transient).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from discorep import hostsync
from discorep.precision import full_precision
from discorep.discovery.random import hash32, uniform

__all__ = ["KMeansResult", "batched_kmeans", "pooled_kmeans"]


@dataclass
class KMeansResult:
    """Output of `batched_kmeans` (pooled mode drops the leading batch dimension).

    labels: (B, N) int64 cluster ids, −1 at invalid rows. centroids: (B, K, D) float32.
    inertia: (B,) float32, sum of squared distances of valid points to their centroid (measured on the
    normalised points when normalize=True). n_iter: Lloyd iterations run.
    """

    labels: Tensor
    centroids: Tensor
    inertia: Tensor
    n_iter: int


def _validate(x: Tensor, K: int, valid: Tensor | None, iters: int, tol: float, n_init: int) -> None:
    """Raise ValueError naming the bad argument."""
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a (B, N, D) tensor, got {getattr(x, 'shape', type(x))}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating tensor, got dtype {x.dtype}")
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"K must be a positive int, got {K!r}")
    if valid is not None:
        if not isinstance(valid, Tensor) or valid.shape != x.shape[:2]:
            raise ValueError(f"valid must have shape (B, N) = {tuple(x.shape[:2])}, "
                             f"got {getattr(valid, 'shape', type(valid))}")
        if valid.dtype != torch.bool:
            raise ValueError(f"valid must be a bool tensor, got dtype {valid.dtype}")
        if valid.device != x.device:
            raise ValueError(f"valid is on {valid.device} but x is on {x.device}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be an int >= 1, got {iters!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    if isinstance(n_init, bool) or not isinstance(n_init, int) or n_init < 1:
        raise ValueError(f"n_init must be an int >= 1, got {n_init!r}")


def _sqdist(a: Tensor, b: Tensor, a2: Tensor, b2: Tensor) -> Tensor:
    """Squared distances (R, P, D) × (R, Q, D) → (R, P, Q) via ‖a‖² + ‖b‖² − 2ab (one bmm).

    a2 (R, P) and b2 (R, Q) are the precomputed squared norms (the points' norms never change).
    """
    base = a2.unsqueeze(-1) + b2.unsqueeze(1)
    return torch.baddbmm(base, a, b.transpose(1, 2), alpha=-2.0).clamp_(min=0.0)


def _sqnorm(a: Tensor) -> Tensor:
    return a.pow(2).sum(-1)


def _gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """x (R, N, D), idx (R, L) → (R, L, D)."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class _Uniform:
    """Uniform draws for R rows: one shared torch.Generator (int seed), or per-row counter-based
    streams (a (R,) tensor of seeds, `discovery.random`) so that a row's draws never depend on the
    other rows — an image then gets the same clusters whatever batch it is in."""

    def __init__(self, seed: int | Tensor, rows: int, n_init: int, device: torch.device):
        self.counter = 0
        self.seeds = None
        if isinstance(seed, Tensor):
            per_image = seed.to(device=device, dtype=torch.int64).repeat_interleave(n_init)
            init_idx = torch.arange(n_init, device=device).repeat(rows // n_init)
            self.seeds = hash32(per_image + init_idx * 0x632BE5AB)
        else:
            self.gen = torch.Generator(device=device).manual_seed(int(seed))
        self.device = device

    def __call__(self, rows: int, num: int) -> Tensor:
        if self.seeds is None:
            return torch.rand(rows, num, generator=self.gen, device=self.device)
        self.counter += 1
        return uniform(self.seeds, num, self.counter)


def _sample_weighted(weights: Tensor, num: int, gen: _Uniform) -> Tensor:
    """Draw `num` indices per row ∝ weights (R, N) by inverse-CDF sampling (with replacement).

    Rows whose weights are all zero are assumed to have been given a fallback by the caller. A draw
    landing on a zero-weight index (float round-off at the top of the CDF) is moved to the row's argmax.
    """
    cdf = weights.cumsum(-1)
    u = gen(weights.shape[0], num) * cdf[:, -1:]
    idx = torch.searchsorted(cdf, u, right=True).clamp_(max=weights.shape[1] - 1)
    bad = weights.gather(1, idx) <= 0
    return torch.where(bad, weights.argmax(-1, keepdim=True).expand_as(idx), idx)


def _d2_weights(closest: Tensor, validf: Tensor) -> Tensor:
    """k-means++ D² weights restricted to valid points, with fallbacks so every row can be sampled.

    When every valid point already sits on a chosen centre (duplicates, K ≥ #valid) sample uniformly
    among valid points; an image with no valid point samples anything (its x rows are all zero).
    """
    w = closest * validf
    dead = w.sum(-1, keepdim=True) <= 0
    w = torch.where(dead, validf, w)
    dead = w.sum(-1, keepdim=True) <= 0
    return torch.where(dead, torch.ones_like(w), w)


def _kmeanspp_init(x: Tensor, x2: Tensor, validf: Tensor, K: int, gen: _Uniform) -> Tensor:
    """Greedy k-means++ (Arthur & Vassilvitskii 2007): D² sampling of L = 2 + ⌊ln K⌋ candidates per step,
    keeping the one that lowers the potential most. The K steps are sequential by nature; each step is
    vectorised over the whole batch. Returns centroids (R, K, D), each a copy of a point of x.
    """
    R, N, D = x.shape
    trials = 2 + int(math.log(K))
    centroids = x.new_zeros(R, K, D)
    idx = _sample_weighted(_d2_weights(torch.zeros_like(validf), validf), 1, gen)  # (R, 1)
    centroids[:, :1] = _gather_rows(x, idx)
    closest = _sqdist(centroids[:, :1], x, x2.gather(1, idx), x2).squeeze(1)  # (R, N)
    for k in range(1, K):
        cand = _sample_weighted(_d2_weights(closest, validf), trials, gen)  # (R, L)
        cand_d = _sqdist(_gather_rows(x, cand), x, x2.gather(1, cand), x2)  # (R, L, N)
        cand_d = torch.minimum(cand_d, closest.unsqueeze(1))
        best = (cand_d * validf.unsqueeze(1)).sum(-1).argmin(-1, keepdim=True)  # (R, 1)
        closest = cand_d.gather(1, best.unsqueeze(-1).expand(-1, 1, N)).squeeze(1)
        centroids[:, k : k + 1] = _gather_rows(x, cand.gather(1, best))
    return centroids


def _cluster_sums(x: Tensor, labels: Tensor, validf: Tensor, K: int,
                  use_matmul: bool | None = None) -> tuple[Tensor, Tensor]:
    """Per-cluster sums (R, K, D) and counts (R, K) of the valid points; no loop over images/clusters.

    Invalid rows of x must already be zero (`_prepare` does it), so only the counts need `validf`.

    CUDA: one-hot matmul (deterministic, unlike float atomics in scatter_add; tensor cores make the
    extra N·K·D work cheap). CPU: index_add into flattened (R·K) rows, which is sequential there,
    hence deterministic, and O(N·D) instead of O(N·K·D).
    """
    R, N, D = x.shape
    if x.is_cuda if use_matmul is None else use_matmul:
        onehot = torch.zeros(R, N, K, device=x.device, dtype=x.dtype).scatter_(2, labels.unsqueeze(-1),
                                                                                validf.unsqueeze(-1))
        return torch.bmm(onehot.transpose(1, 2), x), onehot.sum(1)
    flat = (labels + torch.arange(R, device=x.device).unsqueeze(1) * K).flatten()  # (R·N,)
    sums = x.new_zeros(R * K, D).index_add_(0, flat, x.flatten(0, 1))
    counts = x.new_zeros(R * K).index_add_(0, flat, validf.flatten())
    return sums.view(R, K, D), counts.view(R, K)


def _reseed_empty(x: Tensor, x2: Tensor, centroids: Tensor, empty: Tensor, dmin: Tensor,
                  valid: Tensor) -> Tensor:
    """Move each empty cluster to a distinct valid point far from its current centroid (vectorised).

    The r-th empty cluster of an image (in cluster order) takes the image's r-th farthest point. A
    point at distance ~0 would not help (it already sits on a centroid), so such clusters stay put:
    that keeps every centroid finite and avoids dividing by an empty count.
    """
    L = min(centroids.shape[1], x.shape[1])
    far_d, far_idx = dmin.masked_fill(~valid, -1.0).topk(L, dim=1)  # (R, L), descending
    # "Distance 0" up to float round-off of a mean of identical points (relative to the data scale).
    eps = 1e-10 * (x2 * valid).amax(1, keepdim=True)  # (R, 1)
    order = empty.long().cumsum(1)  # (R, K): 1-based rank among the empty clusters
    rank = (order - 1).clamp_(min=0, max=L - 1)
    move = empty & (order <= L) & (far_d.gather(1, rank) > eps)
    target = _gather_rows(x, far_idx.gather(1, rank))  # (R, K, D)
    return torch.where(move.unsqueeze(-1), target, centroids)


def _lloyd(x: Tensor, valid: Tensor, centroids: Tensor, iters: int, tol: float,
           sync_every: int = 1) -> tuple[Tensor, int]:
    """Lloyd iterations; no Python loop over images or clusters. Returns (centroids, n_iter).

    Convergence is per image: an image whose centroids moved ≤ tol is frozen, so its result does not
    depend on how long the other images of the batch take. `sync_every` > 1 is the GPU mode: the
    empty-cluster fix-up always runs (a no-op without empty clusters) and "all images converged" is
    read back every `sync_every` iterations only, so the loop queues kernels without host-device
    syncs; frozen images do not change, so the centroids are identical to `sync_every` = 1 and only
    n_iter is rounded up to a multiple of `sync_every`.
    """
    validf = valid.to(x.dtype)
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    x2 = _sqnorm(x)
    K = centroids.shape[1]
    n_iter = 0
    for n_iter in range(1, iters + 1):
        labels = _sqdist(x, centroids, x2, _sqnorm(centroids)).argmin(-1)  # (R, N)
        sums, counts = _cluster_sums(x, labels, validf, K)
        empty = counts == 0
        new = torch.where(empty.unsqueeze(-1), centroids, sums / counts.clamp(min=1.0).unsqueeze(-1))
        if sync_every > 1 or bool(empty.any()):  # on CPU: rare, pay for exact distances only then
            # Exact ‖x − c‖² (not the expansion) so points sitting on a centroid read 0.
            dmin = _sqnorm(x - _gather_rows(centroids, labels))
            new = _reseed_empty(x, x2, new, empty, dmin, valid)
        shift = (new - centroids).norm(dim=-1).amax(-1)  # (R,)
        centroids = torch.where(active[:, None, None], new, centroids)
        active = active & (shift > tol)
        if n_iter % sync_every == 0 and not bool(active.any()):
            break
    return centroids, n_iter


def _assign(x: Tensor, valid: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """Final E-step: labels (−1 at invalid rows) and exact inertia ‖x − c_label‖² over valid rows."""
    labels = _sqdist(x, centroids, _sqnorm(x), _sqnorm(centroids)).argmin(-1)
    inertia = (_sqnorm(x - _gather_rows(centroids, labels)) * valid.to(x.dtype)).sum(-1)
    return labels.masked_fill(~valid, -1), inertia


def _prepare(x: Tensor, valid: Tensor | None, normalize: bool) -> tuple[Tensor, Tensor]:
    """float32 copy, invalid rows zeroed (torch.where, so inf/NaN padding cannot leak), optional L2 norm."""
    if valid is None:
        valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    pts = torch.where(valid.unsqueeze(-1), x.float(), 0.0)
    # Checked where free (CPU); on a GPU the read-back would stall every step (features are finite
    # whenever the loss is, and the engine checks the loss).
    if hostsync.reads_are_free(pts) and not bool(torch.isfinite(pts).all()):
        raise ValueError("x has non-finite values (inf/NaN) at rows marked valid")
    if normalize:
        pts = F.normalize(pts, dim=-1)  # zero rows stay zero (eps in the norm)
    return pts, valid


@torch.no_grad()
@full_precision  # fp32 distances whatever autocast the caller runs under (issue 12)
def batched_kmeans(x: Tensor, K: int, valid: Tensor | None = None, *, iters: int = 50,
                   tol: float = 1e-4, seed: int | Tensor = 0, normalize: bool = True,
                   n_init: int = 1, sync_every: int | None = None) -> KMeansResult:
    """K-means on B independent point sets at once.

    x: (B, N, D) any float dtype (computed in float32); valid: (B, N) bool or None (all valid).
    Greedy k-means++ init with a seeded generator on x's device, then Lloyd until the largest centroid
    shift over the batch is ≤ tol or `iters` iterations. Empty clusters are re-seeded on far points.
    With n_init > 1 the n_init initialisations run as one batch of B·n_init problems and the lowest
    inertia per image is kept. Same inputs and seed → identical result. `seed` may be a (B,) int64
    tensor of per-image seeds: each image's result is then independent of the rest of the batch.
    `sync_every`: how often the loop reads "converged?" back to the host (default: every iteration on
    CPU, where it is free; every 8 on GPU, where each read is a device sync). Results are the same.
    """
    _validate(x, K, valid, iters, tol, n_init)
    if sync_every is None:
        sync_every = 1 if hostsync.reads_are_free(x) else 8
    if sync_every < 1:
        raise ValueError(f"sync_every must be >= 1, got {sync_every}")
    B, N, D = x.shape
    if N == 0 or B == 0:
        return KMeansResult(torch.full((B, N), -1, dtype=torch.long, device=x.device),
                            x.new_zeros(B, K, D, dtype=torch.float32),
                            x.new_zeros(B, dtype=torch.float32), 0)
    pts, valid = _prepare(x, valid, normalize)
    if n_init > 1:
        pts, valid = pts.repeat_interleave(n_init, 0), valid.repeat_interleave(n_init, 0)
    if isinstance(seed, Tensor) and seed.shape != (B,):
        raise ValueError(f"seed must be an int or a ({B},) tensor of per-image seeds, got shape {tuple(seed.shape)}")
    gen = _Uniform(seed, pts.shape[0], n_init, x.device)
    centroids = _kmeanspp_init(pts, _sqnorm(pts), valid.to(pts.dtype), K, gen)
    centroids, n_iter = _lloyd(pts, valid, centroids, iters, tol, sync_every)
    labels, inertia = _assign(pts, valid, centroids)
    if n_init > 1:
        best = inertia.view(B, n_init).argmin(1) + torch.arange(B, device=x.device) * n_init
        labels, centroids, inertia = labels[best], centroids[best], inertia[best]
    return KMeansResult(labels=labels, centroids=centroids, inertia=inertia, n_iter=n_iter)


def pooled_kmeans(x: Tensor, K: int, valid: Tensor | None = None, **kwargs) -> KMeansResult:
    """R2O mode: one k-means over all N points (e.g. every region embedding of a device's batch).

    x: (N, D), valid: (N,) bool or None; keyword arguments as `batched_kmeans`. Returns labels (N,),
    centroids (K, D), inertia () (scalar tensor), n_iter.
    """
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"x must be an (N, D) tensor, got {getattr(x, 'shape', type(x))}")
    if valid is not None and (not isinstance(valid, Tensor) or valid.shape != x.shape[:1]):
        raise ValueError(f"valid must have shape (N,) = ({x.shape[0]},), "
                         f"got {getattr(valid, 'shape', type(valid))}")
    res = batched_kmeans(x.unsqueeze(0), K, None if valid is None else valid.unsqueeze(0), **kwargs)
    return KMeansResult(res.labels[0], res.centroids[0], res.inertia[0], res.n_iter)
