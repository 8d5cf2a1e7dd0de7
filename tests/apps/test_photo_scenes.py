"""Photo scenes (demo pretraining data on natural photos) and the mixed training folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from discorep.apps.demodata import photo_objects, photos
from discorep.data.datasets import ImageFolder
from discorep.apps.demodata.photo_scenes import _photo_background, make_photo_scenes, mix_folders
from discorep.data.pretrain import PretrainDataset


def test_training_photos_never_appear_in_the_held_out_photo_sets():
    # The real-photo composites are the demo's "photos it was never trained on": their coins and
    # backgrounds must stay out of every photo the pretraining scenes draw from.
    held_out = set(photo_objects._BACKGROUND_PHOTOS) | {"coins"}
    assert held_out.isdisjoint(photos.TEXTURE_PHOTOS)


def test_background_is_an_untinted_crop_of_a_training_photo(monkeypatch):
    photo = np.zeros((100, 120, 3), np.uint8)
    photo[:, :60] = (200, 10, 30)  # two flat halves: any crop holds only these colours (and blends)
    photo[:, 60:] = (5, 150, 90)
    monkeypatch.setattr(photos, "TEXTURE_PHOTOS", ("fake",))
    monkeypatch.setattr(photos, "bundled_photo", lambda name: photo if name == "fake" else None)
    for seed in range(5):
        bg = _photo_background(np.random.default_rng(seed), 48, 40).reshape(-1, 3)
        assert bg.shape == (48 * 40, 3)
        # Untinted: every pixel is on the segment between the two photo colours (bilinear blends only).
        t = (bg[:, 0] - 200) / (5 - 200)
        expected = np.array([200, 10, 30]) + t[:, None] * (np.array([5, 150, 90]) - np.array([200, 10, 30]))
        np.testing.assert_allclose(bg, expected, atol=1.0)


def test_photo_scenes_are_deterministic_with_exact_masks(tmp_path):
    a = make_photo_scenes(tmp_path / "a", 4, seed=3, image_size=(64, 64))
    b = make_photo_scenes(tmp_path / "b", 4, seed=3, image_size=(64, 64))
    for name in sorted(p.name for p in (tmp_path / "a" / "images").iterdir()):
        assert (tmp_path / "a/images" / name).read_bytes() == (tmp_path / "b/images" / name).read_bytes()
    coco = json.loads(a.read_text())
    assert json.loads(b.read_text()) == coco
    per_image = {}
    for ann in coco["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(ann)
    assert all(1 <= len(v) <= 4 for v in per_image.values()) and len(per_image) == 4
    image = np.asarray(Image.open(tmp_path / "a/images/scene_000000.png"))
    assert image.shape == (64, 64, 3)


def test_mixed_folder_keeps_same_named_images_apart(tmp_path):
    for part in ("one", "two"):
        (tmp_path / part).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / part / f"scene_{i:06d}.png")
    mix = mix_folders(tmp_path / "mix", {"a": tmp_path / "one", "b": tmp_path / "two"})
    paths = ImageFolder(mix).paths
    assert len(paths) == 6
    dataset = PretrainDataset(paths, views=None, root=mix)
    assert len({dataset.prior_key(i) for i in range(6)}) == 6  # prior-cache keys do not collide
    mix_folders(tmp_path / "mix", {"a": tmp_path / "one"})  # rebuilt, not appended to
    assert len(ImageFolder(mix).paths) == 3
    assert (tmp_path / "one" / "scene_000000.png").is_file()  # removing the mix never touches the parts
