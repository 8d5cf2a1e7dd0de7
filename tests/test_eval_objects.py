"""Object discovery (ABO/OR) and foreground metrics against hand computations, pycocotools, brute force."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from discorep.data.datasets import CocoDataset
from discorep.data.demo import make_scenes
from discorep.eval import metrics
from discorep.eval import objects as objects_mod
from discorep.eval.backbone import load_model


def test_abo_and_or_on_hand_built_masks():
    gt = np.zeros((2, 4, 4), bool)
    gt[0, :2, :2] = True          # 4 px
    gt[1, 2:, :] = True           # 8 px
    labels = np.zeros((4, 4), int)
    labels[:2, :3] = 1            # 6 px, covers gt0 (inter 4) → IoU 4/6
    labels[2:, :2] = 2            # 4 px inside gt1 → IoU 4/8
    # K=1 map (all one segment): IoU(gt0)=4/16, IoU(gt1)=8/16.
    ious = metrics.iou_with_label_maps(gt, [np.zeros((4, 4), int), labels])
    bo = metrics.best_overlap(ious)
    np.testing.assert_allclose(bo, [4 / 6, 0.5])
    assert metrics.abo(bo) == pytest.approx((4 / 6 + 0.5) / 2)
    assert metrics.object_recovery(bo) == pytest.approx(0.5)  # 0.5 is not > 0.5


def test_ious_equal_pycocotools_on_the_same_rles():
    rng = np.random.default_rng(0)
    gt = rng.random((5, 30, 40)) < 0.3
    labels = [rng.integers(0, k, (30, 40)) for k in (1, 2, 4, 8)]
    props = metrics.proposals_from_labels(labels)
    assert len(props) == 15
    enc = lambda m: mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0).astype(np.uint8)))  # noqa: E731
    oracle = mask_utils.iou(enc(gt), enc(props), [0] * len(props))
    np.testing.assert_allclose(metrics.mask_iou_matrix(gt, props), oracle, rtol=1e-6)
    np.testing.assert_allclose(metrics.iou_with_label_maps(gt, labels), oracle, rtol=1e-6)


def test_abo_c_merges_instances_of_a_category():
    gt = np.zeros((3, 4, 4), bool)
    gt[0, 0, :] = gt[1, 1, :] = True  # two instances of category 7
    gt[2, 3, :] = True
    merged, cats = metrics.merge_by_category(gt, np.array([7, 7, 3]))
    assert list(cats) == [3, 7] and merged[1].sum() == 8 and merged[0].sum() == 4
    labels = np.zeros((4, 4), int)
    labels[:2] = 1  # exactly the merged category-7 region
    scores = metrics.image_scores(gt, np.array([7, 7, 3]), [labels])
    assert scores["abo_c"] > scores["abo_i"]
    assert scores["abo_c"] == pytest.approx((1.0 + 4 / 8) / 2)


def test_filter_small_scales_with_resolution_and_keeps_16_largest():
    H = W = 448  # 4x the area of 224²: the 100-px threshold becomes 400 px
    masks = np.zeros((20, H, W), bool)
    for t in range(20):
        masks[t, t, : 20 + 20 * t] = True  # areas 20, 40, ..., 400
    kept, cats = metrics.filter_small(masks, np.arange(20))
    assert list(cats) == [19]
    big = np.zeros((20, 224, 224), bool)
    for t in range(20):
        big[t, : t + 1, :] = True  # areas 224·(t+1) ≥ 100
    kept, cats = metrics.filter_small(big, np.arange(20))
    assert list(cats) == list(range(4, 20))  # the 16 largest


def _brute_force_foreground(labels, fg):
    """All one-to-one assignments of 2 distinct segments to (background, foreground)."""
    ids = list(np.unique(labels))
    best = (-1.0, 0.0)
    for bg_id, fg_id in itertools.permutations(ids, 2):
        iou_fg = metrics.mask_iou_matrix(fg[None], (labels == fg_id)[None])[0, 0]
        iou_bg = metrics.mask_iou_matrix(~fg[None], (labels == bg_id)[None])[0, 0]
        best = max(best, (iou_fg + iou_bg, iou_fg))
    return best[1]


@pytest.mark.parametrize("seed", range(8))
def test_hungarian_foreground_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, (12, 12))
    fg = np.zeros((12, 12), bool)
    fg[3:9, 2:10] = True
    labels[fg & (rng.random((12, 12)) < 0.7)] = 2  # segment 2 mostly foreground
    _, iou = metrics.hungarian_foreground(labels, fg)
    assert iou == pytest.approx(_brute_force_foreground(labels, fg))
    assert metrics.oracle_foreground(labels, fg)[1] >= iou - 1e-12


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    return make_scenes(root, 6, seed=4, image_size=(80, 96)), root / "images"


def test_objects_pipeline_scores_perfect_proposals_as_one(scenes, monkeypatch, tmp_path):
    ann, images = scenes
    dataset = CocoDataset(ann, images)
    truth = {}
    for i in range(len(dataset)):
        item = dataset[i]
        lab = np.zeros(item["masks"].shape[1:], int)
        for t, m in enumerate(item["masks"]):
            lab[m.astype(bool)] = t + 1
        truth[i] = torch.from_numpy(lab)

    def perfect(model, images, ks, features="c5", *, seed=0, image_ids=None, iters=50):
        return {k: torch.stack([truth[int(i)] for i in image_ids]) for k in ks}

    monkeypatch.setattr(objects_mod, "segment_batch", perfect)
    # The masks are already at full resolution, so nearest "upsampling" is the identity.
    monkeypatch.setattr(objects_mod, "upsample_nearest", lambda lab, H, W: lab.numpy())
    result = objects_mod.evaluate_objects(load_model("random:resnet18"), dataset, [2], 64, "c5", progress=False)
    assert result["abo_i"] == pytest.approx(1.0) and result["or"] == pytest.approx(1.0)
    assert result["abo_c"] <= 1.0 and result["n_images"] == 6


def test_objects_cli_end_to_end_writes_finite_numbers(scenes, tmp_path):
    from discorep.cli import main

    ann, images = scenes
    out = tmp_path / "objects.json"
    code = main(["eval", "objects", "--checkpoint", "random:resnet18", "--coco", str(ann), "--images", str(images),
                 "--k", "1,2,4", "--size", "64", "--features", "c4", "--out", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    for key in ("abo_i", "abo_c", "or"):
        assert 0.0 <= data[key] <= 1.0
    assert data["n_images"] == 6 and data["n_proposals_per_image"] == 7 and data["settings"]["ks"] == [1, 2, 4]


def test_foreground_cli_with_coco_ground_truth_and_oracle(scenes, tmp_path):
    from discorep.cli import main

    ann, images = scenes
    out = tmp_path / "fg.json"
    assert main(["eval", "foreground", "--checkpoint", "random:resnet18", "--coco", str(ann), "--images",
                 str(images), "--size", "64", "--features", "c4", "--oracle", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert 0 < data["miou"] <= data["oracle_upper_bound_miou"] <= 1
    assert data["settings"]["k"] == 5
