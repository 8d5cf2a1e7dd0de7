"""Scores of `discorep transfer`: COCO box/mask AP (pycocotools' COCOeval) and semantic-segmentation mIoU.

Undefined scores are NaN in the returned dicts of floats (`coco_scores`: an area range without ground
truth, where COCOeval reports -1) or None (`segmentation_scores`: a class absent from both prediction and
ground truth), so a JSON writer turns both into null (write NaN as null) rather than a fake 0 or -100.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from discorep.eval.dense_metrics import miou, per_class_iou

__all__ = ["DETECTION_METRICS", "coco_evaluate", "coco_scores", "segmentation_scores", "to_coco_results"]

DETECTION_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0..5]
IOU_TYPES = ("bbox", "segm")


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _encode_masks(probs: np.ndarray) -> list[dict]:
    """(N, 1, H, W) probabilities → N compressed RLEs of ``prob > 0.5`` with str counts (JSON-ready)."""
    binary = np.asfortranarray((probs[:, 0] > 0.5).transpose(1, 2, 0).astype(np.uint8))  # (H, W, N)
    rles = mask_utils.encode(binary)
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def to_coco_results(outputs: list[dict], image_ids: list[int], cat_ids: list[int], *,
                    masks: bool) -> list[dict]:
    """torchvision detection outputs → COCO result dicts.

    ``outputs[i]`` (image ``image_ids[i]``): ``boxes`` float (N, 4) xyxy, ``labels`` int64 (N,) in 1..C,
    ``scores`` (N,), and with ``masks=True`` ``masks`` float (N, 1, H, W) probabilities. Each result has
    ``image_id``, ``category_id = cat_ids[label - 1]``, ``bbox`` [x, y, w, h], ``score`` and, with masks,
    ``segmentation`` (RLE of mask > 0.5).
    """
    if len(outputs) != len(image_ids):
        raise ValueError(f"{len(outputs)} outputs for {len(image_ids)} image ids")
    results = []
    for out, image_id in zip(outputs, image_ids):
        boxes = _numpy(out["boxes"]).astype(np.float64).reshape(-1, 4)
        labels, scores = _numpy(out["labels"]).reshape(-1), _numpy(out["scores"]).reshape(-1)
        rles = _encode_masks(_numpy(out["masks"])) if masks and len(boxes) else [None] * len(boxes)
        for (x0, y0, x1, y1), label, score, rle in zip(boxes, labels, scores, rles):
            r = {"image_id": int(image_id), "category_id": int(cat_ids[int(label) - 1]),
                 "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "score": float(score)}
            if masks:
                r["segmentation"] = rle
            results.append(r)
    return results


def _load_results(coco_gt: COCO, results: list[dict], iou_type: str) -> COCO:
    """The detections as a COCO object holding only what ``iou_type`` scores.

    Copies (loadRes writes into the dicts) keep only the bbox or only the segmentation, so loadRes takes
    the area of the box for "bbox" and of the mask for "segm": the area ranges of APs/APm/APl then match
    the official evaluation of each type."""
    key = "bbox" if iou_type == "bbox" else "segmentation"
    dets = [{"image_id": r["image_id"], "category_id": r["category_id"], "score": r["score"], key: r[key]}
            for r in results]
    if dets:
        return coco_gt.loadRes(dets)
    empty = COCO()  # loadRes cannot take an empty list; COCOeval can score no detections
    empty.dataset = {"images": list(coco_gt.dataset["images"]), "categories": list(coco_gt.dataset["categories"]),
                     "annotations": []}
    empty.createIndex()
    return empty


def coco_evaluate(coco_gt: COCO, results: list[dict], iou_type: str, *,
                  image_ids: list[int] | None = None) -> tuple[dict[str, float], str]:
    """`coco_scores` and COCOeval's printed summary (the 12-line table), which pycocotools only prints."""
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    text = io.StringIO()
    with contextlib.redirect_stdout(text), warnings.catch_warnings():
        # pycocotools' Cython wrappers predate numpy 2's copy keyword; harmless here.
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        evaluator = COCOeval(coco_gt, _load_results(coco_gt, results, iou_type), iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        summary_start = text.tell()
        evaluator.summarize()
    stats = evaluator.stats[: len(DETECTION_METRICS)]
    scores = {name: float(v) * 100.0 if v >= 0 else math.nan for name, v in zip(DETECTION_METRICS, stats)}
    return scores, text.getvalue()[summary_start:]


def coco_scores(coco_gt: COCO, results: list[dict], iou_type: str, *,
                image_ids: list[int] | None = None) -> dict[str, float]:
    """COCOeval ("bbox" | "segm") AP, AP50, AP75, APs, APm, APl in percent.

    ``image_ids``: the images evaluated (default every image of ``coco_gt``; pass the ones the model saw
    when some were skipped, or those are scored as missed). No results is not an error here: every score
    with ground truth is 0.0. A score COCOeval cannot define (-1: no ground truth in that area range, or
    none at all) is NaN. `coco_evaluate` also returns COCOeval's summary text.
    """
    return coco_evaluate(coco_gt, results, iou_type, image_ids=image_ids)[0]


def segmentation_scores(conf: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """mIoU, per-class IoU and pixel accuracy (percent) from a (C, C) confusion (`eval.dense_metrics.confusion`).

    As `eval.dense_metrics.miou`: a class absent from both prediction and ground truth has no IoU (None
    here, null in JSON) and is left out of the mean. With no scored pixel at all every value is None.
    """
    conf = np.asarray(conf)
    if conf.shape != (len(class_names), len(class_names)):
        raise ValueError(f"confusion of shape {conf.shape} for {len(class_names)} class names")
    iou = per_class_iou(conf)
    present = ~np.isnan(iou)
    total = int(conf.sum())
    pct = lambda v: float(v) * 100.0  # noqa: E731
    return {
        "mIoU": pct(miou(conf)) if present.any() else None,
        "per_class_IoU": {name: pct(v) if ok else None for name, v, ok in zip(class_names, iou, present)},
        "pixel_accuracy": pct(np.trace(conf) / total) if total else None,
    }
