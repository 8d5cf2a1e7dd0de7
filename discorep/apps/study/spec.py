"""What a study is: runs (a pretraining config + overrides), seeds, one shared budget, evaluations.

A study file is YAML read with the same strict loader as training configs (unknown keys are errors).
`quick:` holds a smaller variant merged over the file by `--quick` (its `runs:` there is a list of names
to keep), so CI can run the same code path end to end in minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from discorep.engine.configio import ConfigError, deep_merge, from_dict, load_yaml

DEFAULT_TASKS = ("objects", "photos", "foreground", "video", "knn")  # photos: objects on real-photo composites
DENSE_TASKS = ("linear_seg", "overcluster", "retrieval", "corloc")  # eval/dense.py's protocols, opt-in
EVAL_TASKS = DEFAULT_TASKS + DENSE_TASKS


@dataclass
class RunSpec:
    name: str  # row id, also the run folder name
    config: str  # pretraining YAML, relative to the study file's folder
    label: str = ""  # row name in the tables (defaults to name)
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted keys, e.g. method.K0: 16
    tables: list[str] = field(default_factory=lambda: ["main"])


@dataclass
class EvalSpec:
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    size: int = 192  # objects / foreground: whole image resized to size x size
    features: Literal["c4", "c5", "fpn"] = "c4"  # one level every backbone has, for every method alike
    objects_ks: list[int] = field(default_factory=lambda: [2, 4, 8, 16])
    slic_segments: list[int] = field(default_factory=lambda: [2, 4, 8, 16])  # SLIC baseline's proposals
    foreground_k: int = 5
    video_size: int = 128
    video_features: Literal["c4", "c5", "fpn"] = "c4"
    knn_size: int = 96
    knn_features: Literal["c4", "c5", "fpn"] = "c5"
    knn_k: int = 20
    # dense evaluations (DENSE_TASKS; data.seg_train / data.seg_val): docs/evaluation.md has the protocols
    dense_size: int = 96
    dense_features: Literal["c4", "c5", "fpn"] = "c4"
    linear_seg_epochs: int = 25
    overcluster_k: str = "classes,100"
    retrieval_k: int = 30
    probe_every_epochs: int = 1  # ABO on the held-out scenes during training (0 = off); main table only
    probe_images: int = 16

    def validate(self) -> None:
        unknown = sorted(set(self.tasks) - set(EVAL_TASKS))
        if unknown:
            raise ConfigError(f"eval.tasks: unknown {unknown}; choose from {list(EVAL_TASKS)}")


@dataclass
class DataSpec:
    """Where a study trains and evaluates; anything left empty comes from the generated demo data."""

    train_images: str | None = None  # pretraining images (folder, searched recursively)
    val_coco: str | None = None  # objects + foreground: a COCO-format set with instance masks
    val_images: str | None = None
    photo_coco: str | None = None  # the "photos" column: a second COCO-format set
    photo_images: str | None = None
    videos: str | None = None  # DAVIS layout
    knn_train: str | None = None  # labelled folders (class sub-folders)
    knn_val: str | None = None
    seg_train: str | None = None  # dense evaluations: COCO instances json or VOC-layout folder
    seg_val: str | None = None

    def validate(self) -> None:
        for a, b in (("val_coco", "val_images"), ("photo_coco", "photo_images"), ("knn_train", "knn_val"),
                     ("seg_train", "seg_val")):
            if (getattr(self, a) is None) != (getattr(self, b) is None):
                raise ConfigError(f"data.{a} and data.{b} go together")


@dataclass
class StudySpec:
    name: str
    out_dir: str  # runs, checkpoints, per-run JSON
    report: str  # the markdown report (docs/results.md for the CPU study)
    assets: str  # plots and pictures the report shows
    runs: list[RunSpec]
    tables: dict[str, str] = field(default_factory=lambda: {"main": "Methods"})  # id -> title
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    budget: dict[str, Any] = field(default_factory=dict)  # dotted overrides every run shares
    baselines: list[str] = field(default_factory=lambda: ["random", "slic"])
    arch: str = "resnet18"  # for the random:<arch> baseline; must match the runs' model.arch
    demo_data: str = "data/demo"  # generated (offline) for whatever `data` leaves empty
    data: DataSpec = field(default_factory=DataSpec)
    discussion: str = ""  # hand-written markdown appended to the report, if the file exists
    eval: EvalSpec = field(default_factory=EvalSpec)
    quick: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        names = [r.name for r in self.runs]
        if len(set(names)) != len(names):
            raise ConfigError(f"runs: duplicate names {sorted({n for n in names if names.count(n) > 1})}")
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")
        for run in self.runs:
            missing = sorted(set(run.tables) - set(self.tables))
            if missing:
                raise ConfigError(f"runs.{run.name}.tables: {missing} not declared under tables")
        bad = sorted(set(self.baselines) - {"random", "slic"})
        if bad:
            raise ConfigError(f"baselines: unknown {bad}; choose from ['random', 'slic']")


def load_study(path: str | Path, quick: bool = False) -> StudySpec:
    """Read a study file; with `quick`, merge its `quick:` section over it and keep only the runs it names."""
    data = load_yaml(path)
    if quick:
        variant = dict(data.get("quick") or {})
        if not variant:
            raise ConfigError(f"{path}: --quick needs a 'quick:' section")
        keep = variant.pop("runs", None)
        data = deep_merge(data, variant)
        if keep is not None:
            known = {r.get("name") for r in data.get("runs", [])}
            unknown = sorted(set(keep) - known)
            if unknown:
                raise ConfigError(f"{path}: quick.runs names unknown runs {unknown}")
            data["runs"] = [r for r in data["runs"] if r.get("name") in keep]
            data["tables"] = {t: title for t, title in data.get("tables", {}).items()
                              if any(t in r.get("tables", ["main"]) for r in data["runs"])}
    spec = from_dict(StudySpec, data)
    for run in spec.runs:  # run configs sit beside the study file; everything else is relative to the cwd
        run.config = str(Path(path).parent / run.config)
    return spec


def dotted(overrides: dict[str, Any]) -> list[str]:
    """{'method.K0': 16} -> ['method.K0=16'] in the form `load_config` takes (YAML-typed values)."""
    import yaml

    out = []
    for key, value in overrides.items():
        text = yaml.safe_dump(value, default_flow_style=True).strip()
        out.append(f"{key}={text.removesuffix('...').strip()}")
    return out
