"""Unsupervised segmentation by k-means over dense features (Odin A.4).

Images are resized to the evaluation size, encoded, their feature vectors L2-normalised and
clustered per image (seeded k-means, several K at once), and the feature-grid labels upsampled
(nearest) to each image's original size. With a `Refine` (eval/refine.py) superpixel regions are
clustered instead of grid cells and the labels come at the input's resolution.

Border frame: with the convolutions' zero padding a *uniform* image's features differ near the border
(random:resnet18, 448 px, C5: cosine to the centre 0.80, 0.93, 0.98, 0.996 for the first four cells,
1.0000 from the sixth on), so k-means spends a segment on a frame or a border column. Padding the input
(reflect) and cropping the features back only shrinks the difference (still 1e-3 after 192 px at C5,
exactly 0 only after 256 px, i.e. 4.6x the compute at 448 px) and k-means still follows it.
`padding="replicate"` instead pads every convolution by repeating its edge values: a uniform image
then has exactly uniform features at no extra cost (docs/evaluation.md has the measurement).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from discorep.data.labelmaps import resize_nearest
from discorep.discovery.kmeans import batched_kmeans_ks
from discorep.discovery.random import image_seeds
from discorep.errors import UsageError
from discorep.eval.refine import Refine, refine_labels
from discorep.eval.backbone import (
    EvalModel,
    normalize_images,
    resize_for_eval,
)
from discorep.models.dense import dense_features

DEFAULT_KS = (1, 2, 4, 8, 16, 32, 64, 128)  # 255 proposals per image (Odin §3.2)
PADDINGS = ("zeros", "replicate")  # how the encoder's convolutions pad (see the module docstring)


def parse_ks(text: str | Sequence[int]) -> list[int]:
    """"1,2,4" → [1, 2, 4]; each K a positive integer."""
    try:
        values = [int(v) for v in text.split(",")] if isinstance(text, str) else [int(v) for v in text]
    except (TypeError, ValueError):
        values = []  # "abc", "1,,2": the same message as K < 1
    if not values or any(k < 1 for k in values):
        raise UsageError(f"--k must be a comma-separated list of positive integers, got {text!r}")
    return values


def prepare(image: Image.Image, size: int) -> Tensor:
    """PIL RGB → (3, size, size) float in [0, 1]."""
    return resize_for_eval(TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True), size)


@contextmanager
def conv_padding(module: nn.Module, mode: str) -> Iterator[None]:
    """Temporarily pad every padded convolution of `module` with `mode` ("zeros" leaves it as built)."""
    if mode not in PADDINGS:
        raise UsageError(f"--padding must be one of {', '.join(PADDINGS)}, got {mode!r}")
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d) and any(p > 0 for p in m.padding)]
    saved = [m.padding_mode for m in convs]
    try:
        if mode != "zeros":
            for m in convs:
                m.padding_mode = mode  # Conv2d pads with F.pad(mode) then convolves unpadded
        yield
    finally:
        for m, old in zip(convs, saved):
            m.padding_mode = old


@torch.no_grad()
def segment_batch(model: EvalModel, images: Tensor, ks: Sequence[int], features: str = "c5", *,
                  seed: int = 0, image_ids: Tensor | None = None, iters: int = 50, refine: Refine | None = None,
                  padding: str = "zeros", regions_out: list[int] | None = None,
                  superpixels: Future | None = None) -> dict[int, Tensor]:
    """images: (B, 3, S, S) in [0, 1] → {K: (B, h, w) int64 labels on the feature grid}.

    A K larger than the grid's number of points is clamped to it (every point its own segment).
    Seeds are per image (from `seed` and `image_ids`), so results do not depend on the batching. All K
    start from one k-means++ seeding (`batched_kmeans_ks`): seeding is paid once, not once per K.
    With an active `refine` the labels are (B, S, S) instead, painted per superpixel region, and the
    number of regions of each image is appended to `regions_out` when given; `superpixels` are the
    images' superpixels already under way (`refine.start_superpixels`), so they overlap the forward.
    `encode_batch` then `cluster_batch`, which callers may also run apart (discover clusters on a thread).
    """
    feats = encode_batch(model, images, features, padding)
    ids = torch.arange(len(images)) if image_ids is None else image_ids
    labels, counts = cluster_batch(feats, images, ks, image_seeds(seed, ids.to(feats.device)), iters=iters,
                                   refine=refine, superpixels=superpixels)
    if regions_out is not None:
        regions_out.extend(counts)
    return labels


@torch.no_grad()
def encode_batch(model: EvalModel, images: Tensor, features: str = "c5", padding: str = "zeros") -> Tensor:
    """images: (B, 3, S, S) in [0, 1] → (B, D, h, w) dense features on the model's device."""
    device = next(model.encoder.parameters()).device
    with conv_padding(model.encoder, padding):
        return dense_features(model, normalize_images(images.to(device)), features, project="fpn")


@torch.no_grad()  # grad mode is per thread: this may run on a worker thread
def cluster_batch(feats: Tensor, images: Tensor, ks: Sequence[int], seeds: Tensor, *, iters: int = 50,
                  refine: Refine | None = None, superpixels: Future | None = None
                  ) -> tuple[dict[int, Tensor], list[int]]:
    """`segment_batch`'s clustering of features `encode_batch` computed: ({K: labels}, regions per image,
    empty unless refining). `seeds` (B,): one k-means seed per image (`image_seeds`)."""
    B, _, h, w = feats.shape
    if refine is not None and refine.active:
        return refine_labels(feats, images.to(feats.device), ks, refine, seeds, iters=iters, maps=superpixels)
    points = feats.flatten(2).transpose(1, 2)
    clamped = {k: min(k, h * w) for k in ks}
    results = batched_kmeans_ks(points, list(clamped.values()), seed=seeds, iters=iters)
    return {k: results[c].labels.view(B, h, w).cpu() for k, c in clamped.items()}, []


def upsample_nearest(labels: Tensor | np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) grid labels → (height, width) int32 array by `data.labelmaps.resize_nearest`."""
    lab = labels.cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    # Cast the small map, not the upsampled one (a 480×640 int64 → int32 copy per K cost ~1 ms).
    return resize_nearest(lab.astype(np.int32, copy=False), height, width)
