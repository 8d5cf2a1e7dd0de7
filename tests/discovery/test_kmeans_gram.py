"""k-means in the span of the points (`kmeans_gram`): the same algorithm as the explicit path, checked
against it, against scikit-learn and on the degenerate cases the explicit path handles."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from discorep.discovery import kmeans as kmeans_mod
from discorep.discovery import seeding
from discorep.discovery.kmeans import batched_kmeans, batched_kmeans_ks
from discorep.discovery.kmeans_gram import gram_lloyd, gram_matrix
from discorep.discovery.random import image_seeds
from tests.discovery.test_kmeans import blobs, padded, recomputed_inertia, sk_inertia
from tests.float_criteria import assert_same_clustering


def test_same_seeds_same_partitions_as_the_explicit_path_and_sklearn_quality():
    """Fewer points than dimensions (a feature grid, superpixel regions), padded with garbage: the Gram
    path gives the explicit path's labels for every K (up to near-ties: its distances are read from G and
    round otherwise) and an inertia within 1 % of scikit-learn's."""
    gen = torch.Generator().manual_seed(21)
    B, N, D = 6, 90, 128
    x = blobs(gen, B, N, D, centers=9, spread=0.6)
    valid = padded(gen, x, min_valid=50)
    garbage = x.clone()
    garbage[~valid] = float("nan")
    seeds = image_seeds(4, torch.arange(B))
    ks = [1, 2, 4, 8, 16, 32]
    gram = batched_kmeans_ks(garbage, ks, valid, seed=seeds, iters=100, algorithm="gram")
    explicit = batched_kmeans_ks(garbage, ks, valid, seed=seeds, iters=100, algorithm="explicit")
    xn = F.normalize(x, dim=-1)
    for K in ks:
        g, e = gram[K], explicit[K]
        assert_same_clustering(g, e, xn, valid, rtol=1e-4, atol=1e-5, what=f"K={K}")
        torch.testing.assert_close(g.inertia, recomputed_inertia(xn, g, valid), rtol=1e-4, atol=1e-5)
        ref = sum(sk_inertia(xn[b][valid[b]].numpy(), K, n_init=1) for b in range(B))
        assert g.inertia.sum().item() <= ref * 1.01 + 1e-3, K


def test_auto_takes_the_gram_path_on_cpu_when_points_are_fewer_than_dimensions(monkeypatch):
    calls = []
    real = kmeans_mod.gram_lloyd
    monkeypatch.setattr(kmeans_mod, "gram_lloyd", lambda *a, **k: calls.append(1) or real(*a, **k))
    batched_kmeans(torch.randn(2, 30, 40), 4)  # N ≤ D
    assert calls == [1]
    batched_kmeans(torch.randn(2, 50, 40), 4)  # N > D: explicit
    batched_kmeans(torch.randn(2, 30, 40), 4, sync_every=4)  # the accelerator loop: explicit
    assert calls == [1]
    with pytest.raises(ValueError, match="algorithm must be one of"):
        batched_kmeans(torch.randn(2, 30, 40), 4, algorithm="elkan")


@pytest.mark.parametrize("N", [40, 400])  # all points, and the 16·K subsample
def test_seeding_from_the_gram_matrix_picks_the_same_points(N):
    """The same draws give the same centres. In float64: the two paths round their dot products
    differently, and in float32 a draw or a candidate's potential within that rounding of a tie could
    pick another point; in float64 such a tie needs ~1e-15 agreement, which these random points do not
    have (float32 runs of both paths are compared, up to near-ties, through k-means above)."""
    gen = torch.Generator().manual_seed(22)
    x = F.normalize(torch.randn(5, N, 24, generator=gen, dtype=torch.float64), dim=-1)
    valid = torch.rand(5, N, generator=gen) > 0.1
    x = torch.where(valid[..., None], x, 0.0)
    x2 = (x ** 2).sum(-1)
    seeds = image_seeds(5, torch.arange(5))
    plain = seeding.kmeanspp_indices(x, x2, valid, 12, seeding.Uniform(seeds, 5, 1, x.device))
    via_gram = seeding.kmeanspp_indices(x, x2, valid, 12, seeding.Uniform(seeds, 5, 1, x.device), gram_matrix(x))
    assert torch.equal(plain, via_gram)
    assert valid.gather(1, plain).all()


def test_empty_cluster_moves_to_a_far_point():
    """Blobs A, B, C; seeds at a point of A and twice at the same point of B. The duplicate seed owns
    nothing after the first E-step (ties go to the first cluster); C is nearer to A than to B, so
    without the fix-up A and C would stay merged while B is split. The fix-up moves the empty cluster
    to the farthest point (one of C's) and every blob gets its own cluster."""
    gen = torch.Generator().manual_seed(23)
    centres = torch.zeros(3, 64)
    centres[1, 0], centres[2, 1] = 10.0, 10.0
    x = (centres.repeat_interleave(20, 0) + 0.1 * torch.randn(60, 64, generator=gen))[None]
    x[0, 21] = x[0, 20]
    valid = torch.ones(1, 60, dtype=torch.bool)
    start = torch.tensor([[0, 20, 21]])
    W, labels, _ = gram_lloyd(gram_matrix(x), (x ** 2).sum(-1), valid, start, iters=50, tol=1e-6)
    assert sorted(labels[0].bincount(minlength=3).tolist()) == [20, 20, 20]  # one cluster per blob
    cent = W.transpose(1, 2) @ x
    best = sum(((x[0, i * 20:(i + 1) * 20] - x[0, i * 20:(i + 1) * 20].mean(0)) ** 2).sum() for i in range(3))
    got = ((x[0] - cent[0][labels[0]]) ** 2).sum()
    assert got.item() == pytest.approx(best.item(), rel=1e-4)


def test_degenerate_inputs_on_the_gram_path():
    # Duplicates: every point on every centroid, no NaN, zero inertia.
    dup = batched_kmeans(torch.full((2, 30, 40), 0.3), 5, n_init=3, algorithm="gram")
    assert torch.isfinite(dup.centroids).all() and torch.allclose(dup.inertia, torch.zeros(2), atol=1e-6)
    torch.testing.assert_close(dup.centroids, torch.full((2, 5, 40), 40 ** -0.5))
    # K ≥ valid points: one cluster per point; an all-padding image gives -1 labels and zero centroids.
    gen = torch.Generator().manual_seed(24)
    x = torch.randn(3, 12, 20, generator=gen)
    valid = torch.zeros(3, 12, dtype=torch.bool)
    valid[0, [1, 4, 7, 9, 11]] = True
    valid[2] = True
    res = batched_kmeans(x, 8, valid, algorithm="gram")
    lab = res.labels[0][valid[0]]
    assert lab.unique().numel() == lab.numel() and res.inertia[0].item() == pytest.approx(0.0, abs=1e-6)
    assert (res.labels[1] == -1).all() and torch.equal(res.centroids[1], torch.zeros(8, 20))
    assert torch.isfinite(res.centroids).all()
