"""The annotated real-photo set: coin masks from the coins photo, composites with exact pasted masks."""

from __future__ import annotations

import numpy as np

from discorep.data.datasets import CocoDataset
from discorep.apps.demodata.photo_objects import coin_instances, make_photo_objects


def test_coins_photo_gives_its_24_coins():
    image, labels = coin_instances()
    sizes = np.bincount(labels.ravel())[1:]
    assert labels.max() == 24 and sizes.min() > 900 and sizes.max() < 4000  # one blob per coin, no specks
    assert image[labels > 0].mean() > image[labels == 0].mean() + 40  # coins are brighter than the table


def test_composites_are_deterministic_and_masks_are_the_pasted_pixels(tmp_path):
    a = make_photo_objects(tmp_path / "a", n_composites=6, seed=5)
    b = make_photo_objects(tmp_path / "b", n_composites=6, seed=5)
    assert (a / "annotations.json").read_text() == (b / "annotations.json").read_text()
    data = CocoDataset(a / "annotations.json", a / "images")
    for i in range(len(data)):
        item = data[i]
        masks = item["masks"].astype(bool)
        assert 1 <= len(masks) <= 4 and not (masks.sum(0) > 1).any()  # visible parts never overlap
        pixels = np.asarray(item["image"])
        inside = pixels[masks.any(0)]
        assert (inside[:, 0] == inside[:, 1]).all() and (inside[:, 1] == inside[:, 2]).all()  # coin pixels are grey; retina is not
    again = make_photo_objects(tmp_path / "a", n_composites=6, seed=5)  # reused, not rebuilt
    assert again == a
