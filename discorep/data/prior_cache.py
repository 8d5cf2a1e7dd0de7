"""On-disk cache of region-prior label maps (one compressed ``.npz`` per image).

Layout: ``<cache_root>/<prior>-<12 hex>/`` where the hex is a sha1 over a canonical JSON of the prior
name, its *resolved* parameters (defaults filled in) and :data:`CACHE_VERSION`; a ``params.json``
there says which settings the folder holds. Changing any parameter therefore selects a new folder.

Each image's file is ``sha1(key).npz`` holding ``labels`` (int32), ``key``, ``image_hw``, the source
file's ``file_size`` and ``mtime_ns`` (a changed image is recomputed) and ``crc32`` of the label
bytes (checked on load). For a prior that reads its own file per image (``precomputed``), ``mtime_ns``
folds in those files' sizes and times too, so an edited mask is recomputed as well. Files are written to a temp file in the same folder, fsynced and
``os.replace``-d into place, so an interrupted build leaves only complete files; a truncated or
corrupt file is reported with a :class:`PriorCacheWarning` and recomputed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import signal
import time
import warnings
import zipfile
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from tqdm import tqdm

from discorep.data.pool import quiet_worker
from discorep.data.priors import PriorError, compute_prior, prior_files, resolve_params
from discorep.errors import Interrupted
from discorep.fileio import atomic_write

__all__ = ["CACHE_VERSION", "BuildStats", "PriorCacheWarning", "RegionPriorCache", "default_loader"]

CACHE_VERSION = 1  # bump when the file format or a prior's algorithm changes
_TMP_PREFIX = ".tmp-"
_FIELDS = ("labels", "key", "image_hw", "file_size", "mtime_ns", "crc32")
log = logging.getLogger(__name__)

Loader = Callable[[str], Any]


class PriorCacheWarning(UserWarning):
    """A cache file was unreadable or failed its checksum and was recomputed."""


class _CorruptFile(Exception):
    """Internal: the cache file exists but cannot be trusted."""


@dataclass
class BuildStats:
    """Outcome counts; each item is exactly one of loaded / computed / recomputed_corrupt / failed.

    ``computed`` includes files recomputed because the source image changed. ``failures`` lists
    ``(key, reason)`` for every failed item.
    """

    computed: int = 0
    loaded: int = 0
    recomputed_corrupt: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def __str__(self) -> str:  # what the logs show (the dataclass repr lists every failure)
        return (f"{self.loaded} loaded, {self.computed} computed, {self.recomputed_corrupt} recomputed (corrupt), "
                f"{self.failed} unreadable")

    def record(self, outcome: str, key: str, detail: str = "") -> None:
        if outcome == "failed":
            self.failures.append((key, detail))
        elif outcome == "corrupt":
            self.recomputed_corrupt += 1
        else:
            setattr(self, outcome, getattr(self, outcome) + 1)


def default_loader(path: str) -> np.ndarray:
    """Load an image as uint8 RGB with ``discorep.data.images.load_rgb`` (PIL fallback)."""
    try:
        from discorep.data.images import load_rgb
    except ImportError:  # only while the images module does not exist yet
        from PIL import Image

        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    return np.asarray(load_rgb(path))


def cache_dir_name(prior: str, params: dict[str, Any]) -> str:
    """``<prior>-<12 hex>`` for resolved ``params`` (see module docstring)."""
    canon = json.dumps({"prior": prior, "params": params, "version": CACHE_VERSION},
                       sort_keys=True, separators=(",", ":"))
    return f"{prior}-{hashlib.sha1(canon.encode('utf-8')).hexdigest()[:12]}"


def _checksum(labels: np.ndarray) -> int:
    # The shape goes in too, so a reshaped array with the same bytes does not pass.
    return zlib.crc32(labels.tobytes(), zlib.crc32(repr(labels.shape).encode()))


def _source_signature(image_path: str | os.PathLike, *more: str | os.PathLike) -> tuple[int, int]:
    """(size, mtime_ns) of the source file; (-1, -1) for a path that cannot be stat-ed. With ``more``
    files (a prior's own inputs) the second number is a checksum of every file's (size, mtime_ns)."""
    signatures = []
    for path in (image_path, *more):
        try:
            st = os.stat(path)
            signatures.append((st.st_size, st.st_mtime_ns))
        except OSError:
            signatures.append((-1, -1))
    if not more:
        return signatures[0]
    return (signatures[0][0], zlib.crc32(repr(signatures).encode()))


def _as_rgb(image: Any) -> np.ndarray:
    """Accept a PIL image or an array from a custom loader."""
    if hasattr(image, "convert"):
        image = image.convert("RGB")
    return np.asarray(image)


class RegionPriorCache:
    """Compute-once, load-after store of ``prior`` label maps, keyed by a stable string per image.

    ``loader(path)`` returns the image (PIL or uint8 array); it must be picklable (a module-level
    function) for parallel :meth:`build`. ``stats`` accumulates outcomes of :meth:`get` and
    :meth:`build` on this object.
    """

    def __init__(self, cache_root: str | os.PathLike, prior: str, params: dict[str, Any] | None = None,
                 loader: Loader | None = None) -> None:
        self.cache_root = Path(cache_root)
        self.prior = prior
        self.params = resolve_params(prior, params)
        self.loader: Loader = loader or default_loader
        self.directory = self.cache_root / cache_dir_name(prior, self.params)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write_params_json()
        self.stats = BuildStats()

    # ------------------------------------------------------------------ public
    def path_for(self, key: str) -> Path:
        """The cache file for ``key``."""
        return self.directory / (hashlib.sha1(_check_key(key).encode("utf-8")).hexdigest() + ".npz")

    def get(self, key: str, image_path: str | os.PathLike) -> np.ndarray:
        """The label map for ``key``: loaded when valid, else computed from ``image_path`` and stored.

        Loader errors (e.g. ``BadImageError``) propagate; they are also recorded in ``stats``.
        """
        try:
            labels, outcome, detail = self._load_or_compute(key, image_path)
        except Exception as exc:
            self.stats.record("failed", key, f"{type(exc).__name__}: {exc}")
            raise
        self._report(outcome, key, detail, self.stats)
        return labels

    def build(self, items: Iterable[tuple[str, str | os.PathLike]], num_workers: int | None = None,
              progress: bool = True) -> BuildStats:
        """Make sure every ``(key, image_path)`` has a valid file; returns this run's counts.

        ``num_workers=None`` uses every available core; 0 or 1 runs in this process. Workers write
        files themselves. Unloadable images are counted in ``failed`` (with reasons), not raised.
        """
        items = [(_check_key(k), str(p)) for k, p in items]
        _check_unique(items)
        self.clean_temp()
        run = BuildStats()
        workers = _resolve_workers(num_workers, len(items))
        # disable=None as well: no bar when stderr is not a terminal (no progress debris in logs)
        with tqdm(total=len(items), disable=None if progress else True, desc=f"prior {self.directory.name}",
                  unit="img") as bar:
            try:
                for outcomes in self._run(items, workers):
                    for outcome, key, detail in outcomes:
                        self._report(outcome, key, detail, run, self.stats)
                    bar.update(len(outcomes))
            except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM as `errors.Terminated`
                done = run.loaded + run.computed + run.recomputed_corrupt
                raise Interrupted(f"interrupted during the region-prior build: {done} of {len(items)} images are "
                                  f"cached in {self.directory}; rerun to continue (only the rest is computed)",
                                  signum=getattr(err, "signum", signal.SIGINT)) from None
        if run.failed:
            log.warning("%d of %d images failed in prior build (first: %s)", run.failed, len(items),
                        run.failures[0])
        return run

    def clean_temp(self, max_age_s: float = 3600.0) -> int:
        """Delete temp files older than ``max_age_s`` (left by killed builds); returns how many.

        Younger ones are kept because another process may still be writing them.
        """
        now, removed = time.time(), 0
        for tmp in self.directory.glob(_TMP_PREFIX + "*"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime >= max_age_s:
                    tmp.unlink()
                    removed += 1
        return removed

    # ---------------------------------------------------------------- internals
    def _run(self, items: list[tuple[str, str]], workers: int) -> Iterable[list[tuple[str, str, str]]]:
        """Yield per-chunk outcome lists, in-process or from a process pool."""
        if workers <= 1:
            for key, path in items:
                yield [self._ensure(key, path)]
            return
        size = max(1, min(32, math.ceil(len(items) / (workers * 4))))
        chunks = [items[i:i + size] for i in range(0, len(items), size)]
        spec = (str(self.cache_root), self.prior, self.params, self.loader)
        pool = ProcessPoolExecutor(max_workers=workers, initializer=quiet_worker)
        try:
            for fut in as_completed([pool.submit(_build_chunk, spec, c) for c in chunks]):
                yield fut.result()
        except BaseException:
            # Ctrl-C / SIGTERM: `with pool` would wait for every queued chunk (hours on ImageNet). Cancel
            # them and stop the workers; files are written atomically, so what is cached stays valid.
            _abandon(pool)
            raise
        pool.shutdown()

    def _ensure(self, key: str, image_path: str) -> tuple[str, str, str]:
        """(outcome, key, detail) for one item; never raises for a bad image."""
        try:
            _, outcome, detail = self._load_or_compute(key, image_path)
        except Exception as exc:  # one bad image must not abort a data-set-wide build
            return ("failed", key, f"{type(exc).__name__}: {exc}")
        return (outcome, key, detail)

    def _load_or_compute(self, key: str, image_path: str | os.PathLike) -> tuple[np.ndarray, str, str]:
        file = self.path_for(key)
        signature = _source_signature(image_path, *prior_files(self.prior, self.params, key))
        corrupt = ""
        try:
            labels = self._load_valid(file, key, signature)
            if labels is not None:
                return labels, "loaded", ""
        except _CorruptFile as exc:
            corrupt = f"corrupt prior cache file {file} ({exc}); recomputed"
        labels = self._compute_and_write(file, key, image_path, signature)
        return labels, ("corrupt" if corrupt else "computed"), corrupt

    def _load_valid(self, file: Path, key: str, signature: tuple[int, int]) -> np.ndarray | None:
        """Labels if ``file`` is present, intact and current; None if missing/stale; raises if corrupt."""
        if not file.exists():
            return None
        if not zipfile.is_zipfile(file):  # truncation cuts off the zip directory at the end
            raise _CorruptFile("not a complete npz archive (truncated or overwritten)")
        try:
            with np.load(file, allow_pickle=False) as z:
                rec = {name: z[name] for name in _FIELDS}
        except Exception as exc:  # zip, zlib, header and key errors all mean the same: unreadable
            raise _CorruptFile(f"{type(exc).__name__}: {exc}") from None
        labels = rec["labels"]
        if labels.dtype != np.int32 or labels.ndim != 2 or int(rec["crc32"]) != _checksum(labels):
            raise _CorruptFile("checksum or dtype mismatch")
        if str(rec["key"]) != key:  # sha1 collision or a renamed file: not ours
            return None
        if (int(rec["file_size"]), int(rec["mtime_ns"])) != signature:
            return None  # the source image changed since the file was written
        return labels

    def _compute_and_write(self, file: Path, key: str, image_path: str | os.PathLike,
                           signature: tuple[int, int]) -> np.ndarray:
        # The signature was taken *before* reading, so an image edited mid-build is redone next time.
        image = _as_rgb(self.loader(str(image_path)))
        labels = compute_prior(self.prior, image, self.params, key=key)
        payload = {"labels": labels, "key": np.array(key), "image_hw": np.array(image.shape[:2], np.int64),
                   "file_size": np.int64(signature[0]), "mtime_ns": np.int64(signature[1]),
                   "crc32": np.int64(_checksum(labels))}
        _atomic_write(file, lambda f: np.savez_compressed(f, **payload))
        return labels

    def _report(self, outcome: str, key: str, detail: str, *stats: BuildStats) -> None:
        """Record in ``stats`` and surface corruption as a warning (workers cannot warn for us)."""
        for s in stats:
            s.record(outcome, key, detail)
        if outcome == "corrupt":
            log.warning("%s", detail)
            warnings.warn(detail, PriorCacheWarning, stacklevel=3)

    def _write_params_json(self) -> None:
        target = self.directory / "params.json"
        if target.exists():
            return
        text = json.dumps({"prior": self.prior, "params": self.params, "cache_version": CACHE_VERSION},
                          indent=2, sort_keys=True)
        _atomic_write(target, lambda f: f.write(text.encode("utf-8")))


def _atomic_write(target: Path, write: Callable[[Any], Any]) -> None:
    """`fileio.atomic_write` with the cache's temp names (swept by `clean_temp`); no fsync of the folder per
    file: a rename lost in a power cut only costs a recompute."""
    atomic_write(target, write, prefix=_TMP_PREFIX, suffix=target.suffix, sync_dir=False)


def _abandon(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: queued work cancelled, running workers terminated (no public API for the latter)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # shutdown() forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(Exception):
            process.terminate()
    for process in processes:
        with contextlib.suppress(Exception):
            process.join(timeout=5)


def _build_chunk(spec: tuple[str, str, dict[str, Any], Loader],
                 chunk: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """Worker entry point: ensure every item of ``chunk``; returns outcomes (no arrays shipped back)."""
    root, prior, params, loader = spec
    cache = RegionPriorCache(root, prior, params, loader=loader)
    return [cache._ensure(key, path) for key, path in chunk]


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise PriorError(f"cache keys must be non-empty strings (e.g. the relative image path), got {key!r}")
    return key


def _check_unique(items: list[tuple[str, str]]) -> None:
    seen: set[str] = set()
    for key, _ in items:
        if key in seen:
            raise PriorError(f"duplicate cache key {key!r} in build items; keys must identify one image each")
        seen.add(key)


def _resolve_workers(num_workers: int | None, n_items: int) -> int:
    if num_workers is None:
        num_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise PriorError(f"num_workers must be None or an integer >= 0, got {num_workers!r}")
    return min(num_workers, max(n_items, 1))
