"""Property-based fuzzing of the image decoder and the view sampler: any size, mode, format, crop,
truncation. The only acceptable outcomes are a valid RGB image + well-formed views, or BadImageError."""

from __future__ import annotations

import io

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from discorep.data.images import BadImageError, load_rgb
from discorep.data.views import ViewConfig, ViewSampler

FORMATS = {"PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"), "JPEG": ("L", "RGB", "CMYK"),
           "TIFF": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK"), "GIF": ("L", "P"),
           "BMP": ("1", "L", "P", "RGB"), "WEBP": ("RGB", "RGBA")}
SAMPLER = ViewSampler(ViewConfig(size=32, spanning_size=64, raw_size=32))


@st.composite
def encoded_images(draw):
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(FORMATS[fmt]))
    w, h = draw(st.integers(1, 120)), draw(st.integers(1, 120))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    img = base.convert(mode) if mode not in ("I;16", "I", "F") else Image.fromarray(
        rng.integers(0, 2**16, (h, w)).astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    data = buf.getvalue()
    cut = draw(st.one_of(st.none(), st.integers(0, max(0, len(data) - 1))))
    return data if cut is None else data[:cut]


def test_decoder_and_views_never_fail_uncontrolled(outcome, tmp_path_factory):
    counts = {"decoded": 0, "BadImageError": 0}

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=encoded_images(), view_seed=st.integers(0, 2**31))
    def check(data, view_seed):
        path = tmp_path_factory.mktemp("fuzz") / "image.bin"
        path.write_bytes(data)
        try:
            image = load_rgb(path)
        except BadImageError as err:
            assert err.reason and str(path) in str(err)
            counts["BadImageError"] += 1
            return
        assert image.mode == "RGB" and image.width >= 1 and image.height >= 1
        out = SAMPLER(image, seed=view_seed)
        assert out["view1"].shape == out["view2"].shape == (3, 32, 32)
        assert out["span"].shape == (3, 64, 64) and out["raw"].shape == (3, 32, 32)
        for key in ("view1", "view2", "span", "raw"):
            assert torch.isfinite(out[key]).all()
        H, W = out["image_size"].tolist()
        assert (H, W) == (image.height, image.width)
        for box in (out["box1"], out["box2"], out["span_box"]):
            x0, y0, x1, y1 = box.tolist()
            assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
        counts["decoded"] += 1

    check()
    outcome("image", "hypothesis fuzz: 6 formats, all modes, sizes 1-120, truncation, any crop",
            f"{counts['decoded']} decoded with valid views, {counts['BadImageError']} BadImageError, nothing else")
