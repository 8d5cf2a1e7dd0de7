"""Backbone names: which model an `arch` string builds, and its feature levels (channels, strides).

An arch is any timm model name (`timm.list_models()`, a pretrained tag such as `resnet50.a1_in1k`
allowed), plus four names with a fixed meaning kept from before timm names were accepted:

* `resnet18`, `resnet50`: torchvision's ResNets (old checkpoints and the torchvision / detectron2 / mmseg
  exports rely on their exact weights and keys; `random:resnet18` is torchvision's initialisation);
* `swin_t`, `vit_s`: timm's `swin_tiny_patch4_window7_224`, `vit_small_patch16_224`.

Feature levels come from timm's `feature_info` (channels `num_chs`, stride `reduction`), read from a
model built on the meta device (no weights allocated, no random draws). torchvision's ResNets have no
`feature_info`; timm's ResNet of the same name has the same stages (index i >= 1 is `layer{i}`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

TORCHVISION_RESNETS = ("resnet18", "resnet50")
TIMM_ALIASES = {"swin_t": "swin_tiny_patch4_window7_224", "vit_s": "vit_small_patch16_224"}
ALIASES = (*TORCHVISION_RESNETS, *TIMM_ALIASES)


@dataclass(frozen=True)
class Level:
    """One entry of timm's `feature_info`: its position (the `indices` of `forward_intermediates`),
    channels and stride (input pixels per feature cell)."""

    index: int
    channels: int
    stride: int


def timm_name(arch: str) -> str:
    """The timm model name behind `arch` (torchvision's ResNets: timm's ResNet of the same layout)."""
    return TIMM_ALIASES.get(arch, arch)


def _suggestions(arch: str) -> list[str]:
    import timm

    names = list(dict.fromkeys([*ALIASES, *timm.list_models()]))  # resnet50 is an alias and a timm name
    return difflib.get_close_matches(arch.split(".")[0], names, n=4, cutoff=0.6)


def check_arch(arch: str) -> None:
    """Raise one ValueError naming `arch` (with "did you mean" suggestions) unless timm or torchvision
    can build it. A pretrained tag that timm does not know is caught when the model is built."""
    if not isinstance(arch, str) or not arch:
        raise ValueError(f"arch must be a model name, got {arch!r}")
    if arch in ALIASES:
        return
    import timm

    if not timm.is_model(arch):
        close = _suggestions(arch)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown arch {arch!r}: not a timm model name (timm.list_models()) nor one of "
                         f"{', '.join(ALIASES)}{hint}")


def create_timm(arch: str) -> nn.Module:
    """timm's model for `arch`, random weights, without classifier; a ViT-style model takes any input size
    (its position embeddings are interpolated), a CNN takes any size anyway."""
    import timm

    check_arch(arch)
    name = timm_name(arch)
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True)
    except TypeError as err:  # only ViT-like models have the option; CNNs reject the keyword
        if "dynamic_img_size" not in str(err):
            raise
    except RuntimeError as err:  # e.g. "Invalid pretrained tag (x) for resnet50."
        raise ValueError(f"arch {arch!r}: {err}") from None
    return timm.create_model(name, pretrained=False, num_classes=0)


def create_timm_backbone(arch: str, keep: list[int]) -> nn.Module:
    """`create_timm(arch)` without what the encoder never runs: the head (e.g. ConvNeXt's head norm,
    EfficientNet's conv_head) and any stage after the deepest kept level. Parameters that get no
    gradient would be dead weights (decayed, saved, and an error for DDP without unused-parameter search)."""
    model = create_timm(arch)
    if not hasattr(model, "forward_intermediates"):
        raise ValueError(f"arch {arch!r}: timm's {type(model).__name__} has no forward_intermediates, "
                         "so its feature maps cannot be read; choose another model")
    if hasattr(model, "prune_intermediate_layers"):
        model.prune_intermediate_layers(indices=keep, prune_norm=False, prune_head=True)
    return model


@lru_cache(maxsize=64)
def feature_levels(arch: str) -> tuple[Level, ...]:
    """Every level of `arch`'s `feature_info`, shallow to deep, without building real weights."""
    import timm

    check_arch(arch)
    with torch.random.fork_rng(devices=[]):  # whatever the build draws, the caller's RNG stays put
        try:
            with torch.device("meta"):
                model = create_timm(arch)
        except (ValueError, TypeError):
            raise
        except Exception:  # noqa: BLE001 - a model whose __init__ reads tensor values cannot be built on meta
            model = timm.create_model(timm_name(arch), pretrained=False, num_classes=0)
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(f"arch {arch!r}: timm gives no feature_info for it; choose another model")
    return tuple(Level(i, int(d["num_chs"]), int(d["reduction"])) for i, d in enumerate(info))


def select_levels(levels: tuple[Level, ...]) -> dict[str, Level]:
    """c5 = the deepest level; c4 = the deepest level of a finer stride (the stride-16 map of a stride-32
    network); a single-scale model (a plain ViT: every block on the patch grid) has c4 = c5. c2 and c3 (the
    FPN's inputs) exist when the network has levels at strides 4, 8, 16 and 32 (c4 at 16, c5 at 32)."""
    c5 = levels[-1]
    finer = [lv for lv in levels if lv.stride < c5.stride]
    out = {"c4": finer[-1] if finer else c5, "c5": c5}
    by_stride = {lv.stride: lv for lv in levels}  # the deepest level of each stride
    if (out["c4"].stride, c5.stride) == (16, 32) and 4 in by_stride and 8 in by_stride:
        out["c2"], out["c3"] = by_stride[4], by_stride[8]
    return out


def dropped_keys(arch: str) -> tuple[list[str], list[str]]:
    """(classifier, pruned): state-dict keys of timm's default model for `arch` that the encoder's backbone
    lacks -- its classifier (built with num_classes=0), and the layers `create_timm_backbone` drops after
    the deepest level (ConvNeXt's head norm, EfficientNet's conv_head). ([], []) for torchvision's ResNets,
    which are not timm-built. Read on the meta device (no weights allocated)."""
    import timm

    if arch in TORCHVISION_RESNETS:
        return [], []
    deepest = feature_levels(arch)[-1].index
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        default = timm.create_model(timm_name(arch), pretrained=False).state_dict()
        headless = create_timm(arch).state_dict()
        kept = create_timm_backbone(arch, [deepest]).state_dict()
    return [k for k in default if k not in headless], [k for k in headless if k not in kept]
