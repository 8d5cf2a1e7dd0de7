"""Region priors against skimage oracles / hand-computed grids, and the on-disk prior cache."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.segmentation import felzenszwalb, slic

from discorep.data.images import BadImageError
from discorep.data.priors import (
    PriorError,
    compute_prior,
    felzenszwalb_prior,
    grid_prior,
    slic_prior,
)
from discorep.data.prior_cache import PriorCacheWarning, RegionPriorCache

SLIC_SMALL = {"n_segments": 50, "resize": 64}


def _blocks(rng, h: int = 64, w: int = 96, cell: int = 8) -> np.ndarray:
    """Random colour blocks plus mild noise: a few dozen clear regions."""
    blocks = rng.integers(0, 256, (h // cell, w // cell, 3), dtype=np.uint8)
    img = np.kron(blocks, np.ones((cell, cell, 1), dtype=np.uint8)).astype(np.int64)
    return np.clip(img + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renaming ids: the (a, b) id pairs form a bijection."""
    assert a.shape == b.shape
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1).shape[1]
    return pairs == len(np.unique(a)) == len(np.unique(b))


def _assert_contiguous_int32(labels: np.ndarray) -> None:
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(np.unique(labels), np.arange(labels.max() + 1))


def _write_images(root: Path, rng, n: int) -> list[tuple[str, str]]:
    items = []
    for i in range(n):
        path = root / f"img{i}.png"
        Image.fromarray(_blocks(rng)).save(path)
        items.append((f"img{i}.png", str(path)))
    return items


def _expected(path: str, prior: str = "slic", params=SLIC_SMALL) -> np.ndarray:
    return compute_prior(prior, np.asarray(Image.open(path).convert("RGB")), params)


# ---------------------------------------------------------------- priors


def test_slic_equals_skimage_on_224_copy(rng):
    img = _blocks(rng)
    ours = slic_prior(img)
    resized = np.asarray(Image.fromarray(img).resize((224, 224), Image.BILINEAR))
    ref = slic(resized, n_segments=100, compactness=10.0, start_label=0, channel_axis=-1)
    assert ours.shape == (224, 224)
    assert _same_partition(ours, ref)
    _assert_contiguous_int32(ours)
    assert ours.max() > 20  # the blocks really were split (guards against a trivial 1-segment oracle)


def test_slic_full_resolution(rng):
    img = _blocks(rng)
    ours = slic_prior(img, n_segments=30, compactness=5.0, resize=None)
    ref = slic(img, n_segments=30, compactness=5.0, start_label=0, channel_axis=-1)
    assert ours.shape == img.shape[:2]
    assert _same_partition(ours, ref)


def test_felzenszwalb_equals_skimage(rng):
    img = _blocks(rng)
    ours = felzenszwalb_prior(img, scale=100, min_size=20)
    ref = felzenszwalb(img, scale=100, sigma=0.8, min_size=20, channel_axis=-1)
    assert ours.shape == img.shape[:2] and ours.max() > 10
    assert _same_partition(ours, ref)
    _assert_contiguous_int32(ours)


def test_felzenszwalb_max_side_shrinks_keeping_aspect(rng):
    img = _blocks(rng)  # 64 x 96
    ours = felzenszwalb_prior(img, scale=100, min_size=10, max_side=48)
    small = np.asarray(Image.fromarray(img).resize((48, 32), Image.BILINEAR))
    assert ours.shape == (32, 48)
    assert _same_partition(ours, felzenszwalb(small, scale=100, sigma=0.8, min_size=10, channel_axis=-1))
    # A limit above the image size changes nothing.
    np.testing.assert_array_equal(felzenszwalb_prior(img, scale=100, min_size=10, max_side=500),
                                  felzenszwalb_prior(img, scale=100, min_size=10))


def test_grid_hand_computed():
    expected = np.array([
        [0, 0, 0, 1, 1, 2, 2],
        [0, 0, 0, 1, 1, 2, 2],
        [3, 3, 3, 4, 4, 5, 5],
        [3, 3, 3, 4, 4, 5, 5],
        [6, 6, 6, 7, 7, 8, 8],
    ])
    out = grid_prior(5, 7, 3)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, expected)


def test_more_than_256_segments_never_wrap(rng):
    grid = grid_prior(40, 60, 20)
    _assert_contiguous_int32(grid)
    assert len(np.unique(grid)) == 400
    via_dispatch = compute_prior("grid", _blocks(rng, 40, 60, 4), {"n": 20})
    np.testing.assert_array_equal(via_dispatch, grid)
    many = slic_prior(_blocks(rng), n_segments=600, resize=None)
    _assert_contiguous_int32(many)
    assert many.max() > 255


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("watershed", {}, "valid priors: slic, felzenszwalb, grid"),
        ("slic", {"nsegments": 10}, "valid: n_segments, compactness, resize"),
        ("slic", {"n_segments": 2.5}, "must be an integer"),
        ("felzenszwalb", {"scale": "big"}, "must be a number"),
        ("slic", {"compactness": -1}, "compactness must be > 0"),
        ("grid", {"n": 100}, "use n <= 64"),
    ],
)
def test_bad_names_and_params_are_clear_value_errors(rng, name, params, match):
    with pytest.raises(ValueError, match=match):
        compute_prior(name, _blocks(rng), params)


def test_bad_image_rejected(rng):
    with pytest.raises(PriorError, match="uint8"):
        slic_prior(_blocks(rng).astype(np.float32))
    with pytest.raises(PriorError, match=r"\(H, W, 3\)"):
        felzenszwalb_prior(np.zeros((8, 8), np.uint8))


# ---------------------------------------------------------------- cache


def test_second_build_loads_everything(tmp_path, rng):
    items = _write_images(tmp_path, rng, 6)
    cache = RegionPriorCache(tmp_path / "cache", "slic", SLIC_SMALL)
    first = cache.build(items, num_workers=2, progress=False)
    assert (first.computed, first.loaded, first.failed) == (6, 0, 0)
    assert len(list(cache.directory.glob("*.npz"))) == 6
    assert (cache.directory / "params.json").exists()

    again = RegionPriorCache(tmp_path / "cache", "slic", SLIC_SMALL)
    second = again.build(items, num_workers=0, progress=False)
    assert (second.computed, second.loaded) == (0, 6)
    for key, path in items:
        np.testing.assert_array_equal(again.get(key, path), _expected(path))
    assert (again.stats.computed, again.stats.loaded) == (0, 12)


def test_loading_does_not_call_loader(tmp_path, rng):
    (key, path), = _write_images(tmp_path, rng, 1)
    calls = []

    def loader(p):
        calls.append(p)
        return Image.open(p)

    cache = RegionPriorCache(tmp_path / "cache", "slic", SLIC_SMALL, loader=loader)
    a = cache.get(key, path)
    b = cache.get(key, path)
    assert calls == [path]
    np.testing.assert_array_equal(a, b)


def test_parameter_change_uses_new_directory(tmp_path, rng):
    items = _write_images(tmp_path, rng, 3)
    a = RegionPriorCache(tmp_path / "cache", "slic", SLIC_SMALL)
    a.build(items, num_workers=0, progress=False)
    b = RegionPriorCache(tmp_path / "cache", "slic", {**SLIC_SMALL, "n_segments": 20})
    assert b.directory != a.directory and b.directory.name.startswith("slic-")
    assert b.build(items, num_workers=0, progress=False).computed == 3
    # Defaults spelled out, or given as YAML-style floats, are the same settings and the same folder.
    same = RegionPriorCache(tmp_path / "cache", "slic", {"n_segments": 50.0, "resize": 64, "compactness": 10})
    assert same.directory == a.directory


def test_cache_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="valid priors"):
        RegionPriorCache(tmp_path, "superpixels", {})
    cache = RegionPriorCache(tmp_path, "grid", {"n": 4})
    with pytest.raises(ValueError, match="duplicate cache key"):
        cache.build([("a", "x.png"), ("a", "y.png")], progress=False)
    with pytest.raises(ValueError, match="non-empty strings"):
        cache.get("", "x.png")


def test_relabel_contiguous_equals_numpy_unique_inverse():
    """The bincount table (compact ids) and np.unique (sparse ids) give unique's inverse, as int32."""
    from discorep.data.priors.base import relabel_contiguous

    rng = np.random.default_rng(0)
    cases = [rng.integers(0, 300, (40, 50)), rng.integers(-5, 10, (7, 9)), np.array([[7]]),
             rng.integers(0, 2 ** 40, (6, 6)), rng.integers(0, 255, (5, 5)).astype(np.uint8), np.zeros((0, 3), int)]
    for labels in cases:
        expected = np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int32)
        got = relabel_contiguous(labels)
        assert got.dtype == np.int32 and np.array_equal(got, expected), labels.dtype
