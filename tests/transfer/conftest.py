from __future__ import annotations

import pytest

from discorep.apps.demodata.scenes import make_scenes


@pytest.fixture(scope="module")
def scenes_pair(tmp_path_factory):
    """(train json, val json): 8 and 4 demo scenes of 80 px, COCO instances with images/ beside them."""
    root = tmp_path_factory.mktemp("scenes")
    train = make_scenes(root / "train", 8, seed=0, image_size=(80, 80))
    val = make_scenes(root / "val", 4, seed=1, image_size=(80, 80))
    return train, val
