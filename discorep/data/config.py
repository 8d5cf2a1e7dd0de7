"""The `data:` section of a run config: where images come from and which region prior they get."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from discorep.errors import ConfigError


@dataclass
class DataConfig:
    kind: Literal["folder", "coco", "shards"] = "folder"
    root: str = "data/demo/scenes_train/images"
    ann_file: Optional[str] = None  # COCO json (kind=coco); images under `root`
    shards: Optional[str] = None  # kind=shards: a `discorep shard` folder or its index.json (root unused)
    num_workers: int = 2
    max_bad_fraction: float = 0.01  # a run fails if more of the data set than this is unreadable ...
    max_bad_images: int = 5  # ... and more images than this (a few bad files never stop a small data set)
    prior: str = "none"  # "none" or a region prior known to `data.priors.resolve_params` (slic, ...)
    # Ints stay ints and null stays null (e.g. SLIC's `resize: null` = full resolution, as written by
    # `discorep shard --prior-resize none`); each prior checks its own parameters at config load.
    prior_params: dict[str, Optional[Union[int, float, str]]] = field(default_factory=dict)
    prior_cache: str = ".cache/priors"
    prior_size: int = 224  # label maps are resized (nearest) to prior_size² so batches stack

    def validate(self) -> None:
        self._check_source()
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ConfigError(f"data.max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if self.num_workers < 0:
            raise ConfigError("data.num_workers must be >= 0")
        if self.prior != "none":
            from discorep.data.priors import PriorError, resolve_params

            try:
                resolve_params(self.prior, self.prior_params)
            except PriorError as err:
                key = "data.prior" if "unknown prior" in str(err) else "data.prior_params"
                raise ConfigError(f"{key}: {err}") from None
        elif self.prior_params:
            raise ConfigError(f"data.prior_params {sorted(self.prior_params)} given but data.prior is 'none'")
        if self.max_bad_images < 0:
            raise ConfigError(f"data.max_bad_images must be >= 0, got {self.max_bad_images}")

    def _check_source(self) -> None:
        if self.kind == "coco" and not self.ann_file:
            raise ConfigError("data.ann_file is required when data.kind is 'coco'")
        if self.kind == "shards" and not self.shards:
            raise ConfigError("data.shards (a folder written by `discorep shard`, or its index.json) is required "
                              "when data.kind is 'shards'")
        if self.shards and self.kind != "shards":
            raise ConfigError(f"data.shards is set but data.kind is {self.kind!r}: the two sources exclude each "
                              "other; set data.kind: shards to train from the shards, or remove data.shards")
        if self.kind == "shards" and self.ann_file:
            raise ConfigError("data.ann_file belongs to data.kind 'coco'; with data.kind 'shards' the images (and "
                              "COCO ids) come from the shards: remove data.ann_file")
