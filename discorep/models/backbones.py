"""Backbones behind one interface: `Encoder(x) -> {"c4", "c5"[, "fpn"]}` NCHW feature maps.

`arch` is a config string (`model.arch`): any timm model name, or one of the names kept from before
(`resnet18`/`resnet50`: torchvision's ResNets; `swin_t`/`vit_s`: timm aliases); see `timm_backbones`.

* torchvision ResNets are built with weights=None and `fc` replaced by `nn.Identity`, so
  `backbone.state_dict()` has exactly torchvision's keys minus `fc.*` (see `Encoder.backbone_state_dict`).
* timm models are built with pretrained=False, num_classes=0 (and dynamic image size where the model has
  the option), so their keys are timm's own: a timm state dict loads (`model.init`) and `--to timm`
  exports load into `timm.create_model(name)`. Their maps come from `forward_intermediates` (NCHW, prefix
  tokens dropped), channels and strides from `feature_info`. Not `features_only=True`: its wrappers rename
  the keys (`stages_0`, `model.`), which would break both.
* c5 is the deepest level (stride 32 for CNNs, Swin, ConvNeXt), c4 the deepest level of a finer stride
  (stride 16). A plain ViT is single-scale: c4 and c5 are the *same* map (last block, final norm, prefix
  tokens -- class token and registers -- dropped, on the patch grid), both at stride = patch size (16, or
  14 for DINOv2), and it has no FPN.
* `fpn=True` adds torchvision's `FeaturePyramidNetwork` over c2..c5 (levels at strides 4, 8, 16, 32) and
  returns its highest-resolution output (stride 4) as "fpn" (Odin §3.1).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork

from discorep.models.timm_backbones import (ALIASES, TORCHVISION_RESNETS, Level, check_arch,
                                           create_timm_backbone, feature_levels, select_levels)

# The names with a fixed meaning (any timm name works too): kept for `random:<arch>` and error messages.
ARCHS = ALIASES
NORMS = ("bn", "syncbn", "gn", "none")
FPN_STRIDE = 4


def feature_strides(arch: str) -> dict[str, int]:
    """Stride of each output key for `arch`, without building its weights (config validation). "fpn" is the
    FPN's stride where `supports_fpn(arch)`. Raises ValueError (with suggestions) for an unknown arch."""
    levels = select_levels(feature_levels(arch))
    return {"c4": levels["c4"].stride, "c5": levels["c5"].stride, "fpn": FPN_STRIDE}


def known_arch(arch: object) -> bool:
    """Whether `arch` names a backbone this library can build (no message; `check_arch` gives one)."""
    try:
        check_arch(arch)
    except ValueError:
        return False
    return True


def supports_fpn(arch: str) -> bool:
    """Whether `arch` has the stride 4, 8, 16, 32 levels an FPN is built on (a plain ViT has not)."""
    return "c2" in select_levels(feature_levels(arch))


def size_multiple(arch: str) -> int:
    """What every view size must be a multiple of so that feature grids align with the pixels: the
    coarsest stride (32 for CNNs/Swin/ConvNeXt, the patch size for a plain ViT: 16, or 14 for DINOv2)."""
    return max(feature_strides(arch).values())


# ----------------------------------------------------------------------------- normalisation
def _num_groups(channels: int, max_groups: int = 32) -> int:
    """Largest divisor of `channels` that is <= max_groups (GroupNorm needs groups | channels)."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def _is_norm_act(bn: nn.Module) -> bool:
    """timm's fused norm + activation layers (BatchNormAct2d, SyncBatchNormAct) subclass BatchNorm:
    replacing one by a plain norm would silently drop its activation."""
    return type(bn).__module__.startswith("timm.") and hasattr(bn, "act")


def _bn_to_gn(bn: nn.modules.batchnorm._BatchNorm) -> nn.GroupNorm:
    """GroupNorm with the BN's affine parameters: statistics per sample, so independent of batch split."""
    c = bn.num_features
    if _is_norm_act(bn):  # timm's BatchNormAct2d holds the block's activation: GroupNormAct keeps it
        from timm.layers import GroupNormAct

        gn = GroupNormAct(c, _num_groups(c), eps=bn.eps, affine=bn.affine)
        gn.drop, gn.act = bn.drop, bn.act
    else:
        gn = nn.GroupNorm(_num_groups(c), c, eps=bn.eps, affine=bn.affine)
    if bn.affine:
        with torch.no_grad():
            gn.weight.copy_(bn.weight)
            gn.bias.copy_(bn.bias)
        gn.weight.requires_grad_(bn.weight.requires_grad)
        gn.bias.requires_grad_(bn.bias.requires_grad)
    ref = bn.weight if bn.affine else bn.running_mean
    if ref is not None:
        gn.to(device=ref.device, dtype=ref.dtype)
    return gn


def _replace_bn(module: nn.Module, make: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Recursively replace every BatchNorm1d/2d/3d (incl. SyncBatchNorm) child with `make(bn)`."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return make(module)
    for name, child in module.named_children():
        new = _replace_bn(child, make)
        if new is not child:
            setattr(module, name, new)
    return module


def convert_norm(module: nn.Module, norm: str) -> nn.Module:
    """Convert every batch norm in `module` (in place where possible; use the return value).

    * "bn": unchanged.
    * "syncbn": `nn.SyncBatchNorm.convert_sync_batchnorm` (SyncBN only runs on GPU with NCCL); timm's
      `convert_sync_batchnorm` where timm's BatchNormAct layers are present (it keeps their activation).
    * "gn": GroupNorm with the largest group count <= 32 that divides C; statistics are per sample, so
      a step gives the same result however the batch is split across processes (CPU equivalence tests).
    * "none": Identity (no normalisation; a timm BatchNormAct keeps its activation).

    Only batch norms are converted: LayerNorm (ViT, Swin, ConvNeXt) and other per-sample norms are kept,
    since they already are what "syncbn" and "gn" are for (statistics independent of how the batch is split).
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")
    if norm == "bn":
        return module
    if norm == "syncbn":
        if any(_is_norm_act(m) for m in module.modules()):
            from timm.layers import convert_sync_batchnorm

            return convert_sync_batchnorm(module)
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if norm == "gn":
        return _replace_bn(module, _bn_to_gn)
    return _replace_bn(module, lambda bn: nn.Sequential(bn.drop, bn.act) if _is_norm_act(bn) else nn.Identity())




# ----------------------------------------------------------------------------- backbones
def _build_resnet(arch: str) -> nn.Module:
    net = getattr(torchvision.models, arch)(weights=None)
    # Identity keeps torchvision's key names for every other layer and drops fc.* from the state dict.
    net.fc = nn.Identity()
    return net


class Encoder(nn.Module):
    """Feature extractor f: image (B, 3, H, W) -> {"c4", "c5"[, "fpn"]} NCHW maps.

    Attributes: `arch`, `backbone` (plain torchvision/timm model), `channels` and `strides` per output key.
    """

    def __init__(self, arch: str, *, fpn: bool = False, fpn_dim: int = 256, norm: str = "bn"):
        super().__init__()
        check_arch(arch)
        if norm not in ("bn", "syncbn", "gn"):
            raise ValueError(f"unknown norm {norm!r} for an Encoder; choose one of ('bn', 'syncbn', 'gn')")
        self.levels: dict[str, Level] = select_levels(feature_levels(arch))
        if fpn and "c2" not in self.levels:
            raise ValueError(f"fpn=True needs a multi-scale backbone (levels at strides 4, 8, 16, 32); {arch} "
                             f"is single-scale (stride {self.levels['c5'].stride})")
        if fpn and fpn_dim <= 0:
            raise ValueError(f"fpn_dim must be positive, got {fpn_dim}")
        self.arch = arch
        self.norm = norm
        self.is_torchvision = arch in TORCHVISION_RESNETS
        deepest = self.levels["c5"].index
        self.backbone = _build_resnet(arch) if self.is_torchvision else create_timm_backbone(arch, [deepest])
        self.backbone = convert_norm(self.backbone, norm)
        self.channels: dict[str, int] = {k: self.levels[k].channels for k in ("c4", "c5")}
        self.strides: dict[str, int] = {k: self.levels[k].stride for k in ("c4", "c5")}
        self.fpn: FeaturePyramidNetwork | None = None
        if fpn:
            self.fpn = FeaturePyramidNetwork([self.levels[k].channels for k in ("c2", "c3", "c4", "c5")], fpn_dim)
            # Only P2 is used (Odin §3.1): the coarser levels' 3×3 output convs would be dead
            # parameters (never trained, and DDP would have to search for unused parameters).
            for level in range(1, 4):
                self.fpn.layer_blocks[level] = nn.Identity()
            self.channels["fpn"] = fpn_dim
            self.strides["fpn"] = FPN_STRIDE

    def _resnet_maps(self, x: Tensor, indices: set[int]) -> dict[int, Tensor]:
        """torchvision ResNet: feature_info index i >= 1 is layer{i}; stops after the deepest one asked for
        (layer4 is ~20 % of a ResNet forward; C4-only users skip it)."""
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        maps = {}
        for i in range(1, max(indices) + 1):
            x = getattr(b, f"layer{i}")(x)
            if i in indices:
                maps[i] = x
        return maps

    def _timm_maps(self, x: Tensor, indices: set[int]) -> dict[int, Tensor]:
        # norm=True: the model's final norm on the last level, as its forward_features does (a ViT's
        # last-block tokens, a Swin's last stage); stop_early skips the stages after the deepest index.
        order = sorted(indices)
        maps = self.backbone.forward_intermediates(x, indices=order, norm=True, stop_early=True,
                                                   intermediates_only=True)
        return dict(zip(order, maps))

    def forward(self, x: Tensor, up_to: str | None = None) -> dict[str, Tensor]:
        """{"c4", "c5"[, "fpn"]} feature maps. ``up_to``: the feature the caller needs; "c4" returns {"c4"}
        alone and skips the stages after it (R2O's region features and C4 evaluations need nothing
        deeper); None, "c5" and "fpn" compute everything."""
        if up_to not in (None, "c4", "c5", "fpn"):
            raise ValueError(f"up_to must be None, 'c4', 'c5' or 'fpn', got {up_to!r}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"Encoder expects images (B, 3, H, W); got shape {tuple(x.shape)}")
        min_side = self.levels["c5"].stride
        if min(x.shape[-2:]) < min_side:
            raise ValueError(f"{self.arch} needs H, W >= {min_side}; got {tuple(x.shape[-2:])}")
        keys = ("c4",) if up_to == "c4" else ("c2", "c3", "c4", "c5") if self.fpn is not None else ("c4", "c5")
        indices = {self.levels[k].index for k in keys}
        maps = self._resnet_maps(x, indices) if self.is_torchvision else self._timm_maps(x, indices)
        pyr = {k: maps[self.levels[k].index] for k in keys}
        if up_to == "c4":
            return {"c4": pyr["c4"]}
        out = {"c4": pyr["c4"], "c5": pyr["c5"]}
        if self.fpn is not None:
            feats = self.fpn(OrderedDict((k, pyr[k]) for k in ("c2", "c3", "c4", "c5")))
            out["fpn"] = feats["c2"]  # highest resolution level, stride 4 (Odin §3.1)
        return out

    def features(self, x: Tensor) -> dict[str, Tensor]:
        """Alias of `forward` (the interface named in docs/architecture.md)."""
        return self(x)

    def backbone_state_dict(self) -> OrderedDict[str, Tensor]:
        """The backbone's weights alone (no FPN).

        For torchvision ResNets with norm "bn"/"syncbn" the keys are exactly torchvision's
        `resnetXX().state_dict()` keys minus `fc.weight`/`fc.bias`: add an fc (or load with strict=False) to
        restore a classifier. With norm "gn" the norm layers hold only weight/bias (no running stats). For
        timm archs it is the timm model's state dict without the classifier and the head layers the
        encoder never runs (see `timm_backbones.create_timm_backbone`).
        """
        return OrderedDict((k, v.detach().clone()) for k, v in self.backbone.state_dict().items())
