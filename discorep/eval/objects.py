"""`discorep eval objects`: object discovery on a COCO-format set (Odin §3.2, A.4).

Each image is resized to `size`×`size` (the whole image; Odin A.4 takes a central crop first — we keep
every annotated object instead), encoded, and segmented by k-means for every K (1, 2, 4, …, 128:
255 proposals). Labels are upsampled (nearest) to the original resolution. Per ground-truth segment
the best IoU over proposals is its BO; per image ABO_i (instance masks), ABO_c (instances of a category
merged) and OR (fraction of instances with BO > 0.5); then averaged over images. Crowd annotations
are excluded; images without (non-crowd) annotations are skipped and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from discorep.data.datasets import CocoDataset
from discorep.data.images import BadImageError, DatasetError
from discorep.eval.backbone import EvalModel, load_model
from discorep.eval.metrics import filter_small as filter_small_masks
from discorep.eval.metrics import image_scores
from discorep.eval.report import emit_report, resolve_device
from discorep.eval.segment import parse_ks, prepare, segment_batch, upsample_nearest

log = logging.getLogger("discorep")


class _Items(Dataset):
    """Decoded, resized images with their non-crowd instance masks; bad images become skips."""

    def __init__(self, coco: CocoDataset, size: int, filter_small: bool):
        self.coco, self.size, self.filter_small = coco, size, filter_small

    def __len__(self) -> int:
        return len(self.coco)

    def __getitem__(self, i: int) -> dict:
        try:
            item = self.coco[i]
        except (BadImageError, DatasetError) as err:
            return {"index": i, "skip": str(getattr(err, "reason", err))}
        keep = ~item["iscrowd"]
        masks, cats = item["masks"][keep].astype(bool), item["category_ids"][keep]
        if self.filter_small:
            masks, cats = filter_small_masks(masks, cats)
        if len(masks) == 0:
            return {"index": i, "skip": "no (non-crowd) annotations"}
        return {"index": i, "image": prepare(item["image"], self.size), "masks": masks, "cats": cats,
                "path": item["path"]}


def _loader(items: _Items, batch_size: int) -> DataLoader:
    return DataLoader(items, batch_size=batch_size, num_workers=min(2, torch.get_num_threads()),
                      collate_fn=list)


def evaluate_objects(model: EvalModel, coco: CocoDataset, ks: Sequence[int], size: int, features: str, *,
                     batch_size: int = 8, seed: int = 0, filter_small: bool = False,
                     progress: bool = True) -> dict:
    """ABO_i / ABO_c / OR of k-means proposals; returns means, per-image values and skips."""
    per_image, skipped = [], []
    items = _Items(coco, size, filter_small)
    bar = tqdm(total=len(items), desc="objects", unit="img", disable=not progress)
    for batch in _loader(items, batch_size):
        skipped += [(str(coco.path(b["index"])), b["skip"]) for b in batch if "skip" in b]
        good = [b for b in batch if "skip" not in b]
        if good:
            images = torch.stack([b["image"] for b in good])
            labels = segment_batch(model, images, ks, features, seed=seed,
                                   image_ids=torch.tensor([b["index"] for b in good]))
            for j, b in enumerate(good):
                H, W = b["masks"].shape[1:]
                maps = [upsample_nearest(labels[k][j], H, W) for k in ks]
                per_image.append({"path": b["path"], **image_scores(b["masks"], b["cats"], maps)})
        bar.update(len(batch))
    bar.close()
    if not per_image:
        raise DatasetError(f"no usable annotated image in {coco.ann_file} ({len(skipped)} skipped)")
    means = {m: float(np.mean([r[m] for r in per_image])) for m in ("abo_i", "abo_c", "or")}
    return {**means, "n_images": len(per_image), "n_proposals_per_image": int(sum(ks)),
            "per_image": per_image, "skipped": [{"path": p, "reason": r} for p, r in skipped]}


def run(*, checkpoint: str, coco: Path, images: Path, k: str, size: int, features: str, device: str,
        batch_size: int, seed: int, out: Path | None, filter_small: bool) -> dict:
    ks = parse_ks(k)
    model = load_model(checkpoint, resolve_device(device))
    dataset = CocoDataset(coco, images)
    result = evaluate_objects(model, dataset, ks, size, features, batch_size=batch_size, seed=seed,
                              filter_small=filter_small)
    for path, reason in ((s["path"], s["reason"]) for s in result["skipped"]):
        log.warning("skipped %s: %s", path, reason)
    settings = {"checkpoint": checkpoint, "coco": str(coco), "images": str(images), "ks": ks, "size": size,
                "features": features, "seed": seed, "filter_small": filter_small}
    rows = [("ABO_i", result["abo_i"]), ("ABO_c", result["abo_c"]), ("OR", result["or"]),
            ("images", result["n_images"]), ("skipped", len(result["skipped"])),
            ("proposals/image", result["n_proposals_per_image"])]
    emit_report(f"object discovery — {checkpoint} ({features}, {size}px, K={k})", rows, out,
                {"task": "objects", "settings": settings, **result})
    return result
