"""Per-image random streams: an image's clusters and sampled masks do not depend on its batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from discorep.discovery.kmeans import batched_kmeans
from discorep.discovery.pooling import sample_mask_ids
from discorep.discovery.random import image_seeds, uniform
from tests.float_criteria import assert_equal_except_near_ties, nearest_gap


def test_uniform_streams_are_uniform_and_independent_of_other_rows():
    seeds = image_seeds(5, torch.arange(8))
    u = uniform(seeds, 50_000)
    assert u.min() >= 0 and u.max() < 1
    torch.testing.assert_close(u.mean(1), torch.full((8,), 0.5), atol=0.01, rtol=0)
    assert torch.equal(uniform(seeds[3:5], 100, 2), uniform(seeds, 100, 2)[3:5])
    assert not torch.equal(uniform(seeds, 100, 1), uniform(seeds, 100, 2))  # counters give new draws
    # Seeds differ across images, runs (base seed) and salts; no (seed, id) pair cancels out.
    assert len(set(seeds.tolist())) == 8
    assert not torch.equal(image_seeds(5, torch.arange(8)), image_seeds(6, torch.arange(8)))
    assert (image_seeds(3, torch.tensor([3])) != 0).all()


def test_kmeans_per_image_seeds_make_results_batch_independent():
    torch.manual_seed(0)
    x = torch.randn(6, 80, 8)
    seeds = image_seeds(11, torch.arange(6))
    full = batched_kmeans(x, 5, seed=seeds, iters=20)
    split = [batched_kmeans(x[i:i + 2], 5, seed=seeds[i:i + 2], iters=20) for i in (0, 2, 4)]
    # Other batch sizes may reach other matmul kernels: equal labels except at near-tie points.
    gap = nearest_gap(F.normalize(x, dim=-1), full.centroids)
    assert_equal_except_near_ties(torch.cat([r.labels for r in split]), full.labels, gap)
    torch.testing.assert_close(full.inertia, torch.cat([r.inertia for r in split]))
    # ... whereas a single generator for the batch would not be (shows the test can fail).
    shared = torch.cat([batched_kmeans(x[i:i + 2], 5, seed=1, iters=20).labels for i in (0, 2, 4)])
    one = batched_kmeans(x, 5, seed=1, iters=20)
    with pytest.raises(AssertionError, match="not near-ties"):
        assert_equal_except_near_ties(shared, one.labels, nearest_gap(F.normalize(x, dim=-1), one.centroids))


def test_mask_sampling_with_seeds_is_batch_independent_and_only_present():
    g = torch.Generator().manual_seed(0)
    present = torch.rand(10, 20, generator=g) < 0.4
    present[0] = False
    seeds = image_seeds(2, torch.arange(10))
    ids = sample_mask_ids(present, 6, seeds=seeds)
    assert torch.equal(ids[4:], sample_mask_ids(present[4:], 6, seeds=seeds[4:]))
    ok = present.gather(1, ids)
    assert ok[1:][present[1:].sum(1) > 0].all()
