"""Key renaming from the online backbone (torchvision/timm names) to each fine-tuning toolkit.

Only the online backbone is exported: Odin and R2O discard the target and discovery networks after
pretraining (Odin §3.1), and the FPN, projector and predictor are pretraining heads.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import torch
from torch import Tensor

RESNETS = ("resnet18", "resnet50")
TIMM_NAMES = {"resnet18": "resnet18", "resnet50": "resnet50", "swin_t": "swin_tiny_patch4_window7_224",
              "vit_s": "vit_small_patch16_224"}
FC_IN = {"resnet18": 512, "resnet50": 2048}


def _without_counters(state: dict[str, Tensor]) -> "OrderedDict[str, Tensor]":
    """BN's num_batches_tracked is bookkeeping, not a weight; toolkits recreate it."""
    return OrderedDict((k, v) for k, v in state.items() if not k.endswith("num_batches_tracked"))


def with_placeholder_fc(state: dict[str, Tensor], arch: str, num_classes: int = 1000) -> "OrderedDict[str, Tensor]":
    """torchvision/timm ResNets own an `fc`; a zero fc (documented placeholder for the user's own head)
    lets the export load with strict=True into `torchvision.models.<arch>()`."""
    out = OrderedDict(state)
    out["fc.weight"] = torch.zeros(num_classes, FC_IN[arch])
    out["fc.bias"] = torch.zeros(num_classes)
    return out


def to_torchvision(backbone: dict[str, Tensor], arch: str) -> "OrderedDict[str, Tensor]":
    if arch not in RESNETS:
        raise ValueError(f"--to torchvision supports {', '.join(RESNETS)}; a {arch} backbone is a timm model: "
                         "use --to timm")
    return with_placeholder_fc(backbone, arch)


def to_timm(backbone: dict[str, Tensor], arch: str) -> "OrderedDict[str, Tensor]":
    """timm's ResNets use torchvision's names; Swin/ViT backbones already are timm models (head removed:
    load with `timm.create_model(name, num_classes=0)`)."""
    return with_placeholder_fc(backbone, arch) if arch in RESNETS else OrderedDict(backbone)


_D2_BLOCK = [(r"^bn(\d)\.", r"conv\1.norm."), (r"^downsample\.0\.", "shortcut."), (r"^downsample\.1\.", "shortcut.norm.")]


def detectron2_key(key: str) -> str:
    """torchvision ResNet key → detectron2 ResNet key (stem.conv1, res2..res5, convN.norm, shortcut)."""
    if key.startswith("conv1."):
        return "stem." + key
    if key.startswith("bn1."):
        return "stem.conv1.norm." + key[len("bn1."):]
    m = re.match(r"^layer(\d)\.(\d+)\.(.*)$", key)
    if not m:
        raise ValueError(f"unexpected ResNet key {key!r}")
    stage, block, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
    for pattern, repl in _D2_BLOCK:
        rest = re.sub(pattern, repl, rest)
    return f"res{stage}.{block}.{rest}"


def to_detectron2(backbone: dict[str, Tensor], arch: str) -> dict:
    """detectron2's checkpoint format: a pickled dict with numpy weights under detectron2 names."""
    if arch not in RESNETS:
        raise ValueError(f"--to detectron2 supports ResNets ({', '.join(RESNETS)}), not {arch}")
    model = {detectron2_key(k): v.detach().cpu().numpy() for k, v in _without_counters(backbone).items()}
    if len(model) != len(_without_counters(backbone)):
        raise AssertionError("detectron2 renaming is not one-to-one")
    return {"model": model, "__author__": "discorep", "matching_heuristics": True}


def to_mmseg(backbone: dict[str, Tensor], arch: str) -> dict:
    """mmseg/mmcv ResNets use torchvision's names; the backbone sits under `backbone.`."""
    return {"state_dict": OrderedDict((f"backbone.{k}", v) for k, v in _without_counters(backbone).items())}

