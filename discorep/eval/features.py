"""Global (image-level) features for the k-NN and linear-probe evaluations.

Each image is resized to `size`×`size` (no augmentation, no crop: the whole image is seen), encoded,
the chosen feature map ("c4", "c5" or "fpn") is global-average-pooled and the vector L2-normalised.
Unreadable images are skipped, warned about once each and returned in `skipped`, never silently lost.

Also holds what the two global evaluations share: the labelled train/val folder check, top-k
accuracy, and the table + JSON report.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from discorep.data.datasets import ImageFolder
from discorep.data.images import BadImageError, DatasetError
from discorep.eval.backbone import EvalModel, normalize_images
from discorep.eval.segment import prepare
from discorep.models.dense import dense_features
from discorep.models.modes import eval_mode

log = logging.getLogger(__name__)

DECODE_WORKERS = 2  # decoding + bicubic resize is the CPU bottleneck; two workers keep one model busy


class _ResizedImages(Dataset):
    """folder[i] → (3, size, size) in [0, 1]; an unreadable image yields its reason instead."""

    def __init__(self, folder: ImageFolder, size: int) -> None:
        self.folder = folder
        self.size = size

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int) -> tuple[int, Tensor | None, str | None]:
        try:
            image = self.folder[i]["image"]
        except BadImageError as err:
            return i, None, err.reason
        return i, prepare(image, self.size), None


def _collate(items: list[tuple[int, Tensor | None, str | None]]):
    """Keep bad images in the batch as (index, reason) so the main process can report them."""
    good = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, reason) for i, x, reason in items if x is None]
    index = torch.tensor([i for i, _ in good], dtype=torch.int64)
    images = torch.stack([x for _, x in good]) if good else None
    return index, images, bad


def global_pool(feature_map: Tensor) -> Tensor:
    """(B, D, h, w) → (B, D) mean over the grid, L2-normalised (cosine geometry for k-NN)."""
    return F.normalize(feature_map.mean(dim=(2, 3)), dim=1)


@torch.no_grad()
def extract_global_features(model: EvalModel, folder: ImageFolder, size: int, features: str = "c5",
                            device: torch.device | str = "cpu", batch_size: int = 8, progress: bool = True,
                            num_workers: int = DECODE_WORKERS) -> tuple[Tensor, Tensor, list[tuple[str, str]]]:
    """Encode every readable image of `folder`.

    Returns `feats` (N, D) float32 L2-normalised (CPU), `labels` (N,) int64 (-1 when the folder has
    no class sub-folders) and `skipped` [(path, reason)] in folder order. N counts readable images.
    The encoder is put in eval mode for the extraction and restored afterwards, so this can run in the
    middle of pretraining.
    """
    if size < 1 or batch_size < 1:
        raise ValueError(f"size and batch_size must be positive, got {size} and {batch_size}")
    loader = DataLoader(_ResizedImages(folder, size), batch_size=batch_size, shuffle=False,
                        num_workers=min(num_workers, os.cpu_count() or 1), collate_fn=_collate)
    with eval_mode(model.encoder):
        feats, indices, skipped = _encode_all(model, loader, features, device, progress)
    if not feats:
        raise DatasetError(f"none of the {len(folder)} images under {str(folder.root)!r} could be read "
                           f"(first: {skipped[0][0]}: {skipped[0][1]}); check the files")
    index = torch.cat(indices)
    all_labels = torch.full((len(folder),), -1, dtype=torch.int64)
    if folder.labels is not None:
        all_labels = torch.tensor(folder.labels, dtype=torch.int64)
    return torch.cat(feats).float(), all_labels[index], skipped


def _encode_all(model: EvalModel, loader: DataLoader, features: str, device, progress: bool):
    feats, indices, skipped = [], [], []
    folder = loader.dataset.folder
    for index, images, bad in tqdm(loader, desc="features", unit="batch", disable=None if progress else True):
        for i, reason in bad:
            path = str(folder.paths[i])
            log.warning("skipping %s: %s", path, reason)
            skipped.append((path, reason))
        if images is None:
            continue
        maps = dense_features(model, normalize_images(images.to(device)), features, project="fpn")
        feats.append(global_pool(maps).cpu())
        indices.append(index)
    return feats, indices, skipped


def labelled_pair(train: str | os.PathLike | ImageFolder,
                  val: str | os.PathLike | ImageFolder) -> tuple[ImageFolder, ImageFolder]:
    """Both folders, checked to have class sub-folders with the same class names.

    Same names ⇒ same sorted order ⇒ the same label index means the same class in both folders.
    """
    folders = [f if isinstance(f, ImageFolder) else ImageFolder(f) for f in (train, val)]
    for name, folder in zip(("--train", "--val"), folders):
        if folder.classes is None:
            raise DatasetError(f"{name} {str(folder.root)!r}: every image must sit in a class sub-folder "
                               "(<root>/<class>/<image>) to give it a label")
    train_set, val_set = set(folders[0].classes), set(folders[1].classes)
    if train_set != val_set:
        parts = []
        if train_set - val_set:
            parts.append(f"missing in --val: {', '.join(sorted(train_set - val_set))}")
        if val_set - train_set:
            parts.append(f"missing in --train: {', '.join(sorted(val_set - train_set))}")
        raise DatasetError(f"--train {str(folders[0].root)!r} and --val {str(folders[1].root)!r} must have the "
                           f"same class sub-folders; {'; '.join(parts)}")
    return folders[0], folders[1]


def topk_accuracy(scores: Tensor, labels: Tensor, k: int) -> float:
    """Fraction of rows whose label is among the k highest scores (k=1: plain accuracy)."""
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    return float((top == labels[:, None]).any(dim=1).float().mean())


def skipped_json(skipped: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"path": p, "reason": r} for p, r in skipped]
