"""The pretraining configuration schema.

Configs are plain YAML validated against these dataclasses (`engine.configio`): an unknown key or a
wrong type is an error naming the dotted key. Defaults are the papers' values at ImageNet scale;
`configs/*_cpu_demo.yaml` shrink them for a laptop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from discorep.data.views import ViewConfig
from discorep.engine.configio import ConfigError
from discorep.models.backbones import feature_strides


@dataclass
class DataConfig:
    kind: Literal["folder", "coco", "shards"] = "folder"
    root: str = "data/demo/scenes_train/images"
    ann_file: Optional[str] = None  # COCO json (kind=coco); images under `root`
    shards: Optional[str] = None  # kind=shards: a `discorep shard` folder or its index.json (root unused)
    num_workers: int = 2
    max_bad_fraction: float = 0.01  # a run fails if more of the data set than this is unreadable ...
    max_bad_images: int = 5  # ... and more images than this (a few bad files never stop a small data set)
    prior: Literal["none", "slic", "felzenszwalb", "grid"] = "none"
    # Ints stay ints and null stays null (e.g. SLIC's `resize: null` = full resolution, as written by
    # `discorep shard --prior-resize none`); each prior checks its own parameters at config load.
    prior_params: dict[str, Optional[Union[int, float]]] = field(default_factory=dict)
    prior_cache: str = ".cache/priors"
    prior_size: int = 224  # label maps are resized (nearest) to prior_size² so batches stack

    def validate(self) -> None:
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
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ConfigError(f"data.max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if self.num_workers < 0:
            raise ConfigError("data.num_workers must be >= 0")
        if self.prior != "none":
            from discorep.data.priors import PriorError, resolve_params

            try:
                resolve_params(self.prior, self.prior_params)
            except PriorError as err:
                raise ConfigError(f"data.prior_params: {err}") from None
        elif self.prior_params:
            raise ConfigError(f"data.prior_params {sorted(self.prior_params)} given but data.prior is 'none'")
        if self.max_bad_images < 0:
            raise ConfigError(f"data.max_bad_images must be >= 0, got {self.max_bad_images}")


@dataclass
class ModelConfig:
    arch: Literal["resnet18", "resnet50", "swin_t", "vit_s"] = "resnet50"
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


@dataclass
class MethodConfig:
    name: Literal["byol", "detcon", "odin", "r2o"] = "byol"
    loss: Literal["byol", "contrastive"] = "byol"
    temperature: float = 0.1  # contrastive α (Odin A.3, DetCon)
    features: Literal["c4", "c5", "fpn"] = "c5"  # map pooled for the loss
    # Contrastive negatives: DetCon's reference loss takes them from both views' targets (logits
    # [ab, aa]); "cross_view" only from the other view's (Odin eq. 3 as printed). docs/methods.md.
    negatives: Literal["cross_and_same_view", "cross_view"] = "cross_and_same_view"
    num_masks: int = 16  # masks sampled per image (DetCon)
    hard_masks: bool = False  # pool with argmax masks instead of area-weighted ones
    # -- k-means mask sources (Odin, R2O) --
    K: int = 16  # Odin: clusters per image
    kmeans_iters: int = 30
    # -- Odin discovery network f_τ --
    discovery_features: Literal["c4", "c5", "fpn"] = "fpn"
    discovery_use_projection: bool = True  # cluster z = g_τ(h) (Odin A.3) instead of h
    discovery_update: Literal["continuous", "discrete"] = "continuous"
    lambda_tau: float = 1e-3  # continuous: τ ← (1−λτ)τ + λτ θ (Odin eq. 7)
    discrete_every_epochs: int = 100  # discrete: copy θ → τ every N epochs, segments cached between
    # -- R2O mask prediction --
    region_features: Literal["c4", "c5"] = "c4"
    region_network: Literal["target", "discovery"] = "target"  # "discovery" = Odin+R2O hybrid
    k_schedule: Literal["fixed", "cosine", "linear"] = "cosine"
    K0: int = 128
    K_f: int = 4
    t_alpha: float = 40.0  # epochs at K0 before the curriculum starts (R2O A.1)
    lr_scale_by_k: bool = True  # R2O: lr × K(t)/k_lr_reference (public code)
    k_lr_reference: int = 16

    def validate(self) -> None:
        if self.name == "byol" and self.loss != "byol":
            raise ConfigError("method.loss must be 'byol' for method.name 'byol'")
        if self.temperature <= 0:
            raise ConfigError("method.temperature must be > 0")
        for key in ("num_masks", "K", "K0", "K_f", "kmeans_iters", "k_lr_reference"):
            if getattr(self, key) < 1:
                raise ConfigError(f"method.{key} must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.lambda_tau <= 1.0:
            raise ConfigError(f"method.lambda_tau must be in [0, 1], got {self.lambda_tau}")
        if self.discrete_every_epochs < 1:
            raise ConfigError("method.discrete_every_epochs must be >= 1")
        if self.K > 32767:  # Odin's segment cache stores int16 label maps
            raise ConfigError(f"method.K={self.K} exceeds 32767 (Odin's segment cache stores int16 ids)")


@dataclass
class OptimConfig:
    name: Literal["lars", "adamw", "sgd"] = "lars"
    base_lr: float = 0.2  # × global_batch / 256 (BYOL, Odin A.3)
    weight_decay: float = 1.5e-6
    momentum: float = 0.9
    eta: float = 1e-3  # LARS trust coefficient
    warmup_epochs: float = 10.0
    final_lr: float = 0.0
    clip_grad: Optional[float] = None
    tau_base: float = 0.99  # EMA τ from tau_base to 1 by cosine (BYOL option: 0.996)

    def validate(self) -> None:
        # Caught here, at config load, rather than by the optimizer's constructor after the data is built.
        # 0 is allowed: a frozen run (e.g. checking that model.init weights arrive unchanged).
        if not self.base_lr >= 0:
            raise ConfigError(f"optim.base_lr must be >= 0, got {self.base_lr}")
        for key in ("weight_decay", "final_lr", "warmup_epochs"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"optim.{key} must be >= 0, got {getattr(self, key)}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"optim.momentum must be in [0, 1), got {self.momentum}")
        if not self.eta > 0:
            raise ConfigError(f"optim.eta must be > 0, got {self.eta}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ConfigError(f"optim.clip_grad must be > 0 or null, got {self.clip_grad}")
        if not 0.0 <= self.tau_base <= 1.0:
            raise ConfigError(f"optim.tau_base must be in [0, 1], got {self.tau_base}")


@dataclass
class TrainConfig:
    name: str = "run"
    out_dir: str = "runs"
    batch_size: int = 32  # per device; global = batch_size × world size
    epochs: float = 300.0
    max_steps: Optional[int] = None  # stop early (tests, demos); schedules still use `epochs`
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    checkpoint_every: int = 1000  # steps
    keep_last: int = 3
    log_every: int = 10
    picture_every_epochs: int = 1
    picture_images: int = 8
    nonfinite: Literal["stop", "skip"] = "stop"
    progress: bool = True

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("train.batch_size must be >= 1")
        if self.epochs <= 0:
            raise ConfigError("train.epochs must be > 0")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError("train.max_steps must be >= 1 or null")
        if self.picture_images < 0:
            raise ConfigError("train.picture_images must be >= 0 (0 turns mask pictures off)")
        if self.picture_every_epochs < 1:
            raise ConfigError("train.picture_every_epochs must be >= 1 (train.picture_images=0 turns pictures off)")


@dataclass
class EvalConfig:
    """Label-using probes run during pretraining; labels never touch the training itself."""

    every_epochs: int = 0  # 0 = never; else after every N epochs and at the end
    knn_train: Optional[str] = None  # labelled image folders (class sub-folders)
    knn_val: Optional[str] = None
    knn_k: int = 20
    knn_temperature: float = 0.07
    objects_coco: Optional[str] = None  # a small COCO-format probe set
    objects_images: Optional[str] = None
    objects_ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    size: int = 224
    features: Literal["c4", "c5", "fpn"] = "c5"

    def validate(self) -> None:
        if self.every_epochs < 0:
            raise ConfigError("eval.every_epochs must be >= 0")
        if (self.knn_train is None) != (self.knn_val is None):
            raise ConfigError("eval.knn_train and eval.knn_val go together")
        if (self.objects_coco is None) != (self.objects_images is None):
            raise ConfigError("eval.objects_coco and eval.objects_images go together")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewConfig = field(default_factory=ViewConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        m = self.method
        if m.features == "fpn" or (m.name == "odin" and m.discovery_features == "fpn"):
            if not self.model.fpn:
                raise ConfigError("method.features/discovery_features 'fpn' needs model.fpn: true")
        needs_prior = m.name in ("detcon", "r2o")
        if needs_prior and self.data.prior == "none":
            raise ConfigError(f"method '{m.name}' needs a region prior: set data.prior (slic, felzenszwalb, grid)")
        for key, size in (("views.size", self.views.size), ("views.spanning_size", self.views.spanning_size),
                          ("views.raw_size", self.views.raw_size)):
            if size % 32 != 0:
                raise ConfigError(f"{key}={size} must be divisible by 32 (the C5 stride) so feature grids align")
        strides = feature_strides(self.model.arch)
        grid = self.views.size // strides[m.features]
        if m.name in ("detcon", "odin", "r2o") and grid * grid < 1:
            raise ConfigError("views.size too small for the feature grid")
        if m.name == "odin":
            n_points = (self.views.spanning_size // strides[m.discovery_features]) ** 2
            if m.K > n_points:
                raise ConfigError(f"method.K={m.K} exceeds the {n_points} feature-grid points of the spanning view")
        if m.name == "r2o":
            self._check_r2o_regions()

    def _check_r2o_regions(self) -> None:
        """R2O clusters the regions of one device batch: more clusters than regions is degenerate."""
        m, params = self.method, self.data.prior_params
        per_image = {"slic": params.get("n_segments", 100), "grid": params.get("n", 14) ** 2}.get(self.data.prior)
        if per_image is None:  # Felzenszwalb: the region count depends on the image
            return
        regions = int(per_image) * self.train.batch_size
        if max(m.K0, m.K_f) > regions:
            raise ConfigError(
                f"method.K0={m.K0} (K_f={m.K_f}) exceeds the at most {regions} regions of one device batch "
                f"(train.batch_size={self.train.batch_size} x {int(per_image)} {self.data.prior} regions): "
                "lower the K values or raise the batch size or the prior's region count")
