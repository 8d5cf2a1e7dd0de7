"""`discorep discover`: unsupervised segmentation of every image of a folder (Odin A.4).

Each image is resized to `size`×`size`, encoded, its feature vectors L2-normalised and clustered per
image by seeded k-means for every requested K (`eval.segment`), and the labels are upsampled (nearest)
to the image's original, upright size. By default (`refine="slic"`) superpixel regions are clustered
instead of feature-grid cells (`eval.refine`), so segment boundaries follow image edges, and the
encoder pads with `padding="replicate"`, which removes the frame of segments along the image border
(`eval.segment` has the measurement). `refine="none", padding="zeros"` is Odin A.4's plain grid.

Output layout (under `out/`), mirroring the input folder so that names are unique and deterministic:

* `<rel>.npz` — one `int32` array `labels_k<K>` of shape (H, W) per requested K, where `<rel>` is the
  image's path relative to `images/` without its extension (`a/b/cat.jpg` → `a/b/cat.npz`). When two
  images of one folder differ only by extension (`cat.jpg`, `cat.png`), both keep their extension
  (`cat.jpg.npz`, `cat.png.npz`). A K larger than the feature grid (or, refined, than an image's
  number of superpixel regions) is clamped to it, but the array keeps the requested K in its name so
  that consumers find every key.
* `<rel>.png` (or `<rel>.jpg.png` etc.) — the image with the `overlay_k` segments drawn on it and
  "K=<overlay_k>" written in its top-left corner, at the
  original size; images whose long side exceeds `OVERLAY_MAX_SIDE` are drawn downscaled to that
  side (the npz is always full size), which keeps huge scans from producing huge pictures.
  The npz also holds `ks` (the requested K) and `k_effective` (what each was clamped to, if it was).
  The overlay says which K it draws: "K=<k>" in its top-left corner (images at least 48 px wide) and in
  the PNG text field `overlay_k`.
* `skipped.txt` — one `<relative path>\\t<reason>` line per unreadable image (empty when none).
* `discover.json` — the settings and counts (also returned by `run_discover`).

Every file is written under a temporary name and renamed, the npz last: an interrupted or failed run
(Ctrl-C, a full disk) leaves only complete outputs, and the same command run again skips the images
whose npz exists when `discover.json` records the same settings, so it continues where it stopped. An
`out` holding another checkpoint's results or results of other settings is refused before the model
loads, unless `overwrite` moves it aside to `<out>.old-<time>` (`eval/discover_out.py`).
The main thread only decodes and encodes: a batch's superpixels and then its clustering (k-means, or the
refinement's pooling, k-means and painting) run on one worker thread while the next batch is decoded and
encoded, and the outputs are written on one background writer thread (in order, at most
`WRITE_AHEAD_BATCHES` behind; the first failure, clustering's or writing's, stops the run as it did inline).

Seeds are per image, derived from `seed` and a hash of the image's relative path, so an image's
segmentation depends neither on the batch size nor on which other images are in the folder.
Files under `out/` (and under the `<out>.old-*` folders moved aside) are never read as inputs, so `--out`
may lie inside `--images`.
"""

from __future__ import annotations

import glob
import json
import logging
import zipfile
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo
from tqdm import tqdm

from discorep.checkpoint import CheckpointError
from discorep.data.images import BadImageError, DatasetError, list_images, load_rgb
from discorep.discovery.random import image_seeds
from discorep.errors import Interrupted, UsageError
from discorep.fileio import atomic_write
from discorep.eval.background import BackgroundWriter
from discorep.eval.backbone import EvalModel, load_model
from discorep.eval.report import resolve_device
from discorep.eval.refine import DEFAULT_COMPACTNESS, DEFAULT_SUPERPIXELS, Refine, start_superpixels
from discorep.eval.segment import cluster_batch, encode_batch, parse_ks, prepare, upsample_nearest
from discorep.eval.discover_out import already_done, checkpoint_file, claim_out, earlier_summary
from discorep.runs import move_aside
from discorep.viz import overlay

log = logging.getLogger(__name__)

OVERLAY_MAX_SIDE = 1024  # long side of the PNG overlay for larger images (npz stays full size)
WRITE_AHEAD_BATCHES = 2  # batches of writes that may be pending behind the compute (bounds their memory)


@dataclass
class _Job:
    path: Path
    name: str  # output path relative to out/, without suffix ("a/b/cat")
    image_id: int  # per-image seed input: crc32 of the relative path


def choose_overlay_k(ks: list[int], overlay_k: int | None) -> int:
    """The K drawn in the PNG: the given one, else 8 if requested, else the largest requested."""
    if overlay_k is not None:
        if overlay_k < 1:
            raise UsageError(f"--overlay-k must be a positive integer, got {overlay_k}")
        return overlay_k
    return 8 if 8 in ks else max(ks)


def output_names(paths: list[Path], root: Path) -> list[str]:
    """Unique, deterministic output names (relative, no suffix) for image paths under root."""
    rels = [p.relative_to(root).as_posix() for p in paths]
    stems = [PurePosixPath(r).with_suffix("").as_posix() for r in rels]
    clashes = Counter(stems)
    names = [r if clashes[s] > 1 else s for r, s in zip(rels, stems)]
    # A kept extension can still equal another file's stem ("x.jpg" vs "x.jpg.png"): number the later one.
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            names[i] = f"{name}~{i}"
        seen.add(names[i])
    return names


def plan_jobs(images: Path, out: Path) -> list[_Job]:
    """Every image under `images` (recursively, sorted), except files inside `out` and inside the folders
    `--overwrite` moved aside (`<out>.old-*`) when they lie inside `images` (a folder that contains
    `images` excludes nothing)."""
    paths = list_images(images)  # raises DatasetError for a missing or empty folder
    moved = (d for d in out.parent.glob(f"{glob.escape(out.name)}.old-*") if d.is_dir())
    outputs = [d for d in (p.resolve() for p in (out, *moved)) if not images.resolve().is_relative_to(d)]
    if outputs:  # out inside images: skip earlier runs' overlays
        paths = [p for p, real in ((p, p.resolve()) for p in paths) if not any(real.is_relative_to(d) for d in outputs)]
    if not paths:
        raise DatasetError(f"no input images under {str(images)!r} outside the output folder {str(out)!r}; "
                           "choose an --out folder that is not the only thing inside --images")
    names = output_names(paths, images)
    return [_Job(p, n, zlib.crc32(p.relative_to(images).as_posix().encode())) for p, n in zip(paths, names)]


def load_model_for_discover(checkpoint: str, device: torch.device) -> EvalModel:
    """load_model, with CheckpointError messages flattened to one line for the CLI's "error:" output."""
    try:
        return load_model(checkpoint, device)
    except CheckpointError as err:
        raise CheckpointError(" ".join(str(err).split())) from err


def _load_batch(jobs: list[_Job], size: int, skipped: list[tuple[_Job, str]]):
    """Decode a batch; unreadable images go to `skipped` (warned, never silent)."""
    kept, pics, tensors = [], [], []
    for job in jobs:
        try:
            img = load_rgb(job.path)
        except BadImageError as err:
            log.warning("skipping %s: %s", job.path, err.reason)
            skipped.append((job, err.reason))
            continue
        kept.append(job)
        pics.append(img)
        tensors.append(prepare(img, size))
    return kept, pics, tensors


def _overlay_picture(img: Image.Image, grid_labels: torch.Tensor, k: int,
                     full_size: np.ndarray | None = None) -> Image.Image:
    """Overlay at the original size, or downscaled so the long side is OVERLAY_MAX_SIDE, labelled "K=k".
    `full_size`: the labels already upsampled to the image's size, if at hand."""
    w, h = img.size
    scale = min(1.0, OVERLAY_MAX_SIDE / max(w, h))
    if scale < 1.0:
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
        img = img.resize((w, h), Image.BICUBIC)
    # Upsampling the grid straight to the picture size equals downscaling the full-size map (nearest).
    labels = full_size if scale == 1.0 and full_size is not None else upsample_nearest(grid_labels, h, w)
    picture = Image.fromarray(overlay(np.asarray(img), labels))
    if w >= 48 and h >= 16:  # say which K is drawn, where it fits
        draw = ImageDraw.Draw(picture)
        draw.rectangle((0, 0, 6 * len(f"K={k}") + 3, 12), fill=(0, 0, 0))
        draw.text((2, 1), f"K={k}", fill=(255, 255, 255))
    return picture


def _replace_atomically(target: Path, write) -> None:
    """`write(file)` then rename onto `target` (`fileio.atomic_write`, without fsyncs: per-image outputs are
    many, small and recomputable): a reader (or a rerun) never sees a half-written file."""
    atomic_write(target, write, temp_name=f".{target.name}.tmp", durable=False)


def _write_outputs(out: Path, job: _Job, img: Image.Image, grids: dict[int, torch.Tensor],
                   ks: list[int], overlay_k: int) -> None:
    w, h = img.size
    target = out / job.name
    target.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"labels_k{k}": upsample_nearest(grids[k], h, w) for k in ks}
    arrays["ks"] = np.asarray(ks, dtype=np.int32)
    arrays["k_effective"] = np.asarray([min(k, grids[k].numel()) for k in ks], dtype=np.int32)
    info = PngInfo()
    info.add_text("overlay_k", str(overlay_k))
    picture = _overlay_picture(img, grids[overlay_k], overlay_k, arrays.get(f"labels_k{overlay_k}"))
    # PNG at zlib level 1: label overlays compress nearly as well, and saving took ~40 % less time.
    _replace_atomically(target.parent / f"{target.name}.png", lambda f: picture.save(f, format="PNG", pnginfo=info, compress_level=1))

    _replace_atomically(target.parent / f"{target.name}.npz", lambda f: _savez_fast(f, arrays))  # last: its presence means "done"


def _savez_fast(f, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed's format (a zip of .npy files, read by np.load) at zlib level 1 instead of 6:
    3× faster on label maps for ~1.5× the bytes (8 maps of 480×640: 15 vs 45 ms, 96 vs 66 kB)."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, array in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)


def _log_clamping(ks: list[int], grid: tuple[int, int]) -> list[int]:
    """Say once which K exceed the number of grid points (cluster_batch clamps them)."""
    points = grid[0] * grid[1]
    clamped = [k for k in ks if k > points]
    if clamped:
        log.info("K=%s exceed the %dx%d=%d feature-grid points; clamped to %d (every point its own segment); "
                 "use a larger --size or finer --features for more segments",
                 ",".join(map(str, clamped)), grid[0], grid[1], points, points)
    return clamped


def _clamped(ks: list[int], grid: tuple[int, int] | None, regions: list[int]) -> list[int]:
    """K values clamped on some image: above the grid's points, or above its fewest superpixel regions."""
    limit = min(regions) if regions else (grid[0] * grid[1] if grid else None)
    return [k for k in ks if limit is not None and k > limit]


def _write_skipped(out: Path, images: Path, skipped: list[tuple[_Job, str]]) -> None:
    lines = [f"{job.path.relative_to(images).as_posix()}\t{reason}\n" for job, reason in skipped]
    (out / "skipped.txt").write_text("".join(lines))


def _segment_all(model: EvalModel, jobs: list[_Job], out: Path, settings: dict, batch_size: int,
                 cluster_ks: list[int], counts: dict, skipped: list[tuple[_Job, str]], refiner: Refine,
                 regions: list[int]) -> tuple[int, int] | None:
    """Segment and write every job, counting into `counts` (and each image's superpixel count into
    `regions` when refining); returns the feature grid (None if nothing ran)."""
    grid = None
    # Writes run on one background thread while the next batches are decoded and encoded, at most
    # WRITE_AHEAD_BATCHES behind (eval/background.py: same order, first error stops, exact count).
    writer = BackgroundWriter(max_pending=WRITE_AHEAD_BATCHES * batch_size)
    # A batch's superpixels, then its clustering, run on this thread while the main thread encodes the next.
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="discover-cluster")
    try:
        with tqdm(total=len(jobs), desc="discover", unit="img", disable=None) as bar:
            for start in range(0, len(jobs), batch_size):
                chunk = jobs[start:start + batch_size]
                chunk_grid = _segment_chunk(model, chunk, out, settings, cluster_ks, skipped, refiner, regions,
                                            writer, worker)
                if grid is None and chunk_grid is not None:
                    grid = chunk_grid
                    _log_clamping(settings["ks"], grid)
                bar.update(len(chunk))
            writer.drain()
    finally:
        worker.shutdown(cancel_futures=True)
        writer.close()  # after an error: skip the queued writes, wait for the running one
        counts["written"] += writer.written
    return grid


def _segment_chunk(model: EvalModel, chunk: list[_Job], out: Path, settings: dict, cluster_ks: list[int],
                   skipped: list[tuple[_Job, str]], refiner: Refine, regions: list[int],
                   writer: BackgroundWriter, worker: ThreadPoolExecutor) -> tuple[int, int] | None:
    """Decode and encode one batch, queue its clustering on `worker` and its writes on `writer`; returns its
    feature grid (None when no image was readable or when refining, whose labels are per pixel)."""
    kept, pics, tensors = _load_batch(chunk, settings["size"], skipped)
    if not kept:
        return None
    images = torch.stack(tensors)
    maps = start_superpixels(worker, images, refiner) if refiner.active else None
    feats = encode_batch(model, images, settings["features"], settings["padding"])
    seeds = image_seeds(settings["seed"], torch.tensor([j.image_id for j in kept], dtype=torch.int64).to(feats.device))
    # Queued behind this batch's superpixels on the one worker, so they are done when it starts.
    labels = worker.submit(_cluster, feats, images, cluster_ks, seeds, refiner, maps, regions)
    for b, (job, img) in enumerate(zip(kept, pics)):
        writer.submit(_write_clustered, out, job, img, labels, b, settings["ks"], settings["overlay_k"])
    return None if refiner.active else tuple(feats.shape[-2:])


def _cluster(feats: torch.Tensor, images: torch.Tensor, ks: list[int], seeds: torch.Tensor, refiner: Refine,
             maps, regions: list[int]) -> dict[int, torch.Tensor]:
    """On the worker thread: one batch's labels for every K (`cluster_batch`); its superpixel counts are
    appended to `regions` (one worker: in batch order)."""
    labels, counts = cluster_batch(feats, images, ks, seeds, refine=refiner, superpixels=maps)
    regions.extend(counts)
    return labels


def _write_clustered(out: Path, job: _Job, img: Image.Image, labels, b: int, ks: list[int],
                     overlay_k: int) -> None:
    """On the writer thread: image `b`'s outputs once its batch's clustering (a Future) is done; a failed
    clustering fails this write, which stops the run."""
    _write_outputs(out, job, img, {k: v[b] for k, v in labels.result().items()}, ks, overlay_k)


def run_discover(*, checkpoint: str, images: str | Path, out: str | Path, ks: str = "1,2,4,8,16,32,64,128",
                 size: int = 448, features: str = "c5", overlay_k: int | None = None, device: str = "auto",
                 batch_size: int = 8, seed: int = 0, refine: str = "slic", superpixels: int = DEFAULT_SUPERPIXELS,
                 compactness: float = DEFAULT_COMPACTNESS, padding: str = "replicate", overwrite: bool = False) -> dict:
    """Segment every image under `images` into `out` (layout in the module docstring); returns the summary.

    An `out` holding results of another checkpoint or other settings is refused (UsageError) unless
    `overwrite`, which moves it aside to ``<out>.old-<time>`` (runs.move_aside: nothing is deleted); one
    holding an interrupted run's results with the same settings is continued."""
    images, out = Path(images), Path(out)
    refiner = Refine(refine, superpixels, compactness)
    k_list = parse_ks(ks)
    draw_k = choose_overlay_k(k_list, overlay_k)
    cluster_ks = k_list if draw_k in k_list else [*k_list, draw_k]
    if batch_size < 1 or size < 1:
        raise UsageError(f"--batch-size and --size must be positive, got {batch_size} and {size}")
    settings = {"checkpoint": str(checkpoint), "checkpoint_file": checkpoint_file(str(checkpoint)), "ks": k_list,
                "size": size, "features": features, "overlay_k": draw_k, "seed": seed, "refine": refiner.settings(),
                "padding": padding}
    earlier = earlier_summary(out)
    foreign = claim_out(out, settings, earlier, overwrite)  # before the model loads: a refusal is quick
    jobs = plan_jobs(images, out)
    dev = resolve_device(device)
    model = load_model_for_discover(checkpoint, dev)
    if foreign:  # only now, so that a failed start leaves the old results where they were
        log.warning("--overwrite: moved the earlier results %s aside to %s", out, move_aside(out))
        earlier = {}
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot write --out {out}: {err.strerror or err}") from None
    done = already_done(out, [j.name for j in jobs], settings, earlier)
    if done:
        log.info("discover: %d of %d images already done by an earlier run with these settings; continuing",
                 len(done), len(jobs))
    todo = [j for j in jobs if j.name not in done]
    summary = {**settings, "arch": model.arch, "images": str(images), "grid": None, "clamped_ks": [],
               "device": str(dev), "batch_size": batch_size, "overlay_max_side": OVERLAY_MAX_SIDE,
               "found": len(jobs), "written": 0, "kept_from_earlier_run": len(done), "skipped": 0,
               "complete": False}
    counts = {"written": 0}
    skipped: list[tuple[_Job, str]] = []
    regions: list[int] = []
    try:
        _write_json(out / "discover.json", summary)  # the settings first: a rerun after a stop continues
        grid = _segment_all(model, todo, out, settings, batch_size, cluster_ks, counts, skipped, refiner, regions)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; {len(done) + counts['written']} of {len(jobs)} images done in {out}; "
                          "rerun the same command to continue") from None
    except OSError as err:
        where = err.filename or out
        raise UsageError(f"cannot write {where}: {err.strerror or err}; {len(done) + counts['written']} of "
                         f"{len(jobs)} images done (all complete); free space or fix permissions and rerun to "
                         "continue") from None
    _write_skipped(out, images, skipped)
    if grid is None and done and not refiner.active:  # nothing new ran: the grid comes from the earlier run
        grid = tuple(earlier.get("grid") or ()) or None
    over = _clamped(k_list, grid, regions)
    if refiner.active and over:
        log.info("K=%s exceed the fewest superpixel regions of an image (%d); such images get at most one "
                 "segment per region; raise --superpixels for more", ",".join(map(str, over)), min(regions))
    summary.update({"grid": list(grid) if grid else None, "clamped_ks": over,
                    "regions_per_image": [min(regions), max(regions)] if regions else None,
                    "written": len(done) + counts["written"], "skipped": len(skipped), "complete": True})
    _write_json(out / "discover.json", summary)
    if summary["written"] == 0:
        raise DatasetError(f"none of the {len(jobs)} images under {str(images)!r} could be read "
                           f"(reasons in {out / 'skipped.txt'}); check the files or the folder")
    log.info("discover: wrote %d segmentations to %s (%d skipped, %d kept from an earlier run)",
             counts["written"], out, len(skipped), len(done))
    return summary


def _write_json(path: Path, data: dict) -> None:
    _replace_atomically(path, (json.dumps(data, indent=2) + "\n").encode())
