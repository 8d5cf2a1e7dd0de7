"""An annotated set of real photos for object discovery, built offline from scikit-image's pictures.

No bundled photo comes with instance masks, so the masks are made where they can be trusted:

* ``coins`` (a real photo of 24 coins on a flat background): instance masks by the watershed recipe
  of scikit-image's own coins tutorial (Sobel elevation, markers from two grey levels, holes filled,
  touching coins separated by a distance-transform watershed, specks removed);
* composites: those coin cut-outs (real pixels with their masks) pasted, 1 to 4 per image at 30-55 %
  of the image side, onto random crops of other real photos (camera, moon, clock, retina,
  motorcycle). A pasted coin's mask is exact by construction; what stays visible after later pastes
  is what is annotated.

Only the composites are in the set: in ``coins`` itself a coin is ~20 px wide at the 192-px evaluation
size, about one cell of a stride-16 feature map, which no feature-grid method can outline.

None of these pictures is used by the training scenes (their textures come from astronaut, chelsea,
coffee, rocket, immunohistochemistry, hubble and brick/grass/gravel), so the set measures discovery
on photos a demo network never saw. Deterministic for a seed; ~1 s to build.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from discorep.apps.demodata.photos import random_square_crop

_BACKGROUND_PHOTOS = ("camera", "moon", "clock", "retina", "motorcycle")
_VERSION = 2


def coin_instances() -> tuple[np.ndarray, np.ndarray]:
    """(coins image (H, W) uint8, instance labels (H, W) int32, 0 = background)."""
    from skimage import data, feature, filters, segmentation

    image = data.coins()
    elevation = filters.sobel(image)
    markers = np.zeros_like(image, dtype=np.int32)
    markers[image < 30] = 1
    markers[image > 150] = 2
    foreground = segmentation.watershed(elevation, markers) == 2
    foreground = ndimage.binary_fill_holes(foreground)
    parts, _ = ndimage.label(foreground)
    foreground &= (np.bincount(parts.ravel()) >= 100)[parts]  # drop specks (< 100 px)
    foreground[parts == 0] = False
    distance = ndimage.distance_transform_edt(foreground)
    peaks = feature.peak_local_max(distance, min_distance=12, labels=ndimage.label(foreground)[0],
                                   exclude_border=False)
    seeds = np.zeros_like(markers)
    seeds[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = segmentation.watershed(-distance, seeds, mask=foreground)
    return image, labels.astype(np.int32)


def _rgb(img: np.ndarray) -> np.ndarray:
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]


def _backgrounds() -> list[np.ndarray]:
    from skimage import data

    out = []
    for name in _BACKGROUND_PHOTOS:
        img = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
        out.append(_rgb(np.asarray(img)))
    return out


def _cutouts(image: np.ndarray, labels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(RGB crop, mask crop) of every coin, from its bounding box."""
    out = []
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is not None:
            out.append((_rgb(image[box]), labels[box] == i))
    return out


def _composite(rng: np.random.Generator, backgrounds: list, cutouts: list, size: int) -> tuple[np.ndarray, list]:
    bg = backgrounds[rng.integers(len(backgrounds))]
    canvas = random_square_crop(rng, bg, size // 2, min(bg.shape[:2]) + 1, (size, size)).copy()
    owner = np.zeros((size, size), np.int32)
    for k in range(1, int(rng.integers(1, 5)) + 1):
        rgb, mask = cutouts[rng.integers(len(cutouts))]
        scale = rng.uniform(0.30, 0.55) * size / max(mask.shape)
        h, w = max(2, round(mask.shape[0] * scale)), max(2, round(mask.shape[1] * scale))
        rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 127
        top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
        region = (slice(top, top + h), slice(left, left + w))
        canvas[region][mask] = rgb[mask]
        owner[region][mask] = k
    return canvas, [owner == k for k in range(1, owner.max() + 1) if (owner == k).sum() >= 16]


def _annotation(mask: np.ndarray, image_id: int, ann_id: int) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    ys, xs = np.nonzero(mask)
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "segmentation": rle,
            "area": int(mask.sum()), "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]}


def make_photo_objects(out_dir: str | os.PathLike, n_composites: int = 48, seed: int = 3,
                       size: int = 192) -> Path:
    """Write ``out_dir/images/*.png`` + ``out_dir/annotations.json`` (COCO, one category "coin").

    Reuses what is there when it was built with the same parameters.
    """
    out = Path(out_dir)
    params = {"version": _VERSION, "n_composites": n_composites, "seed": seed, "size": size}
    marker = out / "photo_objects.json"
    if marker.exists() and json.loads(marker.read_text()) == params:
        return out
    (out / "images").mkdir(parents=True, exist_ok=True)
    coins, labels = coin_instances()
    items = []
    rng = np.random.default_rng(seed)
    backgrounds, cutouts = _backgrounds(), _cutouts(coins, labels)
    for i in range(n_composites):
        canvas, masks = _composite(rng, backgrounds, cutouts, size)
        items.append((f"composite_{i:03d}.png", canvas, masks))
    images, annotations = [], []
    for image_id, (name, pixels, masks) in enumerate(items, start=1):
        Image.fromarray(pixels).save(out / "images" / name)
        images.append({"id": image_id, "file_name": name, "height": pixels.shape[0], "width": pixels.shape[1]})
        annotations += [_annotation(m, image_id, len(annotations) + j + 1) for j, m in enumerate(masks)]
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "coin"}]}
    (out / "annotations.json").write_text(json.dumps(coco))
    marker.write_text(json.dumps(params))
    return out
