"""BYOL view sampling with tracked crop boxes, plus Odin's spanning view and R2O's raw view.

Every view remembers *where it came from*: an integer pixel box `(x0, y0, x1, y1)` in original-image
coordinates and a horizontal-flip flag (see docs/architecture.md, "Coordinate conventions"). That is all
`discovery.align.align_masks` needs to map any label map into the view grid.

The augmentations are BYOL's asymmetric T1/T2 (Odin appendix table; R2O A.1): random resized crop,
flip, colour jitter, colour dropping, Gaussian blur (p = 1.0 / 0.1), solarisation (p = 0.0 / 0.2).
Parameters are sampled here from one `torch.Generator` per call, never from torchvision's random
transform classes (they draw from the global RNG): with `seed` given, a sample's views are a pure
function of (image, seed), which makes training resume-exact and independent of the worker count.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import Tensor
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The views a method may ask for besides view1/view2 (`PretrainMethod.needs_views`): "span", Odin's
# spanning view v0 (with span_box), and "raw", the un-augmented whole image.
EXTRA_VIEWS = ("span", "raw")


@dataclass
class ViewConfig:
    """Sizes and BYOL augmentation parameters; pairs are (view 1, view 2) where they differ."""

    size: int = 224
    spanning_size: int = 448  # Odin v0: 2x the view size for ResNet/Swin (Odin appendix)
    raw_size: int = 224  # R2O's un-augmented whole-image view
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # sampled log-uniformly
    # The public R2O code passes a flip probability of 100, so both views are always flipped; we use
    # BYOL's 0.5 as both papers state.
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p: tuple[float, float] = (1.0, 0.1)
    blur_kernel: int = 23
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: tuple[float, float] = (0.0, 0.2)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        # YAML gives lists; keep tuples so configs compare and hash the same way.
        for name in ("crop_scale", "crop_ratio", "blur_p", "blur_sigma", "solarize_p", "mean", "std"):
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        for name in ("size", "spanning_size", "raw_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ViewConfig.{name} must be a positive int, got {value!r}")
        if isinstance(self.blur_kernel, bool) or not isinstance(self.blur_kernel, int) \
                or self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise ValueError(f"ViewConfig.blur_kernel must be a positive odd int, got {self.blur_kernel!r}")
        for name in ("flip_p", "jitter_p", "gray_p"):
            _check_prob(name, getattr(self, name))
        for name in ("blur_p", "solarize_p"):
            pair = _check_pair(name, getattr(self, name))
            for p in pair:
                _check_prob(name, p)
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"ViewConfig.{name} must be a number >= 0, got {value!r}")
        if not isinstance(self.hue, (int, float)) or not 0 <= self.hue <= 0.5:
            raise ValueError(f"ViewConfig.hue must be in [0, 0.5], got {self.hue!r}")
        lo, hi = _check_pair("crop_scale", self.crop_scale)
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"ViewConfig.crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale!r}")
        lo, hi = _check_pair("crop_ratio", self.crop_ratio)
        if not 0 < lo <= hi:
            raise ValueError(f"ViewConfig.crop_ratio must satisfy 0 < lo <= hi, got {self.crop_ratio!r}")
        lo, hi = _check_pair("blur_sigma", self.blur_sigma)
        if not 0 < lo <= hi:
            raise ValueError(f"ViewConfig.blur_sigma must satisfy 0 < lo <= hi, got {self.blur_sigma!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or len(value) != 3 or not all(isinstance(v, (int, float)) for v in value):
                raise ValueError(f"ViewConfig.{name} must be 3 numbers (one per RGB channel), got {value!r}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"ViewConfig.std must be > 0, got {self.std!r}")


def _check_prob(name: str, p: object) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"ViewConfig.{name} must be a probability in [0, 1], got {p!r}")


def _check_pair(name: str, value: object) -> tuple[float, float]:
    if not isinstance(value, tuple) or len(value) != 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ValueError(f"ViewConfig.{name} must be a pair of numbers, got {value!r}")
    return float(value[0]), float(value[1])


@dataclass(frozen=True)
class CropBox:
    """An integer pixel crop: rows [top, top+height), columns [left, left+width)."""

    top: int
    left: int
    height: int
    width: int
    fallback: bool  # True when all 10 attempts failed and the central crop was used

    def xyxy(self) -> tuple[float, float, float, float]:
        return float(self.left), float(self.top), float(self.left + self.width), float(self.top + self.height)


def _uniform(lo: float, hi: float, gen: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def sample_crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                    gen: torch.Generator | None) -> CropBox:
    """RandomResizedCrop's box: area ~ U(scale)·H·W, aspect log-uniform in `ratio`, 10 attempts,
    then a central crop clamped to `ratio` (Odin appendix, step 1)."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * _uniform(scale[0], scale[1], gen)
        aspect = math.exp(_uniform(log_lo, log_hi, gen))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=gen))
            left = int(torch.randint(0, width - w + 1, (), generator=gen))
            return CropBox(top, left, h, w, fallback=False)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, max(1, min(height, int(round(width / ratio[0]))))
    elif in_ratio > ratio[1]:
        h, w = height, max(1, min(width, int(round(height * ratio[1]))))
    else:
        w, h = width, height
    return CropBox((height - h) // 2, (width - w) // 2, h, w, fallback=True)


@dataclass(frozen=True)
class AugmentParams:
    """Everything random about one augmented view (sampled up front, in a fixed order)."""

    crop: CropBox
    flip: bool
    jitter: bool
    jitter_order: tuple[int, ...]  # permutation of (brightness, contrast, saturation, hue)
    factors: tuple[float, float, float, float]
    gray: bool
    blur: bool
    sigma: float
    solarize: bool


def sample_augment(cfg: ViewConfig, which: int, height: int, width: int,
                   gen: torch.Generator | None) -> AugmentParams:
    """Sample T1 (`which=0`) or T2 (`which=1`) parameters. Every draw is made whether or not its op
    fires, so the generator's stream layout never depends on earlier outcomes."""
    crop = sample_crop_box(height, width, cfg.crop_scale, cfg.crop_ratio, gen)
    flip = float(torch.rand((), generator=gen)) < cfg.flip_p
    jitter = float(torch.rand((), generator=gen)) < cfg.jitter_p
    order = tuple(int(i) for i in torch.randperm(4, generator=gen))
    factors = (_uniform(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness, gen),
               _uniform(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast, gen),
               _uniform(max(0.0, 1 - cfg.saturation), 1 + cfg.saturation, gen),
               _uniform(-cfg.hue, cfg.hue, gen))
    gray = float(torch.rand((), generator=gen)) < cfg.gray_p
    blur = float(torch.rand((), generator=gen)) < cfg.blur_p[which]
    sigma = _uniform(cfg.blur_sigma[0], cfg.blur_sigma[1], gen)
    solarize = float(torch.rand((), generator=gen)) < cfg.solarize_p[which]
    return AugmentParams(crop, flip, jitter, order, factors, gray, blur, sigma, solarize)


def _box_slices(box: Tensor | tuple | list, height: int, width: int) -> tuple[int, int, int, int]:
    """Integer (x0, y0, x1, y1) from a box, checked to be a non-empty integer box inside the image."""
    values = [float(v) for v in (box.tolist() if isinstance(box, Tensor) else box)]
    if len(values) != 4:
        raise ValueError(f"a box is 4 numbers (x0, y0, x1, y1), got {values!r}")
    ints = [int(round(v)) for v in values]
    if any(abs(v - i) > 1e-4 for v, i in zip(values, ints)):
        raise ValueError(f"crop_to_view needs an integer pixel box, got {values!r}")
    x0, y0, x1, y1 = ints
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"box {values!r} is empty or outside the {width}x{height} (WxH) input")
    return x0, y0, x1, y1


def crop_to_view(x: Tensor, box: Tensor | tuple | list, size: int | tuple[int, int], flip: bool | Tensor,
                 interpolation: InterpolationMode = InterpolationMode.BICUBIC) -> Tensor:
    """Rasterise `x (..., H, W)` into a view exactly as the sampler does: crop `box`, resize, flip.

    Integer tensors (label maps) are resized through float32, which is exact for ids below 2**24;
    use NEAREST_EXACT for them (pixel-centre sampling, matching the box convention).
    """
    if x.dim() < 2:
        raise ValueError(f"crop_to_view expects a tensor (..., H, W), got shape {tuple(x.shape)}")
    x0, y0, x1, y1 = _box_slices(box, x.shape[-2], x.shape[-1])
    out_size = [size, size] if isinstance(size, int) else [int(size[0]), int(size[1])]
    crop = x[..., y0:y1, x0:x1]
    integer = not crop.is_floating_point()
    if integer:
        crop = crop.float()
    # torchvision's resize wants a channel dim; a bare (H, W) map gets one temporarily.
    flat = crop.dim() == 2
    # Antialias only matters for (bi)linear/bicubic downsampling; it is ignored for nearest modes.
    out = TF.resize(crop[None] if flat else crop, out_size, interpolation=interpolation, antialias=True)
    out = out[0] if flat else out
    if bool(flip):
        out = out.flip(-1)
    return out.round().to(x.dtype) if integer else out


def _jitter(img: Tensor, order: tuple[int, ...], factors: tuple[float, float, float, float]) -> Tensor:
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in order:
        img = ops[i](img, factors[i])
    return img


def _blur(img: Tensor, kernel: int, sigma: float) -> Tensor:
    # Reflect padding needs kernel//2 < side: shrink the kernel (keeping it odd) only for tiny views.
    side = min(img.shape[-2:])
    k = min(kernel, 2 * side - 1)
    k -= 1 - k % 2
    return TF.gaussian_blur(img, kernel_size=[k, k], sigma=[sigma, sigma])


def colour_augment(img: Tensor, p: AugmentParams, cfg: ViewConfig) -> Tensor:
    """Apply the point-wise and blur ops of one view to a (3, S, S) float image in [0, 1]."""
    if p.jitter:
        img = _jitter(img, p.jitter_order, p.factors)
    if p.gray:
        img = TF.rgb_to_grayscale(img, num_output_channels=3)
    if p.blur:
        img = _blur(img, cfg.blur_kernel, p.sigma)
    if p.solarize:
        img = torch.where(img < 0.5, img, 1.0 - img)  # Odin appendix step 6
    return img.clamp(0.0, 1.0)


class ViewSampler:
    """Callable: PIL image → the view dict of docs/architecture.md (data.views contract).

    `extra` names the views built besides view1/view2 (EXTRA_VIEWS, all by default); one not asked for
    is neither resized nor normalised nor shipped (at paper sizes the spanning and raw views are 2.5×
    the bytes of the two views). They draw no random numbers, so view1/view2 do not depend on `extra`.
    `raw_box` (the whole-image frame of every prior) and `image_size` are always there.
    """

    def __init__(self, cfg: ViewConfig, extra: Iterable[str] = EXTRA_VIEWS):
        if not isinstance(cfg, ViewConfig):
            raise TypeError(f"ViewSampler needs a ViewConfig, got {type(cfg).__name__}")
        cfg.validate()
        self.cfg = cfg
        self.extra = frozenset(extra)
        unknown = sorted(self.extra - set(EXTRA_VIEWS))
        if unknown:
            raise ValueError(f"unknown extra views {unknown}; choose among {list(EXTRA_VIEWS)}")

    def adding(self, *views: str) -> ViewSampler:
        """The same sampler with `views` built too (e.g. the raw view the mask pictures show)."""
        return ViewSampler(self.cfg, self.extra | set(views))

    def _resized(self, image: Tensor, box: tuple[float, float, float, float], size: int, flip: bool) -> Tensor:
        out = crop_to_view(image, box, size, flip, InterpolationMode.BICUBIC)
        return out.clamp(0.0, 1.0)  # bicubic overshoots

    def _normalise(self, img: Tensor) -> Tensor:
        return TF.normalize(img, list(self.cfg.mean), list(self.cfg.std))

    def __call__(self, image: Image.Image, seed: int | None = None) -> dict[str, Tensor]:
        if not isinstance(image, Image.Image):
            raise TypeError(f"ViewSampler expects a PIL image, got {type(image).__name__}")
        width, height = image.size
        if width < 1 or height < 1:
            raise ValueError(f"cannot sample views from an empty {width}x{height} image")
        gen = None if seed is None else torch.Generator().manual_seed(int(seed))
        pixels = TF.to_dtype(TF.pil_to_tensor(image.convert("RGB")), torch.float32, scale=True)
        out: dict[str, Tensor] = {}
        boxes = []
        for which in (0, 1):
            p = sample_augment(self.cfg, which, height, width, gen)
            box = p.crop.xyxy()
            view = colour_augment(self._resized(pixels, box, self.cfg.size, p.flip), p, self.cfg)
            out[f"view{which + 1}"] = self._normalise(view)
            out[f"box{which + 1}"] = torch.tensor(box, dtype=torch.float32)
            out[f"flip{which + 1}"] = torch.tensor(p.flip)
            boxes.append(box)
        if "span" in self.extra:  # Odin v0: the smallest crop spanning both views, only cropped and resized
            span = (min(boxes[0][0], boxes[1][0]), min(boxes[0][1], boxes[1][1]),
                    max(boxes[0][2], boxes[1][2]), max(boxes[0][3], boxes[1][3]))
            out["span"] = self._normalise(self._resized(pixels, span, self.cfg.spanning_size, False))
            out["span_box"] = torch.tensor(span, dtype=torch.float32)
        whole = (0.0, 0.0, float(width), float(height))
        if "raw" in self.extra:
            out["raw"] = self._normalise(self._resized(pixels, whole, self.cfg.raw_size, False))
        out["raw_box"] = torch.tensor(whole, dtype=torch.float32)
        out["image_size"] = torch.tensor([height, width], dtype=torch.int64)
        return out
