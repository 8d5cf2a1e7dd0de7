"""Object-discovery and foreground metrics against hand computations, pycocotools and brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from discorep.eval import metrics


def _hand_case():
    """4×4 image, three instance masks and two label maps (K=1, and two 2-segment maps)."""
    gt = np.zeros((3, 4, 4), bool)
    gt[0, :2, :2] = True   # 4 px
    gt[1, 2:, :] = True    # 8 px
    gt[2, :, 3] = True     # 4 px (overlaps gt1 in 2 px: instances may overlap)
    k1 = np.zeros((4, 4), int)
    m2 = np.zeros((4, 4), int)
    m2[:2, :3] = 1         # seg1: 6 px; seg0: the other 10 px
    m3 = np.zeros((4, 4), int)
    m3[:, 2:] = 1          # seg A = cols 2-3 (8 px); seg B = cols 0-1 (8 px)
    return gt, [k1, m2, m3]


def test_abo_and_or_equal_a_hand_computation():
    gt, maps = _hand_case()
    # Columns: K1 | m2 seg0, seg1 | m3 seg0 (cols 0-1), seg1 (cols 2-3).
    expected = np.array([
        [4 / 16, 0 / 14, 4 / 6, 4 / 8, 0 / 12],   # gt0
        [8 / 16, 8 / 10, 0 / 14, 4 / 12, 4 / 12],  # gt1
        [4 / 16, 4 / 10, 0 / 10, 0 / 12, 4 / 8],   # gt2
    ])
    props = metrics.proposals_from_labels(maps)
    np.testing.assert_allclose(metrics.mask_iou_matrix(gt, props), expected)
    np.testing.assert_allclose(metrics.iou_with_label_maps(gt, maps), expected)
    bo = metrics.best_overlap(expected)
    np.testing.assert_allclose(bo, [2 / 3, 0.8, 0.5])
    assert metrics.abo(bo) == pytest.approx((2 / 3 + 0.8 + 0.5) / 3)  # 0.65556
    assert metrics.object_recovery(bo) == pytest.approx(2 / 3)  # BO = 0.5 is not > 0.5 (eq. 11)
    assert metrics.object_recovery(bo, thr=0.4) == 1.0


def test_abo_c_merges_instances_of_a_category_by_hand():
    gt, maps = _hand_case()
    cats = np.array([7, 3, 7])
    merged, merged_cats = metrics.merge_by_category(gt, cats)
    assert list(merged_cats) == [3, 7]
    np.testing.assert_array_equal(merged[0], gt[1])
    np.testing.assert_array_equal(merged[1], gt[0] | gt[2])
    assert merged[1].sum() == 8  # 4 + 4, disjoint
    # cat 7 (8 px): K1 8/16, m2 seg0 4/14, seg1 4/10, m3 each 4/12 → BO 0.5; cat 3 is gt1 → BO 0.8.
    scores = metrics.image_scores(gt, cats, maps)
    assert scores["abo_c"] == pytest.approx((0.8 + 0.5) / 2)
    assert scores["abo_i"] == pytest.approx((2 / 3 + 0.8 + 0.5) / 3)
    assert scores["or"] == pytest.approx(2 / 3)
    assert (scores["n_instances"], scores["n_categories"]) == (3, 2)


def _rle(masks: np.ndarray):
    return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))


@pytest.mark.parametrize("seed", range(3))
def test_ious_equal_pycocotools_on_the_same_rles(seed):
    rng = np.random.default_rng(seed)
    gt = rng.random((6, 30, 41)) < rng.uniform(0.05, 0.5, (6, 1, 1))
    gt[0] = False  # an empty ground-truth mask: IoU 0 everywhere in both implementations
    labels = [rng.integers(0, k, (30, 41)) for k in (1, 2, 4, 8)]
    labels[3][:5] = -1  # unlabelled pixels belong to no proposal
    props = metrics.proposals_from_labels(labels)
    assert len(props) == 15 and not props[7:, :5].any() and props[:7, :5].any(0).all()
    oracle = mask_utils.iou(_rle(gt), _rle(props), [0] * len(props))
    np.testing.assert_allclose(metrics.mask_iou_matrix(gt, props), oracle, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(metrics.iou_with_label_maps(gt, labels), oracle, rtol=1e-12, atol=1e-12)


def test_proposal_counts():
    lab = np.arange(16 * 16).reshape(16, 16)
    maps = {k: lab % k for k in (1, 2, 4)}
    assert len(metrics.proposals_from_labels(maps)) == 7
    maps = {k: lab % k for k in (1, 2, 4, 8, 16, 32, 64, 128)}
    props = metrics.proposals_from_labels(maps)
    assert len(props) == 255
    assert metrics.iou_with_label_maps(np.ones((1, 16, 16), bool), maps).shape == (1, 255)
    # Each map is a partition: its segments add up to every pixel once.
    assert props.sum() == 8 * 256


def test_filter_small_threshold_scales_with_resolution():
    def areas_kept(h, w, areas):
        masks = np.zeros((len(areas), h, w), bool)
        for t, a in enumerate(areas):
            masks[t].reshape(-1)[:a] = True
        kept, cats = metrics.filter_small(masks, np.arange(len(areas)), (h, w))
        return [areas[c] for c in cats], kept

    assert areas_kept(224, 224, [99, 100, 101])[0] == [100, 101]
    assert areas_kept(448, 448, [399, 400, 1000])[0] == [400, 1000]       # 100 · 4
    assert areas_kept(112, 112, [24, 25])[0] == [25]                       # 100 / 4
    assert areas_kept(224, 448, [199, 200])[0] == [200]                    # 100 · 2
    areas = [300 + 10 * ((7 * t) % 20) for t in range(20)]  # 20 distinct areas, all above 100
    kept_areas, kept = areas_kept(224, 224, areas)
    assert sorted(kept_areas) == sorted(areas)[4:]  # the 16 largest ...
    assert kept_areas == [a for a in areas if a in kept_areas]  # ... in their original order
    assert len(kept) == 16


def _pair_brute_force(labels, fg):
    """All one-to-one matchings of two distinct segments to (background, foreground):
    returns the best total IoU and the foreground IoUs of every matching that reaches it."""
    ids = list(np.unique(labels))
    scores = {}
    for bg_id, fg_id in itertools.permutations(ids, 2):
        iou_fg = metrics.mask_iou(labels == fg_id, fg)
        scores[(bg_id, fg_id)] = (metrics.mask_iou(labels == bg_id, ~fg) + iou_fg, iou_fg)
    best = max(s for s, _ in scores.values())
    return best, [f for s, f in scores.values() if np.isclose(s, best)]


def _single_foreground_brute_force(labels, fg):
    """Every way to call exactly one segment foreground and the rest background; best by fg + bg IoU."""
    ids = list(np.unique(labels))
    s = max(ids, key=lambda v: metrics.mask_iou(labels == v, fg) + metrics.mask_iou(labels != v, ~fg))
    return metrics.mask_iou(labels == s, fg)


@pytest.mark.parametrize("seed", range(40))
def test_hungarian_equals_brute_force_over_matchings(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, (9, 11))
    fg = rng.random((9, 11)) < rng.uniform(0.2, 0.8)
    pred, iou = metrics.hungarian_foreground(labels, fg)
    _, fg_ious = _pair_brute_force(labels, fg)
    assert any(np.isclose(iou, f) for f in fg_ious)
    assert iou == pytest.approx(metrics.mask_iou(pred, fg))
    assert len(np.unique(labels[pred])) == 1  # exactly one segment is foreground
    assert metrics.oracle_foreground(labels, fg)[1] >= iou - 1e-12


@pytest.mark.parametrize("seed", range(40))
def test_hungarian_agrees_with_single_foreground_enumeration_when_one_segment_is_mostly_object(seed):
    # On structureless label maps the two readings differ (~9% of cases); with a segment that is mostly
    # the object, as in real k-means segmentations, they agree.
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, (12, 12))
    fg = np.zeros((12, 12), bool)
    fg[rng.integers(1, 4):rng.integers(8, 11), rng.integers(1, 4):rng.integers(8, 11)] = True
    labels[fg & (rng.random((12, 12)) < rng.uniform(0.5, 0.9))] = int(rng.integers(0, 5))
    assert metrics.hungarian_foreground(labels, fg)[1] == pytest.approx(_single_foreground_brute_force(labels, fg))


def test_one_to_one_matching_can_fall_below_the_oracle_by_hand():
    # 1×20: fg = px 0-9. X = px 2-19 (18 px), Y = px 0-1 (2 px).
    # IoU(X, fg) = 8/20 = .4, IoU(X, bg) = 10/18; IoU(Y, fg) = 2/10 = .2, IoU(Y, bg) = 0.
    # Matchings: X→bg, Y→fg = .556 + .2 beats X→fg, Y→bg = .4 + 0: Hungarian says Y; the oracle says X.
    fg = np.zeros((1, 20), bool)
    fg[0, :10] = True
    labels = np.ones((1, 20), int)
    labels[0, :2] = 0
    pred, iou = metrics.hungarian_foreground(labels, fg)
    assert iou == pytest.approx(0.2) and pred[0, :2].all() and pred.sum() == 2
    assert metrics.oracle_foreground(labels, fg)[1] == pytest.approx(0.4)
    assert _single_foreground_brute_force(labels, fg) == pytest.approx(0.2)


def test_a_single_segment_is_the_foreground():
    fg = np.zeros((4, 5), bool)
    fg[:2, :2] = True
    assert metrics.hungarian_foreground(np.zeros((4, 5), int), fg)[1] == pytest.approx(4 / 20)


def test_empty_inputs():
    assert np.isnan(metrics.abo(np.zeros(0))) and np.isnan(metrics.object_recovery(np.zeros(0)))
    assert metrics.best_overlap(np.zeros((2, 0))).tolist() == [0.0, 0.0]
    merged, cats = metrics.merge_by_category(np.zeros((0, 3, 3), bool), np.zeros(0, np.int64))
    assert merged.shape == (0, 3, 3) and cats.size == 0


@pytest.mark.parametrize("offset", [0, 10**9])
def test_iou_with_label_maps_equals_the_proposal_matrix_for_any_ids(offset):
    """Small ids take the bincount path, huge ids (a user's instance ids) the sorting one; any
    negative id is unlabelled. Both must equal the IoU of the materialised proposals."""
    rng = np.random.default_rng(7)
    gt = rng.random((5, 23, 17)) < 0.3
    labels = [rng.integers(0, k, (23, 17)) * 3 + offset for k in (1, 3, 9)]  # gaps between ids
    labels[1][:4] = -1
    labels[2][5:9] = -7
    labels.append(np.full((23, 17), -1))  # a map with no label at all adds no column
    oracle = metrics.mask_iou_matrix(gt, metrics.proposals_from_labels(labels))
    np.testing.assert_allclose(metrics.iou_with_label_maps(gt, labels), oracle, rtol=1e-12, atol=1e-12)
