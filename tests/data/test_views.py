"""ViewSampler: crop boxes, determinism, flips, spanning/raw views, augmentation frequencies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from discorep.data.views import (IMAGENET_MEAN, IMAGENET_STD, ViewConfig, ViewSampler, crop_to_view,
                                 sample_augment, sample_crop_box)

NO_COLOUR = dict(jitter_p=0.0, gray_p=0.0, blur_p=(0.0, 0.0), solarize_p=(0.0, 0.0))
SMALL = dict(size=32, spanning_size=64, raw_size=32)


pytestmark = pytest.mark.usefixtures("one_thread")


def _image(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _pixels(image: Image.Image) -> torch.Tensor:
    return TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True)


def _denorm(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]


def _plain_view(pixels: torch.Tensor, box: torch.Tensor, size: int, flip: bool) -> torch.Tensor:
    """The un-augmented view: crop, bicubic resize, clamp, flip (un-normalised)."""
    return crop_to_view(pixels, box, size, flip, InterpolationMode.BICUBIC).clamp(0, 1)


def test_crop_box_statistics_and_bounds():
    H, W = 301, 437
    areas, logs = [], []
    for seed in range(400):
        c = sample_crop_box(H, W, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(seed))
        assert 0 <= c.top and c.top + c.height <= H and 0 <= c.left and c.left + c.width <= W
        if c.fallback:
            continue
        tol = 1.0 / min(c.width, c.height)  # integer rounding of w and h
        assert 0.08 * (1 - 2 * tol) <= c.width * c.height / (H * W) <= 1.0
        assert 3 / 4 * (1 - 2 * tol) <= c.width / c.height <= 4 / 3 * (1 + 2 * tol)
        areas.append(c.width * c.height / (H * W))
        logs.append(math.log(c.width / c.height))
    # Area ~ U(0.08, 1), thinned at the top (large crops of a 1.45:1 image often miss the aspect
    # range and are redrawn); log-aspect symmetric around 0 and spanning the range.
    assert len(areas) > 390 and 0.3 < np.mean(areas) < 0.55 and min(areas) < 0.12 and max(areas) > 0.8
    assert abs(np.mean(logs)) < 0.05 and max(logs) > 0.25 and min(logs) < -0.25


def test_crop_box_fallback_is_central_and_ratio_clamped():
    c = sample_crop_box(10, 1000, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    assert c.fallback and (c.top, c.height, c.width) == (0, 10, 13) and c.left == (1000 - 13) // 2


def test_sampler_boxes_follow_the_generator_and_stay_inside():
    cfg = ViewConfig(**SMALL)
    sampler, image = ViewSampler(cfg), _image(61, 97)
    for seed in range(20):
        out = sampler(image, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        for v in (1, 2):
            p = sample_augment(cfg, v - 1, 61, 97, gen)
            box = out[f"box{v}"]
            assert box.dtype == torch.float32 and torch.equal(box, box.round())
            assert torch.equal(box, torch.tensor(p.crop.xyxy())) and bool(out[f"flip{v}"]) == p.flip
            assert 0 <= box[0] < box[2] <= 97 and 0 <= box[1] < box[3] <= 61


def test_same_seed_same_output_and_global_rng_untouched():
    sampler, image = ViewSampler(ViewConfig(**SMALL)), _image(50, 70)
    state = torch.get_rng_state()
    a, b, c = sampler(image, seed=7), sampler(image, seed=7), sampler(image, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["view1"], c["view1"]) or not torch.equal(a["box1"], c["box1"])
    # Unseeded: draws from the global RNG, so re-seeding it reproduces the output.
    torch.manual_seed(3)
    d = sampler(image)
    torch.manual_seed(3)
    assert torch.equal(sampler(image)["view2"], d["view2"])


def test_output_contract_types_and_shapes():
    out = ViewSampler(ViewConfig(**SMALL))(_image(40, 90), seed=0)
    for v in ("view1", "view2", "raw"):
        assert out[v].shape == (3, 32, 32) and out[v].dtype == torch.float32
    assert out["span"].shape == (3, 64, 64)
    assert out["flip1"].dtype == torch.bool and out["flip1"].shape == ()
    assert out["image_size"].dtype == torch.int64 and out["image_size"].tolist() == [40, 90]
    assert out["raw_box"].tolist() == [0.0, 0.0, 90.0, 40.0]


@pytest.mark.parametrize("extra", [(), ("span",), ("raw",)])
def test_extra_views_not_asked_for_are_not_built_and_the_rest_is_unchanged(extra):
    """Issue 23 item 8: only the views a method reads are built; they draw no random numbers, so the
    two augmented views are the same whichever extras are built."""
    image = _image(50, 70, seed=2)
    full = ViewSampler(ViewConfig(**SMALL))(image, seed=7)
    out = ViewSampler(ViewConfig(**SMALL), extra)(image, seed=7)
    assert set(full) - set(out) == {"span", "span_box", "raw"} - set(extra) - ({"span_box"} if "span" in extra else set())
    for key, value in out.items():
        assert torch.equal(value, full[key]), key
    assert ViewSampler(ViewConfig(**SMALL), ()).adding("raw").extra == {"raw"}
    with pytest.raises(ValueError, match="unknown extra views.*'span', 'raw'"):
        ViewSampler(ViewConfig(**SMALL), ("spanning",))


def test_flip_flag_matches_pixels_span_and_raw():
    image = _image(83, 120, seed=1)
    pixels = _pixels(image)
    sampler = ViewSampler(ViewConfig(**SMALL, **NO_COLOUR))
    flips = set()
    for seed in range(16):
        out = sampler(image, seed=seed)
        for v in (1, 2):
            box, flip = out[f"box{v}"], bool(out[f"flip{v}"])
            view = _denorm(out[f"view{v}"])
            unflipped = _plain_view(pixels, box, 32, False)
            torch.testing.assert_close(view, unflipped.flip(-1) if flip else unflipped, atol=1e-5, rtol=0)
            if flip:  # the content really is mirrored: the un-flipped crop does not match
                assert (view - unflipped).abs().max() > 0.05
            flips.add(flip)
        b1, b2 = out["box1"], out["box2"]
        union = torch.cat([torch.minimum(b1, b2)[:2], torch.maximum(b1, b2)[2:]])
        assert torch.equal(out["span_box"], union)
        torch.testing.assert_close(_denorm(out["span"]), _plain_view(pixels, union, 64, False), atol=1e-5, rtol=0)
        raw = TF.resize(pixels, [32, 32], interpolation=InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)
        torch.testing.assert_close(_denorm(out["raw"]), raw, atol=1e-5, rtol=0)
    assert flips == {True, False}


def test_span_and_raw_are_unaugmented_with_default_colour_ops():
    image = _image(70, 50, seed=2)
    out = ViewSampler(ViewConfig(**SMALL))(image, seed=4)
    torch.testing.assert_close(_denorm(out["span"]), _plain_view(_pixels(image), out["span_box"], 64, False),
                               atol=1e-5, rtol=0)


def _changed_fraction(cfg: ViewConfig, image: Image.Image, seeds: int) -> tuple[float, float]:
    """Fraction of seeds where each view differs from its plain crop (only one op enabled in cfg)."""
    sampler, pixels = ViewSampler(cfg), _pixels(image)
    changed = np.zeros(2)
    for seed in range(seeds):
        out = sampler(image, seed=seed)
        for v in (0, 1):
            plain = _plain_view(pixels, out[f"box{v + 1}"], cfg.size, bool(out[f"flip{v + 1}"]))
            changed[v] += (_denorm(out[f"view{v + 1}"]) - plain).abs().max() > 1e-3
    return changed[0] / seeds, changed[1] / seeds


@pytest.mark.parametrize("op, expected", [
    ("solarize", (0.0, 0.2)), ("blur", (1.0, 0.1)), ("jitter", (0.8, 0.8)), ("gray", (0.2, 0.2))])
def test_op_frequencies_match_config(op, expected):
    # T1/T2 asymmetry (Odin appendix table): each op alone, 400 seeds; 4 sigma of a binomial.
    # Blur sigma >= 1 so that every blur visibly changes the view (sigma 0.1 is nearly the identity).
    on = {"solarize": {"solarize_p": (0.0, 0.2)}, "blur": {"blur_p": (1.0, 0.1), "blur_sigma": (1.0, 2.0)},
          "jitter": {"jitter_p": 0.8}, "gray": {"gray_p": 0.2}}[op]
    cfg = ViewConfig(**SMALL, **{**NO_COLOUR, **on})
    freqs = _changed_fraction(cfg, _image(40, 48, seed=3), 400)
    for f, p in zip(freqs, expected):
        assert abs(f - p) <= 4 * math.sqrt(p * (1 - p) / 400) + 1e-9, (op, freqs)


def test_grayscale_frequency_with_full_pipeline():
    # With every op on, grey views are exactly those whose three channels are equal.
    sampler, image = ViewSampler(ViewConfig(**SMALL)), _image(40, 48, seed=4)
    grey = [float((lambda x: (x - x.mean(0)).abs().max())(_denorm(sampler(image, seed=s)[f"view{v}"])) < 1e-5)
            for s in range(200) for v in (1, 2)]
    assert abs(np.mean(grey) - 0.2) <= 4 * math.sqrt(0.16 / 400)


def test_brightness_factor_range():
    cfg = ViewConfig(**SMALL, **{**NO_COLOUR, "jitter_p": 1.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0})
    sampler, image = ViewSampler(cfg), Image.new("RGB", (20, 20), (100, 100, 100))
    factors = [float(_denorm(sampler(image, seed=s)["view1"]).mean()) / (100 / 255) for s in range(60)]
    assert 0.6 - 1e-4 <= min(factors) < 0.7 and 1.3 < max(factors) <= 1.4 + 1e-4


@pytest.mark.parametrize("h, w", [(1, 1), (3, 500), (500, 2)])
def test_tiny_and_extreme_images(h, w):
    image = Image.new("RGB", (w, h), (10, 200, 90))
    out = ViewSampler(ViewConfig(**SMALL, **NO_COLOUR))(image, seed=0)
    for v in (1, 2):
        x0, y0, x1, y1 = out[f"box{v}"].tolist()
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        torch.testing.assert_close(_denorm(out[f"view{v}"]),
                                   torch.tensor([10, 200, 90])[:, None, None].float().div(255).expand(3, 32, 32),
                                   atol=1e-5, rtol=0)
    full = ViewSampler(ViewConfig(**SMALL))(image, seed=1)  # every colour op on a constant image
    assert torch.isfinite(full["view1"]).all() and full["view2"].shape == (3, 32, 32)


def test_crop_to_view_labels_nearest():
    labels = torch.arange(12).view(3, 4)
    out = crop_to_view(labels, (1, 0, 3, 2), 4, True, InterpolationMode.NEAREST_EXACT)
    assert out.dtype == torch.int64
    assert out.tolist() == [[2, 2, 1, 1], [2, 2, 1, 1], [6, 6, 5, 5], [6, 6, 5, 5]]
    with pytest.raises(ValueError, match="integer pixel box"):
        crop_to_view(labels, (0.5, 0, 3, 2), 4, False)
    with pytest.raises(ValueError, match="outside"):
        crop_to_view(labels, (0, 0, 5, 2), 4, False)


@pytest.mark.parametrize("field, value", [
    ("size", 0), ("flip_p", 1.5), ("blur_kernel", 22), ("crop_scale", (0.5, 0.1)), ("crop_ratio", (0, 1)),
    ("solarize_p", (0.1,)), ("hue", 0.7), ("std", (1.0, 0.0, 1.0)), ("brightness", -0.1)])
def test_config_validation_names_field(field, value):
    with pytest.raises(ValueError, match=f"ViewConfig.{field}"):
        ViewConfig(**{field: value})


def test_config_defaults_and_lists():
    cfg = ViewConfig(crop_scale=[0.2, 1.0])
    assert cfg.crop_scale == (0.2, 1.0)
    d = ViewConfig()
    assert (d.blur_p, d.solarize_p, d.flip_p, d.spanning_size) == ((1.0, 0.1), (0.0, 0.2), 0.5, 448)
    with pytest.raises(TypeError):
        ViewSampler(ViewConfig())(np.zeros((4, 4, 3), np.uint8))
