"""`discorep eval video`: semi-supervised video object segmentation by label propagation.

The DINO protocol used by Odin §4.3. Every frame is encoded on its own (short side resized to `size`,
aspect kept, sides multiples of the network's stride) into L2-normalised feature vectors. The first
frame's masks are given: its one-hot label map (background + objects) is area-averaged onto the feature
grid. Each later frame t then takes, for every feature cell, the labels of its `topk` most similar cells
among the first frame and the last `context` frames, counting only source cells within `radius` feature
cells (a square window, as DINO), weighted by softmax(similarity / temperature) over those top-k; the
propagated soft labels become context for the next frames. The label distribution of a frame is
upsampled bilinearly to the annotation size and arg-maxed. Scores: DAVIS J and F (`davis_metrics`).

Frames are encoded in batches while propagating, so memory holds `context + 1` feature maps, not the
whole sequence.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from discorep.data.images import DatasetError, is_image_file, load_rgb
from discorep.data.palette import davis_palette
from discorep.errors import UsageError
from discorep.eval.backbone import (
    EvalModel,
    load_model,
    normalize_images,
)
from discorep.eval.davis_metrics import VOID, sequence_scores, summarize
from discorep.eval.refine import Refine, region_vote
from discorep.eval.report import print_table, resolve_device, write_json
from discorep.models.dense import dense_features

log = logging.getLogger("discorep")


# ----------------------------------------------------------------------------- DAVIS folders
def davis_dirs(root: Path) -> tuple[Path, Path]:
    """(JPEGImages/480p, Annotations/480p) of a DAVIS root (Full-Resolution or no sub-folder also work)."""
    for sub in ("480p", "Full-Resolution", ""):
        jpeg, ann = root / "JPEGImages" / sub, root / "Annotations" / sub
        if jpeg.is_dir() and ann.is_dir() and any(p.is_dir() for p in jpeg.iterdir()):
            return jpeg, ann
    raise DatasetError(f"{root} is not a DAVIS-layout folder: expected JPEGImages/480p/<sequence>/*.jpg and "
                       "Annotations/480p/<sequence>/*.png")


def list_sequences(root: Path) -> list[str]:
    """Sequences of ImageSets/2017/val.txt, or every folder under JPEGImages/480p when it is absent."""
    jpeg, _ = davis_dirs(Path(root))
    listing = Path(root) / "ImageSets" / "2017" / "val.txt"
    if listing.exists():
        names = [s.strip() for s in listing.read_text(encoding="utf-8").splitlines() if s.strip()]
    else:
        names = sorted(p.name for p in jpeg.iterdir() if p.is_dir())
    if not names:
        raise DatasetError(f"{root}: no sequence listed in {listing} or found in {jpeg}")
    return names


def _read_ids(path: Path) -> np.ndarray:
    """Object ids of a DAVIS annotation: palette index (mode P) or grey value (mode L)."""
    with Image.open(path) as img:
        if img.mode not in ("P", "L"):
            raise DatasetError(f"{path}: annotation is a mode-{img.mode} image; DAVIS annotations are "
                               "palette (P) PNGs whose indices are object ids")
        return np.asarray(img, dtype=np.uint8)


def read_sequence(root: Path, seq: str) -> tuple[list[Path], np.ndarray]:
    """Frame paths and the ground-truth label maps (T, H, W) uint8 of one sequence, checked to match."""
    jpeg, ann = davis_dirs(Path(root))
    if not (jpeg / seq).is_dir():
        raise DatasetError(f"sequence {seq}: no frame folder {jpeg / seq}")
    frames = sorted(p for p in (jpeg / seq).iterdir() if is_image_file(p))
    masks = sorted((ann / seq).glob("*.png")) if (ann / seq).is_dir() else []
    if not frames:
        raise DatasetError(f"sequence {seq}: no frames in {jpeg / seq}")
    if not masks or masks[0].stem != frames[0].stem:
        raise DatasetError(f"sequence {seq}: the first frame {frames[0].name} has no annotation "
                           f"{ann / seq / (frames[0].stem + '.png')}; propagation starts from it")
    if len(masks) != len(frames):
        raise DatasetError(f"sequence {seq}: {len(frames)} frames but {len(masks)} annotations; "
                           "J and F need an annotation for every frame")
    unmatched = [f.name for f, m in zip(frames, masks) if f.stem != m.stem]
    if unmatched:
        raise DatasetError(f"sequence {seq}: frames {unmatched[:3]} have no annotation of the same name")
    labels = [_read_ids(p) for p in masks]
    if len({lab.shape for lab in labels}) != 1:
        raise DatasetError(f"sequence {seq}: annotations differ in size")
    return frames, np.stack(labels)


# ----------------------------------------------------------------------------- encoding
def input_shape(height: int, width: int, size: int, stride: int) -> tuple[int, int]:
    """Network input (H, W): short side `size`, aspect kept, both rounded to a multiple of `stride`."""
    scale = size / min(height, width)
    return (max(stride, round(height * scale / stride) * stride),
            max(stride, round(width * scale / stride) * stride))


def encode_frames(model: EvalModel, paths: list[Path], *, size: int, features: str, device: torch.device,
                  batch_size: int) -> Iterator[Tensor]:
    """Yield one (D, h, w) map of L2-normalised feature vectors per frame, computed `batch_size` at a time."""
    # The largest stride of the encoder (c5) fixes the valid input multiples even when c4 is read:
    # the FPN's top-down path needs c5 to tile c4 exactly.
    stride = max(model.encoder.strides.values())
    for lo in range(0, len(paths), batch_size):
        images = [TF.to_dtype(TF.pil_to_tensor(load_rgb(p)), torch.float32, scale=True)
                  for p in paths[lo:lo + batch_size]]
        shape = input_shape(images[0].shape[1], images[0].shape[2], size, stride)
        x = torch.stack([TF.resize(img, list(shape), antialias=True) for img in images]).clamp(0, 1)
        feats = F.normalize(dense_features(model, normalize_images(x.to(device)), features, project="fpn"), dim=1)
        yield from feats


# ----------------------------------------------------------------------------- propagation
def seed_distribution(labels: np.ndarray, ids: list[int], grid: tuple[int, int]) -> Tensor:
    """(1 + len(ids), h, w): the first frame's one-hot map [background, *ids] area-averaged onto the grid.

    Void pixels count as background, as the DAVIS evaluation reads them.
    """
    lab = torch.from_numpy(np.where(labels == VOID, 0, labels).astype(np.int64))
    onehot = torch.stack([lab == 0] + [lab == i for i in ids]).float()
    return F.adaptive_avg_pool2d(onehot[None], grid)[0]


def _window(target_cells: Tensor, source_cells: Tensor, width: int, radius: int) -> Tensor:
    """(q, m) bool: source cell within `radius` rows and columns of the target cell (flat row-major ids)."""
    ty, tx = target_cells // width, target_cells % width
    sy, sx = source_cells // width, source_cells % width
    return ((ty[:, None] - sy[None, :]).abs() <= radius) & ((tx[:, None] - sx[None, :]).abs() <= radius)


def _tiles(h: int, w: int, tile: int, radius: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """(target cells, source cells) per square tile of targets; sources = the tile grown by `radius`."""
    cells = torch.arange(h * w, device=device).reshape(h, w)
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            targets = cells[y:y + tile, x:x + tile].flatten()
            sources = cells[max(0, y - radius):y + tile + radius, max(0, x - radius):x + tile + radius].flatten()
            yield targets, sources


def propagate_frame(target: Tensor, src_feats: Tensor, src_labels: Tensor, *, topk: int, radius: int,
                    temperature: float, tile: int = 8) -> Tensor:
    """Labels of one frame from its context.

    target (D, h, w) features; src_feats (n, D, h, w); src_labels (n, C, h, w) → (C, h, w).
    Targets are processed in tiles of `tile`×`tile` cells that only look at source cells within `radius`
    of the tile, so the cost grows with the window area, not with the square of the frame (FPN grids at
    480p have ~25k cells).
    """
    C, h, w = src_labels.shape[1:]
    tgt = target.flatten(1).t()  # (N, D)
    keys = src_feats.flatten(2).transpose(1, 2)  # (n, N, D)
    vals = src_labels.flatten(2).transpose(1, 2)  # (n, N, C)
    out = torch.empty(h * w, C, dtype=vals.dtype, device=vals.device)
    for targets, sources in _tiles(h, w, tile, radius, target.device):
        sim = torch.einsum("qd,nmd->qnm", tgt[targets], keys[:, sources])
        near = _window(targets, sources, w, radius)
        sim = sim.masked_fill(~near[:, None, :], float("-inf")).flatten(1)  # (q, n·m), frame-major
        top, idx = sim.topk(min(topk, sim.shape[1]), dim=1)
        # Fewer than topk cells in the window (radius 0): the -inf surplus gets weight exp(-inf) = 0.
        weights = torch.softmax(top / temperature, dim=1)
        out[targets] = torch.einsum("qk,qkc->qc", weights, vals[:, sources].reshape(-1, C)[idx])
    return out.t().reshape(C, h, w)


class Propagator:
    """Holds the first frame and the last `context` frames (features and soft labels) of a sequence."""

    def __init__(self, first_feats: Tensor, first_labels: Tensor, *, topk: int, context: int, radius: int,
                 temperature: float) -> None:
        self.first = (first_feats, first_labels.to(first_feats))
        self.recent: deque[tuple[Tensor, Tensor]] = deque(maxlen=context)
        self.options = {"topk": topk, "radius": radius, "temperature": temperature}

    def step(self, feats: Tensor) -> Tensor:
        """(D, h, w) features of the next frame → its (C, h, w) label distribution (kept as context)."""
        context = [self.first, *self.recent]
        labels = propagate_frame(feats, torch.stack([f for f, _ in context]), torch.stack([l for _, l in context]),
                                 **self.options)
        if self.recent.maxlen:
            self.recent.append((feats, labels))
        return labels


def propagate(feats: Tensor, first: Tensor, *, topk: int, context: int, radius: int, temperature: float) -> Tensor:
    """feats (T, D, h, w) L2-normalised, first (C, h, w) → (T, C, h, w) label distributions (frame 0 = first)."""
    prop = Propagator(feats[0], first, topk=topk, context=context, radius=radius, temperature=temperature)
    return torch.stack([first.to(feats)] + [prop.step(f) for f in feats[1:]])


def to_label_map(probs: Tensor, ids: list[int], height: int, width: int, *, refine: Refine | None = None,
                 frame: Path | None = None) -> np.ndarray:
    """(C, h, w) distribution → (H, W) uint8 object ids (0 = background): bilinear upsampling, argmax;
    with an active `refine`, the argmax of each superpixel's mean distribution on the `frame` image."""
    if refine is not None and refine.active:
        image = np.asarray(load_rgb(frame).resize((width, height), Image.BILINEAR))
        return torch.tensor([0, *ids], dtype=torch.uint8)[torch.from_numpy(region_vote(probs, image, refine))].numpy()
    up = F.interpolate(probs[None].float().cpu(), size=(height, width), mode="bilinear", align_corners=False)[0]
    return torch.tensor([0, *ids], dtype=torch.uint8)[up.argmax(0)].numpy()


# ----------------------------------------------------------------------------- command
def predict_sequence(model: EvalModel, frames: list[Path], first: np.ndarray, *, size: int, features: str,
                     device: torch.device, batch_size: int, topk: int, context: int, radius: int,
                     temperature: float, desc: str = "", progress: bool = True,
                     refine: Refine | None = None) -> np.ndarray:
    """(T, H, W) uint8 predicted ids for a sequence, given its first annotation `first` (H, W)."""
    ids = [int(i) for i in np.unique(first) if i not in (0, VOID)]  # only objects seen at t=0 can propagate
    height, width = first.shape
    pred = np.zeros((len(frames), height, width), np.uint8)
    pred[0] = np.where(first == VOID, 0, first)  # the given frame is not scored; keep it as given
    prop = None
    stream = encode_frames(model, frames, size=size, features=features, device=device, batch_size=batch_size)
    for t, feats in enumerate(tqdm(stream, total=len(frames), desc=desc, unit="frame", leave=False,
                                disable=None if progress else True)):
        if prop is None:
            seed = seed_distribution(first, ids, tuple(feats.shape[-2:]))
            prop = Propagator(feats, seed, topk=topk, context=context, radius=radius, temperature=temperature)
            continue
        pred[t] = to_label_map(prop.step(feats), ids, height, width, refine=refine, frame=frames[t])
    return pred


def save_palette_masks(out: Path, frames: list[Path], pred: np.ndarray) -> None:
    """Write a sequence's label maps as DAVIS palette PNGs, `out/<frame stem>.png` (as DINO's evaluation
    does), so they can be looked at and scored with the official DAVIS toolkit."""
    out.mkdir(parents=True, exist_ok=True)
    palette = davis_palette()
    for frame, labels in zip(frames, pred):
        png = Image.fromarray(labels, mode="P")
        png.putpalette(palette)
        tmp = out / f".{frame.stem}.png.tmp"
        png.save(tmp, format="PNG")
        tmp.replace(out / f"{frame.stem}.png")  # never a truncated PNG after an interruption


def _check_options(size: int, batch_size: int, topk: int, context: int, radius: int, temperature: float) -> None:
    if size < 1 or batch_size < 1 or topk < 1 or context < 0 or radius < 0 or not temperature > 0:
        raise UsageError(f"need --size >= 1, --batch-size >= 1, --topk >= 1, --context >= 0, --radius >= 0 and "
                         f"--temperature > 0 (got {size}, {batch_size}, {topk}, {context}, {radius}, {temperature})")


def evaluate_video(model: EvalModel, davis: Path, *, size: int, features: str, device: torch.device,
                   batch_size: int = 8, topk: int = 5, context: int = 7, radius: int = 12,
                   temperature: float = 0.7, progress: bool = True, refine: Refine | None = None,
                   save_masks: Path | None = None) -> dict:
    """J, F, J&F over every sequence of a DAVIS-layout folder (no printing; `run` reports); with
    `save_masks`, the predictions as palette PNGs in `save_masks/<sequence>/<frame>.png`."""
    _check_options(size, batch_size, topk, context, radius, temperature)
    davis = Path(davis)
    scores, skipped = {}, []
    for seq in tqdm(list_sequences(davis), desc="sequences", unit="seq", disable=None if progress else True):
        frames, labels = read_sequence(davis, seq)
        pred = predict_sequence(model, frames, labels[0], size=size, features=features, device=device,
                                batch_size=batch_size, topk=topk, context=context, radius=radius,
                                temperature=temperature, desc=seq, progress=progress, refine=refine)
        scores[seq] = sequence_scores(pred, labels)
        if save_masks is not None:
            save_palette_masks(Path(save_masks) / seq, frames, pred)
        if not scores[seq]:
            skipped.append(seq)
            log.warning("sequence %s scores nothing (no object in its first annotation, or < 3 frames: "
                        "DAVIS scores neither the first nor the last frame)", seq)
    result = summarize(scores)
    if result["n_objects"] == 0:
        raise DatasetError(f"{davis}: no sequence has a scored object")
    result.update(n_sequences=len(result["per_sequence"]), skipped=skipped)
    return result


def run(*, checkpoint: str, size: int, features: str, device: str, batch_size: int, seed: int,
        out: Path | None, davis: Path, topk: int, context: int, radius: int, temperature: float,
        refine: str = "none", superpixels: int = 256, compactness: float = 10.0,
        save_masks: Path | None = None) -> dict:
    """Propagate the first-frame masks through every sequence; print and return (and write) J, F, J&F.

    Nothing here is random: `seed` is accepted like every eval command's and recorded in the JSON.
    """
    _check_options(size, batch_size, topk, context, radius, temperature)
    refiner = Refine(refine, superpixels, compactness)
    davis, dev = Path(davis), resolve_device(device)
    list_sequences(davis)  # a bad folder fails before the model loads
    model = load_model(checkpoint, dev)
    result = evaluate_video(model, davis, size=size, features=features, device=dev, batch_size=batch_size,
                            topk=topk, context=context, radius=radius, temperature=temperature, refine=refiner,
                            save_masks=save_masks)
    _report(result, checkpoint, features, size, out,
            {"checkpoint": checkpoint, "davis": davis, "size": size, "features": features, "topk": topk,
             "context": context, "radius": radius, "temperature": temperature, "seed": seed,
             "refine": refiner.settings(), "save_masks": save_masks})
    return result


def _report(result: dict, checkpoint: str, features: str, size: int, out: Path | None, settings: dict) -> None:
    rows = [{"sequence": name, "objects": s["n_objects"], "J": s["J"], "F": s["F"], "J&F": s["J&F"]}
            for name, s in result["per_sequence"].items()]
    rows.append({"sequence": "mean (over objects)", "objects": result["n_objects"], "J": result["J"],
                 "F": result["F"], "J&F": result["J&F"]})
    print_table(f"video label propagation (DAVIS) — {checkpoint} ({features}, short side {size}px)", rows,
                ("sequence", "objects", "J", "F", "J&F"))
    if out is not None:
        write_json(out, {"task": "video", "settings": settings, **result})
