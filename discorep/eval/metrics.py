"""Segmentation metrics as pure numpy functions (Odin A.4 eq. 8–11; R2O §4.4 foreground IoU).

Masks are boolean arrays (T, H, W); label maps are integer arrays (H, W) with ids ≥ 0 (−1 = no label).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

LabelMaps = Mapping[int, np.ndarray] | Sequence[np.ndarray]


def _maps(label_maps: LabelMaps) -> list[np.ndarray]:
    return list(label_maps.values()) if isinstance(label_maps, Mapping) else list(label_maps)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two binary masks; two empty masks agree perfectly (1.0)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def mask_iou_matrix(gt: np.ndarray, proposals: np.ndarray) -> np.ndarray:
    """IoU of every ground-truth mask with every proposal, (T, P) (Odin eq. 8: Σmin / Σmax).

    For binary masks Σmin is the intersection and Σmax the union; all intersections come from one
    matrix product of the flattened masks (float64, so pixel counts stay exact). Empty unions give 0.
    """
    g = gt.reshape(len(gt), -1).astype(np.float64)
    p = proposals.reshape(len(proposals), -1).astype(np.float64)
    inter = g @ p.T
    union = g.sum(1)[:, None] + p.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def best_overlap(iou: np.ndarray) -> np.ndarray:
    """BO(gt) = max over proposals of IoU(gt, m_k) (Odin eq. 9); (T,). No proposal → BO 0."""
    return iou.max(axis=1) if iou.shape[1] else np.zeros(iou.shape[0])


def abo(bo: np.ndarray) -> float:
    """Average best overlap over an image's T segments (Odin eq. 10); NaN when T = 0."""
    return float(np.mean(bo)) if np.size(bo) else float("nan")


def object_recovery(bo: np.ndarray, thr: float = 0.5) -> float:
    """OR: fraction of segments with BO > thr, strictly (Odin eq. 11); NaN when T = 0."""
    return float(np.mean(np.asarray(bo) > thr)) if np.size(bo) else float("nan")


def proposals_from_labels(label_maps: LabelMaps) -> np.ndarray:
    """Every segment of every label map as one proposal (P, H, W): K ∈ {1, 2, …, 128} gives 255.

    A k-means cluster that ended up empty is absent from the map and so gives no proposal.
    """
    maps = _maps(label_maps)
    masks = [lab == v for lab in maps for v in np.unique(lab) if v >= 0]
    if not masks:
        return np.zeros((0, *(maps[0].shape if maps else (0, 0))), bool)
    return np.stack(masks)


def _segment_codes(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, kept, areas): codes 0 for unlabelled pixels and 1.. for labels, `kept` the codes
    present in ascending label order, `areas` the pixel count of each code. Small label ids (every
    discovered map) are shifted, not sorted: one bincount instead of np.unique's argsort of every pixel."""
    top = int(flat.max(initial=-1))
    if top < 4 * flat.size + 64:
        codes = flat.astype(np.int64) + 1
        codes[codes < 0] = 0  # any negative id means "no label"
    else:  # huge ids (a user's instance ids): densify by sorting, as before
        ids, inverse = np.unique(flat, return_inverse=True)
        codes = np.where(ids[inverse] >= 0, inverse + 1, 0).astype(np.int64)
    areas = np.bincount(codes)
    return codes, np.flatnonzero(areas[1:]) + 1, areas


def iou_with_label_maps(gt: np.ndarray, label_maps: LabelMaps) -> np.ndarray:
    """Equals `mask_iou_matrix(gt, proposals_from_labels(label_maps))` without materialising the
    255 full-resolution proposals: a label map is a partition, so a ground-truth mask's intersection
    with every segment of it is one bincount of the labels under that mask."""
    gt_flat = gt.reshape(len(gt), -1).astype(bool)
    gt_area = gt_flat.sum(1).astype(np.float64)
    columns = []
    for lab in _maps(label_maps):
        codes, kept, areas = _segment_codes(lab.reshape(-1))
        if kept.size == 0:
            continue
        seg_area = areas[kept].astype(np.float64)
        inter = np.array([np.bincount(codes[g], minlength=areas.size)[kept] for g in gt_flat],
                         dtype=np.float64).reshape(len(gt_flat), kept.size)
        union = gt_area[:, None] + seg_area[None, :] - inter
        columns.append(np.divide(inter, union, out=np.zeros_like(union), where=union > 0))
    return np.concatenate(columns, axis=1) if columns else np.zeros((len(gt), 0))


def merge_by_category(masks: np.ndarray, category_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of the instances of each category, the ground truth of ABO_c (Odin A.4).

    Returns (masks (C, H, W) bool, categories (C,) sorted)."""
    cats = np.unique(category_ids)
    if not len(cats):
        return masks[:0].astype(bool), cats
    return np.stack([masks[category_ids == c].any(0) for c in cats]), cats


def filter_small(masks: np.ndarray, category_ids: np.ndarray, image_hw: tuple[int, int],
                 min_area_224: float = 100.0, max_masks: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Odin Table A.1: drop masks under 100 px *in a 224×224-resolution image*, keep the 16 largest.

    At resolution H×W the threshold is min_area_224 · H·W / 224² pixels (same fraction of the image).
    Kept masks stay in their original order.
    """
    H, W = image_hw
    areas = masks.reshape(len(masks), -1).sum(1)
    keep = np.flatnonzero(areas >= min_area_224 * H * W / 224.0**2)
    keep = np.sort(keep[np.argsort(-areas[keep], kind="stable")][:max_masks])
    return masks[keep], category_ids[keep]


def image_scores(gt_masks: np.ndarray, category_ids: np.ndarray, label_maps: LabelMaps) -> dict[str, float]:
    """One image: ABO_i and OR on instance masks, ABO_c on category-merged masks (Odin A.4)."""
    bo_i = best_overlap(iou_with_label_maps(gt_masks, label_maps))
    merged, _ = merge_by_category(gt_masks, category_ids)
    bo_c = best_overlap(iou_with_label_maps(merged, label_maps))
    return {"abo_i": abo(bo_i), "abo_c": abo(bo_c), "or": object_recovery(bo_i),
            "n_instances": len(gt_masks), "n_categories": len(merged)}


def _segments(labels: np.ndarray) -> np.ndarray:
    return np.stack([labels == v for v in np.unique(labels) if v >= 0])


def hungarian_foreground(labels: np.ndarray, fg: np.ndarray) -> tuple[np.ndarray, float]:
    """CUB protocol (R2O §4.4): ONE of the K segments is the foreground, chosen by Hungarian matching.

    Our reading of "Hungarian matching to assign one segment as the foreground": the score matrix is
    the IoU of each of the K segments with each of the two ground-truth classes {background,
    foreground} (K × 2); scipy's linear_sum_assignment picks the one-to-one matching with the largest
    total IoU; the segment matched to the foreground is the prediction and every other segment
    (including the one matched to the background) is background. The one-to-one constraint is what
    separates this from the oracle: a segment that best explains the background cannot also be the
    foreground. With a single segment it is the foreground. Returns (mask (H, W) bool, its IoU).
    """
    segs = _segments(labels)
    fg = fg.astype(bool)
    if len(segs) == 1:
        return segs[0], mask_iou(segs[0], fg)
    score = mask_iou_matrix(np.stack([~fg, fg]), segs).T  # (K, 2): column 1 = foreground
    rows, cols = linear_sum_assignment(score, maximize=True)
    pred = segs[rows[list(cols).index(1)]]
    return pred, mask_iou(pred, fg)


def oracle_foreground(labels: np.ndarray, fg: np.ndarray) -> tuple[np.ndarray, float]:
    """ORACLE upper bound, not the protocol: the single segment with the best IoU against the ground
    truth (what the unreleased R2O script did). Returns (mask, IoU) and is ≥ hungarian_foreground."""
    segs = _segments(labels)
    ious = mask_iou_matrix(fg.astype(bool)[None], segs)[0]
    best = int(np.argmax(ious))
    return segs[best], float(ious[best])
