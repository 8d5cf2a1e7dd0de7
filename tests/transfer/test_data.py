"""`discorep.transfer.data`: detection targets (counts, flips, negatives, categories) and segmentation items."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from discorep.apps.demodata.scenes import CATEGORIES, make_scenes
from discorep.errors import DatasetError
from discorep.transfer.data import (DetectionSet, SegmentationSet, check_same_categories, detection_collate,
                                    segmentation_collate)

SIZE = 96


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """8 demo scenes (96 px): images/ + annotations.json."""
    root = tmp_path_factory.mktemp("scenes")
    ann = make_scenes(root, 8, seed=11, image_size=(SIZE, SIZE))
    return root, json.loads(ann.read_text())


def _write(folder, coco, name="annotations.json"):
    """The json beside a copy of the scenes' images (so tests can change both)."""
    path = folder / name
    path.write_text(json.dumps(coco))
    return path


def _tight_boxes(masks: torch.Tensor) -> np.ndarray:
    """Tight xyxy boxes of (T, H, W) masks, continuous pixel coordinates (pixel j covers [j, j+1))."""
    boxes = []
    for m in masks.numpy().astype(bool):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        boxes.append((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
    return np.asarray(boxes, np.float64).reshape(-1, 4)


# ----------------------------------------------------------------------------------------------- detection
def test_items_flip_image_masks_and_boxes_together(scenes):
    root, _ = scenes
    ann = root / "annotations.json"
    train, ref = DetectionSet(ann, train=True), DetectionSet(ann, train=False)
    torch.manual_seed(0)
    seen = {"flipped": 0, "kept": 0}
    for i in range(len(ref)):
        x0, t0 = ref[i]
        assert x0.dtype == torch.float32 and x0.shape == (3, SIZE, SIZE) and 0 <= x0.min() and x0.max() <= 1
        np.testing.assert_allclose(t0["boxes"].numpy(), _tight_boxes(t0["masks"]), atol=1e-4)
        for _ in range(3):
            x, t = train[i]
            flipped = torch.equal(x, x0.flip(-1))
            assert flipped or torch.equal(x, x0)
            seen["flipped" if flipped else "kept"] += 1
            assert torch.equal(t["masks"], t0["masks"].flip(-1) if flipped else t0["masks"])
            assert torch.equal(t["labels"], t0["labels"]) and t["image_id"] == t0["image_id"]
            assert t["boxes"].dtype == torch.float32 and t["masks"].dtype == torch.uint8
            np.testing.assert_allclose(t["boxes"].numpy(), _tight_boxes(t["masks"]), atol=1e-4)
    assert seen["flipped"] > 5 and seen["kept"] > 5  # p = 0.5 over 24 draws


def test_crowd_degenerate_negatives_and_empty_categories_are_counted(scenes, tmp_path):
    root, coco = scenes
    coco = json.loads(json.dumps(coco))
    shutil.copytree(root / "images", tmp_path / "images")
    anns = coco["annotations"]
    crowd = next(a for a in anns if a["image_id"] == 1)
    crowd["iscrowd"] = 1
    n_img2 = sum(a["image_id"] == 2 for a in anns)
    rle_of_img2 = next(a for a in anns if a["image_id"] == 2)["segmentation"]
    # A box half a pixel wide (from the json's bbox) and an empty polygon without bbox/area (from the mask).
    anns.append({"id": 1000, "image_id": 2, "category_id": 1, "segmentation": rle_of_img2,
                 "bbox": [10.0, 10.0, 0.5, 30.0], "area": 15.0, "iscrowd": 0})
    anns.append({"id": 1001, "image_id": 2, "category_id": 2, "segmentation": [[1, 1, 2, 2]]})
    # A json box over no polygon of 3+ points: the mask is empty, whatever the box says.
    anns.append({"id": 1002, "image_id": 2, "category_id": 3, "segmentation": [[1, 1, 20, 20]],
                 "bbox": [1.0, 1.0, 19.0, 19.0], "area": 361.0, "iscrowd": 0})
    shutil.copy(tmp_path / "images" / "scene_000000.png", tmp_path / "images" / "empty.png")
    coco["images"].append({"id": 100, "file_name": "empty.png", "height": SIZE, "width": SIZE})
    coco["categories"].append({"id": 7, "name": "hexagon"})
    ds = DetectionSet(_write(tmp_path, coco), train=False)

    used = {a["category_id"] for a in anns if a is not crowd and a["id"] < 1000}
    expected_empty = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"]) if c["id"] not in used]
    assert "hexagon" in expected_empty
    assert ds.counts == {"images": 9, "negatives": 1, "instances": len(anns) - 4, "crowd_ignored": 1,
                         "degenerate_skipped": 3, "categories_without_training_instances": expected_empty}
    assert ds.num_classes == 8 and ds.cat_ids == [1, 2, 3, 4, 5, 6, 7]

    _, t1 = ds[ds.image_ids.index(1)]
    assert len(t1["labels"]) == sum(a["image_id"] == 1 for a in anns) - 1
    crowd_mask = torch.from_numpy(ds._data._ann_to_mask(crowd, SIZE, SIZE))
    assert not any(torch.equal(m, crowd_mask) for m in t1["masks"])
    _, t2 = ds[ds.image_ids.index(2)]
    assert len(t2["labels"]) == n_img2
    x, neg = ds[ds.image_ids.index(100)]
    assert x.shape == (3, SIZE, SIZE)
    assert neg["boxes"].shape == (0, 4) and neg["labels"].shape == (0,) and neg["masks"].shape == (0, SIZE, SIZE)
    assert neg["boxes"].dtype == torch.float32 and neg["labels"].dtype == torch.int64
    # COCOeval reads bbox/area/iscrowd of every ground-truth annotation: filled in where the json lacks them.
    filled = ds.coco.anns[1001]
    assert filled["area"] == 0 and filled["iscrowd"] == 0 and len(filled["bbox"]) == 4


def test_labels_follow_the_given_category_order(scenes):
    root, coco = scenes
    order = [6, 5, 4, 3, 2, 1]
    ds = DetectionSet(root / "annotations.json", train=False, cat_ids=order)
    for i in (0, 3):
        _, t = ds[i]
        truth = [a["category_id"] for a in coco["annotations"] if a["image_id"] == ds.image_ids[i]]
        assert [order[k - 1] for k in t["labels"].tolist()] == truth


def test_different_category_lists_are_one_line_errors(scenes, tmp_path):
    root, coco = scenes
    other = json.loads(json.dumps(coco))
    other["annotations"] = [a for a in other["annotations"] if a["category_id"] != 6]
    other["categories"] = [c for c in other["categories"] if c["id"] != 6]
    other["categories"][1]["name"] = "oval"
    other["categories"].append({"id": 9, "name": "hexagon"})
    train = DetectionSet(root / "annotations.json", train=True)
    val = DetectionSet(_write(tmp_path, other), root / "images", train=False)
    check_same_categories(train, DetectionSet(root / "annotations.json", train=False))
    with pytest.raises(DatasetError) as err:
        check_same_categories(train, val)
    msg = str(err.value)
    assert "\n" not in msg and f"only in the training json: 6 ({CATEGORIES[5]})" in msg and "'oval'" in msg
    assert "only in the validation json: 9 (hexagon)" in msg
    with pytest.raises(DatasetError, match="category id 6") as err:  # an annotation the labels cannot name
        DetectionSet(root / "annotations.json", train=False, cat_ids=[1, 2, 3, 4, 5])
    assert "\n" not in str(err.value)


def test_unreadable_images_become_none_and_collate_counts_them(scenes, tmp_path):
    root, coco = scenes
    shutil.copytree(root / "images", tmp_path / "images")
    (tmp_path / "images" / coco["images"][1]["file_name"]).write_bytes(b"not a png")
    ds = DetectionSet(_write(tmp_path, coco), train=False)
    assert ds[1] is None
    images, targets, dropped = detection_collate([ds[0], ds[1], ds[2]])
    assert dropped == 1 and len(images) == len(targets) == 2
    assert [t["image_id"] for t in targets] == [coco["images"][0]["id"], coco["images"][2]["id"]]


# ----------------------------------------------------------------------------------------------- segmentation
def _voc(root, labels: dict, classes=None, image_size=40, rng=None):
    """A VOC folder: random black/red images whose red pixels are class 1 unless `labels` gives the map."""
    rng = rng or np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    for name, lab in labels.items():
        red = rng.integers(0, 2, (image_size, image_size)).astype(np.uint8)
        rgb = np.stack([red * 255, np.full_like(red, 40), np.full_like(red, 90)], -1)
        Image.fromarray(rgb).save(root / "JPEGImages" / f"{name}.png")
        png = Image.fromarray((red if lab is None else lab).astype(np.uint8), mode="L").convert("P")
        png.save(root / "SegmentationClass" / f"{name}.png")
    if classes:
        (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    return root


def test_unknown_label_values_name_the_file(tmp_path):
    bad = np.zeros((40, 40), np.uint8)
    bad[5:9, 5:9] = 7
    root = _voc(tmp_path / "voc", {"a": None, "b": bad}, classes=["bg", "red", "blue"])
    ds = SegmentationSet(root, train=False)
    assert ds.num_classes == 3 and ds.class_names == ["bg", "red", "blue"]
    ds[0]  # noqa: B018 (ids 0/1 are fine)
    with pytest.raises(DatasetError, match=r"b\.png: label value 7 .*classes\.txt"):
        ds[1]
    # A validation folder without classes.txt is checked against the training set's count.
    val = SegmentationSet(_voc(tmp_path / "val", {"c": bad}), train=False, num_classes=3)
    assert val.class_names == ["0", "1", "2"]
    with pytest.raises(DatasetError, match=r"c\.png: label value 7"):
        val[0]
    with pytest.raises(DatasetError, match="declares 3 classes"):
        SegmentationSet(root, train=False, num_classes=4)
    (root / "JPEGImages" / "a.png").write_bytes(b"not a png")
    assert ds[0] is None  # unreadable: a skip, as in detection


def test_train_crops_have_the_crop_size_and_pad_with_ignore(tmp_path):
    root = _voc(tmp_path / "voc", {f"i{k}": None for k in range(3)})
    torch.manual_seed(0)
    small = SegmentationSet(root, train=True, crop_size=64, scale_range=(0.5, 0.5))
    for k in range(3):
        x, y = small[k]
        assert x.shape == (3, 64, 64) and y.shape == (64, 64) and y.dtype == torch.int64
        assert int((y >= 0).sum()) == 20 * 20  # the 40 px image at half size; the rest is padding
        assert float(x[:, y < 0].abs().max()) == 0.0
    big = SegmentationSet(root, train=True, crop_size=64, scale_range=(2.0, 2.0))
    x, y = segmentation_collate([big[0], big[1]])
    assert x.shape == (2, 3, 64, 64) and y.shape == (2, 64, 64) and bool((y >= 0).all())


def test_train_crops_and_flips_keep_labels_on_their_pixels(tmp_path):
    """At scale 1 (no resampling) the class of every pixel is still its colour: red = 1, else 0."""
    root = _voc(tmp_path / "voc", {f"i{k}": None for k in range(2)})
    torch.manual_seed(1)
    ds = SegmentationSet(root, train=True, crop_size=24, scale_range=(1.0, 1.0))
    full = SegmentationSet(root, train=False)
    x0, _ = full[0]
    crops = set()
    for _ in range(8):
        x, y = ds[0]
        assert torch.equal(y, (x[0] > 0.5).long())
        crops.add(x.numpy().tobytes())
        # The crop is a window of the image or of its mirror image.
        assert any(torch.equal(x, src[:, r : r + 24, c : c + 24])
                   for src in (x0, x0.flip(-1)) for r in range(17) for c in range(17))
    assert len(crops) > 4


def test_validation_items_are_whole_images_of_a_coco_json(scenes):
    root, _ = scenes
    ds = SegmentationSet(root / "annotations.json", train=False)
    assert ds.num_classes == 7 and ds.class_names[0] == "background"
    x, y = ds[0]
    assert x.shape == (3, SIZE, SIZE) and y.shape == (SIZE, SIZE)
    assert 0 < int((y > 0).sum()) < SIZE * SIZE and int(y.max()) < 7
