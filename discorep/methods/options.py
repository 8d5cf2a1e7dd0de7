"""Options every method shares: the base of each method's `Options` dataclass (YAML `method:`).

A method's own keys live in its own file, on its `Options` subclass, with their checks:
`validate()` for the section alone and `validate_config(cfg)` against the whole run config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from discorep.errors import ConfigError

FeatureMap = Literal["c4", "c5", "fpn"]


@dataclass
class MethodOptions:
    name: str = "byol"  # a registered method (`methods.registry`)
    module: Optional[str] = None  # a module to import first: it registers a method kept outside discorep
    loss: Literal["byol", "contrastive"] = "byol"
    temperature: float = 0.1  # contrastive α (Odin A.3, DetCon)
    features: FeatureMap = "c5"  # map pooled for the loss
    # Contrastive negatives: DetCon's reference loss takes them from both views' targets (logits
    # [ab, aa]); "cross_view" only from the other view's (Odin eq. 3 as printed). docs/methods.md.
    negatives: Literal["cross_and_same_view", "cross_view"] = "cross_and_same_view"
    num_masks: int = 16  # masks sampled per image (DetCon)
    hard_masks: bool = False  # pool with argmax masks instead of area-weighted ones

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ConfigError("method.temperature must be > 0")
        at_least_one(self, "num_masks")

    def validate_config(self, cfg: Any) -> None:
        """Checks against the whole run config (`cfg.model`, `cfg.views`, `cfg.data`, `cfg.train`)."""
        if self.features == "fpn" and not cfg.model.fpn:
            raise ConfigError("method.features/discovery_features 'fpn' needs model.fpn: true")
        grid = cfg.views.size // cfg.model.strides()[self.features]
        if grid < 1:
            raise ConfigError("views.size too small for the feature grid")

    def needs_prior(self, cfg: Any) -> None:
        """For methods whose masks start from a region prior: refuse `data.prior: none`."""
        if cfg.data.prior == "none":
            raise ConfigError(f"method '{self.name}' needs a region prior: set data.prior (slic, felzenszwalb, grid)")


def at_least_one(options: Any, *keys: str) -> None:
    for key in keys:
        if getattr(options, key) < 1:
            raise ConfigError(f"method.{key} must be >= 1, got {getattr(options, key)}")
