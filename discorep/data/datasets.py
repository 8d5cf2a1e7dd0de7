"""Datasets: a recursive image folder and COCO-style instance annotations.

Both return plain dicts with a PIL RGB image (decoded by :func:`~discorep.data.images.load_rgb`);
augmentation and tensor conversion belong to ``data.views``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from .images import BadImageError, DatasetError, list_images, load_rgb

__all__ = ["BadImageError", "CocoDataset", "DatasetError", "ImageFolder"]


def _check_index(i: int, n: int) -> int:
    """Normalise a (possibly negative) index; IndexError lets ``for x in ds`` terminate."""
    i = int(i)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"index {i} out of range for dataset of length {n}")
    return i


class ImageFolder:
    """Every image under ``root`` (recursive, sorted; see :func:`list_images`).

    When every image sits inside a first-level sub-folder, those folder names are the
    ``classes`` (sorted) and ``labels[i]`` is the class index of ``paths[i]``; otherwise
    both are ``None`` and items carry ``label = -1``.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.paths: list[Path] = list_images(self.root)
        rel = [p.relative_to(self.root) for p in self.paths]
        self.classes: list[str] | None = None
        self.labels: list[int] | None = None
        if all(len(r.parts) >= 2 for r in rel):
            self.classes = sorted({r.parts[0] for r in rel})
            index = {name: k for k, name in enumerate(self.classes)}
            self.labels = [index[r.parts[0]] for r in rel]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = _check_index(i, len(self))
        label = -1 if self.labels is None else self.labels[i]
        return {"image": load_rgb(self.paths[i]), "index": i, "label": label, "path": str(self.paths[i])}


_REQUIRED_TOP = ("images", "annotations", "categories")
_REQUIRED_IMAGE = ("id", "file_name", "width", "height")
_REQUIRED_ANN = ("id", "image_id", "category_id", "segmentation")


class CocoDataset:
    """COCO instance annotations (polygons, RLE, uncompressed RLE) over ``image_root``.

    Items: ``image`` (PIL RGB), ``index``, ``image_id``, ``path``, ``masks`` uint8 (T, H, W)
    with the visible instance pixels, ``category_ids`` int64 (T,), ``iscrowd`` bool (T,),
    ``ann_ids`` int64 (T,). Images are in the json's ``images`` order; instances in the
    json's ``annotations`` order. Crowd annotations are kept (filter with ``iscrowd``).
    """

    def __init__(self, ann_file: str | os.PathLike, image_root: str | os.PathLike) -> None:
        self.ann_file = Path(ann_file)
        self.image_root = Path(image_root)
        data = _read_json(self.ann_file)
        _validate(data, self.ann_file)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()
        self.images: list[dict[str, Any]] = list(data["images"])
        self.image_ids: list[int] = [int(im["id"]) for im in self.images]
        self.categories: dict[int, str] = {
            int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]
        }

    def __len__(self) -> int:
        return len(self.images)

    def path(self, i: int) -> Path:
        """File path of image ``i``."""
        return self.image_root / self.images[_check_index(i, len(self))]["file_name"]

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = _check_index(i, len(self))
        info = self.images[i]
        path = self.path(i)
        image = load_rgb(path)
        h, w = int(info["height"]), int(info["width"])
        if image.size != (w, h):
            raise DatasetError(
                f"{self.ann_file}: image id {info['id']} ({path}) is {image.size[0]}x{image.size[1]} after "
                f"EXIF orientation but the annotation says {w}x{h}; fix width/height in the json"
            )
        anns = self.coco.imgToAnns.get(info["id"], [])
        masks = np.zeros((len(anns), h, w), dtype=np.uint8)
        for t, ann in enumerate(anns):
            masks[t] = self._ann_to_mask(ann, h, w)
        return {
            "image": image,
            "index": i,
            "image_id": int(info["id"]),
            "path": str(path),
            "masks": masks,
            "category_ids": np.array([a["category_id"] for a in anns], dtype=np.int64),
            "iscrowd": np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
            "ann_ids": np.array([a["id"] for a in anns], dtype=np.int64),
        }

    def _ann_to_mask(self, ann: dict[str, Any], h: int, w: int) -> np.ndarray:
        """Rasterise one annotation into an (h, w) uint8 0/1 mask via pycocotools."""
        segm = ann["segmentation"]
        if isinstance(segm, list):
            # Fewer than 3 points has no area; pycocotools would misread a 4-number list as a box.
            polys = [p for p in segm if len(p) >= 6]
            if not polys:
                return np.zeros((h, w), dtype=np.uint8)
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        elif isinstance(segm["counts"], list):
            rle = mask_utils.frPyObjects(segm, h, w)
        else:
            rle = dict(segm)
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
        return decode_rle(rle)


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """pycocotools RLE -> (h, w) uint8 mask, without pycocotools' numpy-2 deprecation noise."""
    with warnings.catch_warnings():
        # pycocotools' Cython array wrapper predates numpy 2's copy keyword; harmless here.
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        return np.ascontiguousarray(mask_utils.decode(rle), dtype=np.uint8)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(
            f"annotation file {str(path)!r} does not exist; check the path (or build the demo data)"
        )
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc}); re-generate or re-download it") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: top level must be a JSON object with images/annotations/categories")
    return data


def _validate(data: dict[str, Any], path: Path) -> None:
    """Check the fields CocoDataset relies on, naming the offending entry."""
    for key in _REQUIRED_TOP:
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: missing or non-list top-level field {key!r}")
    images = {}
    for k, im in enumerate(data["images"]):
        for field in _REQUIRED_IMAGE:
            if field not in im:
                raise DatasetError(f"{path}: images[{k}] (id {im.get('id')}) lacks field {field!r}")
        if int(im["width"]) <= 0 or int(im["height"]) <= 0:
            raise DatasetError(f"{path}: image id {im['id']} has a non-positive width/height")
        images[im["id"]] = im
    cat_ids = set()
    for k, cat in enumerate(data["categories"]):
        if "id" not in cat:
            raise DatasetError(f"{path}: categories[{k}] lacks field 'id'")
        cat_ids.add(cat["id"])
    for k, ann in enumerate(data["annotations"]):
        _validate_ann(ann, k, images, cat_ids, path)


def _validate_ann(ann: dict, k: int, images: dict, cat_ids: set, path: Path) -> None:
    where = f"{path}: annotation id {ann.get('id', f'<none> (annotations[{k}])')}"
    for field in _REQUIRED_ANN:
        if field not in ann:
            raise DatasetError(f"{where} lacks field {field!r}")
    if ann["image_id"] not in images:
        raise DatasetError(f"{where} refers to unknown image_id {ann['image_id']}")
    if ann["category_id"] not in cat_ids:
        raise DatasetError(f"{where} refers to unknown category_id {ann['category_id']}")
    segm = ann["segmentation"]
    if isinstance(segm, list):
        for poly in segm:
            if not isinstance(poly, list) or len(poly) % 2:
                raise DatasetError(
                    f"{where}: polygons must be flat [x0, y0, x1, y1, ...] lists of even length"
                )
        return
    if not isinstance(segm, dict) or "counts" not in segm or "size" not in segm:
        raise DatasetError(
            f"{where}: segmentation must be a polygon list or an RLE dict with 'counts' and 'size'"
        )
    im = images[ann["image_id"]]
    if [int(v) for v in segm["size"]] != [int(im["height"]), int(im["width"])]:
        raise DatasetError(
            f"{where}: RLE size {segm['size']} differs from image size [{im['height']}, {im['width']}]"
        )
