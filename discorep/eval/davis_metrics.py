"""DAVIS region (J) and boundary (F) measures, written from the DAVIS 2017 benchmark definitions.

* J: Jaccard index of the predicted and ground-truth masks; 1 when both are empty.
* F: boundary F-measure. Boundaries are the 1-pixel maps of Martin et al.'s `seg2bmap` (a pixel is
  a boundary pixel when it differs from its east, south or south-east neighbour); a predicted boundary
  pixel is matched when a ground-truth boundary pixel lies within a disk of radius
  ceil(0.008 × image diagonal), and vice versa; F = 2PR / (P + R), with the benchmark's conventions
  for empty boundaries.
* A sequence is scored per object over its frames without the first (given) and the last frame, as
  the DAVIS 2017 semi-supervised evaluation does; the overall J and F are means over all objects of
  all sequences, and J&F is their mean.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.morphology import disk


def region_j(pred: np.ndarray, gt: np.ndarray) -> float:
    pred, gt = pred.astype(bool), gt.astype(bool)
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """1-pixel boundary map, offset half a pixel towards the origin (Martin et al. 2003)."""
    seg = seg.astype(bool)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[-1, :] = seg[-1, :] ^ east[-1, :]
    bmap[:, -1] = seg[:, -1] ^ south[:, -1]
    bmap[-1, -1] = False
    return bmap


def boundary_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    radius = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*pred.shape))
    fg_b, gt_b = seg2bmap(pred), seg2bmap(gt)
    footprint = disk(radius).astype(bool)
    fg_dil = ndimage.binary_dilation(fg_b, structure=footprint) if fg_b.any() else fg_b
    gt_dil = ndimage.binary_dilation(gt_b, structure=footprint) if gt_b.any() else gt_b
    n_fg, n_gt = int(fg_b.sum()), int(gt_b.sum())
    if n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    elif n_fg == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        precision = float((fg_b & gt_dil).sum() / n_fg)
        recall = float((gt_b & fg_dil).sum() / n_gt)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def scored_frames(n_frames: int) -> range:
    """Frames scored in a sequence: all but the first (given) and the last (DAVIS 2017)."""
    return range(1, n_frames - 1) if n_frames > 2 else range(1, n_frames)


def sequence_scores(pred: np.ndarray, gt: np.ndarray, object_ids: list[int]) -> dict[int, dict[str, float]]:
    """pred, gt: (T, H, W) integer label maps. Returns {object id: {"J": mean, "F": mean}}."""
    frames = scored_frames(len(gt))
    out = {}
    for obj in object_ids:
        js = [region_j(pred[t] == obj, gt[t] == obj) for t in frames]
        fs = [boundary_f(pred[t] == obj, gt[t] == obj) for t in frames]
        out[obj] = {"J": float(np.mean(js)) if js else float("nan"), "F": float(np.mean(fs)) if fs else float("nan")}
    return out
