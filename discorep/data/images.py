"""Robust image decoding and image-file discovery.

Every image that enters discorep goes through :func:`load_rgb`, so that all later code can
assume an 8-bit, upright, 3-channel PIL image. Anything that cannot be decoded raises
:class:`BadImageError` naming the file and the reason, never a PIL/zlib traceback.

Transparency policy: images with an alpha channel (LA, RGBA, PA, P with a transparency key)
are composited onto **white**. Dropping alpha instead would expose whatever colour an encoder
left under fully transparent pixels (often black or garbage), which differs between tools.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "BadImageError",
    "DatasetError",
    "is_image_file",
    "list_images",
    "load_rgb",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)

_ALPHA_MODES = {"LA", "La", "RGBA", "RGBa", "PA"}
_HIGH_DEPTH_MODES = {"I", "F", "I;16", "I;16B", "I;16L", "I;16N"}
# Errors PIL's decoders raise on corrupt or truncated data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError)


from discorep.errors import BadImageError, DatasetError  # noqa: F401,E402 (re-export)


def is_image_file(path: str | os.PathLike) -> bool:
    """True when ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` fully into an upright 8-bit RGB image.

    EXIF orientation is applied; animated images give their first frame; alpha is
    composited on white; 16-bit / int32 / float images are min-max scaled to 0..255.
    Raises :class:`BadImageError` for anything unreadable (see module docstring).
    """
    path = Path(path)
    _check_file(path)
    return _decode(path, path)


def decode_rgb(data: bytes, name: str | os.PathLike) -> Image.Image:
    """`load_rgb` for encoded bytes (e.g. a tar member), with the same policy; errors name ``name``."""
    if not data:
        raise BadImageError(name, "zero-byte image data")
    return _decode(io.BytesIO(data), Path(name))


def _decode(source: Path | io.BytesIO, path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # PIL only *warns* between MAX_IMAGE_PIXELS and twice that; we refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                _check_size(path, img)
                img.seek(0)
                img.load()  # force a full decode so truncation is detected here
                img = _exif_upright(img)
                return _to_rgb(img)
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError(path, _bomb_reason(str(exc))) from None
    except UnidentifiedImageError:
        raise BadImageError(
            path, "not a recognised image format (is the extension right? is it an image at all?)"
        ) from None
    except PermissionError:
        raise BadImageError(path, "permission denied; make the file readable (chmod a+r)") from None
    except _DECODE_ERRORS as exc:
        reason = f"corrupt or truncated image data ({exc}); re-export or delete it"
        raise BadImageError(path, reason) from None


def _check_file(path: Path) -> None:
    """Reject missing, unreadable, directory and zero-byte paths before PIL sees them."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BadImageError(path, "file does not exist") from None
    except OSError as exc:
        raise BadImageError(path, f"cannot stat file ({exc.strerror})") from None
    if path.is_dir():
        raise BadImageError(path, "is a directory, not an image file")
    if size == 0:
        raise BadImageError(path, "zero-byte file (interrupted download or copy?); delete or re-fetch it")
    if not os.access(path, os.R_OK):
        raise BadImageError(path, "permission denied; make the file readable (chmod a+r)")


def _bomb_reason(detail: str) -> str:
    return (
        f"image exceeds PIL's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels ({detail}); "
        "if the file is trusted, downscale it or raise PIL.Image.MAX_IMAGE_PIXELS explicitly"
    )


def _check_size(path: Path, img: Image.Image) -> None:
    """Refuse zero-area images and (again, in case warnings are filtered elsewhere) bombs."""
    w, h = img.size
    if w <= 0 or h <= 0:
        raise BadImageError(path, f"image has a zero dimension ({w}x{h})")
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and w * h > limit:
        raise BadImageError(path, _bomb_reason(f"{w}x{h}"))


def _exif_upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a malformed EXIF block is ignored, not fatal."""
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - broken metadata must not make pixels unusable
        return img
    return img if upright is None else upright


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB following the module's documented policy."""
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode in _HIGH_DEPTH_MODES:
        return _scale_to_rgb(np.asarray(img))
    if mode == "P" and "transparency" in img.info:
        return _composite_on_white(img.convert("RGBA"))
    if mode in _ALPHA_MODES:
        return _composite_on_white(img.convert("RGBA"))
    return img.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _scale_to_rgb(values: np.ndarray) -> Image.Image:
    """Min-max scale a single-channel high-depth array to 8-bit grey.

    The *actual* value range is used because 16-bit sensors and masks rarely span 0..65535;
    a constant image keeps its value clipped to 0..255. NaNs become 0.
    """
    arr = values.astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        arr = np.zeros_like(arr)
    else:
        lo, hi = float(arr[finite].min()), float(arr[finite].max())
        arr = np.where(finite, arr, lo)
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.clip(arr, 0, 255)
    grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def list_images(root: str | os.PathLike) -> list[Path]:
    """All image files under ``root``, recursively, sorted.

    Directory symlinks are followed, but each real directory is visited once (so symlink
    loops terminate and aliased folders are not double-counted). Hidden files and folders
    (name starting with ".") are skipped. Raises :class:`DatasetError` if ``root`` is
    missing, not a directory, or holds no images.
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError(
            f"image folder {str(root)!r} does not exist; check the path (or build the demo data)"
        )
    if not root.is_dir():
        raise DatasetError(f"{str(root)!r} is not a directory; pass the folder that contains the images")
    found: list[Path] = []
    _walk(root, set(), found)
    if not found:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DatasetError(f"no image files ({exts}) found under {str(root)!r}")
    return sorted(found)


def _walk(folder: Path, seen: set[str], found: list[Path]) -> None:
    """Depth-first, name-ordered walk that records each real directory once."""
    real = os.path.realpath(folder)
    if real in seen:
        return
    seen.add(real)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        warnings.warn(f"skipping unreadable folder {str(folder)!r}: {exc.strerror}", stacklevel=3)
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            is_dir, is_file = entry.is_dir(), entry.is_file()
        except OSError:  # e.g. ELOOP from a self-referencing link: nothing to list there
            continue
        if is_dir:
            _walk(folder / entry.name, seen, found)
        elif is_file and is_image_file(entry.name):
            found.append(folder / entry.name)
