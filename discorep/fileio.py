"""Crash-safe file writes: the one atomic writer of the package (checkpoints, exports, prior cache, shards).

A file is written to a temp file beside its target, flushed and fsynced, then renamed onto the target
(``os.replace``, atomic on POSIX), and the folder is fsynced so the rename survives a power cut. A reader
therefore sees the old file or the complete new one, never a torn one; on any error (a full disk, Ctrl-C)
the temp file is removed and the target is untouched. Files get the mode ``open()`` would give them
(0666 minus the umask). A leaf module, like `discorep.errors`: it imports nothing from discorep.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename in `directory` durable; not every platform/filesystem allows opening a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _open_temp(target: Path, temp_name: str | None, prefix: str | None, suffix: str) -> tuple[int, Path]:
    """A new temp file in the target's folder: ``temp_name`` (replaced if present: for a single writer
    whose leftovers are swept by name), else a unique ``<prefix><random><suffix>``."""
    flags = os.O_WRONLY | os.O_CREAT | _BINARY
    if temp_name is not None:
        path = target.with_name(temp_name)
        return os.open(path, flags | os.O_TRUNC, 0o666), path
    prefix = f".{target.name}." if prefix is None else prefix
    for _ in range(100):
        path = target.with_name(f"{prefix}{secrets.token_hex(4)}{suffix}")
        try:
            return os.open(path, flags | os.O_EXCL, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp file name for {target}")


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, *, temp_name: str | None = None, prefix: str | None = None,
                suffix: str = ".tmp", sync_dir: bool = True, durable: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary file to write `target`'s new content into; it replaces `target` only when the
    block ends without an error (flush, fsync, rename, then fsync of the folder unless ``sync_dir`` is
    False). ``durable=False`` skips both fsyncs: still never a torn file, but a power cut may lose the
    newest ones (what `discover` wants for thousands of small per-image outputs it can recompute). The temp file is ``.<target name>.<random>.tmp`` unless ``temp_name`` or ``prefix``/``suffix``
    say otherwise; it is removed on any error, and the error propagates."""
    target = Path(target)
    fd, tmp = _open_temp(target, temp_name, prefix, suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_dir and durable:
        fsync_dir(target.parent)


def atomic_write(target: str | os.PathLike, data: bytes | memoryview | Callable[[BinaryIO], Any],
                 **options: Any) -> Path:
    """Write `data` (bytes, or a function that writes into the file it is given) to `target` atomically;
    `options` as for `atomic_file`. Returns the target's path."""
    with atomic_file(target, **options) as f:
        if callable(data):
            data(f)
        else:
            f.write(data)
    return Path(target)
