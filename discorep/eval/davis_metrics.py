"""DAVIS region (J) and boundary (F) measures, written from the DAVIS 2017 benchmark definitions.

* J: Jaccard index of the predicted and ground-truth masks, void pixels (id 255) left out; 1 when the
  union is empty (both masks empty).
* F: boundary F-measure. Boundaries are the 1-pixel maps of Martin et al.'s `seg2bmap` (a pixel is a
  boundary pixel when it differs from its east, south or south-east neighbour; void pixels are cleared
  first). A predicted boundary pixel is matched when a ground-truth boundary pixel lies in the disk of
  radius ceil(bound_th × image diagonal) around it (bound_th >= 1 is a radius in pixels), and vice
  versa. Precision and recall are the matched fractions, F = 2PR / (P + R). When one boundary is
  empty: no prediction → P = 1, R = 0; no ground truth → P = 0, R = 1; both empty → F = 1.
* Scoring protocol (DAVIS 2017 semi-supervised): objects are ids 1..max(first-frame id) (void 255
  excluded); every frame but the first (given) and the last is scored, so sequences of fewer than three
  frames score nothing; a sequence's per-object value is the mean over those frames; the overall J and F
  are means over all objects of all sequences and J&F = (J + F) / 2.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

VOID = 255  # DAVIS marks ambiguous pixels with this id; they count for neither side


def _valid(shape: tuple[int, ...], void: np.ndarray | None) -> np.ndarray:
    return np.ones(shape, bool) if void is None else ~void.astype(bool)


def region_j(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """Jaccard index of two (H, W) masks, ignoring `void` pixels; 1.0 when both are empty."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    valid = _valid(gt.shape, void)
    union = int(((pred | gt) & valid).sum())
    return 1.0 if union == 0 else float(((pred & gt) & valid).sum() / union)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """1-pixel boundary map, offset half a pixel towards the origin (Martin et al. 2003).

    The last row compares only with its east neighbour and the last column only with its south one,
    so a mask touching the bottom/right image border has no boundary along that border.
    """
    seg = seg.astype(bool)
    east, south, south_east = (np.zeros_like(seg) for _ in range(3))
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[-1, :] = seg[-1, :] ^ east[-1, :]
    bmap[:, -1] = seg[:, -1] ^ south[:, -1]
    bmap[-1, -1] = False
    return bmap


def _near(points: np.ndarray, targets: np.ndarray, radius: float) -> np.ndarray:
    """points & (targets dilated by a disk of `radius`), the disk being {dx² + dy² <= radius²}.

    A Euclidean distance transform gives exactly that dilation (squared distances between pixels are
    integers). It only has to run on the bounding box of both maps: every point and every target lies
    inside it, so distances measured there are exact. That keeps full-resolution DAVIS frames cheap.
    """
    if not points.any() or not targets.any():
        return np.zeros_like(points)
    rows, cols = np.nonzero(points | targets)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    dist = ndimage.distance_transform_edt(~targets[y0:y1, x0:x1])
    out = np.zeros_like(points)
    out[y0:y1, x0:x1] = points[y0:y1, x0:x1] & (dist <= radius)
    return out


def boundary_radius(shape: tuple[int, int], bound_th: float = 0.008) -> float:
    """Matching tolerance in pixels: bound_th × image diagonal rounded up, or bound_th itself if >= 1.

    A non-integer radius >= 1 is used as a true disk here; the official code would build an even-sized,
    off-centre `skimage.morphology.disk` for it, so only integer values compare with it.
    """
    return float(bound_th) if bound_th >= 1 else float(math.ceil(bound_th * math.hypot(*shape)))


def boundary_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008, void: np.ndarray | None = None) -> float:
    """DAVIS boundary F-measure of two (H, W) masks (conventions in the module docstring)."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    valid = _valid(gt.shape, void)
    radius = boundary_radius(gt.shape, bound_th)
    pred_b, gt_b = seg2bmap(pred & valid), seg2bmap(gt & valid)
    n_pred, n_gt = int(pred_b.sum()), int(gt_b.sum())
    if n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    elif n_pred == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        precision = int(_near(pred_b, gt_b, radius).sum()) / n_pred
        recall = int(_near(gt_b, pred_b, radius).sum()) / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def scored_frames(n_frames: int) -> range:
    """Frames scored in a sequence: all but the first (given) and the last (DAVIS 2017 protocol)."""
    return range(1, max(n_frames - 1, 1))


def object_ids(first: np.ndarray) -> list[int]:
    """Objects of a sequence: 1..max id of the first annotation (DAVIS counts ids, void excluded)."""
    ids = first[first != VOID]
    return list(range(1, int(ids.max()) + 1)) if ids.size else []


def sequence_scores(pred: np.ndarray, gt: np.ndarray) -> dict[int, dict[str, float]]:
    """pred, gt: (T, H, W) integer label maps (gt may hold VOID). Returns {object id: {"J", "F"}},
    each the mean over the scored frames; {} when the sequence has no object or no scored frame."""
    if pred.shape != gt.shape:
        raise ValueError(f"predictions {pred.shape} and annotations {gt.shape} differ in shape")
    frames = scored_frames(len(gt))
    if len(frames) == 0:
        return {}
    out = {}
    for obj in object_ids(gt[0]):
        js, fs = [], []
        for t in frames:
            void = gt[t] == VOID
            js.append(region_j(pred[t] == obj, gt[t] == obj, void))
            fs.append(boundary_f(pred[t] == obj, gt[t] == obj, void=void))
        out[obj] = {"J": float(np.mean(js)), "F": float(np.mean(fs))}
    return out


def summarize(per_sequence: dict[str, dict[int, dict[str, float]]]) -> dict:
    """Per-sequence and overall J, F, J&F from {sequence: sequence_scores(...)}.

    Overall values average over objects (as the DAVIS benchmark does), so a sequence with three objects
    weighs three times one with a single object; per-sequence values average that sequence's objects.
    Sequences with no scored object are left out of both.
    """
    sequences, objects = {}, []
    for name, scores in per_sequence.items():
        if not scores:
            continue
        objects += scores.values()
        j = float(np.mean([s["J"] for s in scores.values()]))
        f = float(np.mean([s["F"] for s in scores.values()]))
        sequences[name] = {"J": j, "F": f, "J&F": (j + f) / 2, "n_objects": len(scores),
                           "objects": {str(k): v for k, v in scores.items()}}
    if not objects:
        return {"J": math.nan, "F": math.nan, "J&F": math.nan, "n_objects": 0, "per_sequence": sequences}
    j = float(np.mean([s["J"] for s in objects]))
    f = float(np.mean([s["F"] for s in objects]))
    return {"J": j, "F": f, "J&F": (j + f) / 2, "n_objects": len(objects), "per_sequence": sequences}
