"""R2O (Gokul et al. 2023): region-to-object representation learning.

Mask prediction (§3.1): SLIC regions (100 per image) are embedded by mask-pooling the target
network's C4 on the raw view, k-means with K(t) clusters runs over all region embeddings of the
device's batch, and every pixel takes its region's cluster (hard labels). The label map is aligned
to each view's C5 grid by RoIAlign; mask-pooled C5 → projector → predictor → BYOL loss per mask,
weighted by "present in both views". K(t) follows the region-to-object curriculum (R2O A.1, see
`methods.schedules.k_at`), and the learning rate is scaled by K(t)/16 when `lr_scale_by_k`.

`method.region_network: discovery` is the Odin+R2O hybrid: the region embeddings come from an Odin
discovery network (EMA of the online one, eq. 7) instead of the target network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.profiler import record_function

from discorep.discovery.align import AlignedMasks, align_masks_views
from discorep.discovery.sources import cluster_masks, region_clusters, region_kmeans_labels
from discorep.errors import ConfigError
from discorep.methods.base import PretrainMethod, RunConfig, StepInfo
from discorep.methods.discovery_net import DiscoveryNet, DiscoveryNetOptions
from discorep.methods.options import MethodOptions, at_least_one
from discorep.methods.registry import register_method
from discorep.methods.schedules import k_at, k_lr_scale
from discorep.models.dense import dense_features


@dataclass
class R2OOptions(DiscoveryNetOptions, MethodOptions):
    kmeans_iters: int = 30
    region_features: Literal["c4", "c5"] = "c4"
    region_network: Literal["target", "discovery"] = "target"  # "discovery" = Odin+R2O hybrid
    k_schedule: Literal["fixed", "cosine", "linear"] = "cosine"
    K0: int = 128
    K_f: int = 4
    t_alpha: float = 40.0  # epochs at K0 before the curriculum starts (R2O A.1)
    lr_scale_by_k: bool = True  # lr × K(t)/k_lr_reference (public code)
    k_lr_reference: int = 16

    def validate(self) -> None:
        MethodOptions.validate(self)
        DiscoveryNetOptions.validate(self)
        at_least_one(self, "K0", "K_f", "kmeans_iters", "k_lr_reference")

    def validate_config(self, cfg: Any) -> None:
        self.needs_prior(cfg)
        super().validate_config(cfg)
        self._check_regions(cfg)

    def _check_regions(self, cfg: Any) -> None:
        """R2O clusters the regions of one device batch: more clusters than regions is degenerate."""
        prior, params = cfg.data.prior, cfg.data.prior_params
        per_image = {"slic": params.get("n_segments", 100), "grid": params.get("n", 14) ** 2}.get(prior)
        if per_image is None:  # Felzenszwalb: the region count depends on the image
            return
        batch = cfg.train.batch_size
        regions = int(per_image) * batch
        if max(self.K0, self.K_f) > regions:
            raise ConfigError(
                f"method.K0={self.K0} (K_f={self.K_f}) exceeds the at most {regions} regions of one device batch "
                f"(train.batch_size={batch} x {int(per_image)} {prior} regions): "
                "lower the K values or raise the batch size or the prior's region count")


@register_method("r2o")
class R2O(PretrainMethod):
    Options = R2OOptions

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg)
        hybrid = cfg.method.region_network == "discovery"
        self.discovery = DiscoveryNet(self.online, cfg.method) if hybrid else None

    @classmethod
    def needs_views(cls, cfg: RunConfig) -> frozenset[str]:
        return frozenset({"raw"})  # region embeddings from the raw view; no spanning view

    def current_K(self, info: StepInfo) -> int:
        m = self.cfg.method
        return k_at(info.epoch, schedule=m.k_schedule, K0=m.K0, K_f=m.K_f, t_alpha=m.t_alpha, T=info.total_epochs)

    def region_network(self):
        return self.discovery.net if self.discovery is not None else self.target

    def mask_labels(self, batch: dict[str, Tensor], info: StepInfo, K: int) -> Tensor:
        """The painted label map (B, P, P) on the raw frame (used for pictures)."""
        m = self.cfg.method
        feats = dense_features(self.region_network(), batch["raw"], m.region_features)
        return region_kmeans_labels(feats, batch["prior"], batch["prior_num"], K,
                                    seed=info.kmeans_seed(), iters=m.kmeans_iters)

    def view_masks(self, batch: dict[str, Tensor], info: StepInfo, K: int) -> tuple[AlignedMasks, AlignedMasks]:
        """Cluster masks in both views: the prior is aligned to the raw grid (for
        the region embeddings) and to both views (cluster masks = sums of their regions' masks)."""
        m = self.cfg.method
        feats = dense_features(self.region_network(), batch["raw"], m.region_features)
        with record_function("discorep/align"):
            prior, num = batch["prior"], batch["prior_num"]
            raw_box, no_flip = batch["raw_box"], torch.zeros_like(batch["flip1"])
            (raw,) = align_masks_views(prior, raw_box, [raw_box], [no_flip], tuple(feats.shape[-2:]), num,
                                       min_cells=1e-6)
            v1, v2 = align_masks_views(prior, raw_box, [batch["box1"], batch["box2"]],
                                       [batch["flip1"], batch["flip2"]], self.grid(), num)
        clusters = region_clusters(feats, raw.soft, raw.present, K, seed=info.kmeans_seed(), iters=m.kmeans_iters)
        with record_function("discorep/align"):
            return cluster_masks(v1, clusters, K), cluster_masks(v2, clusters, K)

    def forward(self, batch: dict[str, Tensor], info: StepInfo) -> tuple[Tensor, dict[str, Tensor]]:
        K = self.current_K(info)
        masks = self.view_masks(batch, info, K)
        online, target = self.encode_views(batch)
        loss, logs = self.object_loss(online, target, masks, batch["index"], info)
        logs["K"] = torch.tensor(float(K))
        return loss, logs

    def lr_scale(self, info: StepInfo) -> float:
        m = self.cfg.method
        return k_lr_scale(self.current_K(info), m.k_lr_reference) if m.lr_scale_by_k else 1.0

    def picture_k(self, info: StepInfo) -> int | None:
        return self.current_K(info)

    def schedule_note(self, info: StepInfo) -> str | None:
        K, end = self.current_K(info), self.current_K(StepInfo(0, info.total_epochs, info.total_epochs, info.seed))
        if K == end:
            return None
        bound = "≥" if K > end else "≤"
        return f"K will stay {bound} {K} (its schedule ends at {end})"

    def after_step(self, info: StepInfo, tau: float, steps_per_epoch: float) -> None:
        super().after_step(info, tau, steps_per_epoch)
        if self.discovery is not None:
            self.discovery.update(self.online, info.step + 1, steps_per_epoch)

    def discover(self, batch: dict[str, Tensor], info: StepInfo) -> tuple[Tensor, Tensor]:
        return self.mask_labels(batch, info, self.current_K(info)), batch["raw_box"]
