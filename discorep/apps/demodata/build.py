"""All the demo data in one folder, built once: what `discorep make-data`, `demo` and `study` use."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from discorep.apps.demodata.photo_scenes import make_photo_scenes, mix_folders
from discorep.apps.demodata.photos import export_photos
from discorep.apps.demodata.scenes import VERSION, make_scenes, make_videos

# Sized for a 2-core CPU: building all of this takes about 5 s.
DEFAULTS: dict[str, Any] = {"n_train": 256, "n_val": 64, "n_videos": 4, "image_size": (192, 192)}
_MARKER = "demo_data.json"


def _params(n_train: int, n_val: int, n_videos: int, image_size: tuple[int, int]) -> dict[str, Any]:
    return {"version": VERSION, "n_train": n_train, "n_val": n_val, "n_videos": n_videos,
            "image_size": list(image_size), "seeds": {"train": 0, "val": 1, "videos": 2}}


def build_demo_data(
    root: str | os.PathLike, *, n_train: int = DEFAULTS["n_train"], n_val: int = DEFAULTS["n_val"],
    n_videos: int = DEFAULTS["n_videos"], image_size: tuple[int, int] = DEFAULTS["image_size"],
    force: bool = False,
) -> dict[str, Path]:
    """Build (or reuse) all demo data under ``root``.

    Returns folders ``scenes_train`` (seed 0), ``scenes_val`` (seed 1, held out), ``videos``
    (DAVIS layout), ``photos``, ``scenes_photo_train`` (seed 3: the shapes on natural photos,
    `discorep.apps.demodata.photo_scenes`) and ``pretrain_mix`` (both training sets in one folder: what
    `make demo` pretrains on); each scenes folder holds ``annotations.json`` + ``images/``.
    ``root/demo_data.json`` records the parameters: a call with the same parameters returns
    at once, different parameters (or ``force``) rebuild. The marker is written last, so an
    interrupted build is redone. Defaults (256 train, 64 val, 4 videos of 12 frames, 192x192 scenes)
    take about 5 s and 20 MB (most of it photos) on 2 CPU cores.
    """
    root = Path(root)
    out = {k: root / k for k in ("scenes_train", "scenes_val", "videos", "photos", "scenes_photo_train",
                                 "pretrain_mix")}
    params, marker = _params(n_train, n_val, n_videos, image_size), root / _MARKER
    if not force and _marker_matches(marker, params) and all(p.is_dir() for p in out.values()):
        return out
    if marker.exists() or force:  # only wipe folders we made before
        marker.unlink(missing_ok=True)
        for p in out.values():
            shutil.rmtree(p, ignore_errors=True)
    make_scenes(out["scenes_train"], n_train, seed=0, image_size=image_size)
    make_scenes(out["scenes_val"], n_val, seed=1, image_size=image_size)
    make_videos(out["videos"], n_videos, seed=2)
    export_photos(out["photos"])
    make_photo_scenes(out["scenes_photo_train"], n_train, seed=3, image_size=image_size)
    mix_folders(out["pretrain_mix"], {"scenes": out["scenes_train"] / "images",
                                      "photo_scenes": out["scenes_photo_train"] / "images"})
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(params, sort_keys=True, indent=1), encoding="utf-8")
    os.replace(tmp, marker)
    return out


def _marker_matches(marker: Path, params: dict[str, Any]) -> bool:
    try:
        return json.loads(marker.read_text(encoding="utf-8")) == params
    except (OSError, ValueError):
        return False
