"""`discorep eval foreground`: unsupervised foreground segmentation, CUB protocol (R2O §4.4).

Each image is segmented by k-means with K = 5; Hungarian matching (scipy) between the K segments and
the two ground-truth classes {background, foreground} assigns one segment to the foreground, the rest
is background; the score is the mean foreground IoU over images.

The R2O authors' evaluation script was not released and, by their description, picked the cluster
that best matches the ground truth — an oracle. That number is offered here only as a clearly named
upper bound (`--oracle`), never as the protocol's result.

Ground truth: a COCO json (foreground = union of the non-crowd instances) or a folder of mask images
named like the images (any non-zero pixel is foreground), e.g. CUB's segmentations.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from discorep.data.datasets import CocoDataset
from discorep.data.images import BadImageError, DatasetError, list_images, load_rgb
from discorep.errors import UsageError
from discorep.eval.backbone import EvalModel, load_model
from discorep.eval.metrics import hungarian_foreground, oracle_foreground
from discorep.eval.report import emit_report, resolve_device
from discorep.eval.segment import prepare, segment_batch, upsample_nearest

log = logging.getLogger("discorep")


def _pairs_from_coco(coco: Path, images: Path) -> list[tuple[str, callable]]:
    dataset = CocoDataset(coco, images)

    def loader(i: int):
        item = dataset[i]
        fg = item["masks"][~item["iscrowd"]].any(0) if len(item["masks"]) else None
        return item["image"], fg

    return [(str(dataset.path(i)), (lambda i=i: loader(i))) for i in range(len(dataset))]


def _pairs_from_folder(masks: Path, images: Path) -> list[tuple[str, callable]]:
    by_stem = {p.relative_to(masks).with_suffix("").as_posix(): p for p in list_images(masks)}

    def loader(path: Path, mask_path: Path | None):
        if mask_path is None:
            raise BadImageError(path, "no mask image with the same name under --masks")
        image = load_rgb(path)
        try:
            fg = np.asarray(Image.open(mask_path).convert("L")) > 0
        except OSError as err:
            raise BadImageError(mask_path, f"unreadable mask: {err}") from err
        if fg.shape != (image.height, image.width):
            raise BadImageError(mask_path, f"mask is {fg.shape[::-1]} but the image is {image.size}")
        return image, fg

    pairs = []
    for path in list_images(images):
        stem = path.relative_to(images).with_suffix("").as_posix()
        pairs.append((str(path), (lambda p=path, m=by_stem.get(stem): loader(p, m))))
    return pairs


def evaluate_foreground(model: EvalModel, pairs: list, K: int, size: int, features: str, *,
                        seed: int = 0, oracle: bool = False, progress: bool = True) -> dict:
    per_image, skipped = [], []
    for index, (path, load) in enumerate(tqdm(pairs, desc="foreground", unit="img", disable=not progress)):
        try:
            image, fg = load()
        except (BadImageError, DatasetError) as err:
            skipped.append({"path": path, "reason": str(getattr(err, "reason", err))})
            continue
        if fg is None or not fg.any():
            skipped.append({"path": path, "reason": "empty foreground mask"})
            continue
        labels = segment_batch(model, prepare(image, size)[None], [K], features, seed=seed,
                               image_ids=torch.tensor([index]))[K][0]
        full = upsample_nearest(labels, *fg.shape)
        row = {"path": path, "iou": hungarian_foreground(full, fg)[1]}
        if oracle:
            row["oracle_iou"] = oracle_foreground(full, fg)[1]
        per_image.append(row)
    if not per_image:
        raise DatasetError(f"no usable image with a foreground mask ({len(skipped)} skipped)")
    result = {"miou": float(np.mean([r["iou"] for r in per_image])), "n_images": len(per_image),
              "per_image": per_image, "skipped": skipped}
    if oracle:
        result["oracle_upper_bound_miou"] = float(np.mean([r["oracle_iou"] for r in per_image]))
    return result


def run(*, checkpoint: str, coco: Path | None, masks: Path | None, images: Path, k: int, size: int,
        features: str, device: str, batch_size: int, seed: int, out: Path | None, oracle: bool) -> dict:
    if (coco is None) == (masks is None):
        raise UsageError("give exactly one ground truth: --coco JSON or --masks FOLDER")
    if k < 1:
        raise UsageError(f"--k must be >= 1, got {k}")
    pairs = _pairs_from_coco(coco, images) if coco is not None else _pairs_from_folder(masks, images)
    model = load_model(checkpoint, resolve_device(device))
    result = evaluate_foreground(model, pairs, k, size, features, seed=seed, oracle=oracle)
    for s in result["skipped"]:
        log.warning("skipped %s: %s", s["path"], s["reason"])
    rows = [("mIoU (Hungarian, K=%d)" % k, result["miou"]), ("images", result["n_images"]),
            ("skipped", len(result["skipped"]))]
    if oracle:
        rows.append(("oracle upper bound mIoU", result["oracle_upper_bound_miou"]))
    settings = {"checkpoint": checkpoint, "coco": coco, "masks": masks, "images": images, "k": k,
                "size": size, "features": features, "seed": seed, "oracle": oracle}
    emit_report(f"foreground (CUB protocol) — {checkpoint}", rows, out,
                {"task": "foreground", "settings": settings, **result})
    return result
