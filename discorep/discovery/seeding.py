"""k-means++ seeding for `kmeans.batched_kmeans`: greedy D² sampling, vectorised over many problems.

Greedy k-means++ (Arthur & Vassilvitskii 2007; the variant scikit-learn uses) picks K centres one
after the other: L = 2 + ⌊ln K⌋ candidates are drawn ∝ D² (squared distance to the closest centre so
far) and the one that lowers the potential most is kept. The K steps are sequential by nature; each
step is one batched matmul over all problems (or, given the points' Gram matrix, a gather of its
rows: `kmeans_gram`).

On a CPU each step's matmul reads all N·D coordinates, so seeding costs K passes over the data: for
R2O's pooled problem (N = 6400, D = 1024, K = 128) that was 80 % of the whole k-means (profiled,
docs/performance.md). Seeding therefore runs on a uniform random subsample of at most
`SEED_POINTS_PER_CLUSTER`·K valid points per problem (scikit-learn's MiniBatchKMeans seeds on a
subsample of 3·K points at least in the same way); Lloyd then runs on every point. Problems with
fewer points are seeded on all of them, exactly as before this subsampling existed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from discorep import hostsync
from discorep.discovery.random import hash32, uniform

# Seeding sample size per cluster; seeding cost is linear in it. R2O's benchmark case, 3 seeds, inertia
# after Lloyd: 16 → 3234–3273, all points → 3264–3325 (scikit-learn 3262); 8 → one seed 3386 (+3.8 %).
SEED_POINTS_PER_CLUSTER = 16


class Uniform:
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


def gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """x (R, N, D), idx (R, L) → (R, L, D): row idx[r, l] of problem r.

    One index_select over the flattened rows: torch.gather with the index expanded over D walks an
    (R, L, D) int64 index and was 10× slower on CPU (profiled).
    """
    R, N, D = x.shape
    flat = (idx + torch.arange(R, device=x.device).unsqueeze(1) * N).flatten()
    return x.reshape(R * N, D).index_select(0, flat).view(R, idx.shape[1], D)


def _fallback_weights(validf: Tensor) -> Tensor:
    """Weights to sample from when every valid point already sits on a centre (duplicates, K ≥ #valid):
    uniform over valid points; an image with no valid point samples anything (its rows are zero)."""
    return torch.where(validf.sum(-1, keepdim=True) > 0, validf, torch.ones_like(validf))


def _sample(weights: Tensor, fallback: Tensor, u: Tensor) -> Tensor:
    """Draw u.shape[1] indices per row ∝ weights (R, N) by inverse-CDF sampling (with replacement),
    from uniform numbers u (R, num) in [0, 1).

    Rows whose weights are all zero sample ∝ `fallback` instead. A draw landing on a zero-weight
    index (float round-off at the top of the CDF) is moved to the row's argmax.
    """
    cdf = weights.cumsum(-1)
    dead = cdf[:, -1:] <= 0
    if not hostsync.reads_are_free(dead) or bool(dead.any()):  # on CPU: skip when no row is dead
        weights = torch.where(dead, fallback, weights)
        cdf = weights.cumsum(-1)
    u = u * cdf[:, -1:]
    idx = torch.searchsorted(cdf, u, right=True).clamp_(max=weights.shape[1] - 1)
    bad = weights.gather(1, idx) <= 0
    if hostsync.reads_are_free(bad) and not bool(bad.any()):
        return idx
    return torch.where(bad, weights.argmax(-1, keepdim=True).expand_as(idx), idx)


def subsample(valid: Tensor, size: int, gen: Uniform) -> Tensor:
    """(R, size) indices of a uniform random subset of each row's points, valid points first."""
    keys = gen(valid.shape[0], valid.shape[1]) - valid.to(torch.float32)  # valid in [-1, 0), others [0, 1)
    return keys.topk(size, dim=1, largest=False, sorted=False).indices.sort(1).values


def kmeanspp(x: Tensor, x2: Tensor, valid: Tensor, K: int, gen: Uniform) -> Tensor:
    """Greedy k-means++ centres (R, K, D), each a copy of a valid point of x (module docstring).

    x: (R, N, D) with invalid rows zero; x2: (R, N) their squared norms; valid: (R, N) bool.
    """
    return gather_rows(x, kmeanspp_indices(x, x2, valid, K, gen))


def kmeanspp_indices(x: Tensor, x2: Tensor, valid: Tensor, K: int, gen: Uniform,
                     gram: Tensor | None = None) -> Tensor:
    """`kmeanspp`'s centres as indices (R, K) into x's points. With `gram` (R, N, N) = x xᵀ given, the
    distances are read from it instead of recomputed from x (`kmeans_gram`), with the same draws."""
    size = SEED_POINTS_PER_CLUSTER * K
    if x.shape[1] <= size:
        return _greedy_indices(x, x2, valid.to(x.dtype), K, gen, gram)
    idx = subsample(valid, size, gen)
    sub_gram = None if gram is None else gather_rows(gram, idx).gather(2, idx.unsqueeze(1).expand(-1, size, -1))
    sub = gather_rows(x, idx) if gram is None else None
    chosen = _greedy_indices(sub, x2.gather(1, idx), valid.gather(1, idx).to(x.dtype), K, gen, sub_gram)
    return idx.gather(1, chosen)


def _greedy_indices(x: Tensor | None, x2: Tensor, validf: Tensor, K: int, gen: Uniform,
                    gram: Tensor | None = None) -> Tensor:
    """Indices (R, K) into the points of the greedy k-means++ centres (x or, when given, their Gram
    matrix gram = x xᵀ supplies the dot products)."""
    trials = 2 + int(math.log(K))
    fallback = _fallback_weights(validf)
    u = gen(x2.shape[0], 1 + (K - 1) * trials)  # every draw of the seeding at once (one op, not K)
    first = _sample(torch.zeros_like(validf), fallback, u[:, :1])  # (R, 1): uniform over valid points
    chosen = [first]
    # D² to the closest centre so far; kept at 0 on invalid rows, so they are never drawn and add nothing.
    closest = _sqdist_to(x, x2, first, validf, gram).squeeze(1)
    for k in range(1, K):
        cand = _sample(closest, fallback, u[:, 1 + (k - 1) * trials:1 + k * trials])  # (R, L)
        pot = torch.minimum(_sqdist_to(x, x2, cand, validf, gram), closest.unsqueeze(1))  # (R, L, N)
        best = pot.sum(-1).argmin(-1, keepdim=True)  # (R, 1): the candidate leaving the least potential
        closest = pot.gather(1, best.unsqueeze(-1).expand(-1, 1, x2.shape[1])).squeeze(1)
        chosen.append(cand.gather(1, best))
    return torch.cat(chosen, 1)


# Above this many points per problem, candidates × points is the faster product on CPU (MKL); below,
# points × candidates (measured: 2048 × 1024-d points, 6 candidates: 0.8 vs 1.6 ms; 64 problems of
# 196 × 256-d points, 4 candidates: 2.0 vs 1.1 ms).
_WIDE = 1024


def _sqdist_to(x: Tensor | None, x2: Tensor, idx: Tensor, validf: Tensor, gram: Tensor | None = None) -> Tensor:
    """Squared distances (R, L, N) from the points `idx` (R, L) to every point, 0 at invalid points."""
    if gram is not None:
        dot = gather_rows(gram, idx)  # rows of x xᵀ: no pass over the coordinates
    elif x.shape[1] >= _WIDE:
        dot = torch.bmm(gather_rows(x, idx), x.transpose(1, 2))
    else:
        dot = torch.bmm(x, gather_rows(x, idx).transpose(1, 2)).transpose(1, 2)
    d = (x2.gather(1, idx).unsqueeze(-1) + x2.unsqueeze(1)).sub_(dot, alpha=2.0)
    return d.clamp_(min=0.0).mul_(validf.unsqueeze(1))


def far_points(dmin: Tensor, valid: Tensor, empty: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """Where empty clusters move (Lloyd's fix-up): the r-th empty cluster of a problem (in cluster
    order) takes the problem's r-th farthest valid point by `dmin` (R, N), its squared distance to its
    centroid. Returns (move (R, K) bool, point index (R, K)); a cluster whose point would lie within
    `eps` (R, 1) of its centroid does not move (it would not help, and keeping it keeps every centroid
    finite)."""
    L = min(empty.shape[1], dmin.shape[1])
    far_d, far_idx = dmin.masked_fill(~valid, -1.0).topk(L, dim=1)  # (R, L), descending
    order = empty.long().cumsum(1)  # (R, K): 1-based rank among the empty clusters
    rank = (order - 1).clamp_(min=0, max=L - 1)
    move = empty & (order <= L) & (far_d.gather(1, rank) > eps)
    return move, far_idx.gather(1, rank)
