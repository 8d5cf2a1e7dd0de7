"""`discorep.transfer.scoring`: COCO AP through pycocotools on known detections, mIoU against a brute count."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from discorep.apps.demodata.scenes import make_scenes
from discorep.data.datasets import decode_rle
from discorep.eval.dense_metrics import box_iou, confusion
from discorep.transfer.data import DetectionSet
from discorep.transfer.scoring import (DETECTION_METRICS, coco_evaluate, coco_scores, segmentation_scores,
                                       to_coco_results)


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    """The validation set of 8 demo scenes (96 px) and its ground truth as torchvision-style outputs."""
    ann = make_scenes(tmp_path_factory.mktemp("scenes"), 8, seed=12, image_size=(96, 96))
    ds = DetectionSet(ann, train=False)
    targets = [ds[i][1] for i in range(len(ds))]
    outputs = [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"])),
                "masks": t["masks"][:, None].float()} for t in targets]
    return ds, targets, outputs


def test_ground_truth_scores_100(truth):
    ds, targets, outputs = truth
    results = to_coco_results(outputs, [t["image_id"] for t in targets], ds.cat_ids, masks=True)
    assert len(results) == ds.counts["instances"]
    for iou_type in ("bbox", "segm"):
        scores = coco_scores(ds.coco, results, iou_type)
        assert tuple(scores) == DETECTION_METRICS
        for name in ("AP", "AP50", "AP75"):
            assert scores[name] == pytest.approx(100.0, abs=1e-6), (iou_type, name)
        assert math.isnan(scores["APl"])  # no object of 96² px or more in a 96 px image: undefined, not -100


def test_boxes_shifted_by_a_fifth_of_their_width(truth):
    """IoU with the true box is (1 - 0.2) / (1 + 0.2) = 2/3: matched at IoU 0.50..0.65, missed at 0.70..0.95,
    so AP50 = 100, AP75 = 0 and AP (mean over ten thresholds) = 40."""
    ds, targets, outputs = truth
    shifted = []
    for t, out in zip(targets, outputs):
        boxes = out["boxes"].clone()
        dx = 0.2 * (boxes[:, 2] - boxes[:, 0])
        boxes[:, 0] += dx
        boxes[:, 2] += dx
        # The hand count assumes no shifted box overlaps another true box of its category by IoU >= 0.5.
        iou = box_iou(boxes.numpy(), t["boxes"].numpy())
        same = t["labels"][:, None] == t["labels"][None, :]
        np.testing.assert_allclose(np.diag(iou), 2 / 3, rtol=1e-5)
        assert (iou[same.numpy() & ~np.eye(len(iou), dtype=bool)] < 0.5).all()
        shifted.append({**out, "boxes": boxes})
    results = to_coco_results(shifted, [t["image_id"] for t in targets], ds.cat_ids, masks=False)
    assert all("segmentation" not in r for r in results)
    scores = coco_scores(ds.coco, results, "bbox")
    assert scores["AP50"] == pytest.approx(100.0, abs=1e-6)
    assert scores["AP75"] == pytest.approx(0.0, abs=1e-6)
    assert scores["AP"] == pytest.approx(40.0, abs=1e-6)


def test_no_results_is_a_dict_of_zeros_and_undefined(truth, capsys):
    ds, _, _ = truth
    for iou_type in ("bbox", "segm"):
        scores, summary = coco_evaluate(ds.coco, [], iou_type)
        assert scores["AP"] == scores["AP50"] == scores["AP75"] == 0.0
        assert math.isnan(scores["APl"])
    assert "Average Precision" in summary and capsys.readouterr().out == ""  # pycocotools' prints captured
    with pytest.raises(ValueError, match="iou_type"):
        coco_scores(ds.coco, [], "keypoints")


def test_results_by_hand():
    probs = torch.zeros(2, 1, 4, 5)
    probs[0, 0, 1:3, 0:2] = 0.6   # above 0.5: in the mask
    probs[0, 0, 3, 4] = 0.5       # not above: out
    probs[1, 0, 0, :] = 0.9
    out = {"boxes": torch.tensor([[1.0, 2.0, 4.0, 3.5], [0.0, 0.0, 5.0, 1.0]]), "labels": torch.tensor([2, 1]),
           "scores": torch.tensor([0.25, 0.75]), "masks": probs}
    results = to_coco_results([out], [42], [10, 30], masks=True)
    assert [r["category_id"] for r in results] == [30, 10]
    assert results[0]["bbox"] == pytest.approx([1.0, 2.0, 3.0, 1.5]) and results[0]["score"] == 0.25
    assert isinstance(results[0]["segmentation"]["counts"], str)
    decoded = decode_rle({**results[0]["segmentation"], "counts": results[0]["segmentation"]["counts"].encode()})
    expected = np.zeros((4, 5), np.uint8)
    expected[1:3, 0:2] = 1
    np.testing.assert_array_equal(decoded, expected)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0),
             "masks": torch.zeros(0, 1, 4, 5)}
    assert to_coco_results([empty], [1], [10], masks=True) == []


def _brute(pred, target, C):
    """Per class: |P ∩ T| / |P ∪ T| over scored pixels (target >= 0), None where both are empty."""
    keep = target >= 0
    ious = []
    for c in range(C):
        p, t = (pred == c) & keep, (target == c) & keep
        union = int((p | t).sum())
        ious.append(int((p & t).sum()) / union if union else None)
    return ious, float((pred[keep] == target[keep]).mean())


def test_segmentation_scores_match_a_brute_force_count():
    rng = np.random.default_rng(3)
    C = 5
    target = rng.integers(-1, C, (6, 37, 41))   # -1: ignore (about a sixth of the pixels)
    pred = rng.integers(0, C, target.shape)
    target[(target == 3) | (target == 4)] = 0  # class 3: in neither ...
    pred[pred == 3] = 1
    pred[(pred == 4) & (target >= 0)] = 2      # class 4: only where the truth is ignored (never scored)
    names = [f"c{c}" for c in range(C)]
    scores = segmentation_scores(confusion(pred, target, C, C), names)
    ious, accuracy = _brute(pred, target, C)
    assert ious[3] is None and ious[4] is None
    assert scores["per_class_IoU"]["c3"] is None and scores["per_class_IoU"]["c4"] is None
    for name, iou in zip(names, ious):
        if iou is not None:
            assert scores["per_class_IoU"][name] == pytest.approx(100 * iou, rel=1e-9)
    assert scores["mIoU"] == pytest.approx(100 * np.mean([v for v in ious if v is not None]), rel=1e-9)
    assert scores["pixel_accuracy"] == pytest.approx(100 * accuracy, rel=1e-9)
    with pytest.raises(ValueError, match="class names"):
        segmentation_scores(np.zeros((3, 3), np.int64), names)
