"""Backbones behind one interface: `Encoder(x) -> {"c4", "c5"[, "fpn"]}` NCHW feature maps.

* ResNets come from torchvision (weights=None), with `fc` replaced by `nn.Identity` so
  `backbone.state_dict()` has exactly torchvision's keys minus `fc.*` (see `Encoder.backbone_state_dict`).
* Swin-T and ViT-S come from timm (pretrained=False, dynamic image size). Their stage outputs are read
  with timm's `forward_intermediates` in NCHW.
* ViT-S is single-scale (stride 16): `c4` and `c5` are the *same* map (last block tokens, final norm,
  prefix tokens dropped, reshaped to a grid), so `strides["c5"] == 16` for it, and it has no FPN.
* `fpn=True` adds torchvision's `FeaturePyramidNetwork` over c2..c5 and returns its highest-resolution
  output (stride 4) as "fpn" (Odin §3.1).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork

ARCHS = ("resnet18", "resnet50", "swin_t", "vit_s")
NORMS = ("bn", "syncbn", "gn", "none")

_TIMM_NAMES = {"swin_t": "swin_tiny_patch4_window7_224", "vit_s": "vit_small_patch16_224"}
_RESNET_CHANNELS = {
    "resnet18": {"c2": 64, "c3": 128, "c4": 256, "c5": 512},
    "resnet50": {"c2": 256, "c3": 512, "c4": 1024, "c5": 2048},
}
_SWIN_CHANNELS = {"c2": 96, "c3": 192, "c4": 384, "c5": 768}
_PYRAMID_STRIDES = {"c2": 4, "c3": 8, "c4": 16, "c5": 32}


def feature_strides(arch: str) -> dict[str, int]:
    """Stride of each output key for `arch` (what config validation needs before any model is built).
    ViT-S is single-scale: its c4 and c5 are the same stride-16 map."""
    return {"c4": 16, "c5": 16 if arch == "vit_s" else 32, "fpn": 4}


# ----------------------------------------------------------------------------- normalisation
def _num_groups(channels: int, max_groups: int = 32) -> int:
    """Largest divisor of `channels` that is <= max_groups (GroupNorm needs groups | channels)."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def _bn_to_gn(bn: nn.modules.batchnorm._BatchNorm) -> nn.GroupNorm:
    """GroupNorm with the BN's affine parameters: statistics per sample, so independent of batch split."""
    c = bn.num_features
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
    * "syncbn": `nn.SyncBatchNorm.convert_sync_batchnorm` (SyncBN only runs on GPU with NCCL).
    * "gn": GroupNorm with the largest group count <= 32 that divides C; statistics are per sample, so
      a step gives the same result however the batch is split across processes (CPU equivalence tests).
    * "none": Identity (no normalisation).
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")
    if norm == "bn":
        return module
    if norm == "syncbn":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if norm == "gn":
        return _replace_bn(module, _bn_to_gn)
    return _replace_bn(module, lambda bn: nn.Identity())


# ----------------------------------------------------------------------------- backbones
def _build_resnet(arch: str) -> nn.Module:
    net = getattr(torchvision.models, arch)(weights=None)
    # Identity keeps torchvision's key names for every other layer and drops fc.* from the state dict.
    net.fc = nn.Identity()
    return net


def _build_timm(arch: str) -> nn.Module:
    import timm

    return timm.create_model(_TIMM_NAMES[arch], pretrained=False, num_classes=0, dynamic_img_size=True)


class Encoder(nn.Module):
    """Feature extractor f: image (B, 3, H, W) -> {"c4", "c5"[, "fpn"]} NCHW maps.

    Attributes: `arch`, `backbone` (plain torchvision/timm model), `channels` and `strides` per output key.
    """

    def __init__(self, arch: str, *, fpn: bool = False, fpn_dim: int = 256, norm: str = "bn"):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")
        if norm not in ("bn", "syncbn", "gn"):
            raise ValueError(f"unknown norm {norm!r} for an Encoder; choose one of ('bn', 'syncbn', 'gn')")
        if fpn and arch == "vit_s":
            raise ValueError("fpn=True needs a multi-scale backbone; vit_s is single-scale (stride 16)")
        if fpn and fpn_dim <= 0:
            raise ValueError(f"fpn_dim must be positive, got {fpn_dim}")
        self.arch = arch
        self.norm = norm
        self.is_resnet = arch.startswith("resnet")
        self.backbone = _build_resnet(arch) if self.is_resnet else _build_timm(arch)
        self.backbone = convert_norm(self.backbone, norm)
        pyramid = self._pyramid_channels()
        self.channels: dict[str, int] = {"c4": pyramid["c4"], "c5": pyramid["c5"]}
        self.strides: dict[str, int] = {k: v for k, v in feature_strides(arch).items() if k != "fpn"}
        self.fpn: FeaturePyramidNetwork | None = None
        if fpn:
            self.fpn = FeaturePyramidNetwork([pyramid[k] for k in ("c2", "c3", "c4", "c5")], fpn_dim)
            # Only P2 is used (Odin §3.1): the coarser levels' 3×3 output convs would be dead
            # parameters (never trained, and DDP would have to search for unused parameters).
            for level in range(1, 4):
                self.fpn.layer_blocks[level] = nn.Identity()
            self.channels["fpn"] = fpn_dim
            self.strides["fpn"] = 4

    def _pyramid_channels(self) -> dict[str, int]:
        if self.is_resnet:
            return dict(_RESNET_CHANNELS[self.arch])
        if self.arch == "swin_t":
            return dict(_SWIN_CHANNELS)
        dim = self.backbone.embed_dim
        return {"c4": dim, "c5": dim}

    # ----- per-family pyramids -----
    def _resnet_pyramid(self, x: Tensor, up_to: str = "c5") -> dict[str, Tensor]:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        c2 = b.layer1(x)
        c3 = b.layer2(c2)
        c4 = b.layer3(c3)
        if up_to == "c4":  # layer4 is ~20 % of a ResNet forward; C4-only users skip it
            return {"c2": c2, "c3": c3, "c4": c4}
        c5 = b.layer4(c4)
        return {"c2": c2, "c3": c3, "c4": c4, "c5": c5}

    def _swin_pyramid(self, x: Tensor) -> dict[str, Tensor]:
        # norm=True applies the final LayerNorm to the last stage only (what the classifier sees).
        maps = self.backbone.forward_intermediates(x, indices=4, norm=True, intermediates_only=True)
        return dict(zip(("c2", "c3", "c4", "c5"), maps))

    def _vit_pyramid(self, x: Tensor) -> dict[str, Tensor]:
        (last,) = self.backbone.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
        return {"c4": last, "c5": last}

    def forward(self, x: Tensor, up_to: str | None = None) -> dict[str, Tensor]:
        """{"c4", "c5"[, "fpn"]} feature maps. ``up_to``: the feature the caller needs; "c4" returns {"c4"}
        alone and, for ResNets, skips the last stage (R2O's region features and C4 evaluations need nothing
        deeper); None, "c5" and "fpn" compute everything."""
        if up_to not in (None, "c4", "c5", "fpn"):
            raise ValueError(f"up_to must be None, 'c4', 'c5' or 'fpn', got {up_to!r}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"Encoder expects images (B, 3, H, W); got shape {tuple(x.shape)}")
        min_side = 32 if self.is_resnet or self.arch == "swin_t" else 16
        if min(x.shape[-2:]) < min_side:
            raise ValueError(f"{self.arch} needs H, W >= {min_side}; got {tuple(x.shape[-2:])}")
        if self.is_resnet:
            pyr = self._resnet_pyramid(x, "c4" if up_to == "c4" else "c5")
        elif self.arch == "swin_t":
            pyr = self._swin_pyramid(x)
        else:
            pyr = self._vit_pyramid(x)
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

        For ResNets with norm "bn"/"syncbn" the keys are exactly torchvision's `resnetXX().state_dict()`
        keys minus `fc.weight`/`fc.bias`: add an fc (or load with strict=False) to restore a classifier.
        With norm "gn" the norm layers hold only weight/bias (no running stats). For timm archs it is the
        timm model's state dict (classifier head removed, num_classes=0).
        """
        return OrderedDict((k, v.detach().clone()) for k, v in self.backbone.state_dict().items())

