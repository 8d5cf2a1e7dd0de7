"""Scores of the dense evaluations: confusion-matrix mIoU, cluster-to-class matchings, CorLoc.

* `confusion(pred, target, P, C)`: counts ``conf[p, c]`` of pixels predicted p with true class c;
  pixels with target < 0 (ignore) are not counted.
* `miou(conf)`: per class IoU = TP / (TP + FP + FN) from a square (C, C) confusion, averaged over the
  classes that occur in the ground truth or the prediction (a class absent from both has no IoU;
  Leopart averages over every class, counting such a class as 0 — on sets where every class occurs
  the two agree).
* `hungarian_mapping(conf)`: one-to-one cluster → class assignment maximising the summed IoU
  (scipy's `linear_sum_assignment` on 1 − IoU, Leopart's criterion); clusters left unmatched (K > C)
  map to class 0, the background, as in Leopart.
* `many_to_one_mapping(conf)`: every cluster → the class it has the highest IoU with (greedy
  many-to-one, Leopart's overclustering; `precision=True` uses precision instead).
* `box_iou`, `corloc`: localisation is correct when the predicted box has IoU > 0.5 with any
  ground-truth box of the image (LOST).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def confusion(pred: np.ndarray, target: np.ndarray, num_pred: int, num_classes: int) -> np.ndarray:
    """(num_pred, num_classes) int64 counts over pixels with target >= 0."""
    pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
    keep = target >= 0
    if pred.shape != target.shape:
        raise ValueError(f"pred and target differ in size: {pred.shape} vs {target.shape}")
    pred, target = pred[keep].astype(np.int64), target[keep].astype(np.int64)
    if pred.size and (pred.min() < 0 or pred.max() >= num_pred or target.max() >= num_classes):
        raise ValueError(f"ids out of range: pred in [{pred.min()}, {pred.max()}] (< {num_pred}), "
                         f"target max {target.max()} (< {num_classes})")
    return np.bincount(pred * num_classes + target, minlength=num_pred * num_classes).reshape(num_pred, num_classes)


def iou_matrix(conf: np.ndarray, precision: bool = False) -> np.ndarray:
    """(P, C) IoU (or precision) of predicted id p against class c from a confusion matrix."""
    conf = conf.astype(np.float64)
    pred_total, class_total = conf.sum(1, keepdims=True), conf.sum(0, keepdims=True)
    denom = pred_total if precision else pred_total + class_total - conf
    return np.divide(conf, denom, out=np.zeros_like(conf), where=denom > 0)


def per_class_iou(conf: np.ndarray) -> np.ndarray:
    """(C,) IoU of each class from a square confusion; NaN where the class is absent from both."""
    if conf.shape[0] != conf.shape[1]:
        raise ValueError(f"per-class IoU needs a square confusion, got {conf.shape}; remap clusters first")
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def miou(conf: np.ndarray) -> float:
    return float(np.nanmean(per_class_iou(conf)))


def hungarian_mapping(conf: np.ndarray) -> np.ndarray:
    """(P,) class of each predicted id: one-to-one by maximal total IoU; unmatched ids → 0."""
    rows, cols = linear_sum_assignment(1.0 - iou_matrix(conf))
    mapping = np.zeros(conf.shape[0], np.int64)
    mapping[rows] = cols
    return mapping


def many_to_one_mapping(conf: np.ndarray, precision: bool = False) -> np.ndarray:
    """(P,) class of each predicted id: the class it scores the highest IoU (or precision) with."""
    return iou_matrix(conf, precision).argmax(1)


def remap(conf: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """Cluster confusion (P, C) → class confusion (C, C) after mapping each cluster to a class."""
    out = np.zeros((conf.shape[1], conf.shape[1]), np.int64)
    np.add.at(out, mapping, conf)
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between boxes (N, 4) and (M, 4), (x0, y0, x1, y1) continuous coordinates → (N, M)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def corloc_hit(pred_box: np.ndarray, gt_boxes: np.ndarray, threshold: float = 0.5) -> bool:
    """True when the predicted box has IoU > threshold with at least one ground-truth box."""
    return bool(len(gt_boxes)) and bool((box_iou(pred_box, gt_boxes) > threshold).any())
