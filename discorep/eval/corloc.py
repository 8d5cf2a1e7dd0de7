"""`discorep eval corloc`: single-object localisation from the discovered foreground (LOST protocol).

Each image is segmented by per-image k-means with K = 2 (`eval.segment`, optionally `--refine`d), the
labels brought to the image's size, and the **foreground** chosen as the segment that covers the
smaller share of the image border (backgrounds surround objects; ties go to the smaller segment); its
largest connected component is boxed. CorLoc = share of images whose box has IoU > 0.5 with at least
one ground-truth box (valeoai/LOST; VOC07/VOC12/COCO20k report it). An image whose k-means yields a
single segment boxes the whole image. Ground-truth boxes: COCO instance masks, VOC detection XML, or
the connected class regions of a VOC label map (`data.semantic.open_boxes`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from discorep.data.images import BadImageError, DatasetError
from discorep.data.semantic import open_boxes, region_box
from discorep.errors import UsageError
from discorep.eval.backbone import EvalModel, load_model
from discorep.eval.dense_metrics import box_iou, corloc_hit
from discorep.eval.refine import Refine
from discorep.eval.report import emit_report, resolve_device
from discorep.eval.segment import prepare, segment_batch, upsample_nearest

log = logging.getLogger(__name__)

K_FOREGROUND = 2


def border_share(labels: np.ndarray) -> dict[int, float]:
    """Fraction of the image's border pixels that each segment id covers."""
    ring = np.concatenate([labels[0], labels[-1], labels[1:-1, 0], labels[1:-1, -1]])
    ids, counts = np.unique(ring, return_counts=True)
    return {int(i): c / ring.size for i, c in zip(ids, counts)}


def foreground_box(labels: np.ndarray) -> tuple[int, int, int, int]:
    """Box of the largest connected component of the segment touching the border least."""
    ids, areas = np.unique(labels, return_counts=True)
    share = border_share(labels)
    fg = min(zip(ids, areas), key=lambda ia: (share.get(int(ia[0]), 0.0), ia[1]))[0]
    comps, n = ndimage.label(labels == fg)
    if n == 0:
        return 0, 0, labels.shape[1], labels.shape[0]
    largest = 1 + int(np.argmax(ndimage.sum_labels(np.ones_like(comps), comps, index=np.arange(1, n + 1))))
    return region_box(comps == largest)


def evaluate_corloc(model: EvalModel, data, size: int, features: str, *, batch_size: int = 8, seed: int = 0,
                    refine: Refine | None = None, padding: str = "zeros", progress: bool = True) -> dict:
    per_image, skipped = [], []
    for start in tqdm(range(0, len(data), batch_size), desc="corloc", unit="batch", disable=None if progress else True):
        items = []
        for i in range(start, min(start + batch_size, len(data))):
            try:
                image, gt = data.image(i), data.boxes(i)
            except (BadImageError, DatasetError) as err:
                skipped.append({"path": data.path(i), "reason": str(getattr(err, "reason", err))})
                continue
            if len(gt) == 0:
                skipped.append({"path": data.path(i), "reason": "no ground-truth box"})
                continue
            items.append((i, image, gt))
        if not items:
            continue
        labels = segment_batch(model, torch.stack([prepare(im, size) for _, im, _ in items]), [K_FOREGROUND],
                               features, seed=seed, image_ids=torch.tensor([i for i, _, _ in items]),
                               refine=refine, padding=padding)[K_FOREGROUND]
        for lab, (i, image, gt) in zip(labels, items):
            box = np.asarray(foreground_box(upsample_nearest(lab, image.height, image.width)), np.float64)
            per_image.append({"path": data.path(i), "box": box.tolist(), "hit": corloc_hit(box, gt),
                              "best_iou": float(box_iou(box, gt).max())})
    if not per_image:
        raise DatasetError(f"no usable image with ground-truth boxes ({len(skipped)} skipped)")
    return {"corloc": float(np.mean([r["hit"] for r in per_image])), "n_images": len(per_image),
            "per_image": per_image, "skipped": skipped}


def run(*, checkpoint: str, size: int, features: str, device: str, batch_size: int, seed: int, out: Path | None,
        val: Path, val_images: Path | None, val_split: str | None, refine: str = "none", superpixels: int = 256,
        compactness: float = 10.0, padding: str = "zeros") -> dict:
    if size < 1 or batch_size < 1:
        raise UsageError(f"--size and --batch-size must be positive, got {size} and {batch_size}")
    refiner = Refine(refine, superpixels, compactness)
    try:
        data = open_boxes(val, val_images, val_split)
    except DatasetError as err:
        raise DatasetError(f"--val: {err}") from None
    model = load_model(checkpoint, resolve_device(device))
    result = evaluate_corloc(model, data, size, features, batch_size=batch_size, seed=seed, refine=refiner,
                             padding=padding)
    settings = {"checkpoint": checkpoint, "val": val, "val_images": val_images, "val_split": val_split,
                "size": size, "features": features, "seed": seed, "k": K_FOREGROUND,
                "foreground": "segment covering the smaller share of the image border; its largest component",
                "hit": "box IoU > 0.5 with any ground-truth box", "refine": refiner.settings(), "padding": padding}
    rows = [("CorLoc", result["corloc"]), ("images", result["n_images"]), ("skipped", len(result["skipped"]))]
    emit_report(f"CorLoc — {checkpoint} ({features}, {size}px, refine={refine})", rows, out,
                {"task": "corloc", "settings": settings, **result})
    return result
