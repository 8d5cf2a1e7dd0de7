"""Reading the tar shards that ``discorep shard`` writes (``discorep.data.shard_writer``).

A shard folder holds ``shard-000000.tar``, ``shard-000001.tar``, … in the webdataset layout (each
sample is consecutive members ``<key>.<ext>`` with the original image bytes, ``<key>.prior.npy`` with
the int32 region prior when one was computed and ``<key>.json`` with the original relative path and
size), and an ``index.json`` with every shard's name, sample count and byte size plus the prior's
name and parameters. See docs/data.md "Sharded data".

Beside each tar, ``shard-000000.idx.json`` holds the byte offsets of every sample's members (the writer
takes them from the finished tar's headers). The reader is **map-style**: sample ``i`` is the ``i``-th
sample of the concatenated shards. Each process (data-loader worker) loads a shard's offset table once,
on first touch (or, when the ``.idx.json`` is missing or belongs to another version of the shard, reads
the tar headers instead), and from then on fetches a sample with ``os.pread`` at known offsets. So the usual
``ResumableBatchSampler`` keeps working unchanged: per-sample seeds, per-rank slices of every global
batch, worker-count independence and bit-exact resume are the same as for an image folder. File
descriptors are opened lazily in the process that reads; they are never pickled, and a forked worker
closes its inherited copies and opens its own.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from discorep.data.images import (
    IMAGE_EXTENSIONS,
    BadImageError,
    DatasetError,
    decode_rgb,
)
from discorep.data.labelmaps import resize_nearest
from discorep.data.pretrain import PretrainDataset
from discorep.data.views import ViewSampler

__all__ = ["FORMAT", "FORMAT_VERSION", "IMAGE_EXTS", "INDEX_NAME", "OffsetTable", "ShardIndex",
           "ShardPretrainDataset", "ShardReader", "ShardSample", "check_prior", "decode_rgb", "load_index",
           "load_offsets", "offsets_name", "scan_tar", "shard_name"]

FORMAT = "discorep-shards"
FORMAT_VERSION = 1
INDEX_NAME = "index.json"
PRIOR_EXT = "prior.npy"
META_EXT = "json"
IMAGE_EXTS = frozenset(e.lstrip(".") for e in IMAGE_EXTENSIONS)  # member extensions read as images


def shard_name(k: int) -> str:
    return f"shard-{k:06d}.tar"


# ------------------------------------------------------------------------------------------- index
@dataclass
class ShardIndex:
    """``index.json`` of a shard folder, checked against the files on disk."""

    root: Path
    shards: list[dict[str, Any]]  # {"name", "count", "bytes", "sha256", "offsets"}
    prior: str  # "none" when the shards hold no priors
    prior_params: dict[str, Any]
    starts: np.ndarray  # starts[k] = global index of shard k's first sample; starts[-1] = total
    raw: dict[str, Any]

    @property
    def total(self) -> int:
        return int(self.starts[-1])


def load_index(source: str | os.PathLike) -> ShardIndex:
    """Read ``source`` (a shard folder or its index.json); every shard must exist with its recorded size."""
    path = Path(source)
    if path.is_dir():
        path = path / INDEX_NAME
    if not path.is_file():
        hint = " (an interrupted `discorep shard` writes it last: re-run the same command)" \
            if path.parent.is_dir() and any(path.parent.glob("shard-*.tar*")) else ""
        raise DatasetError(f"shard index {str(path)!r} does not exist{hint}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable shard index ({exc}); re-run `discorep shard`") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("version") != FORMAT_VERSION:
        raise DatasetError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} index (written by `discorep shard`)")
    shards = raw.get("shards")
    if not isinstance(shards, list) or not shards:
        raise DatasetError(f"{path}: the index lists no shards")
    for s in shards:
        file = path.parent / s["name"]
        size = file.stat().st_size if file.is_file() else None
        if size != s["bytes"]:
            state = "is missing" if size is None else f"has {size} bytes, the index says {s['bytes']}"
            raise DatasetError(f"shard {file} {state}: it was moved, truncated or rewritten; re-run "
                               "`discorep shard` with the same arguments (it redoes only what is missing)")
    counts = [int(s["count"]) for s in shards]
    if sum(counts) != raw.get("total"):
        raise DatasetError(f"{path}: shard counts add up to {sum(counts)}, not total={raw.get('total')}")
    prior = raw.get("prior") or {"name": "none", "params": {}}
    return ShardIndex(root=path.parent, shards=shards, prior=prior["name"], prior_params=dict(prior["params"]),
                      starts=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), raw=raw)


def check_prior(index: ShardIndex, prior: str, params: dict[str, Any] | None) -> bool:
    """Whether to read the shards' priors for ``data.prior``/``data.prior_params``; raises on a mismatch.

    Priors are never recomputed from shards: the configured prior must be the one they were written with.
    """
    if prior == "none":
        return False
    from discorep.data.priors import resolve_params

    wanted = resolve_params(prior, params)
    where = index.root / INDEX_NAME
    if index.prior == "none":
        raise DatasetError(f"the shards of {where} hold no region prior but data.prior is {prior!r}: "
                           f"re-run `discorep shard --prior {prior} ...`, or set data.prior: none")
    if index.prior != prior or resolve_params(index.prior, index.prior_params) != wanted:
        raise DatasetError(f"the shards of {where} hold the {index.prior} prior with {index.prior_params}, "
                           f"but the config asks for {prior} with {wanted}: make data.prior/data.prior_params "
                           "match the shards, or re-shard with the wanted prior")
    return True


# ------------------------------------------------------------------------------------------ reader
@dataclass
class ShardSample:
    name: str  # "<shard>:<original relative path>", used in messages and skipped.txt
    image: bytes
    ext: str
    prior: np.ndarray | None
    meta: dict[str, Any]


# Columns of a shard's offset table.
_IMG_OFF, _IMG_LEN, _PRIOR_OFF, _PRIOR_LEN, _META_OFF, _META_LEN = range(6)


class ShardReader:
    """Random access to the samples of a shard folder (see module docstring)."""

    def __init__(self, source: str | os.PathLike, max_open: int = 32):
        self.index = load_index(source)
        self.max_open = max_open
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._tables: dict[int, OffsetTable] = {}

    def _check_fork(self) -> None:
        """In a forked child, drop the parent's descriptors (the child's copies); tables stay valid."""
        if self._pid != os.getpid():
            for fd in self._fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds.clear()
            self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in ("_fds", "_tables", "_pid"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def __len__(self) -> int:
        return self.index.total

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            with contextlib.suppress(OSError):
                os.close(fd)
        if hasattr(self, "_fds"):
            self._fds.clear()

    def locate(self, i: int) -> tuple[int, int]:
        """(shard number, position in that shard) of global sample ``i``."""
        if not 0 <= i < self.index.total:
            raise IndexError(f"sample {i} out of range for {self.index.total} shard samples")
        k = int(np.searchsorted(self.index.starts, i, side="right")) - 1
        return k, i - int(self.index.starts[k])

    def read(self, i: int, prior: bool | None = None) -> ShardSample:
        """Sample ``i``: image bytes, extension, metadata and prior (by default when the shards hold one)."""
        if prior is None:
            prior = self.index.prior != "none"
        k, j = self.locate(i)
        table = self._table(k)
        keys, exts, row = table.keys, table.exts, table.rows[j]
        shard = self.index.shards[k]["name"]
        name = f"{shard}:{keys[j]}"
        try:
            meta = json.loads(self._pread(k, row[_META_OFF], row[_META_LEN], name))
        except ValueError as exc:
            raise BadImageError(name, f"unreadable .{META_EXT} ({exc})") from None
        name = f"{shard}:{meta.get('path', keys[j])}"
        labels = None
        if prior:
            if row[_PRIOR_LEN] < 0:
                raise DatasetError(f"{name}: no .{PRIOR_EXT} member although the index lists a prior")
            labels = _load_prior(self._pread(k, row[_PRIOR_OFF], row[_PRIOR_LEN], name), name)
        return ShardSample(name, self._pread(k, row[_IMG_OFF], row[_IMG_LEN], name), exts[j], labels, meta)

    # ----- internals
    def _fd(self, k: int) -> int:
        self._check_fork()
        fd = self._fds.get(k)
        if fd is not None:
            self._fds.move_to_end(k)
            return fd
        while len(self._fds) >= self.max_open:
            os.close(self._fds.popitem(last=False)[1])
        fd = self._fds[k] = os.open(self.index.root / self.index.shards[k]["name"], os.O_RDONLY)
        return fd

    def _pread(self, k: int, offset: int, size: int, name: str) -> bytes:
        data = os.pread(self._fd(k), int(size), int(offset))
        if len(data) != size:
            raise BadImageError(name, f"short read from the shard ({len(data)} of {size} bytes): truncated?")
        return data

    def _table(self, k: int) -> OffsetTable:
        """Shard ``k``'s offset table: from its ``.idx.json`` when that matches the shard, else its tar headers."""
        if k not in self._tables:
            shard = self.index.shards[k]
            table = load_offsets(self.index.root / shard.get("offsets", offsets_name(shard["name"])), shard)
            if table is None:
                table = scan_tar(self.index.root / shard["name"])
            incomplete = sum(1 for row in table.rows if row[_IMG_LEN] < 0 or row[_META_LEN] < 0)
            if incomplete or len(table.keys) != shard["count"]:
                raise DatasetError(f"shard {self.index.root / shard['name']} holds {len(table.keys)} samples "
                                   f"({incomplete} without an image or .json), the index says {shard['count']}: "
                                   "re-run `discorep shard`")
            self._tables[k] = table
        return self._tables[k]


@dataclass
class OffsetTable:
    """Where each sample of one shard lies: keys, image extensions and (n, 6) int64 rows of
    (image offset, image size, prior offset, prior size, json offset, json size); -1 when absent."""

    keys: list[str]
    exts: list[str]
    rows: np.ndarray

    def to_json(self, shard: dict[str, Any]) -> dict[str, Any]:
        return {"shard": shard["name"], "bytes": shard["bytes"], "sha256": shard["sha256"],
                "samples": [[key, ext, *map(int, row)] for key, ext, row in zip(self.keys, self.exts, self.rows)]}


def offsets_name(shard: str) -> str:
    """``shard-000000.tar`` -> ``shard-000000.idx.json``, the offset table written beside it."""
    return shard.removesuffix(".tar") + ".idx.json"


def load_offsets(path: Path, shard: dict[str, Any]) -> OffsetTable | None:
    """The stored table if it belongs to exactly this shard (size and sha256 as in index.json), else None."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if (raw["shard"], raw["bytes"], raw["sha256"]) != (shard["name"], shard["bytes"], shard.get("sha256")):
            return None
        samples = raw["samples"]
        return OffsetTable([str(s[0]) for s in samples], [str(s[1]) for s in samples],
                           np.asarray([s[2:] for s in samples], dtype=np.int64).reshape(-1, 6))
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def scan_tar(path: str | os.PathLike) -> OffsetTable:
    """Build the offset table of a webdataset-layout tar from its member headers (no data is read)."""
    keys: list[str] = []
    exts: list[str] = []
    rows: list[list[int]] = []
    try:
        with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.rpartition("/")[2].partition(".")
                if not keys or keys[-1] != key:
                    keys.append(key)
                    exts.append("")
                    rows.append([-1] * 6)
                row, span = rows[-1], (member.offset_data, member.size)
                if ext == PRIOR_EXT:
                    row[_PRIOR_OFF:_PRIOR_LEN + 1] = span
                elif ext == META_EXT:
                    row[_META_OFF:_META_LEN + 1] = span
                elif ext.lower() in IMAGE_EXTS:
                    exts[-1] = ext
                    row[_IMG_OFF:_IMG_LEN + 1] = span
    except (OSError, tarfile.TarError) as exc:
        raise DatasetError(f"shard {path} is not a readable tar ({exc}); re-run `discorep shard`") from None
    return OffsetTable(keys, exts, np.asarray(rows, dtype=np.int64).reshape(-1, 6))


def _load_prior(data: bytes, name: str) -> np.ndarray:
    try:
        labels = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BadImageError(name, f"unreadable .{PRIOR_EXT} ({exc})") from None
    if labels.dtype != np.int32 or labels.ndim != 2:
        raise BadImageError(name, f".{PRIOR_EXT} must be a 2-d int32 label map, got {labels.dtype} {labels.shape}")
    return labels


# ----------------------------------------------------------------------------------------- dataset
class ShardPretrainDataset(Dataset):
    """``PretrainDataset`` over shards: items ``(index, seed)``, the same view dicts, priors from the shard.

    For the same samples in the same order, it returns exactly what ``PretrainDataset`` over the image
    folder (with a ``RegionPriorCache`` of the same prior) returns: same decoding, same seeds, same
    nearest resize of the label map. An undecodable sample is replaced by the next readable one, as there.
    """

    MAX_REPLACEMENTS = PretrainDataset.MAX_REPLACEMENTS

    def __init__(self, source: str | os.PathLike, views: ViewSampler, prior: str = "none",
                 prior_params: dict[str, Any] | None = None, prior_size: int = 224):
        self.reader = ShardReader(source)
        self.views = views
        self.use_prior = check_prior(self.reader.index, prior, prior_params)
        self.prior_size = prior_size

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        index, seed = item
        skipped = []
        for attempt in range(self.MAX_REPLACEMENTS + 1):
            j = (index + attempt) % len(self)
            try:
                sample = self.reader.read(j, prior=self.use_prior)
                image = decode_rgb(sample.image, sample.name)
            except BadImageError as err:
                skipped.append((err.path, err.reason))
                continue
            out = self.views(image, seed=seed)
            out["index"] = torch.tensor(j)
            if sample.prior is not None:
                labels = torch.from_numpy(np.asarray(sample.prior, dtype=np.int64))
                out["prior"] = resize_nearest(labels, self.prior_size, self.prior_size)
            return {**out, "skipped": skipped}
        return {"skip": skipped}
