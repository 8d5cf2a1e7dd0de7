"""`discorep eval knn`: weighted k-NN classification on frozen global features.

The protocol of Wu et al. (2018), as used by DINO: features are L2-normalised global-average-pooled
maps (`eval.features`); each val image takes its k most cosine-similar train images, each neighbour
votes for its class with weight exp(sim / T), and the class with the largest summed weight wins.
Nothing is trained or tuned, so val is only ever used for reporting.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from discorep.data.datasets import ImageFolder
from discorep.eval.backbone import EvalModel, load_model
from discorep.eval.features import (
    extract_global_features,
    labelled_pair,
    skipped_json,
    topk_accuracy,
)
from discorep.eval.report import emit_report, resolve_device

CHUNK_ROWS = 1024  # val rows per similarity block: bounds memory at CHUNK_ROWS × n_train floats


def knn_scores(train_f: Tensor, train_y: Tensor, test_f: Tensor, k: int = 20, temperature: float = 0.07,
               num_classes: int | None = None, chunk_rows: int = CHUNK_ROWS) -> Tensor:
    """(M, C) class scores: for each test row, the sum of exp(cos / T) over its top-k neighbours per class.

    Inputs are normalised here too, so the similarity is the cosine whatever the caller passes.
    k larger than the train set is clamped to it.
    """
    if k < 1 or temperature <= 0:
        raise ValueError(f"k must be >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    train_f = F.normalize(torch.as_tensor(train_f, dtype=torch.float32), dim=1)
    test_f = F.normalize(torch.as_tensor(test_f, dtype=torch.float32), dim=1)
    train_y = torch.as_tensor(train_y, dtype=torch.int64)
    num_classes = int(train_y.max()) + 1 if num_classes is None else num_classes
    k = min(k, train_f.shape[0])
    blocks = []
    for start in range(0, test_f.shape[0], chunk_rows):
        sim = test_f[start:start + chunk_rows] @ train_f.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        scores = torch.zeros(sim.shape[0], num_classes)
        blocks.append(scores.scatter_add_(1, train_y[top_idx], weights))
    return torch.cat(blocks) if blocks else torch.zeros(0, num_classes)


def evaluate_knn(model: EvalModel, train_folder: str | os.PathLike | ImageFolder,
                 val_folder: str | os.PathLike | ImageFolder, size: int = 224, features: str = "c5",
                 device: torch.device | str = "cpu", k: int = 20, temperature: float = 0.07,
                 batch_size: int = 8, progress: bool = False) -> dict:
    """k-NN top-1 (and top-5 with ≥ 5 classes) of `model` on val, neighbours from train. No printing.

    `model` may be a live network during pretraining: wrap its encoder in an `EvalModel`; its
    train/eval mode is restored afterwards.
    """
    train, val = labelled_pair(train_folder, val_folder)
    train_f, train_y, train_skipped = extract_global_features(model, train, size, features, device,
                                                              batch_size, progress)
    val_f, val_y, val_skipped = extract_global_features(model, val, size, features, device, batch_size, progress)
    scores = knn_scores(train_f, train_y, val_f, k, temperature, num_classes=len(train.classes))
    result = {"top1": topk_accuracy(scores, val_y, 1)}
    if len(train.classes) >= 5:
        result["top5"] = topk_accuracy(scores, val_y, 5)
    result.update({
        "n_train": int(train_f.shape[0]), "n_val": int(val_f.shape[0]), "num_classes": len(train.classes),
        "classes": list(train.classes), "feature_dim": int(train_f.shape[1]),
        "skipped_train": skipped_json(train_skipped), "skipped_val": skipped_json(val_skipped),
    })
    return result


def run(*, checkpoint: str, train: str | Path, val: str | Path, size: int = 224, features: str = "c5",
        device: str = "auto", batch_size: int = 8, seed: int = 0, out: str | Path | None = None,
        k: int = 20, temperature: float = 0.07) -> dict:
    """CLI entry: print the table, write every number and the settings to `out` (JSON); return them.

    k-NN is deterministic; `seed` is accepted (shared CLI option) and recorded, but nothing draws from it.
    """
    dev = resolve_device(device)
    train_folder, val_folder = labelled_pair(train, val)  # fail on bad folders before loading a model
    model = load_model(checkpoint, dev)
    result = evaluate_knn(model, train_folder, val_folder, size, features, dev, k, temperature,
                          batch_size, progress=True)
    settings = {"task": "knn", "checkpoint": str(checkpoint), "arch": model.arch, "train": str(train),
                "val": str(val), "size": size, "features": features, "k": k, "temperature": temperature,
                "metric": "cosine", "weights": "exp(sim / temperature)", "device": str(dev),
                "batch_size": batch_size, "seed": seed}
    payload = {**result, "settings": settings}
    rows = [("top-1", result["top1"])]
    if "top5" in result:
        rows.append(("top-5", result["top5"]))
    rows += [("n_train", result["n_train"]), ("n_val", result["n_val"])]
    if result["skipped_train"] or result["skipped_val"]:
        rows.append(("skipped", len(result["skipped_train"]) + len(result["skipped_val"])))
    emit_report(f"k-NN (k={k}, T={temperature}, {features}, {size}px) — {checkpoint}", rows, out, payload)
    return payload
