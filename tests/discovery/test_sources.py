"""Mask sources (Odin per-image k-means, R2O region k-means) and the discovery network's updates."""

from __future__ import annotations

import torch

from discorep.discovery.align import align_masks_views
from discorep.discovery.sources import (cluster_masks, feature_kmeans_labels, paint, region_clusters,
                                       region_embeddings, region_kmeans_labels, whole_frame_masks)
from discorep.methods.discovery_net import DiscoveryNet, DiscoveryNetOptions


def _two_object_features(B=3, D=8, h=12, w=12, shared=False):
    """Feature maps whose left/right halves hold two distinct vectors (+ small noise); with
    `shared` every image uses the same two vectors (the same two "objects")."""
    g = torch.Generator().manual_seed(0)
    n = 1 if shared else B
    a, b = torch.randn(n, D, 1, 1, generator=g), torch.randn(n, D, 1, 1, generator=g)
    feats = torch.where(torch.arange(w).view(1, 1, 1, w) < w // 2, a, b).expand(B, D, h, w).clone()
    return feats + 0.01 * torch.randn(B, D, h, w, generator=g)


def test_feature_kmeans_separates_two_objects_per_image():
    labels = feature_kmeans_labels(_two_object_features(), 2, seed=0)
    for lab in labels:
        left, right = lab[:, :6], lab[:, 6:]
        assert left.unique().numel() == 1 and right.unique().numel() == 1 and left[0, 0] != right[0, 0]


def test_region_kmeans_paints_each_region_with_one_cluster_and_groups_similar_regions():
    B, P = 2, 24
    # Prior: 4x4 grid of 16 regions per image (ids 0..15) on a 24x24 label map.
    ii, jj = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    prior = ((ii // 6) * 4 + jj // 6).expand(B, P, P).clone()
    prior[1, :3, :3] = -1  # an unlabelled corner stays unlabelled
    feats = _two_object_features(B=B, D=8, h=12, w=12, shared=True)  # left half vs right half
    labels = region_kmeans_labels(feats, prior, 16, K=2, seed=0)
    assert (labels[1, :3, :3] == -1).all()
    for b in range(B):
        for r in range(16):
            vals = labels[b][prior[b] == r].unique()
            assert vals.numel() == 1  # hard labels: one cluster per region
    # Pooled across the batch: left regions of both images share a cluster, right ones the other.
    left = labels[:, :, :12][prior[:, :, :12] >= 0].unique()
    right = labels[:, :, 12:].unique()
    assert left.numel() == 1 and right.numel() == 1 and left.item() != right.item()


def test_region_embeddings_are_mask_means():
    feats = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    prior = torch.zeros(1, 8, 8, dtype=torch.long)
    prior[:, :, 4:] = 1
    regions = whole_frame_masks(prior, 2, (4, 4))
    emb, present = region_embeddings(feats, regions.soft), regions.present
    torch.testing.assert_close(emb[0, 0], feats[0, :, :, :2].mean((1, 2)))
    torch.testing.assert_close(emb[0, 1], feats[0, :, :, 2:].mean((1, 2)))
    assert present.all()


def test_discovery_network_continuous_ema_and_discrete_copies():
    online = torch.nn.Linear(3, 2)
    cont = DiscoveryNet(online, DiscoveryNetOptions(discovery_update="continuous", lambda_tau=0.25))
    before = cont.net.weight.clone()
    with torch.no_grad():
        online.weight.add_(1.0)
    cont.update(online, step_done=1, steps_per_epoch=10)
    torch.testing.assert_close(cont.net.weight, 0.75 * before + 0.25 * online.weight)  # Odin eq. 7

    disc = DiscoveryNet(online, DiscoveryNetOptions(discovery_update="discrete", discrete_every_epochs=2))
    with torch.no_grad():
        online.weight.add_(1.0)
    copies = [disc.update(online, step_done=s, steps_per_epoch=5) for s in range(1, 21)]
    assert [s for s, c in zip(range(1, 21), copies) if c] == [10, 20]  # every 2 epochs of 5 steps
    assert torch.equal(disc.net.weight, online.weight)


def test_cluster_masks_equal_aligning_the_painted_label_map():
    """RoIAlign is linear: summing the regions' aligned masks per cluster = aligning painted labels."""
    g = torch.Generator().manual_seed(1)
    B, P, R, K = 3, 40, 12, 4
    prior = torch.randint(0, R, (B, P, P), generator=g)
    prior[0, :5, :5] = -1
    feats = torch.randn(B, 8, 5, 5, generator=g)
    regions = whole_frame_masks(prior, R, (5, 5))
    clusters = region_clusters(feats, regions.soft, regions.present, K, seed=0)
    frame = torch.tensor([[0.0, 0.0, 80.0, 60.0]]).expand(B, 4)
    boxes = torch.tensor([[5.0, 3.0, 50.0, 41.0], [0.0, 0.0, 80.0, 60.0], [30.0, 10.0, 79.0, 59.0]])
    flips = torch.tensor([True, False, True])
    (by_region,) = align_masks_views(prior, frame, [boxes], [flips], 7, R)
    (painted,) = align_masks_views(paint(prior, clusters), frame, [boxes], [flips], 7, K)
    torch.testing.assert_close(cluster_masks(by_region, clusters, K).soft, painted.soft, atol=1e-5, rtol=1e-5)
