"""`transfer detect`: Mask R-CNN (or Faster R-CNN) on the pretrained backbone, scored with COCOeval.

torchvision's detector and its transform do the resizing (shorter side drawn from `input.train_sizes`
per image, longer side capped at `input.max_size`) and the ImageNet normalisation of [0, 1] RGB input,
as in pretraining. Evaluation splits the validation images over the ranks and gathers the detections
on every rank (`all_gather_object`), so each rank returns the same scores.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn

from discorep.engine.distributed import DistInfo
from discorep.engine.logger import progress_bar
from discorep.transfer.config import TransferConfig
from discorep.transfer.data import DetectionSet, check_same_categories, detection_collate
from discorep.transfer import loop
from discorep.transfer.models import maskrcnn
from discorep.transfer.scoring import coco_scores, to_coco_results

log = logging.getLogger("discorep")


def open_sets(train: str, val: str, train_images: str | None, val_images: str | None,
              cfg: TransferConfig) -> tuple[DetectionSet, DetectionSet]:
    """Train and val sets over one category order; their bad-input counts are logged (`cfg`: unused, the
    segmentation task's crops need it)."""
    train_set = DetectionSet(train, train_images, train=True)
    val_set = DetectionSet(val, val_images, train=False, cat_ids=train_set.cat_ids)
    check_same_categories(train_set, val_set)
    c = train_set.counts
    log.info("train: %d images (%d without annotations, kept as negatives), %d instances; ignored %d crowd, "
             "skipped %d degenerate (< 1 px) boxes", c["images"], c["negatives"], c["instances"],
             c["crowd_ignored"], c["degenerate_skipped"])
    missing = c.get("categories_without_training_instances") or []
    if missing:
        log.warning("categories with no training instance (the detector cannot learn them): %s", ", ".join(missing))
    return train_set, val_set


def build_model(cfg: TransferConfig, backbone, num_classes: int) -> nn.Module:
    m = cfg.model
    return maskrcnn(backbone, num_classes, norm=m.norm, trainable_layers=m.trainable_layers, masks=m.masks,
                    weights=m.weights, min_size=tuple(cfg.input.train_sizes), max_size=cfg.input.max_size,
                    heads=m.heads, mask_head_convs=m.mask_head_convs, box_batch_size_per_image=m.rois_per_image)


def train_loader(dataset: DetectionSet, cfg: TransferConfig, dist_info: DistInfo, seed: int, start: int):
    def collate(items):
        images, targets, dropped = detection_collate(items)
        return ((images, targets) if images else None), dropped

    return loop.train_loader(dataset, cfg, dist_info, seed, start, collate)


def loss_fn(device: torch.device):
    def step(model: nn.Module, batch):
        images, targets = batch
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        return sum(losses.values()), losses
    return step


@torch.no_grad()
def evaluate(model: nn.Module, val_set: DetectionSet, cfg: TransferConfig, dist_info: DistInfo,
             progress: bool = True) -> dict[str, dict[str, float]]:
    """COCOeval of the model on `val_set`: {"bbox": {...}, "segm": {...}} in percent, the same on every rank."""
    net = model.module if hasattr(model, "module") else model
    net.eval()
    transform = net.transform
    transform.min_size = (cfg.input.test_size,)
    mine = list(range(dist_info.rank, len(val_set), dist_info.world_size))
    results, unreadable = [], 0
    bs = cfg.eval_batch_size
    bar = progress_bar(progress and dist_info.is_main, 0, len(mine), desc="evaluate", unit="img", leave=False)
    for start in range(0, len(mine), bs):
        items = [val_set[i] for i in mine[start:start + bs]]
        images, targets, dropped = detection_collate(items)
        unreadable += dropped
        if images:
            outputs = net([im.to(dist_info.device) for im in images])
            outputs = [{k: v.cpu() for k, v in o.items()} for o in outputs]
            ids = [t["image_id"] for t in targets]
            results += to_coco_results(outputs, ids, val_set.cat_ids, masks=cfg.model.masks)
        if bar is not None:
            bar.update(len(items))
    if bar is not None:
        bar.close()
    transform.min_size = tuple(cfg.input.train_sizes)
    net.train()
    if dist_info.world_size > 1:
        gathered: list = [None] * dist_info.world_size
        dist.all_gather_object(gathered, (results, unreadable))
        results = [r for part, _ in gathered for r in part]
        unreadable = sum(n for _, n in gathered)
    if unreadable:
        log.warning("evaluation: %d unreadable validation image(s) scored as missed (no detections)", unreadable)
    scores = {"bbox": coco_scores(val_set.coco, results, "bbox")}
    if cfg.model.masks:
        scores["segm"] = coco_scores(val_set.coco, results, "segm")
    scores["detections"] = len(results)
    return scores

