"""DetCon-B (Hénaff et al. 2021): fixed masks from a region prior (SLIC or Felzenszwalb).

The prior's label map covers the whole image; it is aligned into both views' feature grids, 16 masks
present in both views are sampled per image, and the contrastive loss (Odin eq. 2–4, negatives
gathered across devices) is applied to the mask-pooled features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from discorep.methods.base import PretrainMethod, StepInfo
from discorep.methods.options import MethodOptions
from discorep.methods.registry import register_method


@dataclass
class DetConOptions(MethodOptions):
    def validate_config(self, cfg: Any) -> None:
        self.needs_prior(cfg)
        super().validate_config(cfg)


@register_method("detcon")
class DetCon(PretrainMethod):
    Options = DetConOptions

    def forward(self, batch: dict[str, Tensor], info: StepInfo) -> tuple[Tensor, dict[str, Tensor]]:
        masks = self.align_to_views(batch["prior"], batch["raw_box"], batch["prior_num"], batch)
        online, target = self.encode_views(batch)
        return self.object_loss(online, target, masks, batch["index"], info)

    def discover(self, batch: dict[str, Tensor], info: StepInfo) -> tuple[Tensor, Tensor]:
        return batch["prior"], batch["raw_box"]
