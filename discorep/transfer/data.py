"""Data sets of `discorep transfer`: COCO instances for Mask R-CNN, semantic maps for an FCN.

* `DetectionSet`: a COCO instances json as torchvision detection targets (``boxes`` xyxy in continuous
  pixel coordinates, ``labels`` 1..C with 0 the background, ``masks``). Crowd and degenerate instances are
  dropped, images left without instances are kept as negatives; what was dropped is counted at
  construction from the json alone (``counts``), so a run can report it before decoding any image.
* `SegmentationSet`: a VOC-layout folder or COCO json (`data.semantic.open_semantic`) as (image, class map)
  pairs, ``-1`` = ignore; training items are randomly scaled, cropped (padded with ignore) and flipped.

Random draws use torch's global RNG: the DataLoader seeds it per worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torch import Tensor

from discorep.data.datasets import CocoDataset
from discorep.data.images import BadImageError
from discorep.data.labelmaps import resize_nearest
from discorep.data.semantic import IGNORE, CocoSemantic, VocLayout, open_semantic
from discorep.errors import DatasetError, UsageError

__all__ = ["IGNORE", "DetectionSet", "SegmentationSet", "check_same_categories", "detection_collate",
           "segmentation_collate"]


def _to_tensor(image) -> Tensor:
    """PIL RGB → float32 (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)


def _flip_now() -> bool:
    return bool(torch.rand(()) < 0.5)


# ------------------------------------------------------------------------------------------ detection


def _ann_rle(segm: Any, h: int, w: int) -> dict | None:
    """The annotation's mask as one compressed RLE (None: a polygon list with no polygon of 3+ points)."""
    if isinstance(segm, list):
        polys = [p for p in segm if len(p) >= 6]  # the rule CocoDataset rasterises with
        return mask_utils.merge(mask_utils.frPyObjects(polys, h, w)) if polys else None
    if isinstance(segm["counts"], list):
        return mask_utils.frPyObjects(segm, h, w)
    return segm


def _ann_geometry(ann: dict, h: int, w: int) -> tuple[tuple[float, float, float, float], float]:
    """(x0, y0, x1, y1) box — the json's bbox, else the mask's tight box — and the mask area in pixels.

    The RLE is only built where the json lacks bbox or area (real COCO has both)."""
    rle = None
    if "bbox" not in ann or "area" not in ann:
        rle = _ann_rle(ann["segmentation"], h, w)
    elif isinstance(ann["segmentation"], list) and not any(len(p) >= 6 for p in ann["segmentation"]):
        return (0.0, 0.0, 0.0, 0.0), 0.0  # no polygon to rasterise: an empty mask whatever bbox says
    if "bbox" in ann:
        x, y, bw, bh = (float(v) for v in ann["bbox"])
    else:
        x, y, bw, bh = (float(v) for v in mask_utils.toBbox(rle)) if rle is not None else (0.0,) * 4
    area = float(ann["area"]) if "area" in ann else float(mask_utils.area(rle)) if rle is not None else 0.0
    return (x, y, x + bw, y + bh), area


class DetectionSet(torch.utils.data.Dataset):
    """COCO instances → ``(image float32 (3, H, W) in [0, 1], target)`` for torchvision's detection models.

    ``target``: ``boxes`` float32 (T, 4) xyxy, ``labels`` int64 (T,) in 1..C (label k+1 = ``cat_ids[k]``),
    ``masks`` uint8 (T, H, W), ``image_id`` int. An unreadable image gives ``None``
    (`detection_collate` drops and counts it). ``coco`` is the pycocotools COCO of the json (for
    COCOeval), with ``bbox``/``area``/``iscrowd`` filled in where the json lacks them.
    """

    def __init__(self, ann_file: str | Path, image_root: str | Path | None = None, *, train: bool,
                 cat_ids: list[int] | None = None, min_box: float = 1.0) -> None:
        if not min_box > 0:
            raise UsageError(f"the smallest box side must be positive (torchvision refuses empty boxes), got {min_box}")
        self.ann_file = Path(ann_file)
        self.train, self.min_box = train, float(min_box)
        self._data = CocoDataset(self.ann_file, Path(image_root) if image_root else self.ann_file.parent / "images")
        self.coco = self._data.coco
        self.categories: dict[int, str] = dict(self._data.categories)  # this json's {id: name}
        self.cat_ids = sorted(self.categories) if cat_ids is None else [int(c) for c in cat_ids]
        self._label_of = {c: k + 1 for k, c in enumerate(self.cat_ids)}
        self.image_ids: list[int] = list(self._data.image_ids)
        self.counts: dict[str, Any] = {"images": len(self.image_ids), "negatives": 0, "instances": 0,
                                       "crowd_ignored": 0, "degenerate_skipped": 0}
        # Per image: (position in the image's annotation list, box) of each instance used as a target.
        self._targets: list[list[tuple[int, tuple[float, float, float, float]]]] = []
        per_category = dict.fromkeys(self.cat_ids, 0)
        for info in self._data.images:
            kept = self._scan_image(info, per_category)
            self.counts["negatives"] += not kept
            self._targets.append(kept)
        self.counts["categories_without_training_instances"] = [
            self.categories.get(c, str(c)) for c in self.cat_ids if per_category[c] == 0]

    @property
    def num_classes(self) -> int:
        """Foreground categories + 1 (torchvision's convention: label 0 is the background)."""
        return len(self.cat_ids) + 1

    def _scan_image(self, info: dict, per_category: dict[int, int]) -> list:
        """Sort one image's annotations into targets, crowd and degenerate; fill COCOeval's fields."""
        h, w = int(info["height"]), int(info["width"])
        kept = []
        for t, ann in enumerate(self.coco.imgToAnns.get(info["id"], [])):
            box, area = _ann_geometry(ann, h, w)
            # COCOeval reads bbox, area and iscrowd of every ground-truth annotation.
            ann.setdefault("bbox", [box[0], box[1], box[2] - box[0], box[3] - box[1]])
            ann.setdefault("area", area)
            ann.setdefault("iscrowd", 0)
            if ann["iscrowd"]:
                self.counts["crowd_ignored"] += 1
                continue
            if int(ann["category_id"]) not in self._label_of:
                raise DatasetError(
                    f"{self.ann_file}: annotation id {ann['id']} has category id {ann['category_id']}, which is "
                    f"not among the training categories {self.cat_ids}; use jsons with the same category list")
            if box[2] - box[0] < self.min_box or box[3] - box[1] < self.min_box:
                self.counts["degenerate_skipped"] += 1
                continue
            kept.append((t, box))
            per_category[int(ann["category_id"])] += 1
            self.counts["instances"] += 1
        return kept

    def __len__(self) -> int:
        return len(self.image_ids)

    def path(self, i: int) -> Path:
        return self._data.path(i)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Any]] | None:
        try:
            item = self._data[i]
        except BadImageError:
            return None
        keep = self._targets[i]
        pos = [t for t, _ in keep]
        image = _to_tensor(item["image"])
        h, w = image.shape[1:]
        masks = torch.from_numpy(item["masks"][pos]).reshape(len(pos), h, w)
        boxes = torch.tensor([box for _, box in keep], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([self._label_of[int(c)] for c in item["category_ids"][pos]], dtype=torch.int64)
        if self.train and _flip_now():
            image, masks = image.flip(-1), masks.flip(-1)
            boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
        return image, {"boxes": boxes, "labels": labels, "masks": masks, "image_id": int(item["image_id"])}


def check_same_categories(train: DetectionSet, val: DetectionSet) -> None:
    """DatasetError (one line) when the two jsons' category lists differ in ids or names."""
    a, b = train.categories, val.categories
    parts = []
    for what, only in (("only in the training json", sorted(set(a) - set(b))),
                       ("only in the validation json", sorted(set(b) - set(a)))):
        if only:
            names = ", ".join(f"{c} ({(a if c in a else b)[c]})" for c in only)
            parts.append(f"{what}: {names}")
    renamed = [f"{c} is {a[c]!r} vs {b[c]!r}" for c in sorted(set(a) & set(b)) if a[c] != b[c]]
    if renamed:
        parts.append("renamed: " + ", ".join(renamed))
    if parts:
        raise DatasetError(f"categories of {train.ann_file} and {val.ann_file} differ ({'; '.join(parts)}); "
                           "train and validate on jsons with the same category list")


def detection_collate(items: Sequence) -> tuple[list[Tensor], list[dict], int]:
    """Lists of images and targets (sizes differ; the model batches them), and how many items were None."""
    good = [it for it in items if it is not None]
    return [im for im, _ in good], [t for _, t in good], len(items) - len(good)


# ------------------------------------------------------------------------------------------ segmentation


class SegmentationSet(torch.utils.data.Dataset):
    """``(image float32 (3, h, w) in [0, 1], labels int64 (h, w))``, ids ``0..num_classes-1``, ``-1`` = ignore.

    ``train``: scale by a uniform draw from ``scale_range``, crop ``crop_size``² at a random place (first
    padded bottom/right with 0 / ignore where the scaled image is smaller), flip with p = 0.5. Otherwise
    the whole image at its own size. A validation set passes the training set's ``num_classes``.
    An unreadable image gives ``None`` (the loop drops and counts it); a bad label file raises DatasetError.
    """

    def __init__(self, path: str | Path, images: str | Path | None = None, split: str | None = None, *,
                 train: bool, crop_size: int = 512, scale_range: tuple[float, float] = (0.5, 2.0),
                 num_classes: int | None = None) -> None:
        if crop_size < 1:
            raise UsageError(f"crop size must be a positive number of pixels, got {crop_size}")
        lo, hi = (float(s) for s in scale_range)
        if not 0 < lo <= hi:
            raise UsageError(f"scale range must be 0 < low <= high, got {tuple(scale_range)}")
        self.data = open_semantic(path, images, split)
        self.train, self.crop_size, self.scale_range = train, int(crop_size), (lo, hi)
        own = self.data.num_classes
        if num_classes is not None and num_classes != own and self._declares_classes():
            raise DatasetError(f"{path} declares {own} classes but the training set has {num_classes}; "
                               "train and validate on the same class list")
        self.num_classes = own if num_classes is None else int(num_classes)
        names = list(self.data.class_names[: self.num_classes])
        # A VOC folder without classes.txt counts classes up to its largest id: pad with the ids' names.
        self.class_names = names + [str(c) for c in range(len(names), self.num_classes)]

    def _declares_classes(self) -> bool:
        """Whether the class list is stated (COCO categories, classes.txt) rather than inferred from ids."""
        return isinstance(self.data, CocoSemantic) or (self.data.root / "classes.txt").is_file()

    def __len__(self) -> int:
        return len(self.data)

    def _label_file(self, i: int) -> str:
        if isinstance(self.data, VocLayout):
            return str(self.data.root / "SegmentationClass" / f"{self.data.ids[i]}.png")
        return str(self.data.path(i))

    def _check_labels(self, i: int, labels: np.ndarray) -> None:
        bad = (labels >= self.num_classes) | (labels < IGNORE)
        if bad.any():
            value = int(labels[bad].max())
            raise DatasetError(
                f"{self._label_file(i)}: label value {value} is not a class id (0..{self.num_classes - 1}, "
                "255 = ignore); list every class in classes.txt beside JPEGImages/ (one name a line), "
                "or set those pixels to 255")

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor] | None:
        try:
            image, labels = self.data.load(i)
        except BadImageError:
            return None
        self._check_labels(i, labels)
        x, y = _to_tensor(image), torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
        return self._augment(x, y) if self.train else (x, y)

    def _augment(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Random scale, pad to at least the crop, random crop, random flip."""
        lo, hi = self.scale_range
        s = lo + (hi - lo) * float(torch.rand(()))
        h, w = y.shape
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        if (nh, nw) != (h, w):
            x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=True)[0].clamp_(0.0, 1.0)
            y = resize_nearest(y, nh, nw)
        c = self.crop_size
        ph, pw = max(c - nh, 0), max(c - nw, 0)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), value=0.0)
            y = F.pad(y, (0, pw, 0, ph), value=IGNORE)
        top = int(torch.randint(0, y.shape[0] - c + 1, ()))
        left = int(torch.randint(0, y.shape[1] - c + 1, ()))
        x, y = x[:, top : top + c, left : left + c], y[top : top + c, left : left + c]
        if _flip_now():
            x, y = x.flip(-1), y.flip(-1)
        return x.contiguous(), y.contiguous()


def segmentation_collate(items: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Stack to images (B, 3, h, w) and labels (B, h, w): training crops share a size; validate with B = 1.

    The items must be real ones: drop the ``None`` of unreadable images (and count them) first."""
    sizes = {tuple(y.shape) for _, y in items}
    if len(sizes) > 1:
        raise ValueError(f"items of one batch differ in size {sorted(sizes)}: use batch size 1 for full images")
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])
