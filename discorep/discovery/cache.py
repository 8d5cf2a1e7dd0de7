"""Segments cached between discrete discovery-network updates (Odin §3.1, A.5): one store per rank, on disk.

Between two copies θ → τ (every `discrete_every_epochs` epochs; one *version*) an image's segments do
not change, so they are computed once and kept. An in-memory dict of every image seen would hold
N · h · w · 2 bytes in every process (ImageNet at `views.raw_size: 448`, FPN stride 4: 1.28 M × 112² ×
2 B ≈ 32 GB per process, ×8 per node) and a checkpoint would have to stack it. Instead:

* the sampler gives each rank a fixed shard of n // world_size images for the whole version
  (`data.pretrain.rank_shard`, asked for by the method), so a rank caches its shard only;
* `SegmentStore` keeps one rank's maps of one version in a flat file of int16 maps, slot k = the k-th
  smallest index of the shard, read and written with os.preadv/os.pwrite: only a batch of maps is ever
  in the process's memory (page-cache pages are the kernel's to drop), besides 9 bytes per shard image
  (the sorted shard and which slots are filled). A memory map would do the same I/O but count every
  touched page in the process's RSS;
* an image outside the shard (the replacement of an unreadable file) is computed every time and
  counted (`uncached`), not cached;
* at a checkpoint every rank fsyncs its file and saves its own small part (`rank_state_dict`: version,
  file name, filled slots) beside the checkpoint; on resume it trusts only the slots filled then. Slots
  written later are recomputed, identically: the resumed run replays the same batches. A missing or
  unusable file or part means recomputing, with one warning.

Disk per rank: (n // world_size) · h · w · 2 bytes per version file, sparse until filled, at most two
versions kept (the current one and the previous, which the last checkpoints may still need): ImageNet
at 448 px and 8 ranks, 4.0 GB per file. `benchmarks/memory.py segments` prints the formula and a
measured case.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from discorep import hostsync

log = logging.getLogger("discorep")
INT16_MAX = torch.iinfo(torch.int16).max


class SegmentStore:
    """One rank's label maps of one version: a file of int16 (h, w) maps, one slot per shard image.

    `shard`: the dataset indices it holds (None: every index, slot = index, the file grows as needed).
    `filled` and `shape` reopen an existing file trusting those slots (resume); otherwise the file
    starts empty (truncated: what a run left there before is never trusted)."""

    def __init__(self, path: str | Path, shard: np.ndarray | None, *, filled: np.ndarray | None = None,
                 shape: tuple[int, int] | None = None):
        self.path = Path(path)
        self.shard = None if shard is None else np.sort(np.asarray(shard, dtype=np.int64))
        size = 0 if self.shard is None else len(self.shard)
        self.filled = np.zeros(size, dtype=bool) if filled is None else np.array(filled, dtype=bool)
        self.shape = None if shape is None else (int(shape[0]), int(shape[1]))
        self.uncached = 0  # images outside the shard, computed every time
        if self.shard is not None and len(self.filled) != size:
            raise ValueError(f"{len(self.filled)} saved slots for a shard of {size} images")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if filled is not None:
            needed = (np.flatnonzero(self.filled).max(initial=-1) + 1) * self.slot_bytes()
            if not self.path.is_file() or self.path.stat().st_size < needed:
                raise ValueError(f"{self.path} is missing or shorter than its {int(self.filled.sum())} filled slots")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | (0 if filled is not None else os.O_TRUNC), 0o666)
        self._closer = weakref.finalize(self, os.close, self.fd)

    def slot_bytes(self) -> int:
        return 0 if self.shape is None else self.shape[0] * self.shape[1] * 2

    def slots(self, indices: list[int]) -> np.ndarray:
        """Each index's slot, -1 outside the shard."""
        idx = np.asarray(indices, dtype=np.int64)
        if self.shard is None:
            return idx
        if not len(self.shard):
            return np.full(len(idx), -1)
        pos = np.searchsorted(self.shard, idx).clip(max=len(self.shard) - 1)
        return np.where(self.shard[pos] == idx, pos, -1)

    def missing(self, indices: list[int]) -> list[int]:
        """Positions in `indices` of the images without a stored map (outside the shard: always)."""
        return [i for i, s in enumerate(self.slots(indices)) if s < 0 or s >= len(self.filled) or not self.filled[s]]

    def store(self, indices: list[int], labels: Tensor) -> None:
        # Checked where the read-back is free (CPU); on GPUs the ids are < method.K <= 32767 by config.
        if hostsync.reads_are_free(labels) and labels.numel() and labels.max() > INT16_MAX:
            raise ValueError("segment ids exceed int16; the segment store cannot hold them")
        host = np.empty(tuple(labels.shape), dtype=np.int16)
        torch.from_numpy(host).copy_(labels)  # the device → host copy (on GPUs a sync, as any cache fill)
        if self.shape is None:
            self.shape = host.shape[1:]
        elif host.shape[1:] != self.shape:
            raise ValueError(f"label maps of shape {host.shape[1:]} for a store of {self.shape} maps")
        for slot, lab in zip(self.slots(indices), host):
            if slot < 0:
                self.uncached += 1
                continue
            _pwrite_all(self.fd, lab.data.cast("B"), int(slot) * self.slot_bytes())
            if slot >= len(self.filled):  # every index (no shard): the bitmap grows with the file
                self.filled = np.concatenate([self.filled, np.zeros(slot + 1 - len(self.filled), bool)])
            self.filled[slot] = True

    def read(self, indices: list[int], skip: list[int] = ()) -> np.ndarray:
        """(B, h, w) int16 maps of `indices` from the file; rows at the positions `skip` are left zero."""
        out = np.zeros((len(indices), *self.shape), dtype=np.int16)
        leave = set(skip)
        for i, slot in enumerate(self.slots(indices)):
            if i not in leave:
                got = os.preadv(self.fd, [out[i].data.cast("B")], int(slot) * self.slot_bytes())
                if got != self.slot_bytes():
                    raise OSError(f"segment store {self.path} is shorter than its filled slots (was it truncated?)")
        return out

    def flush(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        self._closer()

    def state(self) -> dict:
        return {"file": self.path.name, "shape": list(self.shape or ()), "filled": torch.from_numpy(self.filled.copy())}


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


class SegmentCache:
    """One rank's cached segments across versions: the current `SegmentStore`, where its files live, and
    what a checkpoint keeps of it. Used before `attach` (a method outside the engine), it keeps every
    index in a temporary folder removed with the object."""

    def __init__(self) -> None:
        self.version = 0  # number of discovery-network copies the cached segments belong to
        self.folder: Path | None = None
        self.rank, self.world_size = 0, 1
        self.shard_of: Callable[[int], np.ndarray | None] = lambda version: None
        self.store: SegmentStore | None = None
        self.legacy = False  # filled from an old checkpoint's in-memory cache

    def attach(self, folder: str | Path, rank: int, world_size: int,
               shard_of: Callable[[int], np.ndarray | None]) -> None:
        self.close()
        self.folder, self.rank, self.world_size, self.shard_of = Path(folder), rank, world_size, shard_of

    def file(self, version: int) -> Path:
        return self.folder / f"rank{self.rank}-of-{self.world_size}-v{version}.bin"

    def current(self) -> SegmentStore:
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="discorep-segments-"))
            weakref.finalize(self, shutil.rmtree, self.folder, True)
        if self.store is None:
            self.store = SegmentStore(self.file(self.version), self.shard_of(self.version))
        return self.store

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def clear(self) -> None:
        """A new version (θ was copied into τ): a new file; files older than the previous version go."""
        self.close()
        self.version += 1
        pattern = re.compile(rf"^rank{self.rank}-of-{self.world_size}-v(\d+)\.bin$")
        for path in self.folder.iterdir() if self.folder is not None and self.folder.is_dir() else ():
            match = pattern.match(path.name)
            if match and int(match.group(1)) < self.version - 1:
                path.unlink(missing_ok=True)

    # ----- checkpoints -----
    def rank_state_dict(self) -> dict:
        """This rank's part of a checkpoint, its file fsynced first: no label maps, only which are stored."""
        state = {"version": self.version, "rank": self.rank, "world_size": self.world_size}
        if self.store is not None:
            self.store.flush()
            state.update(self.store.state())
        return state

    def load_rank_state_dict(self, state: dict | None, where: str | Path) -> None:
        """Reopen this rank's store as the checkpoint left it; anything missing: recompute, with a warning."""
        if state is None:
            if not self.legacy:  # (an old checkpoint's maps were already copied into the store)
                log.warning("rank %d: no segment-store state %s; this version's segments are recomputed",
                            self.rank, where)
            return
        self.close()
        self.legacy = False
        if int(state["version"]) != self.version or "file" not in state:
            if int(state["version"]) != self.version:
                log.warning("rank %d: segment-store state %s is of version %s, not %d; segments are recomputed",
                            self.rank, where, state["version"], self.version)
            return
        try:
            self.store = SegmentStore(self.file(self.version), self.shard_of(self.version),
                                      filled=state["filled"].numpy(), shape=tuple(state["shape"]))
        except (OSError, ValueError) as err:
            log.warning("rank %d: cannot reopen the segment store of %s (%s); this version's segments are "
                        "recomputed", self.rank, where, err)

    def load_legacy(self, state: dict) -> None:
        """An old checkpoint's in-memory cache ({"indices", "labels", "version"}): its maps of this rank's
        shard go into the store (the others are not this rank's to keep)."""
        self.close()
        self.version = int(state["version"])
        if len(state["indices"]):
            self.current().store(state["indices"].tolist(), state["labels"])
            self.store.uncached = 0  # other ranks' images, not replacements
        self.legacy = True
