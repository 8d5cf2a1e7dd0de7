"""Data a study evaluates on, all generated offline: the demo scenes/videos/photos and a labelled set."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from discorep.apps.demodata.build import build_demo_data
from discorep.apps.demodata.photo_objects import make_photo_objects
from discorep.apps.study.spec import StudySpec


def dominant_category_folders(ann_file: Path, images: Path, out: Path) -> Path:
    """An ImageFolder (class sub-folders) of the scenes, each labelled by its largest object's category.

    The generator records that category as ``dominant_category`` in the COCO image entries; images are
    hard-linked (copied where links are not possible). Rebuilt only when missing.
    """
    marker = out / ".complete"
    if marker.exists():
        return out
    data = json.loads(Path(ann_file).read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    if out.exists():
        shutil.rmtree(out)
    for entry in data["images"]:
        label = names[entry["dominant_category"]]
        target = out / label / entry["file_name"]
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(images / entry["file_name"], target)
        except OSError:
            shutil.copy2(images / entry["file_name"], target)
    marker.touch()
    return out


def study_data(spec: StudySpec) -> dict[str, Path]:
    """Paths of everything a study uses: the spec's `data` entries, the rest from the demo data (built
    when missing, with the k-NN folders and the photo set)."""
    given = {k: Path(v) for k, v in vars(spec.data).items() if v is not None}
    if len(given) == len(vars(spec.data)):
        return given
    demo = build_demo_data(Path(spec.demo_data))
    train, val = demo["scenes_train"], demo["scenes_val"]
    out = Path(spec.out_dir)
    defaults = {"train_images": lambda: train / "images",
                "val_coco": lambda: val / "annotations.json", "val_images": lambda: val / "images",
                "photo_coco": lambda: make_photo_objects(Path(spec.demo_data) / "photo_objects") / "annotations.json",
                "photo_images": lambda: make_photo_objects(Path(spec.demo_data) / "photo_objects") / "images",
                "videos": lambda: demo["videos"],
                "knn_train": lambda: dominant_category_folders(train / "annotations.json", train / "images",
                                                               out / "knn" / "train"),
                "knn_val": lambda: dominant_category_folders(val / "annotations.json", val / "images",
                                                             out / "knn" / "val"),
                "seg_train": lambda: train / "annotations.json", "seg_val": lambda: val / "annotations.json"}
    return {key: given[key] if key in given else make() for key, make in defaults.items()}


def study_data_paths(spec: StudySpec) -> dict[str, Path]:
    """The paths `study_data` returns, computed without building or checking anything (for --report-only)."""
    given = {k: Path(v) for k, v in vars(spec.data).items() if v is not None}
    demo, out = Path(spec.demo_data), Path(spec.out_dir)
    defaults = {"train_images": demo / "scenes_train" / "images",
                "val_coco": demo / "scenes_val" / "annotations.json", "val_images": demo / "scenes_val" / "images",
                "photo_coco": demo / "photo_objects" / "annotations.json",
                "photo_images": demo / "photo_objects" / "images", "videos": demo / "videos",
                "knn_train": out / "knn" / "train", "knn_val": out / "knn" / "val"}
    return {key: given.get(key, path) for key, path in defaults.items()}
