"""The `precomputed` region prior (one PNG label map per image) and the prior registry it plugs into."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from discorep.data.images import BadImageError
from discorep.data.prior_cache import RegionPriorCache
from discorep.data.priors import PriorError, compute_prior, prior_names, register_prior, resolve_params
from discorep.data.priors import registry


def _image(h: int = 12, w: int = 16) -> np.ndarray:
    return np.zeros((h, w, 3), np.uint8)


def _save(path: Path, array: np.ndarray, mode: str | None = None, palette: list[int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    if palette is not None:
        im.putpalette(palette)
    im.save(path)
    return path


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1).shape[1]
    return pairs == len(np.unique(a)) == len(np.unique(b))


def test_8bit_values_become_contiguous_ids(tmp_path):
    ids = np.full((12, 16), 200, np.uint8)
    ids[:6, :8], ids[6:, 8:] = 3, 7
    _save(tmp_path / "masks" / "a" / "img.png", ids)
    out = compute_prior("precomputed", _image(), {"dir": str(tmp_path / "masks")}, key="a/img.jpg")
    assert out.dtype == np.int32 and out.shape == (12, 16)
    # sorted old ids 3 < 7 < 200 become 0, 1, 2 in place
    np.testing.assert_array_equal(out, np.select([ids == 3, ids == 7], [0, 1], 2))


def test_16bit_ids_past_255_never_wrap(tmp_path):
    ids = (np.arange(20 * 20, dtype=np.uint16) * 97 + 300).reshape(20, 20)  # 400 distinct values up to ~39k
    _save(tmp_path / "img.png", ids)
    out = compute_prior("precomputed", _image(20, 20), {"dir": str(tmp_path)}, key="img.jpg")
    np.testing.assert_array_equal(out, np.arange(400).reshape(20, 20))


def test_palette_pngs_give_indices_not_colours(tmp_path):
    ids = np.repeat(np.arange(4, dtype=np.uint8), 4).reshape(4, 4)
    palette = [0, 0, 0] * 2 + [255, 0, 0] * 2 + [0] * (3 * 252)  # indices 0, 1 and 2, 3 share colours
    _save(tmp_path / "img.png", ids, mode="P", palette=palette)
    out = compute_prior("precomputed", _image(4, 4), {"dir": str(tmp_path)}, key="img.png")
    np.testing.assert_array_equal(out, ids.astype(np.int32))


def test_smaller_map_covers_the_image_but_another_aspect_is_refused(tmp_path):
    ids = np.zeros((6, 8), np.uint8)
    ids[:, 4:] = 1
    _save(tmp_path / "half.png", ids)
    out = compute_prior("precomputed", _image(12, 16), {"dir": str(tmp_path)}, key="half.jpg")
    assert out.shape == (6, 8) and _same_partition(out, ids)  # kept at its size, like SLIC's 224x224 map
    _save(tmp_path / "crop.png", np.zeros((12, 12), np.uint8))
    with pytest.raises(BadImageError, match=r"mask is 12x12 but the image is 16x12"):
        compute_prior("precomputed", _image(12, 16), {"dir": str(tmp_path)}, key="crop.jpg")


def test_rgb_masks_and_missing_files_are_bad_images_naming_the_file(tmp_path):
    _save(tmp_path / "rgb.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(BadImageError, match="one id per pixel.*got mode RGB"):
        compute_prior("precomputed", _image(4, 4), {"dir": str(tmp_path)}, key="rgb.jpg")
    with pytest.raises(BadImageError, match=r"sub[/\\]gone\.png.*no precomputed mask"):
        compute_prior("precomputed", _image(4, 4), {"dir": str(tmp_path)}, key="sub/gone.jpg")


def test_parameters_are_checked(tmp_path):
    with pytest.raises(PriorError, match="needs data.prior_params.dir"):
        resolve_params("precomputed", {})
    with pytest.raises(PriorError, match="must be a non-empty string"):
        resolve_params("precomputed", {"dir": 3})
    with pytest.raises(PriorError, match="valid: dir"):
        resolve_params("precomputed", {"dir": "m", "n": 4})
    assert resolve_params("precomputed", {"dir": tmp_path}) == {"dir": str(tmp_path)}
    with pytest.raises(PriorError, match="key="):
        compute_prior("precomputed", _image(), {"dir": "m"})
    with pytest.raises(PriorError, match="under data.root"):
        compute_prior("precomputed", _image(), {"dir": "m"}, key=str(tmp_path / "abs.jpg"))


def _folder(tmp_path: Path, n: int = 3) -> list[tuple[str, str]]:
    items = []
    for i in range(n):
        path = tmp_path / "images" / f"img{i}.png"
        _save(path, np.full((8, 8, 3), 40 * i, np.uint8))
        items.append((f"img{i}.png", str(path)))
    return items


def test_cache_counts_a_missing_mask_as_a_failed_image(tmp_path):
    items = _folder(tmp_path)
    for key, _ in items[:2]:
        _save(tmp_path / "masks" / key, np.eye(8, dtype=np.uint8) * 9)
    cache = RegionPriorCache(tmp_path / "cache", "precomputed", {"dir": str(tmp_path / "masks")})
    stats = cache.build(items, num_workers=0, progress=False)
    assert (stats.computed, stats.failed) == (2, 1)
    key, reason = stats.failures[0]
    assert key == "img2.png" and "BadImageError" in reason and "img2.png" in reason
    np.testing.assert_array_equal(cache.get(*items[0]), np.eye(8, dtype=np.int32))
    with pytest.raises(BadImageError, match="no precomputed mask"):
        cache.get(*items[2])


def test_cache_recomputes_when_the_mask_changes(tmp_path):
    (key, path), = _folder(tmp_path, 1)
    mask = _save(tmp_path / "masks" / key, np.zeros((8, 8), np.uint8))
    cache = RegionPriorCache(tmp_path / "cache", "precomputed", {"dir": str(tmp_path / "masks")})
    assert cache.get(key, path).max() == 0
    assert cache.get(key, path).max() == 0 and cache.stats.loaded == 1
    ids = np.zeros((8, 8), np.uint8)
    ids[4:] = 5
    _save(mask, ids)
    st = os.stat(mask)
    os.utime(mask, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a later edit, even on coarse clocks
    np.testing.assert_array_equal(cache.get(key, path), (ids > 0).astype(np.int32))
    assert cache.stats.computed == 2


def test_pretraining_replaces_an_image_without_mask_and_reports_it(tmp_path):
    from discorep.data.pretrain import PretrainDataset

    items = _folder(tmp_path, 2)
    _save(tmp_path / "masks" / "img1.png", np.eye(8, dtype=np.uint8))
    cache = RegionPriorCache(tmp_path / "cache", "precomputed", {"dir": str(tmp_path / "masks")})
    data = PretrainDataset([p for _, p in items], lambda image, seed: {}, prior_cache=cache, prior_size=8,
                           root=tmp_path / "images")
    item = data[(0, 0)]
    assert int(item["index"]) == 1  # img0 has no mask: replaced by the next image, as an unreadable one is
    assert item["skipped"] == [(items[0][1], item["skipped"][0][1])] and "no precomputed mask" in item["skipped"][0][1]
    np.testing.assert_array_equal(item["prior"].numpy(), np.eye(8, dtype=np.int64))


def test_a_new_prior_is_one_registration(tmp_path):
    """What docs/architecture.md "How to add a prior" shows: one decorated function, no edit elsewhere."""

    @register_prior("stripes_test", n=("int", 2))
    def stripes(image: np.ndarray, n: int = 2) -> np.ndarray:
        return (np.arange(image.shape[1]) * n // image.shape[1]).astype(np.int32)[None].repeat(image.shape[0], 0)

    try:
        assert "stripes_test" in prior_names()
        assert resolve_params("stripes_test", {"n": 4.0}) == {"n": 4}
        (key, path), = _folder(tmp_path, 1)
        cache = RegionPriorCache(tmp_path / "cache", "stripes_test", {"n": 4})
        np.testing.assert_array_equal(cache.get(key, path)[0], [0, 0, 1, 1, 2, 2, 3, 3])
        with pytest.raises(ValueError, match="already registered"):
            register_prior("stripes_test")(lambda image: image)
    finally:
        registry._REGISTRY.pop("stripes_test", None)
