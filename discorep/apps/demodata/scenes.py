"""Demo scenes (COCO) and short videos (DAVIS layout): textured shapes on textured backgrounds.

Objects are painted back to front; each instance mask is exactly the set of pixels the object still
owns after painting, so masks are disjoint and pixel-exact. Everything derives from ``np.random.default_rng((seed, i))``
and scikit-image's bundled images, so the same arguments give byte-identical files.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage
from tqdm import tqdm

from discorep.apps.demodata import photos
from discorep.data.palette import davis_palette

__all__ = ["CATEGORIES", "SceneStyle", "davis_palette", "make_scenes", "make_videos", "photo_patch", "random_texture"]

CATEGORIES: tuple[str, ...] = ("disk", "ellipse", "rectangle", "triangle", "star", "ring")  # COCO ids 1..6
_BACKGROUNDS = ("brick", "grass", "gravel")
# Area of each shape at radius 1 (aspect 0.6): radii are scaled by sqrt(pi / area) so all
# categories cover similar areas and "dominant_category" is not almost always "disk".
_UNIT_AREA = (np.pi, 1.88, 1.59, 1.30, 1.73, 2.19)
_TEX = 64  # side of an object's texture patch (object-local coordinates)
VERSION = 2  # of the demo data (2: + scenes_photo_train, pretrain_mix); in every COCO file's info


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated random colour, uint8-valued float (3,)."""
    import colorsys

    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.45, 1.0))
    return np.round(np.array(rgb) * 255.0)


def random_texture(rng: np.random.Generator) -> np.ndarray:
    """A (_TEX, _TEX, 3) float texture: flat, stripes, checker, noise or a photo crop."""
    has_photos = bool(photos.available(photos.TEXTURE_PHOTOS))
    kinds = ["flat", "stripes", "checker", "noise"] + (["photo"] if has_photos else [])
    kind = kinds[rng.integers(len(kinds))]
    c0, c1 = _colour(rng), _colour(rng)
    yy, xx = np.mgrid[0:_TEX, 0:_TEX] / _TEX
    if kind == "flat":
        return np.broadcast_to(c0, (_TEX, _TEX, 3)).astype(np.float64)
    if kind == "stripes":
        a, f = rng.uniform(0, np.pi), rng.uniform(3, 8)
        sel = np.sin(2 * np.pi * f * (xx * np.cos(a) + yy * np.sin(a))) > 0
    elif kind == "checker":
        f = int(rng.integers(3, 8))
        sel = (np.floor(xx * f) + np.floor(yy * f)) % 2 == 1
    elif kind == "noise":
        t = ndimage.gaussian_filter(rng.standard_normal((_TEX, _TEX)), rng.uniform(1.5, 4))
        t = (t - t.min()) / (np.ptp(t) + 1e-12)
        return c0 * (1 - t[..., None]) + c1 * t[..., None]
    else:
        return photo_patch(rng)
    return np.where(sel[..., None], c0, c1)


def photo_patch(rng: np.random.Generator) -> np.ndarray:
    """A random square crop of a bundled colour photo, resized to the texture size."""
    names = photos.available(photos.TEXTURE_PHOTOS)
    img = photos.bundled_photo(names[rng.integers(len(names))])[..., :3]
    return photos.random_square_crop(rng, img, 64, min(img.shape[:2]) // 2, (_TEX, _TEX)).astype(np.float64)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An (h, w, 3) float background: a tinted bundled texture, or smooth procedural noise."""
    names = photos.available(_BACKGROUNDS)
    c0, c1 = _colour(rng) * 0.6, _colour(rng)
    if names and rng.random() < 0.75:
        tex = photos.bundled_photo(names[rng.integers(len(names))]).astype(np.float64)
        if tex.shape[0] < h or tex.shape[1] < w:
            zoom = max(h / tex.shape[0], w / tex.shape[1])
            tex = ndimage.zoom(tex, zoom, order=1)
        y, x = int(rng.integers(0, tex.shape[0] - h + 1)), int(rng.integers(0, tex.shape[1] - w + 1))
        t = tex[y : y + h, x : x + w] / 255.0
    else:
        t = ndimage.gaussian_filter(rng.standard_normal((h, w)), rng.uniform(4, 12))
        t = (t - t.min()) / (np.ptp(t) + 1e-12)
    return c0 * (1 - t[..., None]) + c1 * t[..., None]


@dataclass
class _Obj:
    """One shape: category id (1-based), centre (x, y) in pixels, radius, angle, aspect, texture."""

    category: int
    cx: float
    cy: float
    radius: float
    angle: float
    aspect: float
    texture: np.ndarray


@dataclass(frozen=True)
class SceneStyle:
    """How a scene's background (rng, h, w) -> (h, w, 3) float and each object's texture are drawn."""

    background: Callable[[np.random.Generator, int, int], np.ndarray]
    texture: Callable[[np.random.Generator], np.ndarray]


def _random_obj(rng: np.random.Generator, h: int, w: int, category: int | None = None,
                texture: Callable[[np.random.Generator], np.ndarray] = random_texture) -> _Obj:
    side = min(h, w)
    category = int(rng.integers(1, len(CATEGORIES) + 1)) if category is None else category
    return _Obj(
        category=category,
        cx=rng.uniform(0.1, 0.9) * w,
        cy=rng.uniform(0.1, 0.9) * h,
        radius=rng.uniform(0.11, 0.24) * side * np.sqrt(np.pi / _UNIT_AREA[category - 1]),
        angle=rng.uniform(0, 2 * np.pi),
        aspect=rng.uniform(0.45, 0.75),
        texture=texture(rng),
    )


def _local_coords(o: _Obj, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in the object's rotated frame, in units of its radius."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    x, y = xx - o.cx, yy - o.cy
    c, s = np.cos(o.angle), np.sin(o.angle)
    return (c * x + s * y) / o.radius, (-s * x + c * y) / o.radius


def _shape_mask(category: int, u: np.ndarray, v: np.ndarray, aspect: float) -> np.ndarray:
    """Inside test in local unit coordinates; every shape lies within the unit disk."""
    name = CATEGORIES[category - 1]
    rho = np.hypot(u, v)
    if name == "disk":
        return rho <= 1.0
    if name == "ellipse":
        return u**2 + (v / aspect) ** 2 <= 1.0
    if name == "rectangle":
        return (np.abs(u) <= 0.7) & (np.abs(v) <= 0.7 * aspect + 0.15)
    if name == "triangle":  # equilateral, circumradius 1 => inradius 0.5
        angles = np.pi / 2 + 2 * np.pi * np.arange(3) / 3
        return np.all([u * np.cos(a) + v * np.sin(a) <= 0.5 for a in angles], axis=0)
    if name == "star":  # 5 points: radius oscillates between 0.45 and 1 with the polar angle
        phase = (np.arctan2(v, u) * 5 / (2 * np.pi)) % 1.0
        return rho <= 0.45 + 0.55 * np.abs(1 - 2 * phase)
    return (rho <= 1.0) & (rho >= 0.55)  # ring


def _render(o: _Obj, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Mask (h, w) bool and colours (h, w, 3); the texture moves and rotates with the object."""
    u, v = _local_coords(o, h, w)
    mask = _shape_mask(o.category, u, v, o.aspect)
    ti = np.clip(((v + 1) / 2 * _TEX).astype(np.int64), 0, _TEX - 1)
    tj = np.clip(((u + 1) / 2 * _TEX).astype(np.int64), 0, _TEX - 1)
    return mask, o.texture[ti, tj]


def _paint(bg: np.ndarray, objs: list[_Obj]) -> tuple[np.ndarray, np.ndarray]:
    """Paint back to front; returns the image (uint8) and the owner map (-1 = background)."""
    h, w = bg.shape[:2]
    img, owner = bg.copy(), np.full((h, w), -1, dtype=np.int64)
    for k, o in enumerate(objs):
        mask, colours = _render(o, h, w)
        img[mask] = colours[mask]
        owner[mask] = k
    return np.clip(np.round(img), 0, 255).astype(np.uint8), owner


def _scene(
    rng: np.random.Generator, h: int, w: int, n_min: int, n_max: int, style: SceneStyle | None = None
) -> tuple[np.ndarray, list[_Obj], np.ndarray]:
    """Sample objects until at least ``n_min`` remain visible; drop near-invisible ones."""
    background, texture = (style.background, style.texture) if style else (_background, random_texture)
    min_area = max(16, int(0.004 * h * w))
    bg = background(rng, h, w)
    for _ in range(50):
        objs = [_random_obj(rng, h, w, texture=texture) for _ in range(int(rng.integers(n_min, n_max + 1)))]
        while True:  # removing a hidden object only grows the others, so this terminates
            img, owner = _paint(bg, objs)
            areas = np.bincount(owner[owner >= 0], minlength=len(objs))
            keep = [o for o, a in zip(objs, areas) if a >= min_area]
            if len(keep) == len(objs):
                break
            objs = keep
        if len(objs) >= n_min:
            return img, objs, owner
    raise RuntimeError("could not place enough visible objects; use a larger image_size")


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def make_scenes(
    out_dir: str | os.PathLike, n_images: int, *, seed: int, image_size: tuple[int, int] = (192, 192),
    min_objects: int = 2, max_objects: int = 5, style: SceneStyle | None = None,
) -> Path:
    """Write ``n_images`` scenes to ``out_dir/images/scene_XXXXXX.png`` and COCO RLE annotations
    (plus per-image ``dominant_category``) to ``out_dir/annotations.json``, which is returned.
    ``image_size`` is (H, W). ``style`` replaces how backgrounds and object textures are drawn
    (default: tinted textures and procedural patterns; see `discorep.apps.demodata.photo_scenes`)."""
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    h, w = image_size
    out_dir = Path(out_dir)
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    for stale in img_dir.glob("scene_*.png"):
        stale.unlink()
    images, anns = [], []
    # disable=None: no bar when stderr is not a terminal (no progress debris in logs)
    for i in tqdm(range(n_images), desc=f"scenes {out_dir.name}", disable=True if n_images < 64 else None,
                  leave=False):
        img, objs, owner = _scene(np.random.default_rng((seed, i)), h, w, min_objects, max_objects, style)
        name = f"scene_{i:06d}.png"
        Image.fromarray(img).save(img_dir / name)
        areas = [int((owner == k).sum()) for k in range(len(objs))]
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w,
                       "dominant_category": objs[int(np.argmax(areas))].category})
        for k, o in enumerate(objs):
            rle = _rle(owner == k)
            bbox = mask_utils.toBbox({**rle, "counts": rle["counts"].encode("ascii")})
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": o.category,
                         "segmentation": rle, "area": areas[k], "iscrowd": 0,
                         "bbox": [float(b) for b in bbox]})
    coco = {
        "info": {"description": "discorep synthetic scenes", "seed": seed, "version": VERSION},
        "images": images, "annotations": anns, "licenses": [],
        "categories": [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(CATEGORIES)],
    }
    ann_file = out_dir / "annotations.json"
    ann_file.write_text(json.dumps(coco, sort_keys=True), encoding="utf-8")
    return ann_file


def _trajectory(rng: np.random.Generator, h: int, w: int, n_frames: int, category: int) -> list[_Obj]:
    """An object moving in a straight line with smooth scale and rotation change."""
    start = _random_obj(rng, h, w, category)
    end_x, end_y = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
    scale_end, spin = rng.uniform(0.8, 1.25), rng.uniform(-0.5, 0.5)
    frames = []
    for t in np.linspace(0.0, 1.0, n_frames):
        frames.append(_Obj(category, start.cx + t * (end_x - start.cx), start.cy + t * (end_y - start.cy),
                           start.radius * scale_end**t, start.angle + t * spin, start.aspect, start.texture))
    return frames


def _video(rng: np.random.Generator, h: int, w: int, n_frames: int, n_objects: int) -> tuple[list, list]:
    """Frames (uint8 RGB) and label maps (uint8, 0 = background, 1..n = objects)."""
    min_area = max(16, int(0.005 * h * w))
    big_bg = _background(rng, h + 16, w + 16)  # camera pans by up to 16 px over the clip
    pan = rng.integers(0, 17, size=2)
    for _ in range(50):
        cats = rng.choice(len(CATEGORIES), size=n_objects, replace=False) + 1
        tracks = [_trajectory(rng, h, w, n_frames, int(c)) for c in cats]
        _, owner0 = _paint(big_bg[:h, :w], [tr[0] for tr in tracks])
        if np.bincount(owner0[owner0 >= 0], minlength=n_objects).min() >= min_area:
            break  # every object is clearly visible in the first (reference) frame
    else:
        raise RuntimeError("could not make every object visible in frame 0; use a larger image_size")
    frames, labels = [], []
    for t in range(n_frames):
        f = t / max(n_frames - 1, 1)
        y, x = (int(round(p * f)) for p in pan)
        img, owner = _paint(big_bg[y : y + h, x : x + w], [tr[t] for tr in tracks])
        frames.append(img)
        labels.append((owner + 1).astype(np.uint8))
    return frames, labels


def make_videos(
    out_dir: str | os.PathLike, n_videos: int, *, seed: int, n_frames: int = 12,
    image_size: tuple[int, int] = (128, 192), n_objects: tuple[int, int] = (2, 3),
) -> Path:
    """Write DAVIS-2017-layout clips (JPEG frames, palette PNG masks, ImageSets/2017/val.txt).

    Returns ``out_dir``. ``image_size`` is (H, W); each clip has ``n_objects[0]..n_objects[1]``
    objects of distinct categories, all visible in frame 0."""
    lo, hi = n_objects
    if not 1 <= lo <= hi <= len(CATEGORIES):
        raise ValueError(f"n_objects must satisfy 1 <= lo <= hi <= {len(CATEGORIES)}, got {n_objects}")
    h, w = image_size
    out_dir = Path(out_dir)
    palette, names = davis_palette(), []
    for v in tqdm(range(n_videos), desc="videos", disable=True if n_videos < 4 else None, leave=False):
        rng = np.random.default_rng((seed, v))
        frames, labels = _video(rng, h, w, n_frames, int(rng.integers(lo, hi + 1)))
        name = f"demo-{v:03d}"
        names.append(name)
        jpg_dir, ann_dir = out_dir / "JPEGImages/480p" / name, out_dir / "Annotations/480p" / name
        for d in (jpg_dir, ann_dir):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        for t, (img, lab) in enumerate(zip(frames, labels)):
            Image.fromarray(img).save(jpg_dir / f"{t:05d}.jpg", quality=95)
            png = Image.fromarray(lab)
            png.putpalette(palette)  # turns the L image into mode P without touching the ids
            png.save(ann_dir / f"{t:05d}.png")
    sets = out_dir / "ImageSets/2017"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "val.txt").write_text("".join(n + "\n" for n in names), encoding="utf-8")
    return out_dir
