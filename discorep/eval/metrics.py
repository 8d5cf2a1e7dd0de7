"""Segmentation metrics as pure numpy functions (Odin A.4 eq. 8–11; R2O §4.4 foreground IoU).

Masks are boolean arrays (T, H, W); label maps are integer arrays (H, W).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.optimize import linear_sum_assignment


def mask_iou_matrix(gt: np.ndarray, proposals: np.ndarray) -> np.ndarray:
    """IoU of every ground-truth mask with every proposal, (T, P) (Odin eq. 8: Σmin / Σmax).

    For binary masks min = intersection and max = union; computed with one matrix product.
    """
    g = gt.reshape(len(gt), -1).astype(np.float32)
    p = proposals.reshape(len(proposals), -1).astype(np.float32)
    inter = g @ p.T
    union = g.sum(1, keepdims=True) + p.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def best_overlap(iou: np.ndarray) -> np.ndarray:
    """BO(gt) = max over proposals of IoU (Odin eq. 9); (T,)."""
    return iou.max(axis=1) if iou.shape[1] else np.zeros(iou.shape[0], np.float32)


def abo(bo: np.ndarray) -> float:
    """Average best overlap (Odin eq. 10)."""
    return float(bo.mean()) if bo.size else float("nan")


def object_recovery(bo: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of ground-truth segments with BO > threshold (Odin eq. 11)."""
    return float((bo > threshold).mean()) if bo.size else float("nan")


def proposals_from_labels(label_maps: Mapping[int, np.ndarray] | list[np.ndarray]) -> np.ndarray:
    """Every segment of every label map as one proposal: K ∈ {1, 2, …, 128} gives 255 per image."""
    maps = list(label_maps.values()) if isinstance(label_maps, Mapping) else list(label_maps)
    masks = [lab == v for lab in maps for v in np.unique(lab) if v >= 0]
    if not masks:
        shape = maps[0].shape if maps else (0, 0)
        return np.zeros((0, *shape), bool)
    return np.stack(masks)


def iou_with_label_maps(gt: np.ndarray, label_maps: Mapping[int, np.ndarray] | list[np.ndarray]) -> np.ndarray:
    """Same as `mask_iou_matrix(gt, proposals_from_labels(label_maps))`, without materialising the
    proposals: each label map is a partition, so intersections are label counts inside each mask."""
    maps = list(label_maps.values()) if isinstance(label_maps, Mapping) else list(label_maps)
    gt_flat = gt.reshape(len(gt), -1).astype(bool)
    gt_area = gt_flat.sum(1).astype(np.float64)
    columns = []
    for lab in maps:
        flat = lab.reshape(-1)
        ids = np.unique(flat[flat >= 0])
        if ids.size == 0:
            continue
        dense = np.searchsorted(ids, flat.clip(min=ids[0]))  # label → 0..n-1 (−1 handled below)
        valid = flat >= 0
        seg_area = np.bincount(dense[valid], minlength=ids.size).astype(np.float64)
        inter = np.stack([np.bincount(dense[g & valid], minlength=ids.size) for g in gt_flat]) \
            if len(gt_flat) else np.zeros((0, ids.size))
        union = gt_area[:, None] + seg_area[None, :] - inter
        columns.append(np.divide(inter, union, out=np.zeros_like(union), where=union > 0))
    return np.concatenate(columns, axis=1) if columns else np.zeros((len(gt), 0))


def merge_by_category(masks: np.ndarray, category_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of the instances of each category (for ABO_c); returns (masks (C,H,W), categories (C,))."""
    cats = np.unique(category_ids)
    merged = np.stack([masks[category_ids == c].any(0) for c in cats]) if len(cats) else masks[:0]
    return merged, cats


def filter_small(masks: np.ndarray, category_ids: np.ndarray, min_area_224: float = 100.0,
                 max_masks: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Odin Table A.1: drop masks under 100 px *in a 224×224-resolution image*, keep the 16 largest.

    The threshold is scaled to this image's resolution: area / (H·W) ≥ 100 / 224².
    """
    H, W = masks.shape[1:] if masks.ndim == 3 else (1, 1)
    areas = masks.reshape(len(masks), -1).sum(1)
    keep = np.flatnonzero(areas >= min_area_224 * H * W / 224.0**2)
    keep = keep[np.argsort(-areas[keep], kind="stable")][:max_masks]
    keep = np.sort(keep)
    return masks[keep], category_ids[keep]


def image_scores(gt_masks: np.ndarray, category_ids: np.ndarray,
                 label_maps: Mapping[int, np.ndarray] | list[np.ndarray]) -> dict[str, float]:
    """ABO_i, OR (instances) and ABO_c (category-merged) of one image's k-means proposals."""
    bo_i = best_overlap(iou_with_label_maps(gt_masks, label_maps))
    merged, _ = merge_by_category(gt_masks, category_ids)
    bo_c = best_overlap(iou_with_label_maps(merged, label_maps))
    return {"abo_i": abo(bo_i), "or": object_recovery(bo_i), "abo_c": abo(bo_c), "n_gt": int(len(gt_masks))}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def hungarian_foreground(labels: np.ndarray, foreground: np.ndarray) -> tuple[np.ndarray, float]:
    """CUB protocol (R2O §4.4): assign ONE of the K segments to the foreground by Hungarian matching.

    Reading: the K segments are matched one-to-one to the two ground-truth classes {background,
    foreground} maximising the summed IoU (scipy's linear_sum_assignment); the segment matched to the
    foreground is the prediction, every other segment is background. Returns (mask, IoU with GT).
    """
    ids = [v for v in np.unique(labels) if v >= 0]
    segs = np.stack([labels == v for v in ids])
    fg = foreground.astype(bool)
    score = mask_iou_matrix(np.stack([~fg, fg]), segs)  # (2, K)
    rows, cols = linear_sum_assignment(score, maximize=True)
    fg_col = cols[list(rows).index(1)] if 1 in rows else int(score[1].argmax())
    pred = segs[fg_col]
    return pred, _iou(pred, fg)


def oracle_foreground(labels: np.ndarray, foreground: np.ndarray) -> tuple[np.ndarray, float]:
    """Upper bound: the single segment with the best IoU against the ground truth (what the
    unreleased R2O script did); reported only as a clearly named oracle."""
    fg = foreground.astype(bool)
    best, best_iou = None, -1.0
    for v in np.unique(labels):
        if v < 0:
            continue
        iou = _iou(labels == v, fg)
        if iou > best_iou:
            best, best_iou = labels == v, iou
    return best, best_iou

