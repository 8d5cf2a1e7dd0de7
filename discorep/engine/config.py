"""The pretraining configuration schema, composed of each layer's own section.

Configs are plain YAML validated against these dataclasses (`engine.configio`): an unknown key or a
wrong type is an error naming the dotted key. Defaults are the papers' values at ImageNet scale;
`configs/*_cpu_demo.yaml` shrink them for a laptop. The sections live with what they configure:
`data.config.DataConfig`, `data.views.ViewConfig`, `models.config.ModelConfig`, and the `method:`
section is the chosen method's own `Options` dataclass (`methods.registry`), picked by `method.name`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from discorep.data.config import DataConfig
from discorep.data.views import ViewConfig
from discorep.errors import ConfigError
from discorep.methods.options import MethodOptions
from discorep.models.config import ModelConfig

__all__ = ["Config", "ConfigError", "DataConfig", "EvalConfig", "MethodOptions", "ModelConfig", "OptimConfig",
           "TrainConfig"]


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
    epochs: float = 300.0  # the schedules' length in epochs, and the unit of every *_epochs setting
    # A short whole run: every schedule (warm-up, cosine lr, τ, R2O's K(t), Odin's copies) is fitted into
    # `steps` steps, its epoch settings read as fractions of `epochs` (docs/training.md). None: epochs.
    steps: Optional[int] = None
    max_steps: Optional[int] = None  # a hard stop: the schedules keep their length (the start line says what it cuts)
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
        if self.steps is not None and self.steps < 1:
            raise ConfigError("train.steps must be >= 1 or null (null: train.epochs sets the length)")
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
    method: MethodOptions = field(default_factory=MethodOptions)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @classmethod
    def section_types(cls, data: dict) -> dict[str, type]:
        """The `method:` section's dataclass is the options of the method `data` names (default BYOL)."""
        from discorep.methods.registry import options_class

        method = data.get("method") if isinstance(data, dict) else None
        method = method if isinstance(method, dict) else {}
        return {"method": options_class(method.get("name", "byol"), method.get("module"))}

    @staticmethod
    def misplaced_key(section: str, key: str, data: dict) -> Optional[str]:
        """Why `section.key` is unknown when it is another method's option (None otherwise)."""
        if section != "method":
            return None
        from discorep.methods.registry import owner_of

        owners = owner_of(key)
        if not owners:
            return None
        name = data.get("method", {}).get("name", "byol")
        return (f"'method.{key}' is an option of method {' / '.join(repr(o) for o in owners)}, not of {name!r} "
                "(method.name): remove it (config.yaml files saved before per-method options list every method's keys)")

    def validate(self) -> None:
        multiple = self.model.size_multiple()
        for key, size in (("views.size", self.views.size), ("views.spanning_size", self.views.spanning_size),
                          ("views.raw_size", self.views.raw_size)):
            if size % multiple != 0:
                raise ConfigError(f"{key}={size} must be divisible by {multiple} (the C5 stride of "
                                  f"{self.model.arch}) so feature grids align")
        self.method.validate_config(self)


