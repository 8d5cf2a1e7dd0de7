"""load_rgb on every input mode and every bad case; list_images traversal rules."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from discorep.data.images import (
    IMAGE_EXTENSIONS,
    BadImageError,
    DatasetError,
    list_images,
    load_rgb,
)


def _rgb(path: Path) -> np.ndarray:
    img = load_rgb(path)
    assert img.mode == "RGB"
    return np.asarray(img).astype(np.int64)


def test_grey_l_gives_equal_channels(outcome, tmp_path):
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    Image.fromarray(grey).save(tmp_path / "g.png")
    out = _rgb(tmp_path / "g.png")
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)
    outcome("image", "grayscale (L) PNG", "decoded to RGB, equal channels")


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_is_composited_on_white(outcome, tmp_path, mode):
    img = Image.new(mode, (3, 1))
    value = 100
    colour = (value, 255) if mode == "LA" else (value, value, value, 255)
    for x, alpha in enumerate((0, 128, 255)):
        img.putpixel((x, 0), colour[:-1] + (alpha,))
    img.save(tmp_path / "a.png")
    out = _rgb(tmp_path / "a.png")[0]
    expected = [255, value * 128 / 255 + 255 * (1 - 128 / 255), value]  # over-operator, hand computed
    np.testing.assert_allclose(out[:, 0], expected, atol=1.0)
    assert (out == out[:, :1]).all()  # grey stays grey
    outcome("image", f"{mode} PNG with alpha", "alpha composited on white (hand-computed)")


def test_palette_with_and_without_transparency(outcome, tmp_path):
    idx = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    pal = [10, 20, 30, 200, 0, 0, 0, 0, 250] + [0] * (768 - 9)
    img = Image.fromarray(idx)
    img.putpalette(pal)
    img.save(tmp_path / "p.png")
    out = _rgb(tmp_path / "p.png")
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(out[0, 1], [200, 0, 0])
    np.testing.assert_array_equal(out[1, 0], [0, 0, 250])
    img.save(tmp_path / "pt.png", transparency=1)  # palette entry 1 becomes fully transparent
    out_t = _rgb(tmp_path / "pt.png")
    np.testing.assert_array_equal(out_t[0, 1], [255, 255, 255])
    np.testing.assert_array_equal(out_t[0, 0], [10, 20, 30])
    outcome("image", "palette (P) PNG, with and without transparency", "palette colours; transparent entry becomes white")


@pytest.mark.parametrize(("dtype", "ext"), [(np.uint16, "png"), (np.int32, "tif"), (np.float32, "tif")])
def test_high_depth_scaled_by_actual_range(outcome, tmp_path, dtype, ext):
    values = np.linspace(1000, 3000, 5 * 9).reshape(5, 9).astype(dtype)
    Image.fromarray(values).save(tmp_path / f"h.{ext}")
    out = _rgb(tmp_path / f"h.{ext}")[..., 0]
    expected = np.rint((values.astype(np.float64) - 1000) / 2000 * 255)
    np.testing.assert_allclose(out, expected, atol=1)
    assert out.min() == 0 and out.max() == 255
    outcome("image", f"{np.dtype(dtype).name} .{ext} (16-bit / 32-bit)", "scaled by the image range to 8-bit RGB")


def test_cmyk_jpeg(outcome, tmp_path):
    arr = np.zeros((16, 32, 4), dtype=np.uint8)
    arr[:, 16:, 0] = 255  # right half pure cyan, left half no ink
    Image.fromarray(arr, mode="CMYK").save(tmp_path / "c.jpg", quality=100)
    out = _rgb(tmp_path / "c.jpg")
    np.testing.assert_allclose(out[:, :14].mean(axis=(0, 1)), [255, 255, 255], atol=6)
    np.testing.assert_allclose(out[:, 18:].mean(axis=(0, 1)), [0, 255, 255], atol=6)
    outcome("image", "CMYK JPEG", "converted to RGB")


def test_exif_orientation_is_applied(outcome, tmp_path):
    # 2x4 blocks of 16 px (JPEG-block aligned), each a distinct colour.
    colours = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]],
                        [[0, 255, 255], [255, 0, 255], [255, 255, 255], [0, 0, 0]]], dtype=np.uint8)
    arr = np.repeat(np.repeat(colours, 16, axis=0), 16, axis=1)  # H=32, W=64
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(arr).save(tmp_path / "r.jpg", quality=100, subsampling=0, exif=exif)
    img = load_rgb(tmp_path / "r.jpg")
    assert img.size == (32, 64)  # (W, H): now portrait
    expected = np.rot90(arr, k=-1).astype(np.int64)
    out = np.asarray(img).astype(np.int64)
    blocks = lambda a: a.reshape(4, 16, 2, 16, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(blocks(out), blocks(expected), atol=20)  # colours differ by 255
    outcome("image", "EXIF-rotated JPEG", "shown upright")


def test_animated_gif_gives_first_frame(outcome, tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(tmp_path / "a.gif").n_frames == 2
    out = _rgb(tmp_path / "a.gif")
    assert (out == [255, 0, 0]).all()
    outcome("image", "animated GIF", "first frame")


def _expect_bad(path: Path, fragment: str) -> BadImageError:
    with pytest.raises(BadImageError) as info:
        load_rgb(path)
    err = info.value
    assert err.path == str(path) and fragment in err.reason.lower()
    assert str(path) in str(err) and err.reason in str(err)
    return err


def _noise_image(path: Path) -> bytes:
    arr = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path.read_bytes()


def test_bad_zero_byte_missing_and_directory(outcome, tmp_path):
    (tmp_path / "z.jpg").write_bytes(b"")
    _expect_bad(tmp_path / "z.jpg", "zero-byte")
    _expect_bad(tmp_path / "nope.png", "does not exist")
    (tmp_path / "d.png").mkdir()
    _expect_bad(tmp_path / "d.png", "directory")
    outcome("image", "zero-byte file; missing file; directory named .png", "BadImageError naming file and reason")


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_bad_truncated(outcome, tmp_path, ext):
    assert not ImageFile.LOAD_TRUNCATED_IMAGES  # we must not have switched PIL to lenient mode
    data = _noise_image(tmp_path / f"full.{ext}")
    (tmp_path / f"t.{ext}").write_bytes(data[: len(data) // 2])
    _expect_bad(tmp_path / f"t.{ext}", "truncated")
    outcome("image", f"truncated .{ext}", "BadImageError: truncated")


def test_bad_text_named_jpg_and_zero_dimension(outcome, tmp_path):
    (tmp_path / "notes.jpg").write_text("these are not pixels\n")
    _expect_bad(tmp_path / "notes.jpg", "not a recognised image")
    (tmp_path / "flat.pgm").write_bytes(b"P5\n0 4\n255\n")  # a 0x4 image
    with pytest.raises(BadImageError):
        load_rgb(tmp_path / "flat.pgm")
    outcome("image", "text file named .jpg; 0x4 image", "BadImageError: not a recognised image")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read anything")
def test_bad_permissions(outcome, tmp_path):
    _noise_image(tmp_path / "locked.png")
    os.chmod(tmp_path / "locked.png", 0)
    try:
        _expect_bad(tmp_path / "locked.png", "permission")
    finally:
        os.chmod(tmp_path / "locked.png", 0o644)
    outcome("image", "no read permission (chmod 0)", "BadImageError: permission")


@pytest.mark.parametrize("limit", [100, 300])  # 400 px: above 2*limit (PIL error) and between (PIL warning)
def test_decompression_bomb(outcome, tmp_path, monkeypatch, limit):
    Image.new("RGB", (20, 20)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    err = _expect_bad(tmp_path / "bomb.png", "decompression-bomb")
    assert str(limit) in err.reason
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)
    assert load_rgb(tmp_path / "bomb.png").size == (20, 20)
    outcome("image", f"decompression bomb (400 px, limit {limit})", "BadImageError naming the limit")


def _touch_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2)).save(path, format="PNG")
    return path


def test_extensions_are_complete():
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"} == IMAGE_EXTENSIONS


def test_list_images_sorted_recursive_hidden_and_case(tmp_path):
    expected = [_touch_image(tmp_path / p) for p in ("a/x.PNG", "a/y.jpeg", "b/c/z.webp", "top.tif")]
    _touch_image(tmp_path / ".hidden/h.png")
    _touch_image(tmp_path / "a/.h.png")
    (tmp_path / "a/readme.txt").write_text("x")
    assert list_images(tmp_path) == sorted(expected)
    assert list_images(str(tmp_path)) == list_images(tmp_path)  # deterministic, str accepted


def test_list_images_follows_links_without_looping(outcome, tmp_path):
    root = tmp_path / "root"
    img = _touch_image(root / "a/one.png")
    outside = _touch_image(tmp_path / "elsewhere/two.png")
    os.symlink(root, root / "a/loop")  # a/loop -> root: a cycle
    os.symlink(tmp_path / "elsewhere", root / "ext")
    os.symlink(root / "missing", root / "broken")
    found = list_images(root)
    assert found == [img, root / "ext" / outside.name]
    outcome("folder", "symlink loop, outside link, broken link", "each image listed once, no hang")


@pytest.mark.parametrize("setup", ["missing", "empty", "no_images", "file"])
def test_list_images_errors(outcome, tmp_path, setup):
    target = tmp_path / "data"
    if setup == "empty":
        target.mkdir()
    elif setup == "no_images":
        target.mkdir()
        (target / "a.txt").write_text("x")
    elif setup == "file":
        target.write_text("x")
    with pytest.raises(DatasetError, match="data"):
        list_images(target)
    outcome("folder", f"{setup} folder", "DatasetError naming the folder")


def test_bad_permissions_reported_even_as_root(outcome, tmp_path, monkeypatch):
    """Root bypasses chmod, so simulate an unreadable file at the os.access level."""
    from discorep.data import images

    _noise_image(tmp_path / "locked.png")
    monkeypatch.setattr(images.os, "access", lambda *a, **k: False)
    _expect_bad(tmp_path / "locked.png", "permission")
    outcome("image", "no read permission (as root: os.access denied)", "BadImageError: permission")
