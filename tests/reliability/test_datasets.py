"""ImageFolder labels and CocoDataset masks against pycocotools and hand-made masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from discorep.data.datasets import BadImageError, CocoDataset, DatasetError, ImageFolder

H, W = 12, 16
# The oracle (pycocotools annToMask) emits a numpy-2 deprecation warning we cannot fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _save(path: Path, colour=(0, 0, 0), size=(W, H)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def test_image_folder_labels_from_class_folders(tmp_path):
    for name in ("dog/b.png", "dog/a/deep.png", "cat/x.jpg", "cat/y.png"):
        _save(tmp_path / name)
    ds = ImageFolder(tmp_path)
    assert ds.classes == ["cat", "dog"]
    assert [p.relative_to(tmp_path).as_posix() for p in ds.paths] == [
        "cat/x.jpg", "cat/y.png", "dog/a/deep.png", "dog/b.png"]
    assert ds.labels == [0, 0, 1, 1]
    item = ds[2]
    assert item["label"] == 1 and item["index"] == 2 and item["path"] == str(tmp_path / "dog/a/deep.png")
    assert item["image"].mode == "RGB" and item["image"].size == (W, H)
    assert ds[-1]["index"] == 3
    with pytest.raises(IndexError):
        ds[4]
    assert len(list(ds)) == len(ds) == 4  # iteration stops via IndexError


def test_image_folder_without_classes(tmp_path):
    _save(tmp_path / "loose.png", (9, 9, 9))
    _save(tmp_path / "cls/inside.png")
    ds = ImageFolder(tmp_path)
    assert ds.classes is None and ds.labels is None
    assert [ds[i]["label"] for i in range(len(ds))] == [-1, -1]
    assert np.asarray(ds[1]["image"])[0, 0].tolist() == [9, 9, 9]  # 'cls/...' sorts before 'loose.png'


def test_image_folder_bad_image_raises(outcome, tmp_path):
    _save(tmp_path / "good.png")
    (tmp_path / "zbad.png").write_bytes(b"garbage")
    ds = ImageFolder(tmp_path)
    assert ds[0]["image"].size == (W, H)
    with pytest.raises(BadImageError):
        ds[1]
    outcome("image", "bad file inside an ImageFolder", "BadImageError naming the file")


def _block_mask(y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((H, W), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """Column-major run lengths starting with a zero run, built by hand (the COCO spec)."""
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"size": [H, W], "counts": counts}


def _coco_fixture(tmp_path: Path) -> tuple[Path, dict[int, np.ndarray]]:
    """Two annotated images (polygon, multi-polygon, RLE, uncompressed RLE, crowd) + one empty."""
    for name in ("a.png", "b.png", "c.png"):
        _save(tmp_path / "imgs" / name)
    known = {3: _block_mask(1, 5, 2, 9), 4: _block_mask(6, 12, 10, 16)}
    rle3 = mask_utils.encode(np.asfortranarray(known[3]))
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
         "segmentation": [[1.0, 1.0, 8.0, 1.0, 8.0, 6.0, 1.0, 6.0]]},
        {"id": 2, "image_id": 1, "category_id": 2, "iscrowd": 0,  # two parts, one leaving the image
         "segmentation": [[9.0, 2.0, 14.0, 2.0, 11.5, 9.0], [12.0, 8.0, 30.0, 8.0, 30.0, 30.0]]},
        {"id": 3, "image_id": 2, "category_id": 2, "iscrowd": 0,
         "segmentation": {"size": [H, W], "counts": rle3["counts"].decode("ascii")}},
        {"id": 4, "image_id": 2, "category_id": 1, "iscrowd": 1, "segmentation": _uncompressed_rle(known[4])},
    ]
    data = {
        "images": [{"id": i + 1, "file_name": n, "width": W, "height": H}
                   for i, n in enumerate(("a.png", "b.png", "c.png"))],
        "annotations": anns,
        "categories": [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}],
    }
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(data))
    return ann_file, known


def test_coco_masks_match_pycocotools_and_hand_masks(outcome, tmp_path):
    ann_file, known = _coco_fixture(tmp_path)
    ds = CocoDataset(ann_file, tmp_path / "imgs")
    oracle = COCO(str(ann_file))
    assert len(ds) == 3 and ds.categories == {1: "one", 2: "two"}
    for i in range(2):
        item = ds[i]
        ann_ids = oracle.getAnnIds(imgIds=[item["image_id"]])
        assert item["masks"].dtype == np.uint8 and item["masks"].shape == (len(ann_ids), H, W)
        assert item["category_ids"].dtype == np.int64
        for t, ann in enumerate(oracle.loadAnns(ann_ids)):
            np.testing.assert_array_equal(item["masks"][t], oracle.annToMask(ann))
            assert item["category_ids"][t] == ann["category_id"] and item["ann_ids"][t] == ann["id"]
    item = ds[1]
    np.testing.assert_array_equal(item["masks"][0], known[3])
    np.testing.assert_array_equal(item["masks"][1], known[4])
    assert item["iscrowd"].tolist() == [False, True]
    assert ds[0]["masks"][1][8:, 12:].sum() > 0  # the part leaving the image is clipped, not dropped
    empty = ds[2]
    assert empty["masks"].shape == (0, H, W) and empty["category_ids"].shape == (0,)
    assert empty["image_id"] == 3 and empty["path"] == str(tmp_path / "imgs/c.png")
    outcome("coco", "polygon/RLE mix, mask leaving the image, image without annotations", "masks equal pycocotools; clipped, not dropped; empty mask set")


def _broken(tmp_path: Path, edit) -> Path:
    ann_file, _ = _coco_fixture(tmp_path)
    data = json.loads(ann_file.read_text())
    edit(data)
    ann_file.write_text(json.dumps(data))
    return ann_file


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda d: d.pop("categories"), "categories"),
    (lambda d: d["annotations"][2].pop("segmentation"), "annotation id 3 lacks field 'segmentation'"),
    (lambda d: d["images"][1].pop("height"), "'height'"),
    (lambda d: d["annotations"][0].update(image_id=99), "annotation id 1 refers to unknown image_id 99"),
    (lambda d: d["annotations"][1].update(category_id=7), "annotation id 2 refers to unknown category_id"),
    (lambda d: d["annotations"][2]["segmentation"].update(size=[5, 5]), "annotation id 3: RLE size"),
    (lambda d: d["annotations"][0]["segmentation"][0].pop(), "annotation id 1: polygons"),
])
def test_coco_validation_errors_name_the_field(outcome, tmp_path, edit, needle):
    ann_file = _broken(tmp_path, edit)
    with pytest.raises(DatasetError) as info:
        CocoDataset(ann_file, tmp_path / "imgs")
    assert needle in str(info.value) and str(ann_file) in str(info.value)
    outcome("coco", f"broken json: {needle}", "DatasetError naming file, field and annotation id")


def test_coco_bad_files(outcome, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        CocoDataset(tmp_path / "missing.json", tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        CocoDataset(tmp_path / "bad.json", tmp_path)
    ann_file, _ = _coco_fixture(tmp_path)
    _save(tmp_path / "imgs/a.png", size=(W + 1, H))  # disagrees with the json's width
    with pytest.raises(DatasetError, match="image id 1"):
        CocoDataset(ann_file, tmp_path / "imgs")[0]
    outcome("coco", "missing json, invalid JSON, image size disagreeing with json", "DatasetError naming the file")
