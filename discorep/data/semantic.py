"""Semantic-segmentation sets for the dense evaluations: the VOC layout and COCO instances.

Both give, per image, the PIL RGB image and an ``int64 (H, W)`` class map at the image's own size with
ids ``0..C-1`` and ``IGNORE = -1`` for pixels that are not scored (the project's "no label").

* VOC layout (`VocLayout`): ``root/JPEGImages/<id>.jpg`` and ``root/SegmentationClass/<id>.png`` (a
  palette or grey PNG whose values are class ids; 255 = ignore, PASCAL VOC's object borders). The
  images are those listed in ``root/ImageSets/Segmentation/<split>.txt`` when a split is named, else
  every PNG of SegmentationClass. The class count is read from the optional ``root/classes.txt`` (one
  name a line) or else taken as 1 + the largest id found in the label PNGs.
* COCO instances (`CocoSemantic`): each category becomes class ``1..C`` in category-id order, 0 is the
  background (no instance), crowd regions are ignored. Where instances overlap, the smaller one is on
  top (painted last), so small objects are not hidden by large ones.

Box annotations for CorLoc (`open_boxes`, `boxes(i)`): the tight boxes of COCO's non-crowd instance
masks; for a VOC folder the ``root/Annotations/<id>.xml`` objects (VOC detection format, which needs no
SegmentationClass: `VocBoxes`), else the boxes of the connected class regions of the label map.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from discorep.data.datasets import CocoDataset
from discorep.data.images import DatasetError, load_rgb

IGNORE = -1
VOC_IGNORE = 255


def read_label_png(path: Path) -> np.ndarray:
    """A class-id PNG (palette indices or grey values) → int64 (H, W), 255 → IGNORE."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise DatasetError(f"{path}: label PNG must hold class ids (palette or grey), got mode {im.mode}")
            labels = np.asarray(im).astype(np.int64)
    except OSError as err:
        raise DatasetError(f"{path}: unreadable label PNG ({err})") from None
    return np.where(labels == VOC_IGNORE, IGNORE, labels)


class VocLayout:
    """``root/JPEGImages`` + ``root/SegmentationClass`` (see the module docstring)."""

    def __init__(self, root: str | Path, split: str | None = None):
        self.root = Path(root)
        seg = self.root / "SegmentationClass"
        if not (self.root / "JPEGImages").is_dir() or not seg.is_dir():
            raise DatasetError(f"{str(self.root)!r} is not a VOC-layout folder: it needs JPEGImages/ and "
                               "SegmentationClass/ (or pass a COCO instances .json)")
        if split is not None:
            listing = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
            if not listing.is_file():
                raise DatasetError(f"split {split!r}: {listing} does not exist")
            self.ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        else:
            self.ids = sorted(p.stem for p in seg.glob("*.png"))
        if not self.ids:
            raise DatasetError(f"{seg}: no label PNGs")
        self.class_names = self._class_names()

    def _class_names(self) -> list[str]:
        listing = self.root / "classes.txt"
        if listing.is_file():
            return [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        top = max(int(read_label_png(self._label_path(i)).max()) for i in self.ids)
        return [str(c) for c in range(top + 1)]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def _label_path(self, image_id: str) -> Path:
        return self.root / "SegmentationClass" / f"{image_id}.png"

    def path(self, i: int) -> str:
        for ext in (".jpg", ".jpeg", ".png"):
            p = self.root / "JPEGImages" / f"{self.ids[i]}{ext}"
            if p.exists():
                return str(p)
        return str(self.root / "JPEGImages" / f"{self.ids[i]}.jpg")

    def load(self, i: int) -> tuple[Image.Image, np.ndarray]:
        image, labels = load_rgb(Path(self.path(i))), read_label_png(self._label_path(self.ids[i]))
        if labels.shape != (image.height, image.width):
            raise DatasetError(f"{self._label_path(self.ids[i])}: label size {labels.shape[::-1]} differs from "
                               f"the image's {image.size}")
        return image, labels

    def image(self, i: int) -> Image.Image:
        return load_rgb(Path(self.path(i)))

    def boxes(self, i: int) -> np.ndarray:
        xml = self.root / "Annotations" / f"{self.ids[i]}.xml"
        if xml.is_file():
            return _voc_xml_boxes(xml)
        return region_boxes(read_label_png(self._label_path(self.ids[i])))


def _voc_xml_boxes(path: Path) -> np.ndarray:
    """VOC detection XML → (N, 4) float boxes (x0, y0, x1, y1), continuous pixel coordinates."""
    boxes = []
    for obj in ET.parse(path).getroot().iter("object"):
        bb = obj.find("bndbox")
        x0, y0, x1, y1 = (float(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((x0 - 1, y0 - 1, x1, y1))  # VOC boxes are 1-based and inclusive
    return np.asarray(boxes, np.float64).reshape(-1, 4)


def region_boxes(labels: np.ndarray) -> np.ndarray:
    """Boxes of the connected regions of every non-background class (ids > 0)."""
    boxes = []
    for c in np.unique(labels[labels > 0]):
        comps, _ = ndimage.label(labels == c)
        for sl in ndimage.find_objects(comps):
            boxes.append((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop))
    return np.asarray(boxes, np.float64).reshape(-1, 4)


class CocoSemantic:
    """COCO instances as semantic maps: class = 1 + rank of the category id, 0 = background."""

    def __init__(self, ann_file: str | Path, image_root: str | Path):
        self.coco = CocoDataset(ann_file, image_root)
        cats = json.loads(Path(ann_file).read_text())["categories"]
        self.cat_ids = sorted(int(c["id"]) for c in cats)
        names = {int(c["id"]): c.get("name", str(c["id"])) for c in cats}
        self.class_names = ["background", *(names[c] for c in self.cat_ids)]
        self._class_of = {c: k + 1 for k, c in enumerate(self.cat_ids)}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.coco)

    def path(self, i: int) -> str:
        return str(self.coco.path(i))

    def load(self, i: int) -> tuple[Image.Image, np.ndarray]:
        item = self.coco[i]
        masks, cats, crowd = item["masks"].astype(bool), item["category_ids"], item["iscrowd"]
        labels = np.zeros(masks.shape[1:] if len(masks) else (item["image"].height, item["image"].width), np.int64)
        order = np.argsort([-m.sum() for m in masks], kind="stable")  # large first: small ones end on top
        for t in order:
            if not crowd[t]:
                labels[masks[t]] = self._class_of[int(cats[t])]
        for t in np.flatnonzero(crowd):
            labels[masks[t] & (labels == 0)] = IGNORE  # crowd regions are not scored
        return item["image"], labels

    def image(self, i: int) -> Image.Image:
        return load_rgb(self.coco.path(i))

    def boxes(self, i: int) -> np.ndarray:
        item = self.coco[i]
        keep = ~item["iscrowd"]
        boxes = [region_box(m) for m in item["masks"][keep].astype(bool) if m.any()]
        return np.asarray(boxes, np.float64).reshape(-1, 4)


def region_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box (x0, y0, x1, y1) of a non-empty bool mask, continuous pixel coordinates."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


class VocBoxes:
    """``root/JPEGImages`` + ``root/Annotations/*.xml`` (VOC detection), split from ImageSets/Main."""

    def __init__(self, root: str | Path, split: str | None = None):
        self.root = Path(root)
        if split is not None:
            listing = self.root / "ImageSets" / "Main" / f"{split}.txt"
            if not listing.is_file():
                raise DatasetError(f"split {split!r}: {listing} does not exist")
            self.ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
        else:
            self.ids = sorted(p.stem for p in (self.root / "Annotations").glob("*.xml"))
        if not self.ids:
            raise DatasetError(f"{self.root / 'Annotations'}: no VOC annotation files")

    def __len__(self) -> int:
        return len(self.ids)

    path = VocLayout.path

    def image(self, i: int) -> Image.Image:
        return load_rgb(Path(self.path(i)))

    def boxes(self, i: int) -> np.ndarray:
        return _voc_xml_boxes(self.root / "Annotations" / f"{self.ids[i]}.xml")


def open_boxes(path: str | Path, images: str | Path | None = None, split: str | None = None):
    """A box-annotated set for CorLoc: COCO json, VOC detection folder (Annotations/) or VOC layout."""
    path = Path(path)
    if path.is_dir() and (path / "Annotations").is_dir() and (path / "JPEGImages").is_dir():
        return VocBoxes(path, split)
    return open_semantic(path, images, split)


def open_semantic(path: str | Path, images: str | Path | None = None, split: str | None = None):
    """A VOC-layout folder, or a COCO instances .json (images in `images`, default <json dir>/images)."""
    path = Path(path)
    if path.suffix == ".json":
        if not path.is_file():
            raise DatasetError(f"{str(path)!r}: no such COCO json")
        return CocoSemantic(path, Path(images) if images else path.parent / "images")
    if not path.is_dir():
        raise DatasetError(f"{str(path)!r}: not a VOC-layout folder or a COCO .json")
    return VocLayout(path, split)


def write_voc_layout(source, out: str | Path) -> Path:
    """Write any semantic set in the VOC layout (JPEGImages as PNG files, SegmentationClass palette PNGs,
    classes.txt): how the demo data offers both input formats."""
    out = Path(out)
    (out / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (out / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    from discorep.data.palette import davis_palette

    for i in range(len(source)):
        image, labels = source.load(i)
        name = Path(source.path(i)).stem
        image.save(out / "JPEGImages" / f"{name}.png")
        png = Image.fromarray(np.where(labels == IGNORE, VOC_IGNORE, labels).astype(np.uint8), mode="P")
        png.putpalette(davis_palette())
        png.save(out / "SegmentationClass" / f"{name}.png")
    (out / "classes.txt").write_text("".join(f"{n}\n" for n in source.class_names))
    return out
