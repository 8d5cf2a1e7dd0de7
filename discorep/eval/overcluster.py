"""`discorep eval overcluster`: k-means over the dense features of the whole val set, matched to classes.

Protocol (Leopart `experiments/utils.py`, PredsmIoUKmeans): every val feature vector is standardised
per dimension, reduced by PCA to 50 dimensions and clustered by k-means (Euclidean, 50 iterations);
K = number of classes is matched one-to-one to the classes (Hungarian on IoU), K = 100/300/500 many-
to-one (each cluster to the class it overlaps best by IoU); mIoU over the val set, for several seeds.
Differences, kept for CPU scale and written to the JSON: the PCA is fitted on at most `PCA_FIT_POINTS`
vectors; k-means runs once per seed (Leopart: faiss, 5 restarts); clusters are assigned at 4× the
feature grid (features bilinearly upsampled, as Leopart upsamples them to the mask size) and the
cluster maps upsampled (nearest) to the full label size, where they are scored.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from discorep.discovery.kmeans import batched_kmeans
from discorep.errors import UsageError
from discorep.eval.backbone import load_model
from discorep.eval.dense import Encoded, data_settings, encode_set, load_set
from discorep.eval.dense_metrics import confusion, hungarian_mapping, many_to_one_mapping, miou, remap
from discorep.eval.report import emit_report, resolve_device

log = logging.getLogger(__name__)

PCA_DIM = 50  # Leopart
PCA_FIT_POINTS = 200_000  # vectors the PCA is fitted on (random subset beyond that)
ASSIGN_UPSAMPLE = 4  # clusters assigned on a grid this many times finer than the features
DEFAULT_KS = "classes,100,300,500"


def parse_overcluster_ks(text: str, num_classes: int) -> list[int]:
    """"classes,100,300" → [C, 100, 300] (``classes`` = the number of classes)."""
    try:
        ks = [num_classes if v.strip() == "classes" else int(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--k must be a comma-separated list of positive integers or 'classes', "
                         f"got {text!r}") from None
    if not ks or any(k < 1 for k in ks):
        raise UsageError(f"--k values must be positive, got {text!r}")
    return ks


class Projection:
    """Per-dimension standardisation followed by PCA to `dim` dimensions, fitted on `points`."""

    def __init__(self, points: Tensor, dim: int, seed: int):
        if len(points) > PCA_FIT_POINTS:
            points = points[torch.randperm(len(points), generator=torch.Generator().manual_seed(seed))[:PCA_FIT_POINTS]]
        self.mean = points.mean(0)
        self.std = points.std(0, unbiased=False) + 1e-5
        z = (points - self.mean) / self.std
        cov = z.T.double() @ z.double() / len(z)
        _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues: the last columns are the top components
        self.basis = vecs[:, -min(dim, z.shape[1]):].flip(1).float()

    def __call__(self, x: Tensor) -> Tensor:
        """(..., D) → (..., dim)."""
        return ((x - self.mean) / self.std) @ self.basis


def _cluster_maps(val: Encoded, proj: Projection, centroids: Tensor) -> list[np.ndarray]:
    """Per image: nearest centroid of each upsampled, projected feature, upsampled to the label size."""
    maps = []
    for f, lab in zip(val.feats, val.labels):
        z = proj(f.float().flatten(1).T).T.reshape(-1, *f.shape[1:])  # (dim, h, w)
        side = (f.shape[1] * ASSIGN_UPSAMPLE, f.shape[2] * ASSIGN_UPSAMPLE)
        z = F.interpolate(z[None], size=side, mode="bilinear", align_corners=False)[0].flatten(1).T
        ids = torch.cdist(z, centroids).argmin(1).view(1, 1, *side).float()
        maps.append(F.interpolate(ids, size=lab.shape, mode="nearest")[0, 0].long().numpy())
    return maps


def evaluate_overcluster(val: Encoded, ks: list[int], seeds: int = 5, iters: int = 50, first_seed: int = 0) -> dict:
    """{"per_k": [{"k", "matching", "miou_mean", "miou_std", "miou_per_seed"}], ...}."""
    points = val.points()
    proj = Projection(points, PCA_DIM, seed=0)
    z = proj(points)
    C = val.num_classes
    per_k = []
    for k in ks:
        k_eff = min(k, len(z))
        matching = "hungarian" if k_eff == C else "greedy many-to-one"
        scores = []
        for s in range(first_seed, first_seed + seeds):
            centroids = batched_kmeans(z[None], k_eff, seed=s, iters=iters, normalize=False).centroids[0]
            conf = sum(confusion(m, lab, k_eff, C) for m, lab in zip(_cluster_maps(val, proj, centroids), val.labels))
            mapping = hungarian_mapping(conf) if k_eff == C else many_to_one_mapping(conf)
            scores.append(miou(remap(conf, mapping)))
        per_k.append({"k": k, "k_used": k_eff, "matching": matching, "miou_mean": float(np.mean(scores)),
                      "miou_std": float(np.std(scores)), "miou_per_seed": scores})
    return {"per_k": per_k, "n_val": len(val.feats), "n_points": len(z), "skipped": val.skipped}


def run(*, checkpoint: str, size: int, features: str, device: str, batch_size: int, seed: int, out: Path | None,
        val: Path, val_images: Path | None, val_split: str | None, k: str, seeds: int) -> dict:
    if seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {seeds}")
    val_set = load_set(val, val_images, val_split, "--val")
    ks = parse_overcluster_ks(k, val_set.num_classes)
    model = load_model(checkpoint, resolve_device(device))
    result = evaluate_overcluster(encode_set(model, val_set, size, features, batch_size=batch_size, desc="val"),
                                  ks, seeds=seeds, first_seed=seed)
    settings = {"checkpoint": checkpoint, **data_settings("val", val, val_images, val_split), "size": size,
                "features": features, "ks": ks, "seeds": list(range(seed, seed + seeds)), "pca_dim": PCA_DIM,
                "pca_fit_points_max": PCA_FIT_POINTS, "standardise": "per dimension, before PCA",
                "kmeans": "Euclidean, 50 iterations, 1 initialisation (k-means++) per seed",
                "assign_grid": f"{ASSIGN_UPSAMPLE}x the feature grid, bilinear; maps nearest-upsampled to labels",
                "matching": "K = classes: Hungarian on IoU; other K: greedy many-to-one on IoU",
                "miou": "mean over classes present in ground truth or prediction", "classes": val_set.class_names}
    rows = [(f"mIoU K={r['k']} ({r['matching']}, {seeds} seeds)", f"{r['miou_mean']:.4f} ± {r['miou_std']:.4f}")
            for r in result["per_k"]] + [("val images", result["n_val"]), ("skipped", len(result["skipped"]))]
    emit_report(f"overclustering — {checkpoint} ({features}, {size}px)", rows, out,
                {"task": "overcluster", "settings": settings, **result})
    return result
