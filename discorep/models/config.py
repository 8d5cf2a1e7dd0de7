"""The `model:` section of a run config: backbone, heads and how they run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from discorep.errors import ConfigError


@dataclass
class ModelConfig:
    arch: str = "resnet50"  # a backbone name; `models.backbones.feature_strides` says which exist
    fpn: bool = False
    fpn_dim: int = 256
    norm: Literal["bn", "syncbn", "gn"] = "bn"
    proj_hidden: int = 4096
    proj_dim: int = 256
    pred_hidden: int = 4096
    channels_last: bool = False
    # torch.compile the encoders (docs/training.md "Precision and speed"); "none" = eager.
    compile: Literal["none", "default", "reduce-overhead", "max-autotune"] = "none"
    # Start from trained weights: a state-dict file, torchvision:<name> or timm:<name> (downloaded by the
    # library where the machine can); loaded into every encoder copy (online, target, discovery) at
    # step 0 of a fresh run (`engine.builders.init_backbone`). None = random initialisation.
    init: Optional[str] = None

    def validate(self) -> None:
        self.strides()
        from discorep.models.backbones import supports_fpn

        if self.fpn and not supports_fpn(self.arch):
            raise ConfigError(f"model.fpn: true needs feature levels at strides 4, 8, 16 and 32; {self.arch!r} "
                              "has not (e.g. a plain ViT is single-scale): set model.fpn: false")

    def size_multiple(self) -> int:
        """What every view size must be a multiple of: the C5 stride (32 for ResNets, 14 for a patch-14 ViT)."""
        from discorep.models.backbones import size_multiple

        return size_multiple(self.arch)

    def strides(self) -> dict[str, int]:
        """Stride of each feature map ("c4", "c5", "fpn") of `arch`; an unknown arch is a ConfigError."""
        from discorep.models.backbones import feature_strides

        try:
            return feature_strides(self.arch)
        except (ValueError, KeyError) as err:
            raise ConfigError(f"model.arch: {str(err).strip(chr(39))}") from None
