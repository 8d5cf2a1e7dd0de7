"""DetCon-B (Hénaff et al. 2021): fixed masks from a region prior (SLIC or Felzenszwalb).

The prior's label map covers the whole image; it is aligned into both views' feature grids, 16 masks
present in both views are sampled per image, and the contrastive loss (Odin eq. 2–4, negatives
gathered across devices) is applied to the mask-pooled features.
"""

from __future__ import annotations

from torch import Tensor

from discorep.methods.base import PretrainMethod, StepInfo


class DetCon(PretrainMethod):
    def forward(self, batch: dict[str, Tensor], info: StepInfo) -> tuple[Tensor, dict[str, Tensor]]:
        masks = self.align_to_views(batch["prior"], batch["raw_box"], batch["prior_num"], batch)
        online, target = self.encode_views(batch)
        return self.object_loss(online, target, masks, batch["index"], info)

    def discover(self, batch: dict[str, Tensor], info: StepInfo) -> tuple[Tensor, Tensor]:
        return batch["prior"], batch["raw_box"]
