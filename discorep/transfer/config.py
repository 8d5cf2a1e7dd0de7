"""`discorep transfer` settings: one dataclass tree, filled from a protocol preset and KEY=VALUE overrides.

Presets are bundled YAML files (`configs/transfer/<name>.yaml`, each value commented with its source;
docs/evaluation.md, "Transfer", lists them). Loading goes through the engine's config loader, so an
unknown key, a wrong type or a bad value is one `ConfigError` line naming the key, as for `pretrain`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from discorep.configfiles import BUNDLED
from discorep.errors import ConfigError, UsageError

PRESET_DIR = BUNDLED / "transfer"
TASKS = ("detect", "segment")


@dataclass
class ModelSettings:
    norm: str = "frozen"          # frozen | bn | syncbn (the backbone; bn/syncbn also normalise FPN and heads)
    trainable_layers: int = 3     # torchvision's meaning: 0 (none) .. 5 (all, conv1 included); detection only
    masks: bool = True            # Mask R-CNN; false: Faster R-CNN
    heads: str = "auto"           # detection heads: norm (BN in FPN and heads) | classic (none) | auto (norm unless frozen)
    rois_per_image: int = 512     # RoIs sampled per image for the box/mask losses (detectron2 ROI_HEADS.BATCH_SIZE_PER_IMAGE)
    mask_head_convs: int = 4      # 3x3 convs in the mask head (detectron2 ROI_MASK_HEAD.NUM_CONV)
    head: str = "fcn"             # segmentation: fcn (MoCo's, as R2O uses it) | deeplabv3
    weights: str = "online"       # online | target (the EMA teacher, as SlotCon transfers)

    def validate(self) -> None:
        if self.norm not in ("frozen", "bn", "syncbn"):
            raise ConfigError(f"model.norm must be frozen, bn or syncbn, got {self.norm!r}")
        if not 0 <= self.trainable_layers <= 5:
            raise ConfigError(f"model.trainable_layers must be 0..5 (torchvision's count), got {self.trainable_layers}")
        if self.head not in ("fcn", "deeplabv3"):
            raise ConfigError(f"model.head must be fcn or deeplabv3, got {self.head!r}")
        if self.heads not in ("auto", "norm", "classic"):
            raise ConfigError(f"model.heads must be auto, norm or classic, got {self.heads!r}")
        if not 1 <= self.mask_head_convs <= 8:
            raise ConfigError(f"model.mask_head_convs must be 1..8, got {self.mask_head_convs}")
        if self.rois_per_image < 1:
            raise ConfigError(f"model.rois_per_image must be >= 1, got {self.rois_per_image}")
        if self.weights not in ("online", "target"):
            raise ConfigError(f"model.weights must be online or target, got {self.weights!r}")


@dataclass
class InputSettings:
    train_sizes: list[int] = field(default_factory=lambda: [640, 672, 704, 736, 768, 800])  # shorter side, drawn per batch
    test_size: int = 800          # shorter side at evaluation (detection)
    max_size: int = 1333          # longer-side cap (detection)
    crop_size: int = 512          # segmentation training crop
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])  # segmentation random rescale

    def validate(self) -> None:
        if not self.train_sizes or min(self.train_sizes) < 32:
            raise ConfigError(f"input.train_sizes must be sizes >= 32 px, got {self.train_sizes}")
        if self.test_size < 32 or self.max_size < self.test_size or self.crop_size < 32:
            raise ConfigError("input.test_size and input.crop_size must be >= 32 and input.max_size >= test_size")
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ConfigError(f"input.scale_range must be [low, high] with 0 < low <= high, got {self.scale_range}")


@dataclass
class SolverSettings:
    batch_size: int = 16          # images per iteration, all processes together
    base_lr: float = 0.02         # at lr_reference_batch images; the lr used is base_lr * batch_size / lr_reference_batch
    lr_reference_batch: int = 16  # the protocols state lr per 16 images (detectron2, MoCo)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    iters: int = 90000
    warmup_iters: int = 1000      # linear warm-up from warmup_factor * lr (detectron2's WarmupMultiStepLR)
    warmup_factor: float = 0.001
    steps: list[float] = field(default_factory=lambda: [2 / 3, 8 / 9])  # lr x gamma at these fractions of iters
    gamma: float = 0.1
    poly_power: float = 0.0       # > 0: poly decay (1 - t/T)^power instead of steps (mmseg's FCN schedule)
    clip_grad: float = 0.0        # max gradient norm; 0: no clipping
    checkpoint_every: int = 1000
    workers: int = 2              # data-loader processes per rank

    def validate(self) -> None:
        if self.batch_size < 1 or self.iters < 1:
            raise ConfigError(f"solver.batch_size and solver.iters must be >= 1 (got {self.batch_size}, {self.iters}); "
                              "--iters 0 trains nothing: score the backbone with `discorep eval` instead")
        if self.base_lr <= 0 or self.lr_reference_batch < 1:
            raise ConfigError("solver.base_lr must be > 0 and solver.lr_reference_batch >= 1")
        if any(not 0 < s < 1 for s in self.steps):
            raise ConfigError(f"solver.steps are fractions of solver.iters in (0, 1), got {self.steps}")
        if self.checkpoint_every < 1 or self.warmup_iters < 0 or self.workers < 0:
            raise ConfigError("solver.checkpoint_every must be >= 1, solver.warmup_iters and solver.workers >= 0")

    def lr(self) -> float:
        """Linear scaling with the global batch (Goyal et al. 2017), as the protocols state their lr."""
        return self.base_lr * self.batch_size / self.lr_reference_batch


@dataclass
class TransferConfig:
    task: str = "detect"
    preset: str = ""              # the preset's name, recorded
    source: str = ""              # where the preset's values come from, recorded
    model: ModelSettings = field(default_factory=ModelSettings)
    input: InputSettings = field(default_factory=InputSettings)
    solver: SolverSettings = field(default_factory=SolverSettings)
    eval_batch_size: int = 2
    device: str = "auto"

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task must be detect or segment, got {self.task!r}")


def preset_names(task: str | None = None) -> list[str]:
    """Bundled presets (for `task` only, when given)."""
    import yaml

    names = []
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        if task is None or data.get("task") == task:
            names.append(path.stem)
    return names


def preset_path(name: str, task: str) -> Path:
    """A YAML file path (a user's own protocol), or a bundled preset by name: `<name>.yaml`, else
    `<name>_<task>.yaml` (so `cpu` is `cpu_detect` or `cpu_segment`)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    if len(path.parts) == 1:
        for candidate in (f"{path.stem}.yaml", f"{path.stem}_{task}.yaml"):
            if (PRESET_DIR / candidate).is_file():
                return PRESET_DIR / candidate
    raise UsageError(f"--preset {name}: no such preset; for {task}: {', '.join(preset_names(task))} (or a YAML file)")


def load_transfer_config(task: str, preset: str, overrides: list[str]) -> TransferConfig:
    """The preset file, then the overrides; the preset must be one for `task`."""
    from discorep.engine.configio import load_config

    path = preset_path(preset, task)
    cfg = load_config(TransferConfig, path, overrides)
    if cfg.task != task:
        raise UsageError(f"--preset {preset} is a {cfg.task} protocol; for {task}: {', '.join(preset_names(task))}")
    if not cfg.preset:
        cfg.preset = path.stem
    return cfg
