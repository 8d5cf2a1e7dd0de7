"""`transfer segment`: an FCN (MoCo's, as R2O runs it) or DeepLabV3 head on the pretrained backbone,
scored by mIoU at full label size with the dense evaluations' confusion-matrix code.

Training: random rescale, crop and flip (`data.SegmentationSet`), per-pixel cross-entropy with the
ignore label. Evaluation: each image whole at its own size, the validation images split over the ranks
and the confusion matrices summed with one all-reduce.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from discorep.engine.distributed import DistInfo
from discorep.engine.logger import progress_bar
from discorep.eval.dense_metrics import confusion
from discorep.transfer.config import TransferConfig
from discorep.transfer.data import IGNORE, SegmentationSet, segmentation_collate
from discorep.transfer import loop
from discorep.transfer.models import segmenter
from discorep.transfer.scoring import segmentation_scores


def open_sets(train: str, val: str, train_images: str | None, val_images: str | None,
              cfg: TransferConfig) -> tuple[SegmentationSet, SegmentationSet]:
    train_set = SegmentationSet(train, train_images, train=True, crop_size=cfg.input.crop_size,
                                scale_range=tuple(cfg.input.scale_range))
    val_set = SegmentationSet(val, val_images, train=False, num_classes=train_set.num_classes)
    return train_set, val_set


def build_model(cfg: TransferConfig, backbone, num_classes: int) -> nn.Module:
    return segmenter(backbone, num_classes, head=cfg.model.head, norm=cfg.model.norm, weights=cfg.model.weights)


def train_loader(dataset: SegmentationSet, cfg: TransferConfig, dist_info: DistInfo, seed: int, start: int):
    def collate(items):
        kept = [x for x in items if x is not None]
        return (segmentation_collate(kept) if kept else None), len(items) - len(kept)

    return loop.train_loader(dataset, cfg, dist_info, seed, start, collate)


def loss_fn(device: torch.device):
    def step(model: nn.Module, batch):
        images, labels = batch
        logits = model(images.to(device, non_blocking=True))
        loss = F.cross_entropy(logits.float(), labels.to(device), ignore_index=IGNORE)
        return loss, {"ce": loss}
    return step


@torch.no_grad()
def evaluate(model: nn.Module, val_set: SegmentationSet, cfg: TransferConfig, dist_info: DistInfo,
             progress: bool = True) -> dict:
    """{"mIoU", "per_class_IoU", "pixel_accuracy"} in percent over `val_set`, the same on every rank."""
    net = model.module if hasattr(model, "module") else model
    net.eval()
    c = val_set.num_classes
    conf = np.zeros((c, c), np.int64)
    mine = list(range(dist_info.rank, len(val_set), dist_info.world_size))
    bar = progress_bar(progress and dist_info.is_main, 0, len(mine), desc="evaluate", unit="img", leave=False)
    unreadable = 0
    for i in mine:
        item = val_set[i]
        if item is None:
            unreadable += 1
            continue
        image, labels = item
        logits = net(image[None].to(dist_info.device))[0]
        pred = logits.argmax(0).cpu().numpy()
        conf += confusion(pred, labels.numpy(), c, c)  # ignore pixels (IGNORE = -1) are not counted
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    net.train()
    # float64 holds exact counts up to 2^53 pixels; on the device, as NCCL reduces only GPU tensors
    packed = torch.from_numpy(np.append(conf.ravel(), unreadable)).to(dist_info.device, torch.float64)
    if dist_info.world_size > 1:
        dist.all_reduce(packed)
    packed = packed.cpu()
    conf = packed[:-1].round().to(torch.int64).numpy().reshape(c, c)
    scores = segmentation_scores(conf, val_set.class_names)
    scores["unreadable_val_images"] = int(packed[-1].item())
    return scores

