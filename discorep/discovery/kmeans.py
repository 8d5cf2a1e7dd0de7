"""Batched, masked k-means in torch: many small k-means problems solved at once (GPU or CPU).

Odin (§3.1, A.4) clusters every image's dense features separately (K clusters per image): that is B
independent problems, solved here in one batched pass. R2O (§3.1) clusters all region embeddings of a
device's batch together: one problem (B=1). Points are L2-normalised first by
default (Odin A.4: "vectors are L2 normalized before applying k-means"), so Euclidean k-means on unit
vectors is cosine k-means.

Padding: `valid` (B, N) marks real points; padded rows never influence initialisation, centroids or
inertia, whatever values they hold (they are zeroed before any arithmetic, so inf/NaN padding is fine).

Memory (float32, R = B·n_init): points (R, N, D) + the score matrix (R, N, K) (+ the same again for
the one-hot assignment on CUDA) + centroids and their sums (R, K, D) + k-means++ candidate distances
(R, L, ≤16K) with L = 2 + ⌊ln K⌋, plus one (R, N, D) temporary for the exact final inertia; on the
Gram path (N ≤ D, `kmeans_gram`) G (R, N, N) and (R, N, K) weights instead of the centroid sets
(formulas checked against measured peaks: benchmarks/memory.py, docs/performance.md).
E.g. R2O pooled, N=6400, K=128, D=1024: 26 MB points + 3.3 MB (+3.3 MB) + 1 MB (+26 MB transient).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from discorep import hostsync
from discorep.precision import full_precision
from discorep.discovery.kmeans_gram import gram_lloyd, gram_matrix
from discorep.discovery.seeding import Uniform, far_points, gather_rows, kmeanspp_indices

__all__ = ["ALGORITHMS", "KMeansResult", "batched_kmeans", "batched_kmeans_ks"]


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


def _scores(x: Tensor, c: Tensor) -> Tensor:
    """‖c‖² − 2x·c (R, N, K): ‖x − c‖² less ‖x‖², which is the same for every centroid of a point, so
    its argmin is the nearest centroid. One batched matmul whose epilogue adds ‖c‖²."""
    return torch.baddbmm(_sqnorm(c).unsqueeze(1), x, c.transpose(1, 2), alpha=-2.0)


def _sqnorm(a: Tensor) -> Tensor:
    # vector_norm reads `a` once; pow(2).sum(-1) materialised the squares (2-3× slower on CPU).
    return torch.linalg.vector_norm(a, dim=-1).square_()


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
    """Move each empty cluster to a distinct valid point far from its current centroid (vectorised,
    `seeding.far_points`)."""
    # "Distance 0" up to float round-off of a mean of identical points (relative to the data scale).
    eps = 1e-10 * (x2 * valid).amax(1, keepdim=True)  # (R, 1)
    move, idx = far_points(dmin, valid, empty, eps)
    return torch.where(move.unsqueeze(-1), gather_rows(x, idx), centroids)


def _lloyd_step(x: Tensor, x2: Tensor, valid: Tensor, validf: Tensor, centroids: Tensor,
                always_reseed: bool) -> tuple[Tensor, Tensor, Tensor]:
    """One E + M step: (labels (R, N) from `centroids`, new centroids, largest centroid shift (R,))."""
    labels = _scores(x, centroids).argmin(-1)
    sums, counts = _cluster_sums(x, labels, validf, centroids.shape[1])
    empty = counts == 0
    new = sums.div_(counts.clamp(min=1.0).unsqueeze(-1))
    if always_reseed or bool(empty.any()):  # on CPU: rare, pay for the fix-up only then
        new = torch.where(empty.unsqueeze(-1), centroids, new)
        # Exact ‖x − c‖² (not the expansion) so points sitting on a centroid read 0.
        dmin = _sqnorm(x - gather_rows(centroids, labels))
        new = _reseed_empty(x, x2, new, empty, dmin, valid)
    return labels, new, (new - centroids).norm(dim=-1).amax(-1)


def _lloyd(x: Tensor, x2: Tensor, valid: Tensor, centroids: Tensor, iters: int, tol: float,
           sync_every: int = 8) -> tuple[Tensor, int]:
    """Lloyd iterations without host reads but every `sync_every` (the accelerator mode). Returns
    (centroids, n_iter).

    Convergence is per image: an image whose centroids moved ≤ tol is frozen, so its result does not
    depend on how long the other images of the batch take. The empty-cluster fix-up always runs (a
    no-op without empty clusters) and "all images converged" is read back every `sync_every`
    iterations only, so the loop queues kernels without host-device syncs; frozen images do not
    change, so the centroids are those of `_lloyd_compact` and only n_iter is rounded up to a
    multiple of `sync_every`.
    """
    validf = valid.to(x.dtype)
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    n_iter = 0
    for n_iter in range(1, iters + 1):
        _, new, shift = _lloyd_step(x, x2, valid, validf, centroids, always_reseed=True)
        centroids = torch.where(active[:, None, None], new, centroids)
        active = active & (shift > tol)
        if n_iter % sync_every == 0 and not bool(active.any()):
            break
    return centroids, n_iter


# Shrink the working set once this fraction of it is still running (a copy of the survivors' points).
_SHRINK_AT = 0.75


def _lloyd_compact(x: Tensor, x2: Tensor, valid: Tensor, centroids: Tensor, iters: int,
                   tol: float) -> tuple[Tensor, Tensor, Tensor, int]:
    """Lloyd iterations reading "converged?" every iteration (CPU, where reads are free), computing only
    the images still running: once a quarter of the working set has converged it is shrunk to the
    others, so the total work is the sum of the images' iteration counts rather than B × the slowest.

    Returns (centroids, labels, final, n_iter): `final` (R,) marks images whose last step moved nothing,
    so `labels` (from their last E-step) are already those of their centroids; the others' labels
    must be recomputed. Centroids equal `_lloyd`'s exactly (same per-image arithmetic).
    """
    R, N, _ = x.shape
    out_c, out_labels = centroids.clone(), torch.full((R, N), -1, dtype=torch.long, device=x.device)
    final = torch.zeros(R, dtype=torch.bool, device=x.device)
    rows = torch.arange(R, device=x.device)  # working-set row → original row
    active = torch.ones(R, dtype=torch.bool, device=x.device)
    n_iter = 0
    for n_iter in range(1, iters + 1):
        labels, centroids, shift = _lloyd_step(x, x2, valid, valid.to(x.dtype), centroids, False)
        done = active & (shift <= tol) if n_iter < iters else active
        if bool(done.any()):
            out_c[rows[done]], out_labels[rows[done]] = centroids[done], labels[done]
            final[rows[done]] = shift[done] == 0
            active = active & ~done
            left = int(active.sum())
            if left == 0:
                break
            if left <= _SHRINK_AT * active.numel():  # copying the survivors costs less than computing all
                keep = active.nonzero().squeeze(1)
                x, x2, valid, centroids, rows = (t.index_select(0, keep) for t in (x, x2, valid, centroids, rows))
                active = active.index_select(0, keep)
    return out_c, out_labels, final, n_iter


def _finish(x: Tensor, valid: Tensor, centroids: Tensor, labels: Tensor | None,
            final: Tensor | None) -> tuple[Tensor, Tensor]:
    """Final E-step where still needed: labels (−1 at invalid rows) and exact inertia ‖x − c_label‖².

    `labels`/`final` from `_lloyd_compact` skip the E-step of images whose labels are already final.
    """
    if labels is None:
        labels = _scores(x, centroids).argmin(-1)
    elif not bool(final.all()):  # rare: an image stopped by tol or iters with a non-zero last shift
        labels = torch.where(final.unsqueeze(1), labels, _scores(x, centroids).argmin(-1))
    diff = gather_rows(centroids, labels).sub_(x)  # in place: one (R, N, D) temporary, not two
    inertia = (torch.linalg.vector_norm(diff, dim=-1).square_() * valid.to(x.dtype)).sum(-1)
    return labels.masked_fill(~valid, -1), inertia


def _prepare(x: Tensor, valid: Tensor | None, normalize: bool) -> tuple[Tensor, Tensor, Tensor]:
    """float32 copy with invalid rows zeroed (torch.where, so inf/NaN padding cannot leak), optionally
    L2-normalised; returns (points, valid, squared norms of the points)."""
    # Nothing below writes into the points, so x itself may serve when there is nothing to mask.
    if valid is None:
        valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        pts, owned = x.float(), x.dtype != torch.float32
    else:
        pts, owned = torch.where(valid.unsqueeze(-1), x.float(), 0.0), True
    norms = torch.linalg.vector_norm(pts, dim=-1)
    # Checked where free (CPU); on a GPU the read-back would stall every step (features are finite
    # whenever the loss is, and the engine checks the loss). A non-finite value makes its row's norm
    # non-finite, so the full check runs only then (a huge finite value can overflow the norm too).
    if hostsync.reads_are_free(pts) and not bool(torch.isfinite(norms).all()) \
            and not bool(torch.isfinite(pts).all()):
        raise ValueError("x has non-finite values (inf/NaN) at rows marked valid")
    if not normalize:
        return pts.contiguous(), valid, norms.square_()
    scale = norms.clamp(min=1e-12)  # as F.normalize: zero rows stay zero
    pts = pts.div_(scale.unsqueeze(-1)) if owned else pts / scale.unsqueeze(-1)
    # Row-major points (feature maps arrive as transposed views): every matmul and index_add below
    # would otherwise copy them. ‖x/‖x‖‖² is 1 (0 for zero rows) up to round-off: from the norms.
    return pts.contiguous(), valid, (norms / scale).square_()


def _check_seed(seed: int | Tensor, B: int) -> None:
    if isinstance(seed, Tensor) and seed.shape != (B,):
        raise ValueError(f"seed must be an int or a ({B},) tensor of per-image seeds, got shape {tuple(seed.shape)}")


ALGORITHMS = ("auto", "explicit", "gram")


def _use_gram(algorithm: str, x: Tensor, sync_every: int) -> bool:
    """The Gram path (`kmeans_gram`) when asked, or by default on CPU for problems with no more points
    than dimensions (N ≤ D), where every product on G = x xᵀ is smaller than the one on x. Accelerators
    keep the explicit path (its no-sync loop; their matmuls are not memory-bound the way a CPU's are)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm != "auto":
        return algorithm == "gram"
    return sync_every == 1 and hostsync.reads_are_free(x) and x.shape[1] <= x.shape[2]


@torch.no_grad()
@full_precision  # fp32 distances whatever autocast the caller runs under (issue 12)
def batched_kmeans_ks(x: Tensor, ks: Sequence[int], valid: Tensor | None = None, *, iters: int = 50,
                      tol: float = 1e-4, seed: int | Tensor = 0, normalize: bool = True, n_init: int = 1,
                      sync_every: int | None = None, algorithm: str = "auto") -> dict[int, KMeansResult]:
    """`batched_kmeans` for several K at once from one seeding: {K: result} for every K in `ks`.

    Greedy k-means++ picks max(ks) centres once; each K starts Lloyd from the first K of them. Greedy
    k-means++ is sequential, so those are themselves a greedy k-means++ seeding (with the trial count
    of the largest K), and the seeding is paid once instead of once per K (Odin A.4 / discover run
    K = 1, 2, 4, …, 128 on every image). Results differ from separate `batched_kmeans` calls only by
    that seeding (tests/discovery/test_kmeans.py compares both with scikit-learn).
    """
    if isinstance(ks, int) or not ks:
        raise ValueError(f"ks must be a non-empty sequence of ints, got {ks!r}")
    for K in ks:
        _validate(x, K, valid, iters, tol, n_init)
    if sync_every is None:
        sync_every = 1 if hostsync.reads_are_free(x) else 8
    if sync_every < 1:
        raise ValueError(f"sync_every must be >= 1, got {sync_every}")
    use_gram = _use_gram(algorithm, x, sync_every)
    B, N, D = x.shape
    _check_seed(seed, B)
    if N == 0 or B == 0:
        return {K: KMeansResult(torch.full((B, N), -1, dtype=torch.long, device=x.device),
                                x.new_zeros(B, K, D, dtype=torch.float32),
                                x.new_zeros(B, dtype=torch.float32), 0) for K in ks}
    pts, valid, x2 = _prepare(x, valid, normalize)
    if n_init > 1:
        pts, valid, x2 = (t.repeat_interleave(n_init, 0) for t in (pts, valid, x2))
    gram = gram_matrix(pts) if use_gram else None
    seeds = kmeanspp_indices(pts, x2, valid, max(ks), Uniform(seed, pts.shape[0], n_init, x.device), gram)
    out = {}
    for K in dict.fromkeys(ks):  # each distinct K once, in the given order
        start = seeds[:, :K].contiguous()
        if gram is not None:
            weights, labels, n_iter = gram_lloyd(gram, x2, valid, start, iters, tol)
            centroids, final = torch.bmm(weights.transpose(1, 2), pts), torch.ones_like(valid[:, 0])
        elif sync_every == 1:
            centroids, labels, final, n_iter = _lloyd_compact(pts, x2, valid, gather_rows(pts, start), iters, tol)
        else:
            (centroids, n_iter), labels, final = _lloyd(pts, x2, valid, gather_rows(pts, start), iters, tol,
                                                        sync_every), None, None
        labels, inertia = _finish(pts, valid, centroids, labels, final)
        if n_init > 1:
            best = inertia.view(B, n_init).argmin(1) + torch.arange(B, device=x.device) * n_init
            labels, centroids, inertia = labels[best], centroids[best], inertia[best]
        out[K] = KMeansResult(labels=labels, centroids=centroids, inertia=inertia, n_iter=n_iter)
    return out


def batched_kmeans(x: Tensor, K: int, valid: Tensor | None = None, *, iters: int = 50,
                   tol: float = 1e-4, seed: int | Tensor = 0, normalize: bool = True,
                   n_init: int = 1, sync_every: int | None = None, algorithm: str = "auto") -> KMeansResult:
    """K-means on B independent point sets at once.

    x: (B, N, D) any float dtype (computed in float32); valid: (B, N) bool or None (all valid).
    Greedy k-means++ init with a seeded generator on x's device (on a subsample of 16·K points per
    image when there are more, `discovery.seeding`), then Lloyd until each image's largest centroid
    shift is ≤ tol or `iters` iterations. Empty clusters are re-seeded on far points.
    With n_init > 1 the n_init initialisations run as one batch of B·n_init problems and the lowest
    inertia per image is kept. Same inputs and seed → identical result. `seed` may be a (B,) int64
    tensor of per-image seeds: each image's result is then independent of the rest of the batch.
    `sync_every`: how often the loop reads "converged?" back to the host (default: every iteration on
    CPU, where it is free and lets converged images drop out of the work; every 8 on GPU, where each
    read is a device sync). Results are the same.
    `algorithm`: "explicit" computes with the coordinates, "gram" in the span of the points from their
    Gram matrix (`kmeans_gram`: cheaper when N ≤ D); "auto" (default) takes "gram" on CPU when N ≤ D.
    Both run the same algorithm from the same seeds and differ only by float rounding.
    """
    if isinstance(K, bool) or not isinstance(K, int):
        raise ValueError(f"K must be a positive int, got {K!r}")
    return batched_kmeans_ks(x, [K], valid, iters=iters, tol=tol, seed=seed, normalize=normalize,
                             n_init=n_init, sync_every=sync_every, algorithm=algorithm)[K]
