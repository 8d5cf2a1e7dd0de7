"""``discorep shard``: pack an image folder (or a COCO set's images) and their region priors into tar shards.

Input ``k·S … (k+1)·S-1`` (in ``list_images`` order, or the COCO json's order) goes to shard ``k``, so
each shard depends on its own inputs only: shards are written in order, each to ``<name>.tmp`` that is
fsynced and renamed when complete; then its offset table (``shard-XXXXXX.idx.json``) is written beside it
and the shard is recorded in ``OUT/.state/<name>.json``. A rerun of the same
command reuses every recorded shard whose inputs are unchanged (paths, sizes, mtimes) and writes the
rest; ``index.json`` is written last, so its presence means the folder is complete. The layout and the
reader are described in ``discorep.data.shards`` and docs/data.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import json
import logging
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from discorep.data.images import BadImageError, DatasetError, list_images, load_rgb
from discorep.data.pool import quiet_worker
from discorep.data.priors import PRIOR_NAMES, PriorError, compute_prior, resolve_params
from discorep.data.shards import (
    FORMAT,
    FORMAT_VERSION,
    IMAGE_EXTS,
    INDEX_NAME,
    META_EXT,
    PRIOR_EXT,
    load_offsets,
    offsets_name,
    scan_tar,
    shard_name,
)
from discorep.errors import UsageError
from discorep.fileio import atomic_file, atomic_write

__all__ = ["ShardSummary", "list_inputs", "write_shards"]

STATE_DIR = ".state"
SKIPPED_NAME = "skipped.txt"
log = logging.getLogger(__name__)

# (key, relative path, file path, COCO image id or None)
Input = tuple[str, str, str, "int | None"]
# (key, relative path, [(member name, bytes)] or None when unreadable, reason)
Encoded = tuple[str, str, "list[tuple[str, bytes]] | None", str]


@dataclass
class ShardSummary:
    out: Path
    total: int  # samples in the shards
    inputs: int  # images listed
    shards: int
    written: int  # shards written by this call
    reused: int  # complete shards of an earlier (interrupted) call, kept
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)


def list_inputs(images: str | os.PathLike, coco: str | os.PathLike | None = None) -> list[Input]:
    """Every image under ``images`` (sorted, as ``list_images``) or, with ``coco``, the json's images in order."""
    root = Path(images)
    if coco is None:
        rels = [(p.relative_to(root).as_posix(), p, None) for p in list_images(root)]
    else:
        from discorep.data.datasets import CocoDataset

        ds = CocoDataset(coco, root)
        rels = [(str(ds.images[i]["file_name"]), ds.path(i), ds.image_ids[i]) for i in range(len(ds))]
        if not rels:
            raise DatasetError(f"{coco}: the json lists no images")
    width = max(8, len(str(len(rels) - 1)))
    return [(f"{i:0{width}d}", rel, str(path), cid) for i, (rel, path, cid) in enumerate(rels)]


def write_shards(images: str | os.PathLike, out: str | os.PathLike, *, coco: str | os.PathLike | None = None,
                 shard_size: int = 1000, prior: str = "none", prior_params: dict[str, Any] | None = None,
                 workers: int | None = None, progress: bool = True) -> ShardSummary:
    """Write (or complete) the shards of ``images`` in ``out``; see the module docstring."""
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise UsageError(f"shard size must be an integer >= 1, got {shard_size!r}")
    if prior == "none":
        if prior_params:
            raise PriorError(f"prior parameters {sorted(prior_params)} given without a prior; pick one of "
                             f"{', '.join(PRIOR_NAMES)}")
        params: dict[str, Any] = {}
    else:
        params = resolve_params(prior, prior_params)
    inputs = list_inputs(images, coco)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = out / STATE_DIR
    state.mkdir(exist_ok=True)
    with _exclusive(state / "lock", out):
        for stale in [*out.glob("*.tmp"), *state.glob("*.tmp")]:
            stale.unlink()  # left by an interrupted run: never a complete shard
        _check_plan(state, out, _plan(inputs, coco is not None, shard_size, prior, params))
        chunks = [inputs[i:i + shard_size] for i in range(0, len(inputs), shard_size)]
        sources = [_sources(chunk) for chunk in chunks]
        records = {k: _reusable(out, k, sources[k]) for k in range(len(chunks))}
        pending = [k for k, rec in records.items() if rec is None]
        if pending:  # the folder is incomplete until index.json is written again
            (out / INDEX_NAME).unlink(missing_ok=True)
        encode = functools.partial(_encode, prior=prior, params=params)
        with tqdm(total=sum(len(chunks[k]) for k in pending), desc=f"shard {out.name}", unit="img",
                  disable=None if progress else True) as bar, _mapper(workers, shard_size) as run:
            for k in pending:
                records[k] = _write_shard(out, k, run(encode, chunks[k]), sources[k], bar)
        return _finish(out, images, coco, inputs, shard_size, prior, params, records, len(pending))


def _finish(out: Path, images, coco, inputs: list[Input], shard_size: int, prior: str, params: dict,
            records: dict[int, dict], written: int) -> ShardSummary:
    skipped = [(rel, reason) for k in sorted(records) for rel, reason in records[k]["skipped"]]
    skipped_file = out / SKIPPED_NAME
    if skipped:
        lines = "".join(f"{rel}\t{reason}\n" for rel, reason in skipped)
        _atomic_write(skipped_file, lines.encode("utf-8"))
        log.warning("skipped %d unreadable image(s), listed in %s", len(skipped), skipped_file)
    else:
        skipped_file.unlink(missing_ok=True)
    total = sum(records[k]["count"] for k in records)
    if total == 0:
        first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise DatasetError(f"none of the {len(inputs)} images could be read{first}; all are listed in "
                           f"{skipped_file}")
    index = {"format": FORMAT, "version": FORMAT_VERSION, "total": total, "inputs": len(inputs),
             "skipped": len(skipped), "shard_size": shard_size,
             "prior": {"name": prior, "params": params} if prior != "none" else None,
             "source": {"images": str(images), "coco": None if coco is None else str(coco)},
             "shards": [{**{key: records[k][key] for key in ("name", "count", "bytes", "sha256")},
                         "offsets": offsets_name(records[k]["name"])} for k in sorted(records)]}
    _atomic_write(out / INDEX_NAME, json.dumps(index, indent=1).encode("utf-8"))
    return ShardSummary(out=out, total=total, inputs=len(inputs), shards=len(records), written=written,
                        reused=len(records) - written, skipped=skipped)


# ------------------------------------------------------------------------------------- per image
def _encode(item: Input, prior: str, params: dict[str, Any]) -> Encoded:
    """Members of one sample, or None and the reason when the image cannot be used. Runs in workers."""
    key, rel, path, coco_id = item
    try:
        before = _signature(path)
        with open(path, "rb") as f:
            data = f.read()
        image = load_rgb(path)  # the decode RegionPriorCache uses, so the prior is bit-identical to its
        if _signature(path) != before or len(data) != before[0]:
            return key, rel, None, "the file changed while it was being sharded; re-run the command"
    except BadImageError as err:
        return key, rel, None, err.reason
    except OSError as exc:
        return key, rel, None, f"cannot read file ({exc.strerror or exc})"
    ext = _extension(path, data)
    if ext is None:
        return key, rel, None, "no image file extension and an image format webdataset readers would not know"
    meta: dict[str, Any] = {"path": rel, "width": image.width, "height": image.height, "bytes": len(data)}
    if coco_id is not None:
        meta["coco_id"] = coco_id
    members = [(f"{key}.{ext}", data)]
    if prior != "none":
        try:
            labels = compute_prior(prior, np.asarray(image), params)
        except PriorError as exc:  # e.g. a grid finer than a tiny image
            return key, rel, None, f"region prior {prior} failed: {exc}"
        buf = io.BytesIO()
        np.save(buf, labels, allow_pickle=False)
        members.append((f"{key}.{PRIOR_EXT}", buf.getvalue()))
    members.append((f"{key}.{META_EXT}", json.dumps(meta, sort_keys=True).encode("utf-8")))
    return key, rel, members, ""


def _extension(path: str, data: bytes) -> str | None:
    """The file's own extension (lower case); for a COCO file_name without one, the format PIL detects."""
    ext = Path(path).suffix.lower().lstrip(".")
    if ext in IMAGE_EXTS:
        return ext
    with contextlib.suppress(Exception), Image.open(io.BytesIO(data)) as img:
        ext = {"jpeg": "jpg", "mpo": "jpg"}.get(img.format.lower(), img.format.lower())
    return ext if ext in IMAGE_EXTS else None


def _signature(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


# ------------------------------------------------------------------------------------- per shard
def _write_shard(out: Path, k: int, encoded: Iterable[Encoded], sources: str, bar: tqdm) -> dict[str, Any]:
    """Write shard ``k`` to a temp file, fsync, rename, then record it in the state folder."""
    name = shard_name(k)
    target, tmp = out / name, out / f"{name}.tmp"
    count, skipped = 0, []
    with atomic_file(target, temp_name=tmp.name) as f:  # a fixed temp name: swept by the next run
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for key, rel, members, reason in encoded:
                bar.update(1)
                if members is None:
                    skipped.append([rel, reason])
                    continue
                for member, data in members:
                    tar.addfile(_tar_info(member, len(data)), io.BytesIO(data))
                count += 1
        f.flush()
        digest = hashlib.sha256()
        with open(tmp, "rb") as g:
            for block in iter(lambda: g.read(1 << 20), b""):
                digest.update(block)
        table = scan_tar(tmp)
    record = {"name": name, "count": count, "bytes": target.stat().st_size, "sha256": digest.hexdigest(),
              "skipped": skipped, "sources": sources}
    _atomic_write(out / offsets_name(name), json.dumps(table.to_json(record)).encode("utf-8"))
    _atomic_write(out / STATE_DIR / f"{name}.json", json.dumps(record).encode("utf-8"))
    return record


def _sources(chunk: list[Input]) -> str:
    """Hash of the inputs of a shard (relative paths, sizes, mtimes): an edited image redoes its shard."""
    h = hashlib.sha1()
    for key, rel, path, coco_id in chunk:
        try:
            sig = _signature(path)
        except OSError:
            sig = (-1, -1)
        h.update(json.dumps([key, rel, coco_id, *sig]).encode("utf-8"))
    return h.hexdigest()


def _reusable(out: Path, k: int, sources: str) -> dict[str, Any] | None:
    """The record of a complete shard ``k`` written from inputs with these ``sources``, else None."""
    name = shard_name(k)
    try:
        record = json.loads((out / STATE_DIR / f"{name}.json").read_text(encoding="utf-8"))
        ok = record["sources"] == sources and (out / name).stat().st_size == record["bytes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if ok and load_offsets(out / offsets_name(name), record) is None:  # offset table lost: rebuild it
        _atomic_write(out / offsets_name(name), json.dumps(scan_tar(out / name).to_json(record)).encode("utf-8"))
    return record if ok else None


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    """Fixed metadata so the same inputs give byte-identical shards."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o444, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


# ---------------------------------------------------------------------------------------- helpers
def _plan(inputs: list[Input], is_coco: bool, shard_size: int, prior: str, params: dict) -> dict[str, Any]:
    listing = hashlib.sha1(json.dumps([[rel, cid] for _, rel, _, cid in inputs]).encode("utf-8")).hexdigest()
    return {"format": FORMAT, "version": FORMAT_VERSION, "source": "coco" if is_coco else "folder",
            "inputs": len(inputs), "inputs_sha1": listing, "shard_size": shard_size, "prior": prior,
            "params": params}


def _check_plan(state: Path, out: Path, plan: dict[str, Any]) -> None:
    """Record the job's settings; refuse to mix shards of different inputs or settings in one folder."""
    file = state / "plan.json"
    try:
        old = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        old = None
    except (OSError, ValueError):
        old = {}
    if old is None:
        if (out / INDEX_NAME).exists() or any(out.glob("shard-*.tar")):
            raise UsageError(f"{out} already holds shards but no {STATE_DIR}/plan.json: pass an empty or "
                             "new --out folder (or delete this one)")
        _atomic_write(file, json.dumps(plan, indent=1).encode("utf-8"))
        return
    if old != plan:
        keys = sorted(k for k in set(plan) | set(old) if plan.get(k) != old.get(k))
        raise UsageError(f"{out} holds shards of other inputs or settings (differing: {', '.join(keys)}); "
                         "pass a new --out folder, or delete this one to rewrite it")


@contextlib.contextmanager
def _exclusive(lock: Path, out: Path) -> Iterator[None]:
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"another `discorep shard` is writing to {out}; wait for it to finish") from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _mapper(workers: int | None, shard_size: int) -> Iterator[Callable[[Callable, list], Iterable]]:
    """An ordered map over one shard's inputs: in-process for 0/1 workers, else a process pool."""
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise UsageError(f"workers must be an integer >= 0, got {workers!r}")
    if workers <= 1:
        yield map
        return
    chunksize = max(1, min(32, shard_size // (workers * 4)))
    with ProcessPoolExecutor(max_workers=workers, initializer=quiet_worker) as pool:
        yield lambda fn, items: pool.map(fn, items, chunksize=chunksize)


def _atomic_write(target: Path, data: bytes) -> None:
    atomic_write(target, data, temp_name=f"{target.name}.tmp")  # swept by the next run's "*.tmp" clean-up
