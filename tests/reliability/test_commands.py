"""`discover` and `eval` on an uncleaned folder: every bad file named and skipped, the rest processed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from discorep.cli import main
from discorep.apps.demodata.scenes import make_scenes

GOOD = {  # name -> (PIL image builder, save kwargs); sizes vary so outputs can be checked per image
    "grey.png": (lambda: Image.fromarray(np.tile(np.arange(40, dtype=np.uint8) * 6, (30, 1))), {}),
    "alpha_la.png": (lambda: Image.new("LA", (33, 21), (90, 128)), {}),
    "rgba.png": (lambda: Image.new("RGBA", (50, 40), (200, 10, 10, 60)), {}),
    "palette.gif": (lambda: Image.new("P", (24, 24), 3), {}),
    "deep16.png": (lambda: Image.fromarray(np.arange(48 * 20, dtype=np.uint16).reshape(20, 48) * 60), {}),
    "cmyk.jpg": (lambda: Image.new("CMYK", (36, 28), (0, 200, 0, 0)), {}),
    "tiny.png": (lambda: Image.new("RGB", (1, 1), (5, 200, 5)), {}),
    "photo.jpg": (lambda: Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)),
                  {"quality": 90}),
}


def _exif_rotated(path: Path) -> tuple[int, int]:
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (48, 16), (10, 10, 200)).save(path, exif=exif)
    return (48, 16)  # stored W x H; shown upright as 16 x 48


def _uncleaned_folder(root: Path) -> dict[str, str]:
    """Writes good and bad files; returns bad name -> reason fragment."""
    root.mkdir()
    for name, (make, kwargs) in GOOD.items():
        make().save(root / name, **kwargs)
    _exif_rotated(root / "exif.jpg")
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    (root / "zero.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("this is a text file\n")
    data = (root / "photo.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (400, 400)).save(root / "huge.png")  # above the bomb limit the test sets
    (root / "sub").mkdir()
    (root / "sub" / "loop").symlink_to(root)
    return {"zero.jpg": "zero-byte", "notes.jpg": "not a recognised image", "truncated.jpg": "truncated",
            "huge.png": "decompression-bomb"}


def test_discover_skips_and_names_every_bad_file_and_processes_the_rest(outcome, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000)  # 400x400 = 4x the limit: refused as a bomb
    bad = _uncleaned_folder(tmp_path / "in")
    out = tmp_path / "out"
    code = main(["discover", "--checkpoint", "random:resnet18", "--images", str(tmp_path / "in"), "--out", str(out),
                 "--k", "2", "--size", "64", "--features", "c4"])
    assert code == 0
    skipped = dict(line.split("\t", 1) for line in (out / "skipped.txt").read_text().splitlines())
    assert sorted(skipped) == sorted(bad)
    for name, fragment in bad.items():
        assert fragment in skipped[name].lower(), (name, skipped[name])
    upright = {name: make().size for name, (make, _) in GOOD.items()} | {"exif.jpg": (16, 48), "anim.gif": (20, 20)}
    for name, (w, h) in upright.items():
        labels = np.load(out / f"{Path(name).stem}.npz")["labels_k2"]
        assert labels.shape == (h, w), name  # original upright size, whatever the mode
    summary = json.loads((out / "discover.json").read_text())
    assert summary["written"] == len(upright) and summary["skipped"] == len(bad)
    outcome("command", "discover on a folder with 10 good (all modes, 1x1, EXIF, GIF) and 4 bad files, "
            "symlink loop", "10 written at original size; 4 named with reasons in skipped.txt")


def test_eval_objects_skips_an_unreadable_image_and_counts_it(outcome, tmp_path):
    make_scenes(tmp_path / "scenes", 3, seed=5, image_size=(64, 64))
    (tmp_path / "scenes" / "images" / "scene_000001.png").write_bytes(b"\x89PNG\r\n garbage")
    out = tmp_path / "objects.json"
    code = main(["eval", "objects", "--checkpoint", "random:resnet18", "--coco",
                 str(tmp_path / "scenes" / "annotations.json"), "--images", str(tmp_path / "scenes" / "images"),
                 "--size", "64", "--features", "c4", "--k", "2,4", "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["n_images"] == 2 and [s["path"].endswith("scene_000001.png") for s in result["skipped"]] == [True]
    assert np.isfinite(result["abo_i"]) and 0 < result["abo_i"] <= 1
    outcome("command", "eval objects with an unreadable image in the COCO set",
            "skipped, named and counted; the other images evaluated")


@pytest.mark.parametrize("command", ["discover", "eval"])
def test_a_folder_of_only_bad_files_is_one_clear_error(outcome, tmp_path, capsys, command):
    folder = tmp_path / "in"
    (folder / "cat").mkdir(parents=True)  # class sub-folders, as eval knn expects
    (folder / "cat" / "a.jpg").write_bytes(b"")
    (folder / "cat" / "b.png").write_text("nope")
    if command == "discover":
        args = ["discover", "--checkpoint", "random:resnet18", "--images", str(folder), "--out", str(tmp_path / "o"),
                "--size", "64"]
    else:
        args = ["eval", "knn", "--checkpoint", "random:resnet18", "--train", str(folder), "--val", str(folder),
                "--size", "64"]
    code = main(args)
    stderr = capsys.readouterr().err
    err = stderr.strip().splitlines()[-1]  # above it: the progress bar
    assert code == 2 and err.startswith("error:") and "Traceback" not in stderr, stderr
    outcome("command", f"{command} on a folder of only bad files", "exit 2: " + err.replace(str(tmp_path), "")[:100])


def test_weights_of_another_architecture_are_one_clear_error(outcome, tmp_path, capsys):
    from torchvision.models import resnet50

    ckpt = tmp_path / "r50_weights_r18_config.pt"
    weights = {f"encoder.backbone.{k}": v for k, v in resnet50().state_dict().items()}
    torch.save({"config": {"model": {"arch": "resnet18"}}, "online": weights}, ckpt)
    (tmp_path / "in").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "in" / "a.png")
    code = main(["discover", "--checkpoint", str(ckpt), "--images", str(tmp_path / "in"), "--out",
                 str(tmp_path / "o"), "--size", "64"])
    stderr = capsys.readouterr().err
    err = stderr.strip().splitlines()[-1]
    assert code == 2 and err.startswith("error:") and "Traceback" not in stderr, stderr
    # Counted, not torch's key-by-key list: ResNet-50 has bottleneck conv3/bn3 layers ResNet-18 lacks.
    assert "resnet18 encoder weights do not fit" in err and "unexpected (e.g. backbone.layer1.0.conv3" in err
    assert "with another shape (e.g." in err and len(err) < 400, err
    outcome("checkpoint", "ResNet-50 weights in a checkpoint declaring resnet18", "exit 2: " + err.replace(str(tmp_path), "")[:100])
