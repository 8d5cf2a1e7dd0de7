"""`discorep eval objects`: object discovery on a COCO-format set (Odin §3.2, A.4, eq. 8–11).

Each image is resized to `size`×`size` and segmented by k-means over its dense features for every K
(1, 2, 4, …, 128: 255 proposals). Odin A.4 first takes a central crop; we keep the *whole* image
(stretched to a square) so that no annotated object is cut off, and upsample the feature-grid labels
(nearest) back to the original H×W, where the ground truth lives — so the ground truth is never
resampled. Per ground-truth segment the best IoU over all proposals is its BO; per image ABO_i
(instance masks), ABO_c (instances of one category merged) and OR (fraction of instances with
BO > 0.5) are computed, then averaged over images. Crowd annotations (`iscrowd=1`) are excluded: they
mark groups of objects, not one object. Images without (non-crowd) annotations cannot have an ABO and
are skipped and counted, as are unreadable images (named; fatal only when no image is usable).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from discorep.data.datasets import CocoDataset
from discorep.data.images import DatasetError
from discorep.eval.backbone import EvalModel, load_model
from discorep.eval.items import NO_ANNOTATIONS, UNREADABLE, PreparedSet
from discorep.eval.metrics import filter_small as filter_small_masks
from discorep.eval.metrics import image_scores
from discorep.eval.refine import Refine
from discorep.eval.report import emit_report, resolve_device
from discorep.eval.segment import parse_ks, segment_batch, upsample_nearest

log = logging.getLogger("discorep")

METRICS = ("abo_i", "abo_c", "or")


class _Instances:
    """A COCO set as a labelled set (`eval.items`): truth = the non-crowd instance masks and categories."""

    def __init__(self, coco: CocoDataset, filter_small: bool):
        self.coco, self.filter_small = coco, filter_small

    def __len__(self) -> int:
        return len(self.coco)

    def path(self, i: int) -> str:
        return str(self.coco.path(i))

    def load(self, i: int):
        item = self.coco[i]
        keep = ~item["iscrowd"]
        masks, cats = item["masks"][keep].astype(bool), item["category_ids"][keep]
        if self.filter_small:
            masks, cats = filter_small_masks(masks, cats, masks.shape[1:])
        return item["image"], (masks, cats)


def _no_instances(truth) -> str | None:
    return None if len(truth[0]) else "no (non-crowd) annotations"


def _score_batch(model: EvalModel, good: list[dict], ks: Sequence[int], features: str, seed: int,
                 refine: Refine | None, padding: str) -> list[dict]:
    """k-means proposals for a batch of images, scored against each image's ground truth."""
    labels = segment_batch(model, torch.stack([b["image"] for b in good]), ks, features, seed=seed,
                           image_ids=torch.tensor([b["index"] for b in good]), refine=refine, padding=padding)
    rows = []
    for j, b in enumerate(good):
        masks, cats = b["truth"]
        maps = [upsample_nearest(labels[k][j], *masks.shape[1:]) for k in ks]
        rows.append({"index": b["index"], "path": b["path"], **image_scores(masks, cats, maps)})
    return rows


def evaluate_objects(model: EvalModel, dataset: CocoDataset, ks: Sequence[int], size: int, features: str, *,
                     batch_size: int = 8, seed: int = 0, filter_small: bool = False, progress: bool = True,
                     num_workers: int = 2, refine: Refine | None = None, padding: str = "zeros") -> dict:
    """Mean ABO_i / ABO_c / OR over usable images (also callable on a small probe set while training).

    Returns {"abo_i", "abo_c", "or", "n_images", "per_image", "skipped", "n_skipped_unreadable",
    "n_skipped_no_annotations", "n_proposals_max"}. Raises DatasetError when no image is usable.
    """
    per_image, skipped = [], []
    loader = DataLoader(PreparedSet(_Instances(dataset, filter_small), size, empty=_no_instances),
                        batch_size=batch_size, collate_fn=list,
                        num_workers=min(num_workers, len(dataset)))
    with tqdm(total=len(dataset), desc="objects", unit="img", disable=None if progress else True) as bar:
        for batch in loader:
            skipped += [{k: b[k] for k in ("path", "skip", "reason")} for b in batch if "skip" in b]
            good = [b for b in batch if "skip" not in b]
            if good:
                per_image += _score_batch(model, good, ks, features, seed, refine, padding)
            bar.update(len(batch))
    if not per_image:
        raise DatasetError(f"{dataset.ann_file}: no usable annotated image ({len(skipped)} skipped, e.g. "
                           f"{skipped[0]['path'] if skipped else '-'}: {skipped[0]['reason'] if skipped else ''})")
    means = {m: float(np.mean([r[m] for r in per_image])) for m in METRICS}  # Odin: average over images
    return {**means, "n_images": len(per_image), "per_image": per_image, "skipped": skipped,
            "n_skipped_unreadable": sum(s["skip"] == UNREADABLE for s in skipped),
            "n_skipped_no_annotations": sum(s["skip"] == NO_ANNOTATIONS for s in skipped),
            "n_proposals_max": int(sum(ks))}


def run(*, checkpoint: str, coco: Path, images: Path, k: str, size: int, features: str, device: str,
        batch_size: int, seed: int, out: Path | None, filter_small: bool, refine: str = "none",
        superpixels: int = 256, compactness: float = 10.0, padding: str = "zeros") -> dict:
    ks = parse_ks(k)
    refiner = Refine(refine, superpixels, compactness)
    model = load_model(checkpoint, resolve_device(device))
    result = evaluate_objects(model, CocoDataset(coco, images), ks, size, features, batch_size=batch_size,
                              seed=seed, filter_small=filter_small, refine=refiner, padding=padding)
    for s in result["skipped"]:
        log.warning("skipped %s: %s", s["path"], s["reason"])
    settings = {"checkpoint": checkpoint, "coco": coco, "images": images, "ks": ks, "size": size,
                "features": features, "seed": seed, "filter_small": filter_small, "batch_size": batch_size,
                "refine": refiner.settings(), "padding": padding,
                "crop": "none: whole image resized to size x size, labels upsampled (nearest) to H x W",
                "crowd": "excluded"}
    rows = [("ABO_i", result["abo_i"]), ("ABO_c", result["abo_c"]), ("OR (BO > 0.5)", result["or"]),
            ("images", result["n_images"]), ("skipped: unreadable", result["n_skipped_unreadable"]),
            ("skipped: no annotations", result["n_skipped_no_annotations"]),
            ("proposals/image (max)", result["n_proposals_max"])]
    emit_report(f"object discovery — {checkpoint} ({features}, {size}px, K={','.join(map(str, ks))}, "
                f"refine={refine}, padding={padding})", rows, out,
                {"task": "objects", "settings": settings, **result})
    return result
