"""Pictures of segmentations: colour overlays of label maps on images (training and `discover`)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from discorep.data.labelmaps import resize_nearest
from discorep.data.views import IMAGENET_MEAN, IMAGENET_STD

_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def palette(n: int, seed: int = 7) -> np.ndarray:
    """n distinct-ish colours (uint8 (n, 3)); id −1 is drawn black."""
    rng = np.random.default_rng(seed)
    hues = (np.arange(n) * 0.618033988749895) % 1.0
    sat = 0.55 + 0.4 * rng.random(n)
    val = 0.75 + 0.25 * rng.random(n)
    h6 = hues * 6
    i = np.floor(h6).astype(int) % 6
    f = h6 - np.floor(h6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    table = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)]
    rgb = np.stack([np.choose(i, [c[k] for c in table]) for k in range(3)], axis=1)
    return (rgb * 255).astype(np.uint8)


def denormalize(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) ImageNet-normalised tensor → uint8 (H, W, 3)."""
    img = (x.detach().float().cpu() * _STD + _MEAN).clamp(0, 1)
    return (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend a colour per segment over the image and draw segment boundaries in white."""
    labels = resize_nearest(np.asarray(labels), *image.shape[:2])
    n = int(labels.max()) + 1 if labels.size else 1
    # Both terms of image·(1 − α) + colour·α read from tables (id −1 → the appended black row), the
    # same float64 products as computing them per pixel, so the same picture in ~3/4 of the time.
    colour = np.concatenate([palette(max(n, 1)) * alpha, np.zeros((1, 3))])
    out = ((np.arange(256) * (1 - alpha))[image] + colour[labels]).astype(np.uint8)
    edge = np.zeros(labels.shape, bool)
    np.not_equal(labels[:, 1:], labels[:, :-1], out=edge[:, 1:])
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    out[edge] = 255
    return out


TITLE_HEIGHT = 16  # the strip above a titled picture (PIL's built-in bitmap font: nothing to download)


def titled(picture: np.ndarray, title: str) -> np.ndarray:
    """`picture` (H, W, 3) under a black strip holding `title` in white."""
    strip = Image.new("RGB", (picture.shape[1], TITLE_HEIGHT))
    ImageDraw.Draw(strip).text((4, 2), title, fill=(255, 255, 255), font=ImageFont.load_default())
    return np.concatenate([np.asarray(strip), picture], axis=0)


def grid_picture(images: list[np.ndarray], labels: list[np.ndarray], tile: int = 160,
                 title: str | None = None) -> Image.Image:
    """Rows of (image, overlay) pairs, `tile` pixels each, laid out in up to 4 pairs per row; `title`
    (e.g. the step and K of a training picture) goes in a strip above them."""
    pairs = []
    for img, lab in zip(images, labels):
        im = np.asarray(Image.fromarray(img).resize((tile, tile), Image.BICUBIC))
        lab_t = resize_nearest(np.asarray(lab), tile, tile)
        pairs.append(np.concatenate([im, overlay(im, lab_t)], axis=1))
    per_row = min(4, max(1, len(pairs)))
    blank = np.zeros_like(pairs[0])
    rows = []
    for r in range(0, len(pairs), per_row):
        row = pairs[r: r + per_row] + [blank] * (per_row - len(pairs[r: r + per_row]))
        rows.append(np.concatenate(row, axis=1))
    grid = np.concatenate(rows, axis=0)
    return Image.fromarray(titled(grid, title) if title else grid)
