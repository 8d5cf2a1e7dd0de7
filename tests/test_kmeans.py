"""Batched masked k-means: quality vs scikit-learn, padding invariance, degenerate cases, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans

from discorep.discovery.kmeans import KMeansResult, _cluster_sums, _lloyd, batched_kmeans, pooled_kmeans


def blobs(gen: torch.Generator, B: int, N: int, D: int, centers: int, spread: float = 0.15) -> torch.Tensor:
    """Gaussian blobs: each image has its own `centers` random centres."""
    c = torch.randn(B, centers, D, generator=gen)
    which = torch.randint(0, centers, (B, N), generator=gen)
    return c.gather(1, which[..., None].expand(-1, -1, D)) + spread * torch.randn(B, N, D, generator=gen)


def sk_inertia(points: np.ndarray, K: int, n_init: int) -> float:
    """scikit-learn reference on already-normalised points."""
    km = KMeans(K, n_init=n_init, init="k-means++", random_state=0, max_iter=300)
    return float(km.fit(points).inertia_)


def recomputed_inertia(x: torch.Tensor, res: KMeansResult, valid: torch.Tensor) -> torch.Tensor:
    """Oracle: Σ ‖x_i − c_label(i)‖² over valid rows, computed independently (per image)."""
    out = []
    for b in range(x.shape[0]):
        v = valid[b]
        c = res.centroids[b][res.labels[b][v]]
        out.append(((x[b][v] - c) ** 2).sum())
    return torch.stack(out)


def padded(gen: torch.Generator, x: torch.Tensor, min_valid: int) -> torch.Tensor:
    """Random valid mask with a different number of valid rows per image (scattered, not a suffix)."""
    B, N, _ = x.shape
    counts = torch.randint(min_valid, N + 1, (B,), generator=gen)
    ranks = torch.rand(B, N, generator=gen).argsort(1).argsort(1)
    return ranks < counts[:, None]


@pytest.mark.parametrize("kind", ["random", "blobs"])
def test_batched_matches_sklearn_with_padding(kind: str) -> None:
    gen = torch.Generator().manual_seed(1)
    B, N, D, K = 8, 150, 16, 8
    x = torch.randn(B, N, D, generator=gen) if kind == "random" else blobs(gen, B, N, D, centers=K)
    valid = padded(gen, x, min_valid=60)
    garbage = x.clone()
    garbage[~valid] = torch.tensor([1e30, -float("inf"), float("nan")]).repeat(D)[:D]
    res = batched_kmeans(garbage, K, valid, n_init=4, seed=3, iters=100)
    xn = F.normalize(x, dim=-1)
    ref = torch.tensor([sk_inertia(xn[b][valid[b]].numpy(), K, n_init=4) for b in range(B)])
    # Two sklearn runs with different seeds already differ by ~1-2% on one image (different local
    # minima), so: the batch total within 1%, and no single image more than 4% worse than sklearn.
    assert res.inertia.sum().item() == pytest.approx(ref.sum().item(), rel=0.01)
    assert (res.inertia <= ref * 1.04).all(), (res.inertia, ref)
    # Padding content is irrelevant: zero padding gives the bit-identical result.
    clean = batched_kmeans(torch.where(valid[..., None], x, 0.0), K, valid, n_init=4, seed=3, iters=100)
    assert torch.equal(clean.labels, res.labels) and torch.equal(clean.inertia, res.inertia)
    assert torch.equal(res.labels < 0, ~valid)
    assert torch.isfinite(res.centroids).all()
    torch.testing.assert_close(res.inertia, recomputed_inertia(xn, res, valid), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["random", "blobs"])
def test_pooled_matches_sklearn(kind: str) -> None:
    gen = torch.Generator().manual_seed(2)
    N, D, K = 600, 32, 16
    x = torch.randn(N, D, generator=gen) if kind == "random" else blobs(gen, 1, N, D, centers=12)[0]
    res = pooled_kmeans(x, K, n_init=4, seed=0, iters=100)
    assert res.labels.shape == (N,) and res.centroids.shape == (K, D) and res.inertia.shape == ()
    ref = sk_inertia(F.normalize(x, dim=-1).numpy(), K, n_init=4)
    assert res.inertia.item() == pytest.approx(ref, rel=0.01)


def test_pooled_valid_mask_excludes_rows() -> None:
    gen = torch.Generator().manual_seed(3)
    x = blobs(gen, 1, 200, 8, centers=4)[0]
    valid = torch.rand(200, generator=gen) < 0.7
    res = pooled_kmeans(x, 4, valid, seed=1)
    assert torch.equal(res.labels < 0, ~valid)
    ref = sk_inertia(F.normalize(x[valid], dim=-1).numpy(), 4, n_init=1)
    assert res.inertia.item() == pytest.approx(ref, rel=0.01)


def test_labels_are_nearest_centroid_and_unnormalized_mode() -> None:
    gen = torch.Generator().manual_seed(4)
    x = blobs(gen, 3, 80, 5, centers=3, spread=0.5) * 10
    res = batched_kmeans(x, 3, normalize=False, seed=0)
    d = torch.cdist(x, res.centroids)
    assert torch.equal(res.labels, d.argmin(-1))
    # Centroids are the means of their clusters (Lloyd fixed point after convergence).
    onehot = F.one_hot(res.labels, 3).float()
    means = onehot.transpose(1, 2) @ x / onehot.sum(1)[..., None]
    torch.testing.assert_close(res.centroids, means, rtol=1e-4, atol=1e-4)
    ones = torch.ones(3, 80, dtype=torch.bool)
    torch.testing.assert_close(res.inertia, recomputed_inertia(x, res, ones), rtol=1e-4, atol=1e-3)


def test_deterministic_and_seed_matters() -> None:
    x = torch.randn(4, 100, 8, generator=torch.Generator().manual_seed(5))
    a = batched_kmeans(x, 10, seed=7, n_init=2)
    b = batched_kmeans(x, 10, seed=7, n_init=2)
    c = batched_kmeans(x, 10, seed=8, n_init=2)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)
    assert torch.equal(a.inertia, b.inertia) and a.n_iter == b.n_iter
    assert not torch.equal(a.centroids, c.centroids)


def test_cluster_sums_both_paths_match_loop() -> None:
    # The CUDA path (one-hot matmul) and the CPU path (index_add) must agree with a naive loop.
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(3, 40, 5, generator=gen)
    labels = torch.randint(0, 6, (3, 40), generator=gen)
    validf = (torch.rand(3, 40, generator=gen) < 0.7).float()
    x = x * validf[..., None]  # precondition: invalid rows are zero
    ref_s, ref_c = torch.zeros(3, 6, 5), torch.zeros(3, 6)
    for b in range(3):
        for n in range(40):
            ref_s[b, labels[b, n]] += validf[b, n] * x[b, n]
            ref_c[b, labels[b, n]] += validf[b, n]
    for use_matmul in (True, False):
        sums, counts = _cluster_sums(x, labels, validf, 6, use_matmul=use_matmul)
        torch.testing.assert_close(sums, ref_s)
        torch.testing.assert_close(counts, ref_c)


def test_k_at_least_number_of_valid_points() -> None:
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 12, 4, generator=gen)
    valid = torch.zeros(2, 12, dtype=torch.bool)
    valid[0, [1, 4, 7, 9, 11]] = True  # 5 valid points, K = 8
    valid[1, :8] = True  # exactly K valid points
    res = batched_kmeans(x, 8, valid)
    xn = F.normalize(x, dim=-1)
    for b in range(2):
        lab = res.labels[b][valid[b]]
        assert lab.unique().numel() == lab.numel()  # every valid point has its own cluster
    assert torch.allclose(res.inertia, torch.zeros(2), atol=1e-6)
    assert torch.isfinite(res.centroids).all()
    # Every centroid is a copy of one of the image's valid points.
    for b in range(2):
        d = torch.cdist(res.centroids[b], xn[b][valid[b]]).min(1).values
        assert (d < 1e-5).all()


def test_duplicate_points_no_nan() -> None:
    x = torch.full((2, 30, 6), 0.3)
    res = batched_kmeans(x, 5, n_init=3)
    assert torch.isfinite(res.centroids).all() and torch.isfinite(res.inertia).all()
    assert torch.allclose(res.inertia, torch.zeros(2), atol=1e-6)
    assert ((res.labels >= 0) & (res.labels < 5)).all()
    torch.testing.assert_close(res.centroids, torch.full((2, 5, 6), 6 ** -0.5))


def test_all_padding_image() -> None:
    x = torch.randn(3, 20, 4, generator=torch.Generator().manual_seed(7))
    valid = torch.ones(3, 20, dtype=torch.bool)
    valid[1] = False
    x[1] = float("nan")
    res = batched_kmeans(x, 4, valid)
    assert (res.labels[1] == -1).all() and (res.labels[[0, 2]] >= 0).all()
    assert torch.equal(res.centroids[1], torch.zeros(4, 4))
    assert res.inertia[1].item() == 0.0
    assert torch.isfinite(res.centroids).all() and torch.isfinite(res.inertia).all()


def test_empty_cluster_is_reseeded() -> None:
    # Three tight 2-D blobs; init puts two centroids in blob A and one far from every point, so after
    # the first assignment the far centroid owns nothing. Without re-seeding blobs B and C would merge.
    gen = torch.Generator().manual_seed(8)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = (centres.repeat_interleave(20, 0) + 0.1 * torch.randn(60, 2, generator=gen))[None]
    init = torch.tensor([[[0.0, 0.05], [0.0, -0.05], [1000.0, 1000.0]]])
    valid = torch.ones(1, 60, dtype=torch.bool)
    cent, _ = _lloyd(x, (x ** 2).sum(-1), valid, init, iters=50, tol=1e-6)
    assert torch.isfinite(cent).all()
    labels = torch.cdist(x, cent).argmin(-1)[0]
    assert labels.bincount(minlength=3).min() == 20  # one cluster per blob
    best = sum(((x[0, i * 20:(i + 1) * 20] - x[0, i * 20:(i + 1) * 20].mean(0)) ** 2).sum() for i in range(3))
    got = ((x[0] - cent[0][labels]) ** 2).sum()
    assert got.item() == pytest.approx(best.item(), rel=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(9)
    x = blobs(gen, 2, 100, 8, centers=4, spread=0.05)
    ref = batched_kmeans(x, 4, seed=0)
    res = batched_kmeans(x.to(dtype).requires_grad_(False), 4, seed=0)
    assert res.centroids.dtype == torch.float32
    # Well separated blobs: same partition (cluster ids may be permuted only if init differs).
    for b in range(2):
        pairs = torch.stack([ref.labels[b], res.labels[b]], 1).unique(dim=0)
        assert pairs.shape[0] == ref.labels[b].unique().numel()
    torch.testing.assert_close(res.inertia, ref.inertia, rtol=0.05, atol=1e-2)


def test_requires_grad_input_and_iteration_control() -> None:
    gen = torch.Generator().manual_seed(10)
    x = blobs(gen, 2, 100, 8, centers=4, spread=0.05).requires_grad_(True)
    res = batched_kmeans(x, 4, iters=1)
    assert res.n_iter == 1 and not res.centroids.requires_grad
    assert batched_kmeans(x, 4, iters=200, tol=1e-6).n_iter < 200  # converges well before the cap


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x=torch.zeros(4, 3)), "x must be"),
        (dict(x=torch.zeros(1, 4, 3, dtype=torch.long)), "floating"),
        (dict(K=0), "K must"),
        (dict(valid=torch.ones(1, 5, dtype=torch.bool)), "valid must have shape"),
        (dict(valid=torch.ones(1, 4)), "bool"),
        (dict(iters=0), "iters"),
        (dict(n_init=0), "n_init"),
        (dict(tol=-1.0), "tol"),
        (dict(x=torch.tensor([[[float("nan"), 0.0, 0.0]] * 4])), "non-finite"),
    ],
)
def test_bad_input_raises(kwargs: dict, match: str) -> None:
    args = dict(x=torch.randn(1, 4, 3), K=2, valid=None)
    args.update(kwargs)
    x, K, valid = args.pop("x"), args.pop("K"), args.pop("valid")
    with pytest.raises(ValueError, match=match):
        batched_kmeans(x, K, valid, **args)


def test_pooled_bad_shape() -> None:
    with pytest.raises(ValueError, match="x must be an"):
        pooled_kmeans(torch.zeros(2, 3, 4), 2)
    with pytest.raises(ValueError, match="valid must have shape"):
        pooled_kmeans(torch.zeros(5, 4), 2, torch.ones(4, dtype=torch.bool))


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), N=st.integers(1, 40), K=st.integers(1, 10), seed=st.integers(0, 1000),
       p=st.floats(0.0, 1.0))
def test_invariants_property(B: int, N: int, K: int, seed: int, p: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, 3, generator=gen)
    valid = torch.rand(B, N, generator=gen) < p
    res = batched_kmeans(x, K, valid, seed=seed, iters=20)
    assert torch.equal(res.labels < 0, ~valid)
    assert (res.labels < K).all()
    assert torch.isfinite(res.centroids).all() and (res.inertia >= 0).all()
    xn = F.normalize(x, dim=-1)
    torch.testing.assert_close(res.inertia, recomputed_inertia(xn, res, valid), rtol=1e-4, atol=1e-5)
    # Assigned centroid is the nearest one, up to float32 round-off of the squared distances of
    # unit vectors (‖a‖² + ‖b‖² − 2ab is exact to ~1e-7).
    d = torch.cdist(xn.double(), res.centroids.double()) ** 2
    own = d.gather(2, res.labels.clamp(min=0)[..., None]).squeeze(-1)
    assert (own[valid] <= d.min(-1).values[valid] + 1e-6).all()


@pytest.mark.parametrize("sync_every", [3, 8])
def test_sparse_sync_mode_gives_identical_results(sync_every):
    """The GPU mode (no host sync per iteration, empty-cluster fix-up always on) changes nothing but
    n_iter's rounding: same labels, centroids and inertia, including batches with empty clusters."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 40, 5, generator=gen)
    x[2, 20:] = x[2, 0]  # many duplicates: empty clusters get re-seeded
    valid = torch.rand(6, 40, generator=gen) > 0.2
    for K in (3, 12):
        a = batched_kmeans(x, K, valid, iters=40, seed=5)
        b = batched_kmeans(x, K, valid, iters=40, seed=5, sync_every=sync_every)
        assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)
        assert torch.equal(a.inertia, b.inertia)
        assert b.n_iter >= a.n_iter and (b.n_iter % sync_every == 0 or b.n_iter == 40)
    with pytest.raises(ValueError, match="sync_every"):
        batched_kmeans(x, 3, sync_every=0)
