"""The region prior itself as a baseline: SLIC superpixels scored as proposals, no network at all.

Object discovery: every SLIC region is a proposal (like every k-means segment), at the prior R2O starts
from (100 regions) and at a set of region counts matching the k-means K values, so the proposal budget
is comparable. Foreground: SLIC with K regions and the same Hungarian protocol as `eval foreground`.
SLIC runs on the 224-px copy (as the priors do) and its labels are upsampled (nearest) to H x W.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from discorep.data.datasets import CocoDataset
from discorep.data.images import BadImageError, DatasetError
from discorep.data.priors import slic_prior
from discorep.eval.foreground import CocoTruth
from discorep.eval.metrics import hungarian_foreground, image_scores
from discorep.eval.segment import upsample_nearest


def slic_labels(image, n_segments: int, height: int, width: int) -> np.ndarray:
    labels = slic_prior(np.asarray(image), n_segments=n_segments)
    return upsample_nearest(torch.from_numpy(labels.astype(np.int64)), height, width)


def slic_objects(coco: CocoDataset, n_segments: Sequence[int], progress: bool = False) -> dict:
    """Mean ABO_i / ABO_c / OR with SLIC regions (all of `n_segments` together) as the proposals."""
    rows, skipped = [], 0
    for i in tqdm(range(len(coco)), desc=f"SLIC {list(n_segments)}", disable=None if progress else True):
        try:
            item = coco[i]
        except (BadImageError, DatasetError):
            skipped += 1
            continue
        keep = ~item["iscrowd"]
        masks, cats = item["masks"][keep].astype(bool), item["category_ids"][keep]
        if len(masks) == 0:
            skipped += 1
            continue
        H, W = masks.shape[1:]
        maps = [slic_labels(item["image"], n, H, W) for n in n_segments]
        rows.append(image_scores(masks, cats, maps))
    if not rows:
        raise DatasetError(f"{coco.ann_file}: no usable annotated image for the SLIC baseline")
    return {m: float(np.mean([r[m] for r in rows])) for m in ("abo_i", "abo_c", "or")} | {
        "n_images": len(rows), "n_skipped": skipped}


def grid_oracle_objects(coco: CocoDataset, cells: int) -> dict:
    """The ceiling of feature-grid proposals: each ground-truth mask rounded to a `cells` x `cells` grid
    (a cell belongs to the mask when at least half of it does) and upsampled back (nearest), as the
    k-means labels are. Its ABO_i is the best any network can reach at that grid, whatever it learns."""
    bos = []
    for i in range(len(coco)):
        try:
            item = coco[i]
        except (BadImageError, DatasetError):
            continue
        for mask in item["masks"][~item["iscrowd"]].astype(bool):
            t = torch.from_numpy(mask.astype(np.float32))[None, None]
            coarse = (torch.nn.functional.adaptive_avg_pool2d(t, (cells, cells)) >= 0.5).long()[0, 0]
            rounded = upsample_nearest(coarse, *mask.shape).astype(bool)
            union = (rounded | mask).sum()
            bos.append((rounded & mask).sum() / union if union else 0.0)
    return {"abo_i": float(np.mean(bos)), "n_masks": len(bos)}


def slic_foreground(truth: CocoTruth, k: int) -> dict:
    """Mean foreground IoU of the Hungarian-assigned SLIC region among `k` regions."""
    ious = []
    for i in range(len(truth)):
        try:
            image, fg = truth.load(i)
        except (BadImageError, DatasetError):
            continue
        if fg.any():
            ious.append(hungarian_foreground(slic_labels(image, k, *fg.shape), fg)[1])
    return {"miou": float(np.mean(ious)), "n_images": len(ious)}
