"""CPU-independent ways to compare results that pass through float kernels (docs/testing.md, "Floats and
exactness").

Two runs that differ in the kernels they reach (another CPU's SIMD width, another batch size, 1 vs 2
processes, the Gram vs the explicit k-means path, another thread count) round differently, by ~1e-6
relative in float32. A discrete decision taken on such floats (a k-means label, an argmax) can then flip,
but only where the decision was a near-tie. These helpers measure the ties instead of hoping for none.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

# A point is a near-tie when its two nearest centroids' squared distances differ by less than this. The
# points k-means sees are unit vectors (squared distances in [0, 4]) whose float32 distances differ
# between kernels by ~1e-6 (kmeans.py reads them as ‖a‖² + ‖b‖² − 2ab; from the Gram matrix ~1e-5):
# 1e-4 is ten times the worst of those, and still far below the gaps of a clustering that is wrong.
NEAR_TIE = 1e-4


def nearest_gap(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(..., N) gap between the smallest and second-smallest squared distance from each point (..., N, D)
    to the centroids (..., K, D), in float64; +inf where there is one centroid (nothing to tie with)."""
    d = torch.cdist(points.double(), centroids.double()).square()
    if d.shape[-1] < 2:
        return torch.full(d.shape[:-1], float("inf"), dtype=torch.float64)
    two = d.topk(2, dim=-1, largest=False).values
    return two[..., 1] - two[..., 0]


def assert_equal_except_near_ties(got, want, gap, eps: float = NEAR_TIE, what: str = "labels") -> None:
    """`got` equals `want` at every position whose `gap` (a decision margin, e.g. `nearest_gap`) is at
    least `eps`; where the decision was a near-tie either answer is right. A bug that changes decisions
    (mixes images, reseeds, drops a step) changes them where the margin is large, so it still fails."""
    got, want, gap = (torch.as_tensor(np.asarray(t) if not isinstance(t, torch.Tensor) else t)
                      for t in (got, want, gap))
    differ = got != want
    clear = differ & (gap >= eps)
    assert not bool(clear.any()), (
        f"{what}: {int(clear.sum())} of {got.numel()} differ at decisions that are not near-ties "
        f"(margin >= {eps:g}; smallest such margin {float(gap[clear].min()):.3g}); "
        f"{int(differ.sum())} differ in all")


def match_labels(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """`other` with its label ids renamed by the one-to-one matching to `reference`'s ids that maximises
    the number of positions where they agree (Hungarian): clusterings are equal up to their ids' names
    (a tie in the seeding's order renames clusters without changing the partition). Ids of `other`
    that `reference` lacks keep fresh ids (never equal to a reference id)."""
    ua, ia = np.unique(reference, return_inverse=True)
    ub, ib = np.unique(other, return_inverse=True)
    counts = np.zeros((len(ua), len(ub)), np.int64)
    np.add.at(counts, (ia.ravel(), ib.ravel()), 1)
    rows, cols = linear_sum_assignment(-counts)
    rename = np.full(len(ub), -1, np.int64)
    rename[cols] = ua[rows]
    spare = iter(range(int(ua.max()) + 1, int(ua.max()) + 1 + len(ub)))
    rename = np.array([r if r >= 0 else next(spare) for r in rename])
    return rename[ib].reshape(other.shape)


def assert_same_clustering(got, want, points: torch.Tensor, valid: torch.Tensor | None = None, *,
                           rtol: float = 1e-5, atol: float = 1e-6, what: str = "k-means") -> None:
    """Two k-means results (`KMeansResult`, (B, N) labels) on the same points (B, N, D), given as k-means
    saw them (normalised unless it ran with normalize=False): labels equal except at near-ties of `want`'s
    centroids (invalid points: -1 in both); where a problem's labels all agree, its centroids (means of
    the same points) and inertia agree to float tolerance."""
    gap = nearest_gap(points, want.centroids)
    if valid is not None:
        gap = gap.masked_fill(~valid, float("inf"))  # padding is -1 in both, never excused
    assert_equal_except_near_ties(got.labels, want.labels, gap, what=f"{what} labels")
    same = (got.labels == want.labels).all(-1)
    torch.testing.assert_close(got.centroids[same], want.centroids[same], rtol=rtol, atol=atol)
    torch.testing.assert_close(got.inertia[same], want.inertia[same], rtol=rtol, atol=atol)
