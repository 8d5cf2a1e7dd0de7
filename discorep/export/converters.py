"""Key layouts of the fine-tuning toolkits, built from the online backbone (torchvision/timm names).

Only the online backbone is exported: Odin and R2O discard the target and discovery networks after
pretraining (Odin §3.1), and the FPN, projector and predictor are pretraining heads.

Every converter is a pure function `(backbone state dict, arch, norm) -> payload`; a ValueError says
what cannot be converted and what to use instead.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import torch
import torchvision
from torch import Tensor

from discorep.models.backbones import convert_norm
from discorep.models.timm_backbones import dropped_keys, timm_name

RESNETS = ("resnet18", "resnet50")
HEAD_PREFIXES = ("fc.", "head.")  # torchvision/timm ResNet classifier; timm ViT/Swin classifier

State = OrderedDict[str, Tensor]


def _require_resnet(arch: str, to: str) -> None:
    if arch not in RESNETS:
        raise ValueError(f"--to {to} supports ResNets ({', '.join(RESNETS)}), not {arch}: export a {arch} "
                         "with --to timm (its backbone is timm's model) and convert that with the toolkit's own tools")


# ------------------------------------------------------------------------------ reference layouts
def reference_state(to: str, arch: str, norm: str) -> State:
    """The state dict of the toolkit's default model for `arch` (classifier included), on the meta
    device: shapes and names only, nothing allocated. `norm` is applied as the Encoder applies it, so
    a GroupNorm backbone is compared with a GroupNorm model."""
    with torch.device("meta"):
        if to == "torchvision":
            net = getattr(torchvision.models, arch)(weights=None)
        else:
            import timm

            net = timm.create_model(timm_name(arch), pretrained=False)
        net = convert_norm(net, "gn" if norm == "gn" else "bn")  # syncbn has BN's keys
    return OrderedDict(net.state_dict())


def check_against(backbone: dict[str, Tensor], reference: dict[str, Tensor], what: str,
                  unused: tuple[str, ...] = ()) -> list[str]:
    """Raise unless `backbone` is `reference` minus its classifier (and minus the `unused` keys: layers the
    encoder drops); returns the keys `backbone` lacks.

    Checked at export time so that a mismatch is reported here, not as a failed load in the toolkit.
    """
    unexpected = [k for k in backbone if k not in reference]
    reshaped = [k for k in backbone if k in reference and tuple(backbone[k].shape) != tuple(reference[k].shape)]
    missing = [k for k in reference if k not in backbone]
    not_head = [k for k in missing if not k.startswith(HEAD_PREFIXES) and k not in unused]
    if unexpected or reshaped or not_head:
        raise ValueError(f"the checkpoint's backbone does not match {what}: unexpected {unexpected[:5]}, "
                         f"wrong shape {reshaped[:5]}, missing {not_head[:5]}")
    return missing


def _with_zero_head(backbone: dict[str, Tensor], reference: dict[str, Tensor], what: str,
                    fill: dict[str, Tensor] | None = None, classifier: tuple[str, ...] = ()) -> State:
    """Backbone + an all-zero classifier (keys under HEAD_PREFIXES or in `classifier`), in the reference's
    key order; `fill` holds the values of other keys the backbone lacks.

    The toolkits' default models own a classifier, and strict=True needs its keys. Zeros (not a random
    init) make the placeholder obvious and deterministic: the logits are 0 until the user replaces or
    trains the head; the features are the trained ones.
    """
    fill = fill or {}
    head = check_against(backbone, reference, what, classifier + tuple(fill))
    out = OrderedDict()
    for key, ref in reference.items():
        if key in backbone:
            out[key] = backbone[key]
        else:
            out[key] = fill[key] if key in fill else torch.zeros(ref.shape, dtype=ref.dtype)
    return out


def _timm_init(arch: str, norm: str, keys: list[str]) -> dict[str, Tensor]:
    """timm's own initialisation (seed 0) of `keys`: the layers after the deepest feature level that the
    encoder drops (e.g. EfficientNet's conv_head, ConvNeXt's head norm) are untrained, and a zero norm
    scale or conv there would silence the features the head sees."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = timm.create_model(timm_name(arch), pretrained=False)
    state = convert_norm(net, "gn" if norm == "gn" else "bn").state_dict()
    return {k: state[k] for k in keys}


# ------------------------------------------------------------------------------------ converters
def to_torchvision(backbone: dict[str, Tensor], arch: str, norm: str = "bn") -> State:
    if arch not in RESNETS:
        raise ValueError(f"--to torchvision supports {', '.join(RESNETS)}; a {arch} backbone is a timm model: "
                         "use --to timm")
    return _with_zero_head(backbone, reference_state("torchvision", arch, norm), f"torchvision.models.{arch}()")


def to_timm(backbone: dict[str, Tensor], arch: str, norm: str = "bn") -> State:
    """timm's ResNets use torchvision's names; other backbones already are timm models (the Encoder builds
    them with num_classes=0), so the classifier is added back as zeros and the layers the encoder drops
    after its deepest level (none for ResNets, Swin, ViT) with timm's initialisation."""
    name = timm_name(arch)
    classifier, pruned = dropped_keys(arch)
    fill = _timm_init(arch, norm, pruned) if pruned else None
    return _with_zero_head(backbone, reference_state("timm", arch, norm), f"timm.create_model({name!r})",
                           fill, tuple(classifier))


def _check_resnet(backbone: dict[str, Tensor], arch: str, norm: str, to: str) -> None:
    _require_resnet(arch, to)
    check_against(backbone, reference_state("torchvision", arch, norm), f"a torchvision {arch}")


_D2_BLOCK = ((re.compile(r"^bn(\d)\."), r"conv\1.norm."),
             (re.compile(r"^downsample\.0\."), "shortcut."),
             (re.compile(r"^downsample\.1\."), "shortcut.norm."))
_LAYER = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")


def detectron2_key(key: str) -> str:
    """torchvision ResNet key → detectron2 ResNet key: stem.conv1 (+ .norm), layerN → res{N+1},
    bnK → convK.norm, downsample.0/1 → shortcut / shortcut.norm."""
    if key.startswith("conv1."):
        return "stem." + key
    if key.startswith("bn1."):
        return "stem.conv1.norm." + key[len("bn1."):]
    m = _LAYER.match(key)
    if not m:
        raise ValueError(f"no detectron2 name for ResNet key {key!r}")
    rest = m.group(3)
    for pattern, repl in _D2_BLOCK:
        rest = pattern.sub(repl, rest)
    return f"res{int(m.group(1)) + 1}.{m.group(2)}.{rest}"


def _without_counters(state: dict[str, Tensor]) -> State:
    """BN's num_batches_tracked is bookkeeping, not a weight; detectron2's (Frozen)BN has none."""
    return OrderedDict((k, v) for k, v in state.items() if not k.endswith("num_batches_tracked"))


def to_detectron2(backbone: dict[str, Tensor], arch: str, norm: str = "bn") -> dict:
    """detectron2's checkpoint format: a pickled dict, numpy weights under detectron2 names."""
    _check_resnet(backbone, arch, norm, "detectron2")
    weights = _without_counters(backbone)
    model = {detectron2_key(k): v.detach().cpu().numpy() for k, v in weights.items()}
    if len(model) != len(weights):  # two source keys on one name would silently drop a weight
        raise ValueError("detectron2 renaming is not one-to-one")
    return {"model": model, "__author__": "discorep", "matching_heuristics": True}


_BN = re.compile(r"(^|\.)bn(\d)\.")


def mmseg_key(key: str, norm: str = "bn") -> str:
    """mmseg's ResNet (mmcv) uses torchvision's names, except that mmcv names a norm layer by its
    type: GroupNorm layers are gn1/gn2/gn3 where BatchNorm ones are bn1/bn2/bn3."""
    if norm == "gn":
        key = _BN.sub(r"\1gn\2.", key)
    return f"backbone.{key}"


def to_mmseg(backbone: dict[str, Tensor], arch: str, norm: str = "bn") -> dict:
    """`{"state_dict": {"backbone.<key>": tensor}}`, the classifier dropped (mmseg has none)."""
    _check_resnet(backbone, arch, norm, "mmseg")
    return {"state_dict": OrderedDict((mmseg_key(k, norm), v) for k, v in backbone.items())}


CONVERTERS = {"torchvision": to_torchvision, "timm": to_timm, "detectron2": to_detectron2, "mmseg": to_mmseg}
