"""Batched masked k-means: quality vs scikit-learn, padding invariance, degenerate cases, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans

from discorep.discovery import seeding
from discorep.discovery.kmeans import KMeansResult, _cluster_sums, _lloyd, batched_kmeans, batched_kmeans_ks
from discorep.discovery.random import image_seeds
from tests.float_criteria import NEAR_TIE, assert_equal_except_near_ties, assert_same_clustering, nearest_gap
from tests.oracles import pooled_kmeans


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
    # cdist computes distances another way than k-means: the same nearest centroid except at near-ties
    # (NEAR_TIE is for unit vectors; unnormalised, the tie's width scales with the squared norms).
    eps = NEAR_TIE * float(x.square().sum(-1).max())
    assert_equal_except_near_ties(torch.cdist(x, res.centroids).argmin(-1), res.labels,
                                  nearest_gap(x, res.centroids), eps)
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


@pytest.mark.parametrize("algorithm", ["explicit", "gram"])  # gram: kmeans_gram, forced at any N
@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), N=st.integers(1, 40), K=st.integers(1, 10), seed=st.integers(0, 1000),
       p=st.floats(0.0, 1.0))
def test_invariants_property(algorithm: str, B: int, N: int, K: int, seed: int, p: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, 3, generator=gen)
    valid = torch.rand(B, N, generator=gen) < p
    res = batched_kmeans(x, K, valid, seed=seed, iters=20, algorithm=algorithm)
    assert torch.equal(res.labels < 0, ~valid)
    assert (res.labels < K).all()
    assert torch.isfinite(res.centroids).all() and (res.inertia >= 0).all()
    xn = F.normalize(x, dim=-1)
    torch.testing.assert_close(res.inertia, recomputed_inertia(xn, res, valid), rtol=1e-4, atol=1e-5)
    # Assigned centroid is the nearest one, up to float32 round-off of the squared distances of
    # unit vectors (‖a‖² + ‖b‖² − 2ab is exact to ~1e-7; read from G's sums, ~1e-6).
    d = torch.cdist(xn.double(), res.centroids.double()) ** 2
    own = d.gather(2, res.labels.clamp(min=0)[..., None]).squeeze(-1)
    assert (own[valid] <= d.min(-1).values[valid] + (1e-6 if algorithm == "explicit" else 1e-5)).all()


@pytest.mark.parametrize("sync_every", [3, 8])
def test_sparse_sync_mode_gives_identical_results(sync_every):
    """The GPU mode (no host sync per iteration, empty-cluster fix-up always on) changes nothing but
    n_iter's rounding: same labels, centroids and inertia, including batches with empty clusters."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 40, 5, generator=gen)
    x[2, 20:] = x[2, 0]  # many duplicates: empty clusters get re-seeded
    valid = torch.rand(6, 40, generator=gen) > 0.2
    xn = F.normalize(torch.where(valid[..., None], x, 0.0), dim=-1)
    for K in (3, 12):
        a = batched_kmeans(x, K, valid, iters=40, seed=5)
        b = batched_kmeans(x, K, valid, iters=40, seed=5, sync_every=sync_every)
        # Compaction changes the batch the matmuls see: equal up to near-ties and float tolerance.
        assert_same_clustering(b, a, xn, valid, what=f"K={K}")
        assert b.n_iter >= a.n_iter and (b.n_iter % sync_every == 0 or b.n_iter == 40)
    with pytest.raises(ValueError, match="sync_every"):
        batched_kmeans(x, 3, sync_every=0)


def test_all_k_from_one_seeding_matches_sklearn_and_independent_runs():
    """batched_kmeans_ks seeds once for max(ks) and starts each K from a prefix of those centres: per K,
    the batch inertia stays within 1 % of scikit-learn's and of a separate batched_kmeans run."""
    gen = torch.Generator().manual_seed(12)
    B, N, D = 6, 196, 16  # Odin's 14×14 grid
    x = blobs(gen, B, N, D, centers=10, spread=0.3)
    valid = padded(gen, x, min_valid=120)
    ks = [1, 2, 4, 8, 16, 32, 16]  # a repeated K is computed once
    multi = batched_kmeans_ks(x, ks, valid, seed=image_seeds(0, torch.arange(B)), n_init=2, iters=100)
    assert list(multi) == [1, 2, 4, 8, 16, 32]
    xn = F.normalize(x, dim=-1)
    for K, res in multi.items():
        single = batched_kmeans(x, K, valid, seed=image_seeds(0, torch.arange(B)), n_init=2, iters=100)
        ref = sum(sk_inertia(xn[b][valid[b]].numpy(), K, n_init=2) for b in range(B))
        # Not worse than scikit-learn or the separate run by more than 1 % (it may be better: another
        # local minimum).
        assert res.inertia.sum().item() <= ref * 1.01 + 1e-3, K
        assert res.inertia.sum().item() <= single.inertia.sum().item() * 1.01 + 1e-3, K
        assert torch.equal(res.labels < 0, ~valid) and res.centroids.shape == (B, K, D)
        torch.testing.assert_close(res.inertia, recomputed_inertia(xn, res, valid), rtol=1e-4, atol=1e-5)
    # K = 1: the centroid is the mean of the valid points, whatever the seeding.
    mean = (xn * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
    torch.testing.assert_close(multi[1].centroids[:, 0], mean, rtol=1e-5, atol=1e-6)
    # A single K is exactly batched_kmeans (same seeding, same trial count).
    one = batched_kmeans_ks(x, [8], valid, seed=3)[8]
    assert torch.equal(one.labels, batched_kmeans(x, 8, valid, seed=3).labels)
    with pytest.raises(ValueError, match="ks must"):
        batched_kmeans_ks(x, [], valid)


def test_seeding_prefixes_are_the_seeding_of_a_smaller_k_with_the_same_draws():
    """Greedy k-means++ is sequential: given the same trial count and random draws, the first k centres
    of a K-centre seeding are the k-centre seeding (what batched_kmeans_ks relies on)."""
    gen = torch.Generator().manual_seed(13)
    x = F.normalize(torch.randn(3, 50, 8, generator=gen), dim=-1)
    x2, validf = (x ** 2).sum(-1), torch.ones(3, 50)
    u = torch.rand(3, 1 + 11 * 4, generator=gen)  # 2 + ⌊ln K⌋ = 4 trials for K = 8 and K = 12
    big = seeding._greedy_indices(x, x2, validf, 12, _FixedDraws(u))
    small = seeding._greedy_indices(x, x2, validf, 8, _FixedDraws(u))
    assert torch.equal(big[:, :8], small)
    assert big.unique(dim=1).shape[1] == 12  # distinct points (no duplicates in this data)


class _FixedDraws:
    """A Uniform stand-in that returns the first columns of a given draw matrix."""

    def __init__(self, u: torch.Tensor):
        self.u = u

    def __call__(self, rows: int, num: int) -> torch.Tensor:
        return self.u[:rows, :num]


def test_subsampled_seeding_keeps_quality_padding_and_batch_independence(monkeypatch):
    """With N > 16·K points seeding runs on a random subsample: centres are still valid points of their
    image, per-image seeds still make results batch-independent, and inertia stays within 1 % of
    scikit-learn's on the batch."""
    gen = torch.Generator().manual_seed(14)
    B, N, D, K = 6, 300, 12, 8  # 300 > 16·8: subsampled
    assert N > seeding.SEED_POINTS_PER_CLUSTER * K
    x = blobs(gen, B, N, D, centers=K, spread=0.4)
    valid = padded(gen, x, min_valid=150)
    seeds = image_seeds(1, torch.arange(B))
    full = batched_kmeans(x, K, valid, seed=seeds, n_init=3, iters=100)
    split = [batched_kmeans(x[i:i + 3], K, valid[i:i + 3], seed=seeds[i:i + 3], n_init=3, iters=100)
             for i in (0, 3)]
    xn = F.normalize(x, dim=-1)
    # Batches of 3 and of 6 may reach other matmul kernels: equal up to near-ties and float tolerance.
    joined = KMeansResult(torch.cat([r.labels for r in split]), torch.cat([r.centroids for r in split]),
                          torch.cat([r.inertia for r in split]), 0)
    assert_same_clustering(joined, full, xn, valid)
    ref = sum(sk_inertia(xn[b][valid[b]].numpy(), K, n_init=3) for b in range(B))
    assert full.inertia.sum().item() == pytest.approx(ref, rel=0.01)
    # The seeding's centres are copies of valid points of their own image.
    pts = torch.where(valid[..., None], xn, 0.0)
    starts = seeding.kmeanspp(pts, (pts ** 2).sum(-1), valid, K, seeding.Uniform(seeds, B, 1, x.device))
    for b in range(B):
        d = torch.cdist(starts[b].double(), xn[b][valid[b]].double()).min(1).values
        assert (d < 1e-5).all()
    # The subsample holds only valid points when there are enough, each index once.
    idx = seeding.subsample(valid, 128, seeding.Uniform(seeds, B, 1, x.device))
    for b in range(B):
        assert idx[b].unique().numel() == 128 and valid[b, idx[b]].all()


def test_gather_rows_matches_torch_gather():
    gen = torch.Generator().manual_seed(15)
    x = torch.randn(4, 9, 5, generator=gen)
    idx = torch.randint(0, 9, (4, 7), generator=gen)
    expected = x.gather(1, idx[..., None].expand(-1, -1, 5))
    assert torch.equal(seeding.gather_rows(x, idx), expected)


def test_converged_images_leave_the_work_without_changing_results():
    """CPU mode shrinks the Lloyd working set as images converge; the accelerator mode masks them
    instead. Images converging at very different iterations give identical results in both."""
    gen = torch.Generator().manual_seed(16)
    easy = blobs(gen, 8, 120, 6, centers=4, spread=0.01)  # converge in ~2 iterations
    hard = torch.randn(8, 120, 6, generator=gen)  # take many more
    x = torch.cat([easy, hard])[torch.randperm(16, generator=gen)]
    seeds = image_seeds(2, torch.arange(16))
    a = batched_kmeans(x, 6, seed=seeds, iters=60)  # CPU default: sync_every=1, compaction
    b = batched_kmeans(x, 6, seed=seeds, iters=60, sync_every=4)
    assert_same_clustering(b, a, F.normalize(x, dim=-1))  # other batch compositions: up to near-ties
    assert a.n_iter > 4  # the hard images kept iterating after the easy ones had left
