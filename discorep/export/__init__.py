"""Export the online backbone of a pretraining checkpoint for torchvision, timm, detectron2 or mmseg."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from discorep.checkpoint import CheckpointError, load_checkpoint
from discorep.export.converters import to_detectron2, to_mmseg, to_timm, to_torchvision

TARGETS = ("torchvision", "timm", "detectron2", "mmseg")


def online_backbone(checkpoint: str | os.PathLike) -> tuple[dict, str]:
    """The online encoder's backbone weights (FPN and heads dropped) and the architecture."""
    state = load_checkpoint(checkpoint)
    if not isinstance(state, dict) or "online" not in state or "config" not in state:
        raise CheckpointError(f"{checkpoint}: not a discorep pretraining checkpoint (no 'online' network)")
    prefix = "encoder.backbone."
    backbone = {k[len(prefix):]: v for k, v in state["online"].items() if k.startswith(prefix)}
    if not backbone:
        raise CheckpointError(f"{checkpoint}: the online network has no backbone weights")
    return backbone, state["config"]["model"]["arch"]


def _write_atomic(obj, out: Path, use_pickle: bool) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if use_pickle:
        with open(tmp, "wb") as f:
            pickle.dump(obj, f)
    else:
        torch.save(obj, tmp)
    os.replace(tmp, out)
    return out


def export_backbone(*, checkpoint: str | os.PathLike, to: str, out: str | os.PathLike) -> Path:
    """Write the online backbone in `to`'s format. Load the results with:

    * torchvision: `torchvision.models.resnet50().load_state_dict(torch.load(f), strict=True)`
      (the fc is a zero placeholder: replace it with your head);
    * timm: `timm.create_model(name).load_state_dict(torch.load(f))` (ResNets; Swin/ViT with num_classes=0);
    * detectron2: `MODEL.WEIGHTS f.pkl` (numpy weights, detectron2 names, `matching_heuristics`);
    * mmseg: `init_cfg=dict(type="Pretrained", checkpoint=f)` (keys under `backbone.`).
    """
    if to not in TARGETS:
        raise ValueError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    backbone, arch = online_backbone(checkpoint)
    convert = {"torchvision": to_torchvision, "timm": to_timm, "detectron2": to_detectron2, "mmseg": to_mmseg}[to]
    try:
        payload = convert(backbone, arch)
    except ValueError as err:
        from discorep.errors import UsageError

        raise UsageError(str(err)) from err
    return _write_atomic(payload, Path(out), use_pickle=(to == "detectron2"))
