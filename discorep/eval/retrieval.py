"""`discorep eval retrieval`: dense nearest-neighbour retrieval ("Hummingbird", Balažević et al. 2023).

Protocol (vpariza/open-hummingbird-eval `hbird/hbird_eval.py`): a memory bank holds L2-normalised
patch features of the train images, each with its label: the class fractions of the pixels the
patch covers. Each val patch retrieves its `k` nearest bank entries (cosine, k = 30) and takes the
softmax(similarity / `temperature`)-weighted mean of their labels (temperature 0.02); the patch
distributions are upsampled bilinearly to the full label size and arg-maxed; mIoU over the val set.
Differences, written to the JSON: ignore pixels are left out of the patch labels (the reference
counts them as background) and patches that are all ignore are not stored; when the train set has
more patches than `bank_size`, a seeded uniform subset is kept (the reference samples per image,
favouring rare classes). Search is exact (a matrix product in chunks), not approximate.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from discorep.errors import UsageError
from discorep.eval.backbone import load_model
from discorep.eval.dense import Encoded, data_settings, encode_set, load_set, score_confusion
from discorep.eval.dense_metrics import miou, per_class_iou
from discorep.eval.report import emit_report, resolve_device

log = logging.getLogger(__name__)

QUERY_CHUNK = 4096  # val patches searched at once (bounds the chunk × bank similarity matrix)


def patch_labels(labels: np.ndarray, grid: tuple[int, int], num_classes: int) -> Tensor:
    """(H, W) class map → (h·w, C) class fractions per feature cell (ignore pixels left out).

    A cell covers the pixels whose centre falls in it (the label map is divided evenly by the grid).
    Cells with no labelled pixel get an all-zero row.
    """
    H, W = labels.shape
    h, w = grid
    rows = (np.arange(H) * h // H)[:, None]
    cols = (np.arange(W) * w // W)[None, :]
    cell = (rows * w + cols).ravel()
    lab = labels.ravel()
    keep = lab >= 0
    counts = np.bincount(cell[keep] * num_classes + lab[keep], minlength=h * w * num_classes)
    counts = counts.reshape(h * w, num_classes)
    totals = counts.sum(1, keepdims=True)
    return torch.from_numpy(np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)).float()


def build_bank(train: Encoded, bank_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """(M, D) normalised features and (M, C) label fractions of the train patches (≤ bank_size)."""
    feats = F.normalize(train.points(), dim=1)
    labels = torch.cat([patch_labels(lab, tuple(f.shape[1:]), train.num_classes)
                        for f, lab in zip(train.feats, train.labels)])
    keep = labels.sum(1) > 0
    feats, labels = feats[keep], labels[keep]
    if len(feats) > bank_size:
        pick = torch.randperm(len(feats), generator=torch.Generator().manual_seed(seed))[:bank_size]
        feats, labels = feats[pick], labels[pick]
    return feats, labels


def retrieve(queries: Tensor, bank_feats: Tensor, bank_labels: Tensor, k: int, temperature: float) -> Tensor:
    """(N, D) query features → (N, C) label distributions: softmax-weighted top-k vote over the bank."""
    out = []
    q_all = F.normalize(queries, dim=1)
    k = min(k, len(bank_feats))
    for q in q_all.split(QUERY_CHUNK):
        sims, idx = (q @ bank_feats.T).topk(k, dim=1)
        weights = torch.softmax(sims / temperature, dim=1)
        out.append(torch.einsum("nk,nkc->nc", weights, bank_labels[idx]))
    return torch.cat(out)


def evaluate_retrieval(train: Encoded, val: Encoded, *, k: int = 30, temperature: float = 0.02,
                       bank_size: int = 102_400, seed: int = 0) -> dict:
    if train.num_classes != val.num_classes:
        raise UsageError(f"--train has {train.num_classes} classes but --val has {val.num_classes}; "
                         "use two splits of one labelled set")
    bank_feats, bank_labels = build_bank(train, bank_size, seed)
    probs = (retrieve(f.float().flatten(1).T, bank_feats, bank_labels, k, temperature).T.reshape(-1, *f.shape[1:])
             for f in val.feats)
    conf = score_confusion(probs, val.labels, val.num_classes)
    return {"miou": miou(conf), "per_class_iou": per_class_iou(conf).tolist(),
            "pixel_accuracy": float(np.trace(conf) / max(conf.sum(), 1)), "bank_entries": len(bank_feats),
            "n_train": len(train.feats), "n_val": len(val.feats), "skipped": train.skipped + val.skipped}


def run(*, checkpoint: str, size: int, features: str, device: str, batch_size: int, seed: int, out: Path | None,
        train: Path, val: Path, train_images: Path | None, val_images: Path | None, train_split: str | None,
        val_split: str | None, k: int, temperature: float, bank_size: int) -> dict:
    if k < 1 or not temperature > 0 or bank_size < 1:
        raise UsageError(f"need --k >= 1, --temperature > 0, --bank-size >= 1 (got {k}, {temperature}, {bank_size})")
    train_set = load_set(train, train_images, train_split, "--train")
    val_set = load_set(val, val_images, val_split, "--val")
    model = load_model(checkpoint, resolve_device(device))
    enc = [encode_set(model, s, size, features, batch_size=batch_size, desc=d)
           for s, d in ((train_set, "train"), (val_set, "val"))]
    result = evaluate_retrieval(*enc, k=k, temperature=temperature, bank_size=bank_size, seed=seed)
    settings = {"checkpoint": checkpoint, **data_settings("train", train, train_images, train_split),
                **data_settings("val", val, val_images, val_split), "size": size, "features": features, "k": k,
                "temperature": temperature, "bank_size": bank_size, "seed": seed,
                "bank_sampling": "uniform seeded subset of labelled train patches",
                "patch_label": "class fractions of the patch's labelled pixels", "search": "exact cosine",
                "score_size": "full label size", "classes": val_set.class_names}
    rows = [("mIoU", result["miou"]), ("pixel accuracy", result["pixel_accuracy"]),
            ("memory bank patches", result["bank_entries"]), ("val images", result["n_val"]),
            ("skipped", len(result["skipped"]))]
    emit_report(f"dense NN retrieval — {checkpoint} ({features}, {size}px, k={k}, T={temperature})", rows, out,
                {"task": "retrieval", "settings": settings, **result})
    return result
