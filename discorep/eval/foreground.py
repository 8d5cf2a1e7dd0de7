"""`discorep eval foreground`: unsupervised foreground segmentation, CUB protocol (R2O §4.4).

Each image is resized to `size`×`size` (whole image), segmented by k-means over its dense features with
K = 5, and the labels are upsampled (nearest) to the mask's resolution. Hungarian matching (scipy)
between the K segments and the two ground-truth classes {background, foreground} assigns ONE segment
to the foreground, the rest is background (reading spelled out in `metrics.hungarian_foreground`).
The headline number `miou` is the foreground IoU averaged over images; `miou_fg_bg` (the mean of the
foreground and background IoUs, averaged over images) is also recorded since "mIoU for
foreground-background segmentations" can be read either way.

The R2O authors' evaluation script was not released and, by their description, picked the cluster
that best matches the ground truth — an oracle. We report the Hungarian protocol; the oracle is
offered only as a clearly named upper bound (`--oracle` → `oracle_upper_bound_miou`).

Ground truth: a COCO json (foreground = union of the non-crowd instances) or a folder of mask images
with the same relative path and stem as the images, e.g. CUB's segmentations (non-zero = foreground).
Unreadable images/masks, missing masks and empty foregrounds are skipped, named and counted.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from discorep.data.datasets import CocoDataset
from discorep.data.images import BadImageError, DatasetError, list_images, load_rgb
from discorep.errors import UsageError
from discorep.eval.backbone import EvalModel, load_model
from discorep.eval.items import PreparedSet
from discorep.eval.metrics import hungarian_foreground, mask_iou, oracle_foreground
from discorep.eval.report import emit_report, resolve_device
from discorep.eval.refine import Refine
from discorep.eval.segment import segment_batch, upsample_nearest

log = logging.getLogger("discorep")


def read_mask(path: Path) -> np.ndarray:
    """A mask image → (H, W) bool, non-zero in any colour channel = foreground (alpha ignored)."""
    try:
        with warnings.catch_warnings(), Image.open(path) as img:
            warnings.simplefilter("ignore")
            arr = np.asarray(img.convert("RGB") if img.mode in ("RGBA", "LA", "CMYK", "YCbCr") else img)
    except (OSError, ValueError, SyntaxError) as err:
        raise BadImageError(path, f"unreadable mask ({err})") from None
    return (arr[..., :3] != 0).any(-1) if arr.ndim == 3 else arr != 0


class CocoTruth(Dataset):
    """Images of a COCO json; foreground = union of the non-crowd instances."""

    def __init__(self, coco: Path, images: Path):
        self.data = CocoDataset(coco, images)

    def __len__(self) -> int:
        return len(self.data)

    def path(self, i: int) -> str:
        return str(self.data.path(i))

    def load(self, i: int) -> tuple[Image.Image, np.ndarray]:
        item = self.data[i]
        return item["image"], item["masks"][~item["iscrowd"]].astype(bool).any(0)


class FolderTruth(Dataset):
    """Images under `images`, masks under `masks` with the same relative path and stem."""

    def __init__(self, masks: Path, images: Path):
        by_stem = {p.relative_to(masks).with_suffix("").as_posix(): p for p in list_images(masks)}
        self.images = list_images(images)
        self.masks = [by_stem.get(p.relative_to(images).with_suffix("").as_posix()) for p in self.images]
        if not self.images:
            raise DatasetError(f"--images {images}: no image files found")

    def __len__(self) -> int:
        return len(self.images)

    def path(self, i: int) -> str:
        return str(self.images[i])

    def load(self, i: int) -> tuple[Image.Image, np.ndarray]:
        if self.masks[i] is None:
            raise BadImageError(self.images[i], "no mask with the same name under --masks")
        image, fg = load_rgb(self.images[i]), read_mask(self.masks[i])
        if fg.shape != (image.height, image.width):
            raise BadImageError(self.masks[i], f"mask is {fg.shape[1]}x{fg.shape[0]} but the image is "
                                               f"{image.width}x{image.height}")
        return image, fg


def _no_foreground(fg: np.ndarray) -> str | None:
    return None if fg.any() else "empty foreground mask"


def _score(labels: np.ndarray, fg: np.ndarray, oracle: bool) -> dict:
    pred, iou = hungarian_foreground(labels, fg)
    row = {"iou": iou, "iou_bg": mask_iou(~pred, ~fg), "n_segments": len(np.unique(labels))}
    if oracle:
        row["oracle_iou"] = oracle_foreground(labels, fg)[1]
    return row


def evaluate_foreground(model: EvalModel, truth: Dataset, k: int, size: int, features: str, *,
                        batch_size: int = 8, seed: int = 0, oracle: bool = False, progress: bool = True,
                        num_workers: int = 2, refine: Refine | None = None, padding: str = "zeros") -> dict:
    """Mean foreground IoU of the Hungarian-assigned segment (and the oracle's, when asked)."""
    per_image, skipped = [], []
    loader = DataLoader(PreparedSet(truth, size, empty=_no_foreground), batch_size=batch_size, collate_fn=list,
                        num_workers=min(num_workers, len(truth)))
    with tqdm(total=len(truth), desc="foreground", unit="img", disable=None if progress else True) as bar:
        for batch in loader:
            skipped += [{"path": b["path"], "reason": b["reason"]} for b in batch if "skip" in b]
            good = [b for b in batch if "skip" not in b]
            if good:
                labels = segment_batch(model, torch.stack([b["image"] for b in good]), [k], features, seed=seed,
                                       image_ids=torch.tensor([b["index"] for b in good]), refine=refine,
                                       padding=padding)[k]
                for j, b in enumerate(good):
                    full = upsample_nearest(labels[j], *b["truth"].shape)
                    per_image.append({"path": b["path"], **_score(full, b["truth"], oracle)})
            bar.update(len(batch))
    if not per_image:
        raise DatasetError(f"no usable image with a foreground mask ({len(skipped)} skipped)")
    result = {"miou": float(np.mean([r["iou"] for r in per_image])),
              "miou_fg_bg": float(np.mean([(r["iou"] + r["iou_bg"]) / 2 for r in per_image])),
              "n_images": len(per_image), "per_image": per_image, "skipped": skipped}
    if oracle:
        result["oracle_upper_bound_miou"] = float(np.mean([r["oracle_iou"] for r in per_image]))
    return result


def run(*, checkpoint: str, coco: Path | None, masks: Path | None, images: Path, k: int, size: int,
        features: str, device: str, batch_size: int, seed: int, out: Path | None, oracle: bool,
        refine: str = "none", superpixels: int = 256, compactness: float = 10.0, padding: str = "zeros") -> dict:
    if (coco is None) == (masks is None):
        raise UsageError("give exactly one ground truth: --coco JSON or --masks FOLDER")
    if k < 1:
        raise UsageError(f"--k must be >= 1, got {k}")
    refiner = Refine(refine, superpixels, compactness)
    truth = CocoTruth(coco, images) if coco is not None else FolderTruth(masks, images)
    model = load_model(checkpoint, resolve_device(device))
    result = evaluate_foreground(model, truth, k, size, features, batch_size=batch_size, seed=seed, oracle=oracle,
                                 refine=refiner, padding=padding)
    for s in result["skipped"]:
        log.warning("skipped %s: %s", s["path"], s["reason"])
    rows = [(f"mIoU foreground (Hungarian, K={k})", result["miou"]),
            ("mIoU mean of fg and bg", result["miou_fg_bg"]),
            ("images", result["n_images"]), ("skipped", len(result["skipped"]))]
    if oracle:
        rows.append(("ORACLE upper bound mIoU (best cluster by GT)", result["oracle_upper_bound_miou"]))
    settings = {"checkpoint": checkpoint, "coco": coco, "masks": masks, "images": images, "k": k, "size": size,
                "features": features, "seed": seed, "batch_size": batch_size, "oracle": oracle,
                "refine": refiner.settings(), "padding": padding,
                "protocol": "Hungarian K x {bg, fg} on IoU; one segment is foreground (R2O 4.4)"}
    emit_report(f"foreground (CUB protocol) — {checkpoint} ({features}, {size}px)", rows, out,
                {"task": "foreground", "settings": settings, **result})
    return result
