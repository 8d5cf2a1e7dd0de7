"""`discorep eval video`: semi-supervised video object segmentation by label propagation.

The DINO protocol used by Odin §4.3: every frame is encoded independently; the first frame's masks
are given; each later frame takes, for every feature cell, the labels of its `topk` most similar
cells among the first frame and the last `context` frames, restricted to a square spatial
neighbourhood, weighted by softmax(similarity / temperature). Label distributions are upsampled
bilinearly to the frame size and arg-maxed. Scored with DAVIS J and F (`davis_metrics`).

`--radius` is given in cells *at stride 8* (the DINO setting: 12 at stride 8); at another feature
stride s it is rescaled to ceil(radius·8/s) cells so the neighbourhood covers the same image area.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from discorep.data.images import DatasetError, load_rgb
from discorep.errors import UsageError
from discorep.eval.backbone import EvalModel, dense_features, load_model, normalize_images
from discorep.eval.davis_metrics import sequence_scores
from discorep.eval.report import emit_report, resolve_device

log = logging.getLogger("discorep")


# ----------------------------------------------------------------------------- data
def _layout(root: Path) -> tuple[Path, Path]:
    for sub in ("480p", "Full-Resolution", ""):
        jpeg, ann = root / "JPEGImages" / sub, root / "Annotations" / sub
        if jpeg.is_dir() and ann.is_dir():
            return jpeg, ann
    raise DatasetError(f"{root} is not a DAVIS-layout folder: expected JPEGImages/480p/<seq>/ and "
                       "Annotations/480p/<seq>/ (or without 480p)")


def list_sequences(root: Path) -> list[str]:
    jpeg, _ = _layout(root)
    listing = root / "ImageSets" / "2017" / "val.txt"
    if listing.exists():
        return [s.strip() for s in listing.read_text().splitlines() if s.strip()]
    return sorted(p.name for p in jpeg.iterdir() if p.is_dir())


def read_sequence(root: Path, seq: str) -> tuple[list[Image.Image], np.ndarray]:
    """Frames (PIL RGB) and ground-truth label maps (T, H, W) from palette PNGs."""
    jpeg, ann = _layout(root)
    frames = sorted((jpeg / seq).glob("*.jpg")) + sorted((jpeg / seq).glob("*.png"))
    masks = sorted((ann / seq).glob("*.png"))
    if not frames:
        raise DatasetError(f"sequence {seq}: no frames in {jpeg / seq}")
    if not masks or masks[0].stem != frames[0].stem:
        raise DatasetError(f"sequence {seq}: the first frame {frames[0].name} has no annotation in {ann / seq}")
    if len(masks) != len(frames):
        raise DatasetError(f"sequence {seq}: {len(frames)} frames but {len(masks)} annotations; "
                           "J and F need an annotation for every frame")
    images = [load_rgb(p) for p in frames]
    labels = np.stack([np.asarray(Image.open(p)) for p in masks]).astype(np.int64)
    if labels.shape[1:] != (images[0].height, images[0].width):
        raise DatasetError(f"sequence {seq}: annotations are {labels.shape[1:]} but frames {images[0].size[::-1]}")
    return images, labels


# ----------------------------------------------------------------------------- propagation
def frame_features(model: EvalModel, frames: list[Image.Image], size: int, features: str,
                   device: torch.device, batch_size: int) -> Tensor:
    """(T, D, h, w) L2-normalised features; the short side resized to `size`, sides multiples of 32."""
    w0, h0 = frames[0].size
    scale = size / min(h0, w0)
    H, W = (max(32, int(round(h0 * scale / 32)) * 32), max(32, int(round(w0 * scale / 32)) * 32))
    out = []
    for i in range(0, len(frames), batch_size):
        x = torch.stack([TF.resize(TF.to_dtype(TF.pil_to_tensor(f), torch.float32, scale=True), [H, W],
                                   antialias=True) for f in frames[i:i + batch_size]])
        out.append(F.normalize(dense_features(model, normalize_images(x.clamp(0, 1).to(device)), features), dim=1))
    return torch.cat(out)


def neighbourhood(h: int, w: int, radius: int, device: torch.device) -> Tensor:
    """(h·w, h·w) bool: source cell within `radius` cells (square window) of the target cell."""
    yy, xx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    y, x = yy.flatten(), xx.flatten()
    return ((y[:, None] - y[None, :]).abs() <= radius) & ((x[:, None] - x[None, :]).abs() <= radius)


def propagate(feats: Tensor, first: Tensor, *, topk: int, context: int, radius: int, temperature: float,
              chunk: int = 512) -> Tensor:
    """feats (T, D, h, w), first (C, h, w) label distribution → (T, C, h, w) label distributions."""
    T, D, h, w = feats.shape
    flat = feats.flatten(2).transpose(1, 2)  # (T, N, D)
    probs = [first.flatten(1).t()]  # (N, C) per frame
    near = neighbourhood(h, w, radius, feats.device)
    for t in range(1, T):
        ctx = [0] + [s for s in range(max(1, t - context), t)]
        src_f = flat[ctx]  # (n, N, D)
        src_l = torch.stack([probs[s] for s in ctx])  # (n, N, C)
        n, N = src_f.shape[:2]
        out = []
        for lo in range(0, N, chunk):
            sim = torch.einsum("qd,nkd->qnk", flat[t, lo:lo + chunk], src_f)  # (q, n, N)
            sim = sim.masked_fill(~near[lo:lo + chunk, None, :], float("-inf")).flatten(1)
            top, idx = sim.topk(min(topk, sim.shape[1]), dim=1)
            weights = torch.softmax(top / temperature, dim=1)  # exp(s/T) over the top-k, normalised
            out.append(torch.einsum("qk,qkc->qc", weights, src_l.reshape(n * N, -1)[idx]))
        probs.append(torch.cat(out))
    return torch.stack(probs).transpose(1, 2).reshape(T, -1, h, w)


def first_frame_distribution(labels: np.ndarray, object_ids: list[int], h: int, w: int) -> Tensor:
    """One-hot (background + objects) of the first frame, area-averaged onto the feature grid."""
    lab = torch.from_numpy(labels)
    onehot = torch.stack([(lab == 0)] + [(lab == o) for o in object_ids]).float()
    return F.adaptive_avg_pool2d(onehot[None], (h, w))[0]


def to_label_maps(probs: Tensor, object_ids: list[int], height: int, width: int) -> np.ndarray:
    """(T, C, h, w) → (T, H, W) object ids (0 = background), bilinear upsampling then argmax."""
    ids = torch.tensor([0] + object_ids)
    maps = [ids[F.interpolate(p[None], size=(height, width), mode="bilinear", align_corners=False)[0].argmax(0)]
            for p in probs.cpu()]
    return torch.stack(maps).numpy()


# ----------------------------------------------------------------------------- command
def evaluate_sequence(model: EvalModel, images, labels: np.ndarray, *, size: int, features: str,
                      device: torch.device, batch_size: int, topk: int, context: int, radius: int,
                      temperature: float) -> dict[int, dict[str, float]]:
    feats = frame_features(model, images, size, features, device, batch_size)
    radius_cells = math.ceil(radius * 8 / model.encoder.strides[features])
    object_ids = [int(o) for o in np.unique(labels[0]) if o != 0]
    first = first_frame_distribution(labels[0], object_ids, *feats.shape[-2:]).to(feats.device)
    probs = propagate(feats, first, topk=topk, context=context, radius=radius_cells, temperature=temperature)
    pred = to_label_maps(probs, object_ids, *labels.shape[1:])
    return sequence_scores(pred, labels, object_ids)


def run(*, checkpoint: str, size: int, features: str, device: str, batch_size: int, seed: int,
        out: Path | None, davis: Path, topk: int, context: int, radius: int, temperature: float) -> dict:
    if topk < 1 or context < 0 or radius < 0 or temperature <= 0:
        raise UsageError("need --topk >= 1, --context >= 0, --radius >= 0 and --temperature > 0")
    dev = resolve_device(device)
    model = load_model(checkpoint, dev)
    per_sequence, all_objects = {}, []
    for seq in tqdm(list_sequences(Path(davis)), desc="video", unit="seq"):
        images, labels = read_sequence(Path(davis), seq)
        scores = evaluate_sequence(model, images, labels, size=size, features=features, device=dev,
                                   batch_size=batch_size, topk=topk, context=context, radius=radius,
                                   temperature=temperature)
        all_objects += list(scores.values())
        J = float(np.mean([s["J"] for s in scores.values()]))
        Fm = float(np.mean([s["F"] for s in scores.values()]))
        per_sequence[seq] = {"J": J, "F": Fm, "J&F": (J + Fm) / 2, "objects": {str(k): v for k, v in scores.items()}}
    if not all_objects:
        raise DatasetError(f"{davis}: no annotated object in any sequence")
    J = float(np.mean([s["J"] for s in all_objects]))
    Fm = float(np.mean([s["F"] for s in all_objects]))
    result = {"J": J, "F": Fm, "J&F": (J + Fm) / 2, "n_sequences": len(per_sequence),
              "n_objects": len(all_objects), "per_sequence": per_sequence}
    rows = [(f"{seq} J / F", f"{v['J']:.4f} / {v['F']:.4f}") for seq, v in per_sequence.items()]
    rows += [("J (mean over objects)", J), ("F (mean over objects)", Fm), ("J&F", result["J&F"])]
    settings = {"checkpoint": checkpoint, "davis": davis, "size": size, "features": features, "topk": topk,
                "context": context, "radius_at_stride_8": radius, "temperature": temperature}
    emit_report(f"video label propagation — {checkpoint} ({features}, short side {size}px)", rows, out,
                {"task": "video", "settings": settings, **result})
    return result
