"""What the dense evaluations share: encoding a labelled set into frozen dense features, and scoring
per-pixel predictions against full-size label maps.

Each image is resized to `size`×`size` (the whole image, stretched, as in `eval objects`), encoded
by the frozen network (eval mode, no gradient), and its (D, h, w) feature map kept on the CPU in
float16 (halves the memory of a cached set; the evaluations compute in float32). Label maps stay at
the image's own size: predictions are upsampled to them, so labels are never resampled unless a
protocol asks for it (`score_size`). Unreadable images are skipped, named, and counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from discorep.data.images import DatasetError
from discorep.data.semantic import open_semantic
from discorep.eval.backbone import EvalModel, normalize_images
from discorep.eval.dense_metrics import confusion
from discorep.eval.items import PreparedSet
from discorep.models.dense import dense_features
from discorep.models.modes import eval_mode

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    """A labelled set's frozen features: feats[i] (D, h, w) float16, labels[i] (H, W) int64 (-1 = ignore)."""

    feats: list[Tensor] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    num_classes: int = 0

    def points(self) -> Tensor:
        """Every feature vector of the set, (N·h·w, D) float32."""
        return torch.cat([f.float().flatten(1).T for f in self.feats])


@torch.no_grad()
def encode_set(model: EvalModel, data, size: int, features: str, *, batch_size: int = 8, progress: bool = True,
               num_workers: int = 2, desc: str = "encode") -> Encoded:
    """Frozen dense features and label maps of every readable image of a semantic set."""
    if size < 1 or batch_size < 1:
        raise DatasetError(f"--size and --batch-size must be positive, got {size} and {batch_size}")
    device = next(model.encoder.parameters()).device
    out = Encoded(num_classes=data.num_classes)
    loader = DataLoader(PreparedSet(data, size), batch_size=batch_size, collate_fn=list,
                        num_workers=min(num_workers, len(data)))
    with eval_mode(model.encoder):  # the one eval-mode switch (models.modes): BN statistics stay as they are
        for batch in tqdm(loader, desc=desc, unit="batch", disable=None if progress else True):
            for b in batch:
                if "skip" in b:
                    log.warning("skipping %s: %s", b["path"], b["reason"])
                    out.skipped.append({"path": b["path"], "reason": b["reason"]})
            good = [b for b in batch if "image" in b]
            if good:
                feats = dense_features(model, normalize_images(torch.stack([b["image"] for b in good]).to(device)),
                                       features, project="fpn")
                out.feats += [f.half().cpu() for f in feats]
                out.labels += [b["truth"] for b in good]
                out.paths += [b["path"] for b in good]
    if not out.feats:
        raise DatasetError(f"none of the {len(data)} images could be read (first: {out.skipped[0]['path']}: "
                           f"{out.skipped[0]['reason']})")
    return out


def load_set(path: Path, images: Path | None, split: str | None, flag: str):
    """open_semantic with the flag's name in the error, e.g. "--val: ..."."""
    try:
        return open_semantic(path, images, split)
    except DatasetError as err:
        raise DatasetError(f"{flag}: {err}") from None


def scores_at(probs: Tensor, labels: np.ndarray, score_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(C, h, w) class scores and an (H, W) label map → (pred, target) at the scoring resolution.

    score_size None: scores upsampled (bilinear) to the label map's own size (default, every protocol
    here). An integer N: both brought to N×N — scores bilinearly, labels by nearest — NeCo's
    100×100 protocol, which changes results (valeoai/Franca #2).
    """
    target = torch.from_numpy(labels)
    if score_size is not None:
        target = F.interpolate(target[None, None].float(), size=(score_size, score_size), mode="nearest")[0, 0].long()
    up = F.interpolate(probs[None].float(), size=tuple(target.shape), mode="bilinear", align_corners=False)[0]
    return up.argmax(0).numpy(), target.numpy()


def score_confusion(probs_per_image, labels: list[np.ndarray], num_classes: int,
                    score_size: int | None = None) -> np.ndarray:
    """Summed (C, C) confusion of per-image class scores against their label maps."""
    conf = np.zeros((num_classes, num_classes), np.int64)
    for probs, lab in zip(probs_per_image, labels):
        pred, target = scores_at(probs, lab, score_size)
        conf += confusion(pred, target, num_classes, num_classes)
    return conf


def data_settings(prefix: str, path: Path, images: Path | None, split: str | None) -> dict:
    return {prefix: path, f"{prefix}_images": images, f"{prefix}_split": split}
