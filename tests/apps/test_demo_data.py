"""Demo generators: determinism, exact disjoint masks, COCO/DAVIS formats, idempotent build."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from discorep.apps.demodata import build, photos
from discorep.apps.demodata import scenes as demo
from discorep.data.datasets import CocoDataset
from discorep.data.images import load_rgb

SIZE = (80, 96)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return demo.make_scenes(tmp_path_factory.mktemp("s") / "a", 8, seed=3, image_size=SIZE)


def test_scenes_deterministic(scenes, tmp_path):
    same = demo.make_scenes(tmp_path / "same", 8, seed=3, image_size=SIZE)
    other = demo.make_scenes(tmp_path / "other", 8, seed=4, image_size=SIZE)
    assert _files(same.parent) == _files(scenes.parent)
    a, b = _files(scenes.parent / "images"), _files(other.parent / "images")
    assert a.keys() == b.keys() and all(a[k] != b[k] for k in a)


def test_scene_masks_exact_disjoint_and_consistent(scenes):
    coco = COCO(str(scenes))  # the json loads in the reference tool
    assert sorted(coco.getCatIds()) == list(range(1, len(demo.CATEGORIES) + 1))
    ds = CocoDataset(scenes, scenes.parent / "images")
    assert len(ds) == 8
    for i in range(len(ds)):
        item, info = ds[i], ds.images[i]
        masks = item["masks"]
        assert item["image"].size == (SIZE[1], SIZE[0]) and masks.shape[1:] == SIZE
        assert 2 <= len(masks) <= 5
        assert masks.sum(axis=0).max() <= 1  # disjoint: each pixel has one owner
        areas = masks.reshape(len(masks), -1).sum(1)
        assert (areas >= 16).all()
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[item["image_id"]]))
        assert [a["area"] for a in anns] == areas.tolist()
        assert set(item["category_ids"].tolist()) <= set(range(1, 7))
        assert info["dominant_category"] == item["category_ids"][int(np.argmax(areas))]


def test_scene_pixels_match_masks(scenes):
    """Re-rendering the same seed gives the saved PNG, and masks = pixels each object owns."""
    rng = np.random.default_rng((3, 5))
    img, objs, owner = demo._scene(rng, *SIZE, 2, 5)
    item = CocoDataset(scenes, scenes.parent / "images")[5]
    np.testing.assert_array_equal(np.asarray(item["image"]), img)
    np.testing.assert_array_equal(item["masks"], np.stack([owner == k for k in range(len(objs))]))


def test_paint_owner_map_matches_flat_colours():
    """With flat, unique colours on black, the owner of each pixel is readable from its colour."""
    h, w = 64, 64
    colours = [np.array(c, float) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    objs = [demo._Obj(c, 20 + 12 * k, 30, 18, 0.3 * k, 0.6,
                      np.broadcast_to(colours[k], (demo._TEX, demo._TEX, 3)).copy())
            for k, c in enumerate((1, 3, 6))]
    img, owner = demo._paint(np.zeros((h, w, 3)), objs)
    for k, c in enumerate(colours):
        np.testing.assert_array_equal((img == c).all(-1), owner == k)
        assert (owner == k).any()
    assert (img[owner == -1] == 0).all()


@pytest.mark.parametrize(("name", "expected"), [
    ("disk", np.pi), ("ellipse", np.pi * 0.6), ("rectangle", 1.4 * 2 * (0.7 * 0.6 + 0.15)),
    ("triangle", 3 * np.sqrt(3) / 4), ("ring", np.pi * (1 - 0.55**2)),
])
def test_shape_areas_match_geometry(name, expected):
    """Area in unit-radius coordinates equals the hand-computed area (to sampling error)."""
    n = 801
    v, u = np.mgrid[-1:1:n * 1j, -1:1:n * 1j]
    inside = demo._shape_mask(demo.CATEGORIES.index(name) + 1, u, v, 0.6)
    area = inside.mean() * 4.0
    assert area == pytest.approx(expected, rel=0.01)


def test_davis_palette_known_entries():
    pal = demo.davis_palette()
    assert len(pal) == 768
    expected = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128),
                (0, 128, 128), (128, 128, 128), (64, 0, 0)]
    assert [tuple(pal[3 * k:3 * k + 3]) for k in range(9)] == expected


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return demo.make_videos(tmp_path_factory.mktemp("v") / "d", 2, seed=5, n_frames=6)


def test_videos_layout_ids_and_motion(videos):
    seqs = (videos / "ImageSets/2017/val.txt").read_text().split()
    assert seqs == sorted(p.name for p in (videos / "JPEGImages/480p").iterdir()) and len(seqs) == 2
    for seq in seqs:
        jpgs = sorted((videos / "JPEGImages/480p" / seq).glob("*.jpg"))
        pngs = sorted((videos / "Annotations/480p" / seq).glob("*.png"))
        assert [p.stem for p in jpgs] == [p.stem for p in pngs] == [f"{t:05d}" for t in range(6)]
        labels = []
        for png in pngs:
            lab = Image.open(png)
            assert lab.mode == "P" and lab.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
            labels.append(np.asarray(lab))
        assert load_rgb(jpgs[0]).size == (192, 128) and labels[0].shape == (128, 192)
        ids = np.unique(labels[0])
        n = int(ids.max())
        assert 2 <= n <= 3 and ids.tolist() == list(range(n + 1))  # every object visible in frame 0
        for k in range(1, n + 1):
            ys, xs = np.nonzero(labels[0] == k)
            assert len(ys) >= 16
        changed = [(a != b).mean() for a, b in zip(labels, labels[1:])]
        assert all(0 < c < 0.25 for c in changed)  # objects move, but smoothly


def test_videos_deterministic(videos, tmp_path):
    again = demo.make_videos(tmp_path / "d", 2, seed=5, n_frames=6)
    assert _files(again) == _files(videos)
    other = demo.make_videos(tmp_path / "e", 2, seed=6, n_frames=6)
    assert _files(other).keys() == _files(videos).keys() and _files(other) != _files(videos)


def test_export_photos_roundtrip(tmp_path):
    from skimage import data

    paths = photos.export_photos(tmp_path)
    names = {p.stem for p in paths}
    assert {"astronaut", "coffee", "chelsea"} <= names
    astro = np.asarray(load_rgb(tmp_path / "astronaut.png"))
    np.testing.assert_array_equal(astro, data.astronaut())


def test_build_demo_data_idempotent(tmp_path, monkeypatch):
    monkeypatch.setattr(photos, "PHOTOS", ("astronaut",))  # keep the test fast
    kw = dict(n_train=3, n_val=2, n_videos=1, image_size=(64, 64))
    out = build.build_demo_data(tmp_path, **kw)
    assert set(out) == {"scenes_train", "scenes_val", "videos", "photos", "scenes_photo_train", "pretrain_mix"}
    train = json.loads((out["scenes_train"] / "annotations.json").read_text())
    val = json.loads((out["scenes_val"] / "annotations.json").read_text())
    assert len(train["images"]) == 3 and len(val["images"]) == 2
    assert _files(out["scenes_train"] / "images")["scene_000000.png"] != _files(out["scenes_val"] / "images")[
        "scene_000000.png"]  # different seeds: held-out val is not a copy of train
    stamp = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert build.build_demo_data(tmp_path, **kw) == out
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamp  # nothing redone
    build.build_demo_data(tmp_path, **{**kw, "n_train": 4})
    assert len(list((out["scenes_train"] / "images").glob("*.png"))) == 4
    assert json.loads((tmp_path / "demo_data.json").read_text())["n_train"] == 4
    (out["photos"] / "astronaut.png").unlink()
    build.build_demo_data(tmp_path, **{**kw, "n_train": 4}, force=True)
    assert (out["photos"] / "astronaut.png").is_file()
