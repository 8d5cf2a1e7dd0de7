"""Region-prior cache faults: truncated or tampered files, interrupted builds, changed images, bad files."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from discorep.data.images import BadImageError
from discorep.data.prior_cache import PriorCacheWarning, RegionPriorCache
from tests.data.test_priors import SLIC_SMALL, _blocks, _expected, _write_images


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_truncated_file_is_warned_and_recomputed(outcome, tmp_path, rng):
    (key, path), = _write_images(tmp_path, rng, 1)
    cache = RegionPriorCache(tmp_path / "cache", "slic", SLIC_SMALL)
    good = cache.get(key, path)
    file = cache.path_for(key)
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])

    with pytest.warns(PriorCacheWarning, match=f"{file.name}.*truncated"):
        out = cache.get(key, path)
    np.testing.assert_array_equal(out, good)
    assert cache.stats.recomputed_corrupt == 1
    fresh = RegionPriorCache(tmp_path / "cache", "slic", SLIC_SMALL)
    fresh.get(key, path)  # the rewritten file is whole again
    assert fresh.stats.loaded == 1
    outcome("prior cache", "truncated cache file", "warning naming the file; recomputed and rewritten")


def test_checksum_mismatch_detected_in_build(outcome, tmp_path, rng):
    items = _write_images(tmp_path, rng, 2)
    cache = RegionPriorCache(tmp_path / "cache", "slic", SLIC_SMALL)
    cache.build(items, num_workers=0, progress=False)
    file = cache.path_for(items[0][0])
    with np.load(file) as z:  # a readable zip whose labels no longer match their crc
        rec = dict(z)
    rec["labels"] = rec["labels"][::-1].copy()
    with zipfile.ZipFile(file, "w") as zf:
        for name, value in rec.items():
            with zf.open(name + ".npy", "w") as f:
                np.lib.format.write_array(f, value)

    with pytest.warns(PriorCacheWarning, match="checksum"):
        stats = cache.build(items, num_workers=0, progress=False)
    assert (stats.recomputed_corrupt, stats.loaded, stats.computed) == (1, 1, 0)
    np.testing.assert_array_equal(cache.get(*items[0]), _expected(items[0][1]))
    outcome("prior cache", "cache file with wrong checksum", "warning; recomputed, the rest loaded")


def test_interrupted_build_computes_only_missing(outcome, tmp_path, rng):
    items = _write_images(tmp_path, rng, 5)
    cache = RegionPriorCache(tmp_path / "cache", "slic", SLIC_SMALL)
    cache.build(items[:3], num_workers=0, progress=False)  # "killed" after three images
    leftover = cache.directory / ".tmp-killed.npz"
    leftover.write_bytes(b"PK\x03\x04 half a zip")
    os.utime(leftover, (1e9, 1e9))  # old: its writer is long gone

    stats = cache.build(items, num_workers=0, progress=False)
    assert (stats.computed, stats.loaded, stats.recomputed_corrupt, stats.failed) == (2, 3, 0, 0)
    assert not leftover.exists()
    assert sorted(p.name for p in cache.directory.glob("*.npz")) == sorted(
        cache.path_for(k).name for k, _ in items)
    for key, path in items[3:]:
        np.testing.assert_array_equal(cache.get(key, path), _expected(path))
    outcome("fault", "prior-cache build killed after 3 of 5 images", "next build computes 2, loads 3, removes the stale temp file")


def test_modified_image_is_recomputed(outcome, tmp_path, rng):
    (key, path), = _write_images(tmp_path, rng, 1)
    cache = RegionPriorCache(tmp_path / "cache", "slic", SLIC_SMALL)
    before = cache.get(key, path)
    Image.fromarray(_blocks(np.random.default_rng(123))).save(path)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))

    after = cache.get(key, path)
    assert cache.stats.computed == 2 and cache.stats.loaded == 0
    np.testing.assert_array_equal(after, _expected(path))
    assert not np.array_equal(after, before)
    outcome("prior cache", "image changed after caching", "recomputed for the new image")


def test_failures_are_counted_not_raised(outcome, tmp_path, rng):
    items = _write_images(tmp_path, rng, 2)
    (tmp_path / "notes.png").write_text("not an image")
    bad = [("missing.png", str(tmp_path / "missing.png")), ("notes.png", str(tmp_path / "notes.png"))]
    cache = RegionPriorCache(tmp_path / "cache", "slic", SLIC_SMALL)
    stats = cache.build(items + bad, num_workers=0, progress=False)
    assert (stats.computed, stats.failed) == (2, 2)
    assert sorted(k for k, _ in stats.failures) == ["missing.png", "notes.png"]
    assert all("BadImageError" in reason for _, reason in stats.failures)
    with pytest.raises(BadImageError):
        cache.get(*bad[0])
    outcome("prior cache", "missing and non-image files in a build", "counted with reasons; the build finishes")
