"""`discorep eval linear-seg`: a linear (1×1 conv) head on frozen dense features, mIoU on the val set.

Protocol (Leopart `experiments/linear_probing`, NeCo `linear_finetune.py`): the backbone is frozen,
its dense features computed once per image (`eval.dense`); a `Conv2d(D, C, 1)` is trained with
cross-entropy (ignore pixels excluded) by SGD (momentum 0.9, weight decay 1e-4) for `epochs` epochs,
the learning rate dropped ×0.1 after 80 % of them (Leopart: 25 epochs, drop at 20). Training logits
are upsampled bilinearly to `train_label_size`² and compared with the label maps resized (nearest)
to that size (NeCo trains on 100×100 masks). Predictions are scored at the **full label size** by
default (`score_size=None`); `--score-size 100` reproduces NeCo's downsampled scoring, which moves
results (valeoai/Franca #2). Every setting goes to the JSON.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discorep.errors import UsageError
from discorep.eval.backbone import load_model
from discorep.eval.dense import Encoded, data_settings, encode_set, load_set, score_confusion
from discorep.eval.dense_metrics import miou, per_class_iou
from discorep.eval.report import emit_report, resolve_device

log = logging.getLogger(__name__)

MOMENTUM, WEIGHT_DECAY = 0.9, 1e-4  # NeCo linear_finetune.py
LR_DROP_AT = 0.8  # fraction of the epochs after which lr ×0.1 (Leopart: epoch 20 of 25)
TRAIN_BATCH = 32  # images per SGD step on cached features


def _targets(labels: list[np.ndarray], side: int) -> Tensor:
    """Label maps resized (nearest) to side×side, stacked: (N, side, side) int64, -1 = ignore."""
    return torch.stack([F.interpolate(torch.from_numpy(lab)[None, None].float(), size=(side, side),
                                      mode="nearest")[0, 0].long() for lab in labels])


def train_head(train: Encoded, *, epochs: int, lr: float, seed: int, train_label_size: int) -> nn.Conv2d:
    """Fit Conv2d(D, C, 1) on the frozen features of `train` (seeded init and order)."""
    feats = torch.stack(train.feats)  # float16 as cached; each batch is cast to float32
    targets = _targets(train.labels, train_label_size)
    gen = torch.Generator().manual_seed(seed)
    head = nn.Conv2d(feats.shape[1], train.num_classes, 1)
    with torch.no_grad():  # seeded initialisation, independent of the global RNG
        bound = 1.0 / feats.shape[1] ** 0.5
        head.weight.uniform_(-bound, bound, generator=gen)
        head.bias.zero_()
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, round(LR_DROP_AT * epochs)), gamma=0.1)
    for _ in range(epochs):
        for idx in torch.randperm(len(feats), generator=gen).split(TRAIN_BATCH):
            logits = F.interpolate(head(feats[idx].float()), size=targets.shape[1:], mode="bilinear",
                                   align_corners=False)
            loss = F.cross_entropy(logits, targets[idx], ignore_index=-1)
            if torch.isfinite(loss):  # a batch of ignore-only pixels gives NaN: nothing to learn from it
                opt.zero_grad()
                loss.backward()
                opt.step()
        sched.step()
    return head.eval()


@torch.no_grad()
def evaluate_linear_seg(train: Encoded, val: Encoded, *, epochs: int = 25, lr: float = 0.01, seed: int = 0,
                        train_label_size: int = 100, score_size: int | None = None) -> dict:
    """Train on `train`, score on `val`: {"miou", "per_class_iou", "pixel_accuracy", ...}."""
    if train.num_classes != val.num_classes:
        raise UsageError(f"--train has {train.num_classes} classes but --val has {val.num_classes}; "
                         "use two splits of one labelled set")
    with torch.enable_grad():
        head = train_head(train, epochs=epochs, lr=lr, seed=seed, train_label_size=train_label_size)
    conf = score_confusion((head(f.float()[None])[0] for f in val.feats), val.labels, val.num_classes, score_size)
    return {"miou": miou(conf), "per_class_iou": per_class_iou(conf).tolist(),
            "pixel_accuracy": float(np.trace(conf) / max(conf.sum(), 1)), "confusion": conf.tolist(),
            "n_train": len(train.feats), "n_val": len(val.feats), "skipped": train.skipped + val.skipped}


def run(*, checkpoint: str, size: int, features: str, device: str, batch_size: int, seed: int, out: Path | None,
        train: Path, val: Path, train_images: Path | None, val_images: Path | None, train_split: str | None,
        val_split: str | None, epochs: int, lr: float, train_label_size: int, score_size: int | None) -> dict:
    if epochs < 1 or not lr > 0 or train_label_size < 1 or (score_size is not None and score_size < 1):
        raise UsageError(f"need --epochs >= 1, --lr > 0, --train-label-size >= 1, --score-size >= 1 "
                         f"(got {epochs}, {lr}, {train_label_size}, {score_size})")
    train_set = load_set(train, train_images, train_split, "--train")
    val_set = load_set(val, val_images, val_split, "--val")
    model = load_model(checkpoint, resolve_device(device))
    enc = [encode_set(model, s, size, features, batch_size=batch_size, desc=d)
           for s, d in ((train_set, "train"), (val_set, "val"))]
    result = evaluate_linear_seg(*enc, epochs=epochs, lr=lr, seed=seed, train_label_size=train_label_size,
                                 score_size=score_size)
    settings = {"checkpoint": checkpoint, **data_settings("train", train, train_images, train_split),
                **data_settings("val", val, val_images, val_split), "size": size, "features": features,
                "head": "Conv2d(D, C, 1) on frozen features", "epochs": epochs, "lr": lr, "momentum": MOMENTUM,
                "weight_decay": WEIGHT_DECAY, "lr_drop_after_epochs": max(1, round(LR_DROP_AT * epochs)),
                "train_batch": TRAIN_BATCH, "train_label_size": train_label_size,
                "score_size": "full label size" if score_size is None else score_size, "seed": seed,
                "classes": val_set.class_names}
    rows = [("mIoU", result["miou"]), ("pixel accuracy", result["pixel_accuracy"]),
            ("train images", result["n_train"]), ("val images", result["n_val"]),
            ("skipped", len(result["skipped"]))]
    emit_report(f"linear segmentation — {checkpoint} ({features}, {size}px, {epochs} epochs, scored at "
                f"{settings['score_size']})", rows, out, {"task": "linear-seg", "settings": settings, **result})
    return result
