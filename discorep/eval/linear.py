"""`discorep eval linear`: a linear probe on frozen global features.

Protocol (fixed; nothing is chosen by looking at val):

* global features of --train and --val are extracted once (`eval.features`: resize, encode,
  global-average-pool, L2-normalise) — the backbone is frozen and never sees an augmentation;
* the features are standardised with the mean/std of the **train** features (the role of the
  affine-free BatchNorm in MAE's probe: it makes one learning rate fit every backbone/width);
* one `nn.Linear` is trained on train only, with SGD (momentum 0.9, no weight decay), cross-entropy,
  mini-batches of `PROBE_BATCH` (full batch when the set is smaller), a cosine learning-rate schedule
  from `lr` to 0 over `epochs`, seeded initialisation and shuffling;
* the final probe (no early stopping, no checkpoint selection) is reported on --val.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discorep.data.datasets import ImageFolder
from discorep.eval.backbone import EvalModel, load_model
from discorep.eval.features import (
    extract_global_features,
    labelled_pair,
    skipped_json,
    topk_accuracy,
)
from discorep.eval.report import emit_report, resolve_device

PROBE_BATCH = 256
MOMENTUM = 0.9


class LinearProbe(nn.Module):
    """Train-set standardisation (frozen buffers) followed by one linear layer."""

    def __init__(self, mean: Tensor, std: Tensor, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.fc = nn.Linear(mean.shape[0], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc((x - self.mean) / self.std)


def _standardisation(train_f: Tensor) -> tuple[Tensor, Tensor]:
    # A constant dimension (std 0) carries no information; dividing by 1 leaves it at 0 after centring.
    std = train_f.std(dim=0, unbiased=False)
    return train_f.mean(dim=0), torch.where(std > 1e-6, std, torch.ones_like(std))


def train_linear_probe(train_f: Tensor, train_y: Tensor, num_classes: int | None = None, epochs: int = 100,
                       lr: float = 0.1, seed: int = 0, batch_size: int = PROBE_BATCH) -> LinearProbe:
    """Fit the probe on (train_f, train_y) as described in the module docstring; returns it in eval mode."""
    if epochs < 1 or lr <= 0:
        raise ValueError(f"epochs must be >= 1 and lr > 0, got epochs={epochs}, lr={lr}")
    train_f = torch.as_tensor(train_f, dtype=torch.float32)
    train_y = torch.as_tensor(train_y, dtype=torch.int64)
    num_classes = int(train_y.max()) + 1 if num_classes is None else num_classes
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's global RNG
        torch.manual_seed(seed)
        probe = LinearProbe(*_standardisation(train_f), num_classes)
    optimizer = torch.optim.SGD(probe.parameters(), lr=lr, momentum=MOMENTUM)
    n = train_f.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            for group in optimizer.param_groups:  # cosine from lr (step 0) towards 0 (last step)
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(probe(train_f[idx]), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    return probe.eval()


@torch.no_grad()
def probe_scores(probe: LinearProbe, feats: Tensor) -> Tensor:
    return probe(torch.as_tensor(feats, dtype=torch.float32))


def evaluate_linear(model: EvalModel, train_folder: str | os.PathLike | ImageFolder,
                    val_folder: str | os.PathLike | ImageFolder, size: int = 224, features: str = "c5",
                    device: torch.device | str = "cpu", epochs: int = 100, lr: float = 0.1, seed: int = 0,
                    batch_size: int = 8, progress: bool = False) -> dict:
    """Train the probe on train features, report val top-1 (top-5 with ≥ 5 classes) and train top-1."""
    train, val = labelled_pair(train_folder, val_folder)
    train_f, train_y, train_skipped = extract_global_features(model, train, size, features, device,
                                                              batch_size, progress)
    val_f, val_y, val_skipped = extract_global_features(model, val, size, features, device, batch_size, progress)
    num_classes = len(train.classes)
    probe = train_linear_probe(train_f, train_y, num_classes, epochs, lr, seed)
    val_scores = probe_scores(probe, val_f)
    result = {"top1": topk_accuracy(val_scores, val_y, 1)}
    if num_classes >= 5:
        result["top5"] = topk_accuracy(val_scores, val_y, 5)
    result.update({
        "train_top1": topk_accuracy(probe_scores(probe, train_f), train_y, 1),
        "n_train": int(train_f.shape[0]), "n_val": int(val_f.shape[0]), "num_classes": num_classes,
        "classes": list(train.classes), "feature_dim": int(train_f.shape[1]),
        "skipped_train": skipped_json(train_skipped), "skipped_val": skipped_json(val_skipped),
    })
    return result


def run(*, checkpoint: str, train: str | Path, val: str | Path, size: int = 224, features: str = "c5",
        device: str = "auto", batch_size: int = 8, seed: int = 0, out: str | Path | None = None,
        epochs: int = 100, lr: float = 0.1) -> dict:
    """CLI entry: print the table, write every number and the settings to `out` (JSON); return them.

    `batch_size` is the feature-extraction batch; the probe's own mini-batch is `PROBE_BATCH`.
    """
    dev = resolve_device(device)
    train_folder, val_folder = labelled_pair(train, val)  # fail on bad folders before loading a model
    model = load_model(checkpoint, dev)
    result = evaluate_linear(model, train_folder, val_folder, size, features, dev, epochs, lr, seed,
                             batch_size, progress=True)
    settings = {"task": "linear", "checkpoint": str(checkpoint), "arch": model.arch, "train": str(train),
                "val": str(val), "size": size, "features": features, "epochs": epochs, "lr": lr,
                "schedule": "cosine", "optimizer": f"sgd(momentum={MOMENTUM}, weight_decay=0)",
                "probe_batch": PROBE_BATCH, "standardise": "train mean/std", "device": str(dev),
                "batch_size": batch_size, "seed": seed}
    payload = {**result, "settings": settings}
    rows = [("top-1", result["top1"])]
    if "top5" in result:
        rows.append(("top-5", result["top5"]))
    rows += [("train top-1", result["train_top1"]), ("n_train", result["n_train"]), ("n_val", result["n_val"])]
    if result["skipped_train"] or result["skipped_val"]:
        rows.append(("skipped", len(result["skipped_train"]) + len(result["skipped_val"])))
    emit_report(f"linear probe ({epochs} epochs, lr={lr}, {features}, {size}px) — {checkpoint}", rows, out, payload)
    return payload
