"""The object discovery network f_τ, g_τ (Odin §3.1); its features come from `models.dense.dense_features`.

Discovery forwards run in eval mode: an image's segmentation then depends only on the image and the
network, not on the rest of its batch — which is what makes cached segments (Odin's discrete
updates) and 1-vs-N-process runs consistent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from discorep.errors import ConfigError
from discorep.models.ema import copy_params_, ema_update_, make_ema_copy


@dataclass
class DiscoveryNetOptions:
    """How the discovery network follows the online one (Odin; the Odin+R2O hybrid)."""

    discovery_update: Literal["continuous", "discrete"] = "continuous"
    lambda_tau: float = 1e-3  # continuous: τ ← (1−λτ)τ + λτ θ (Odin eq. 7)
    discrete_every_epochs: int = 100  # discrete: copy θ → τ every N epochs, segments cached between

    def validate(self) -> None:
        if not 0.0 <= self.lambda_tau <= 1.0:
            raise ConfigError(f"method.lambda_tau must be in [0, 1], got {self.lambda_tau}")
        if self.discrete_every_epochs < 1:
            raise ConfigError("method.discrete_every_epochs must be >= 1")


class DiscoveryNet(nn.Module):
    """τ follows θ: continuously, τ ← (1−λτ)τ + λτ θ (Odin eq. 7), or by a copy every N epochs."""

    def __init__(self, online: nn.Module, cfg: DiscoveryNetOptions):
        super().__init__()
        self.net = make_ema_copy(online)
        self.mode = cfg.discovery_update
        self.lambda_tau = cfg.lambda_tau
        self.every_epochs = cfg.discrete_every_epochs

    @torch.no_grad()
    def copy_period(self, steps_per_epoch: float) -> int:
        """Steps between copies; `steps_per_epoch` is fractional in a `train.steps` run (the copies then
        keep their share of the run). λτ is a per-step rate (eq. 7), not a schedule: it is not rescaled."""
        return max(1, round(self.every_epochs * steps_per_epoch))

    def update(self, online: nn.Module, step_done: int, steps_per_epoch: float) -> bool:
        """Call after optimizer step number `step_done` (1-based). Returns True when τ was replaced."""
        if self.mode == "continuous":
            ema_update_(self.net, online, 1.0 - self.lambda_tau)
            return False
        if step_done % self.copy_period(steps_per_epoch) == 0:
            copy_params_(self.net, online)
            return True
        return False
