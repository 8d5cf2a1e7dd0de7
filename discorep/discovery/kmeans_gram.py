"""Lloyd's k-means in the span of the points, for problems with fewer points than dimensions (N ≤ D).

Every centroid Lloyd ever makes is a weighted mean of points (the seeds are points, an update is the
mean of a cluster, an empty cluster moves to a point), so it can be held as weights W (N, K) over the
points, c = Wᵀ X, and everything k-means needs is read from the Gram matrix G = X Xᵀ (N, N):

    x_n · c_k = (G W)_nk,        ‖c_k‖² = Σ_n W_nk (G W)_nk.

An iteration then costs N² adds (G's rows summed per cluster) instead of K·N·D multiply-adds and the
M-step none over D; k-means++ seeding
reads its distances from rows of G instead of passing over the coordinates once per centre
(`seeding.kmeanspp_indices`). G costs N²·D once per problem and serves every K. This is the regime of
per-image k-means of a feature grid (14×14 = 196 points of 256-2048 dimensions) and of superpixel
regions (~240 per image, `eval.refine`); R2O's pooled problem (6400 points of 1024) stays explicit.

Same algorithm as `kmeans._lloyd_compact` (same seeds, same per-image stopping rule, converged images
leave the working set), differing only by float rounding: distances come from G rather than from the
coordinates, so a near-tie can break the other way. The centroid shift is evaluated by the expansion
‖c' − c‖² = ‖c'‖² + ‖c‖² − 2 c'·c, exactly 0 when no label changed (W' = W bit for bit), but with
~1e-7 round-off otherwise, so an image may run one iteration more than the explicit path would.
"""

from __future__ import annotations

import torch
from torch import Tensor

from discorep.discovery.seeding import far_points, gather_rows

__all__ = ["gram_lloyd", "gram_matrix"]


def gram_matrix(x: Tensor) -> Tensor:
    """G = x xᵀ (R, N, N) of points x (R, N, D), one batched matmul."""
    return torch.bmm(x, x.transpose(1, 2))


def _weights(labels: Tensor, validf: Tensor, K: int) -> tuple[Tensor, Tensor]:
    """M-step as weights: W (R, N, K) with W_nk = 1/|cluster k| for the valid points of cluster k, and
    the cluster sizes (R, K)."""
    onehot = validf.new_zeros(*labels.shape, K).scatter_(2, labels.unsqueeze(-1), validf.unsqueeze(-1))
    counts = onehot.sum(1)
    return onehot.div_(counts.clamp(min=1.0).unsqueeze(1)), counts


def _moments(W: Tensor, gram: Tensor) -> tuple[Tensor, Tensor]:
    """(x·c (R, N, K), ‖c‖² (R, K)) of the centroids Wᵀ X (G is symmetric: G W = (Wᵀ G)ᵀ)."""
    dots = torch.bmm(gram, W)
    return dots, (W * dots).sum(1)


def _cluster_moments(gram: Tensor, labels: Tensor, W: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """`_moments` of cluster means (W from `_weights`, no empty cluster) without the matmul: x·c_k is
    the mean of G's rows over cluster k, summed by one index_add of the N rows (N² adds per problem
    instead of K·N²). Invalid points' rows of G are zero, so they add nothing."""
    R, N, K = W.shape
    flat = (labels + torch.arange(R, device=labels.device).unsqueeze(1) * K).flatten()
    sums = gram.new_zeros(R * K, N).index_add_(0, flat, gram.reshape(R * N, N)).view(R, K, N)
    dots = sums.div_(counts.clamp(min=1.0).unsqueeze(-1)).transpose(1, 2).contiguous()
    return dots, (W * dots).sum(1)


def _nearest(dots: Tensor, sq: Tensor) -> Tensor:
    """E-step: argmin_k ‖c_k‖² − 2 x_n·c_k (the ‖x_n‖² term is the same for every k) → (R, N).
    (N, K) layout: argmin over the last, contiguous axis (over a strided one it was 5x slower on CPU)."""
    return (sq.unsqueeze(1) - 2.0 * dots).argmin(-1)


def _fix_empty(W: Tensor, new_W: Tensor, empty: Tensor, labels: Tensor, dots: Tensor, sq: Tensor,
               x2: Tensor, valid: Tensor) -> Tensor:
    """Empty clusters keep their centroid, then move to far points as in `kmeans._reseed_empty`."""
    new_W = torch.where(empty.unsqueeze(1), W, new_W)
    own = dots.gather(2, labels.unsqueeze(-1)).squeeze(-1)
    dmin = (x2 + sq.gather(1, labels) - 2.0 * own).clamp_(min=0.0)
    # Distances from G carry ~1e-7 relative round-off: "0" is judged at that scale, not the explicit 1e-10.
    eps = 1e-5 * (x2 * valid).amax(1, keepdim=True)
    move, idx = far_points(dmin, valid, empty, eps)
    onehot = torch.zeros_like(new_W).scatter_(1, idx.unsqueeze(1), 1.0)
    return torch.where(move.unsqueeze(1), onehot, new_W)


# Shrink the working set once this fraction of it is still running (as `kmeans._SHRINK_AT`).
_SHRINK_AT = 0.75


def gram_lloyd(gram: Tensor, x2: Tensor, valid: Tensor, start: Tensor, iters: int,
               tol: float) -> tuple[Tensor, Tensor, int]:
    """Lloyd from the centres at point indices `start` (R, K) until each image's largest centroid shift
    is ≤ tol or `iters` iterations; converged images leave the working set (CPU mode).

    gram (R, N, N) = x xᵀ with invalid rows zero, x2 (R, N) = diag(gram), valid (R, N) bool.
    Returns (W (R, N, K): centroids = Wᵀ x, labels (R, N) nearest centroid of each point, n_iter).
    """
    R, N, _ = gram.shape
    K = start.shape[1]
    validf = valid.to(gram.dtype)
    W = gram.new_zeros(R, N, K).scatter_(1, start.unsqueeze(1), 1.0)
    # The seeds are points: their dots are G's columns, their squared norms G's diagonal (no matmul).
    dots = gather_rows(gram, start).transpose(1, 2).contiguous()
    sq = dots.gather(1, start.unsqueeze(1)).squeeze(1)
    out_W, out_labels = W.clone(), torch.zeros(R, N, dtype=torch.long, device=gram.device)
    rows = torch.arange(R, device=gram.device)  # working-set row → original row
    active = torch.ones(R, dtype=torch.bool, device=gram.device)
    n_iter = 0
    for n_iter in range(1, iters + 1):
        labels = _nearest(dots, sq)
        new_W, counts = _weights(labels, validf, K)
        empty = counts == 0
        if bool(empty.any()):  # rare: pay for the fix-up (and the matmul) only then
            new_W = _fix_empty(W, new_W, empty, labels, dots, sq, x2, valid)
            new_dots, new_sq = _moments(new_W, gram)
        else:
            new_dots, new_sq = _cluster_moments(gram, labels, new_W, counts)
        cross = (new_W * dots).sum(1)  # c'·c
        shift = (new_sq + sq - 2.0 * cross).clamp_(min=0.0).sqrt_().amax(-1)
        W, dots, sq = new_W, new_dots, new_sq
        done = active & (shift <= tol) if n_iter < iters else active
        if bool(done.any()):
            out_W[rows[done]] = W[done]
            out_labels[rows[done]] = _nearest(dots[done], sq[done])
            active = active & ~done
            left = int(active.sum())
            if left == 0:
                break
            if left <= _SHRINK_AT * active.numel():
                keep = active.nonzero().squeeze(1)
                gram, x2, valid, validf, W, dots, sq, rows, active = (
                    t.index_select(0, keep) for t in (gram, x2, valid, validf, W, dots, sq, rows, active))
    return out_W, out_labels, n_iter
