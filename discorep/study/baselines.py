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
    for i in tqdm(range(len(coco)), desc=f"SLIC {list(n_segments)}", disable=not progress):
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
