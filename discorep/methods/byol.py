"""BYOL (Grill et al. 2020): global-pooled features, online predictor regresses the EMA target."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from discorep.errors import ConfigError
from discorep.losses.byol import byol_loss
from discorep.methods.base import PretrainMethod, StepInfo
from discorep.methods.options import MethodOptions
from discorep.methods.registry import register_method


@dataclass
class BYOLOptions(MethodOptions):
    def validate(self) -> None:
        super().validate()
        if self.loss != "byol":
            raise ConfigError("method.loss must be 'byol' for method.name 'byol'")


@register_method("byol")
class BYOL(PretrainMethod):
    Options = BYOLOptions

    def forward(self, batch: dict[str, Tensor], info: StepInfo) -> tuple[Tensor, dict[str, Tensor]]:
        both = torch.cat([batch["view1"], batch["view2"]])
        h = self.online(both)[self.feature].mean(dim=(2, 3))
        q1, q2 = self.predictor(self.online.projector(h)).chunk(2)
        with torch.no_grad():
            z = self.target.projector(self.target(both)[self.feature].mean(dim=(2, 3)))
        z1, z2 = z.chunk(2)
        # Symmetrised: each view's prediction regresses the other view's target (BYOL eq. 2).
        return byol_loss(q1, z2) + byol_loss(q2, z1), {}
