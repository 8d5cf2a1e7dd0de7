"""`discover --out` (issue 27): a folder of another checkpoint's or other settings' results is refused in one
line and left untouched, `--overwrite` moves it aside (never deletes), the same settings continue."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from discorep.cli import main
from discorep.errors import UsageError
from discorep.eval import discover_out

N_IMAGES = 3


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"img_{i}.png")
    return folder


def _discover(images: Path, out: Path, *extra: str, checkpoint: str = "random:resnet18") -> int:
    return main(["discover", "--checkpoint", checkpoint, "--images", str(images), "--out", str(out), "--k", "2",
                 "--size", "64", "--features", "c4", "--device", "cpu", "--refine", "none", *extra])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _summary(out: Path) -> dict:
    return json.loads((out / "discover.json").read_text())


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error:"), err
    return err


def test_another_checkpoint_or_other_settings_are_refused_and_left_untouched(images, tmp_path, capsys):
    out = tmp_path / "out"
    assert _discover(images, out) == 0
    before = _snapshot(out)
    assert sum(name.endswith(".npz") for name in before) == N_IMAGES
    capsys.readouterr()

    assert _discover(images, out, checkpoint="random:resnet18:1") == 2
    line = _error_line(capsys)
    assert f"--out {out} holds discover results made with checkpoint=random:resnet18;" in line
    assert "this run has checkpoint=random:resnet18:1" in line and "--overwrite" in line
    assert _discover(images, out, "--seed", "1") == 2
    line = _error_line(capsys)
    assert "made with seed=0; this run has seed=1;" in line and "checkpoint=" not in line  # only what differs
    assert _snapshot(out) == before  # not a byte changed
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("out")] == ["out"]  # nothing moved


def test_overwrite_moves_the_old_results_aside_and_writes_the_new(images, tmp_path, capsys):
    out = tmp_path / "out"
    assert _discover(images, out) == 0
    before = _snapshot(out)
    assert _discover(images, out, "--overwrite", checkpoint="random:resnet18:1") == 0
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("out.old-")]
    assert len(moved) == 1 and _snapshot(moved[0]) == before  # the old results, whole, under the new name
    summary = _summary(out)
    assert summary["checkpoint"] == "random:resnet18:1" and summary["written"] == N_IMAGES
    assert summary["kept_from_earlier_run"] == 0 and summary["complete"]
    new = np.load(out / "img_0.npz")["labels_k2"]
    assert new.shape == (64, 64)
    # --overwrite again (same settings): another folder aside, the first one kept.
    assert _discover(images, out, "--overwrite", checkpoint="random:resnet18:1") == 0
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("out.old-")]) == 2


def test_the_same_settings_continue(images, tmp_path):
    out = tmp_path / "out"
    assert _discover(images, out) == 0
    (out / "img_2.npz").unlink()  # what an interrupted run leaves: no npz for the last image
    assert _discover(images, out) == 0
    summary = _summary(out)
    assert summary["kept_from_earlier_run"] == N_IMAGES - 1 and summary["written"] == N_IMAGES
    assert (out / "img_2.npz").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("out.old-")]


def test_an_unreadable_discover_json_is_refused(images, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "discover.json").write_text("{not json")
    (out / "mine.txt").write_text("keep me")
    assert _discover(images, out) == 2
    assert "discover.json cannot be read" in _error_line(capsys)
    assert (out / "mine.txt").read_text() == "keep me" and (out / "discover.json").read_text() == "{not json"
    assert _discover(images, out, "--overwrite") == 0
    (moved,) = [p for p in tmp_path.iterdir() if p.name.startswith("out.old-")]
    assert (moved / "mine.txt").read_text() == "keep me" and _summary(out)["written"] == N_IMAGES


def test_folders_moved_aside_inside_images_are_not_read_as_images(images, tmp_path):
    out = images / "segments"  # --out inside --images: its overlays (PNGs) must never become inputs
    assert _discover(images, out) == 0
    assert _discover(images, out, "--overwrite", "--seed", "1") == 0
    assert _discover(images, out, "--overwrite", "--seed", "2") == 0
    assert len(list(images.glob("segments.old-*"))) == 2
    assert _summary(out)["found"] == N_IMAGES


def test_a_rewritten_checkpoint_file_is_another_checkpoint(tmp_path):
    ckpt = tmp_path / "step_00000002.pt"
    ckpt.write_bytes(b"weights")
    first = discover_out.checkpoint_file(str(ckpt))
    assert first == discover_out.checkpoint_file(str(ckpt)) and discover_out.checkpoint_file("random:resnet18") is None
    settings = {"checkpoint": str(ckpt), "checkpoint_file": first, "ks": [2], "size": 64, "features": "c4",
                "overlay_k": 2, "seed": 0, "refine": {"method": "none"}, "padding": "zeros"}
    assert discover_out.claim_out(tmp_path, settings, dict(settings), overwrite=False) is False  # same: continue
    ckpt.write_bytes(b"retrained weights")  # a run retrained under the same name, same step
    os.utime(ckpt, ns=(first["mtime_ns"] + 10**9, first["mtime_ns"] + 10**9))
    now = {**settings, "checkpoint_file": discover_out.checkpoint_file(str(ckpt))}
    with pytest.raises(UsageError, match=rf"checkpoint {ckpt} as it was then; this run has that file as it is now"):
        discover_out.claim_out(tmp_path, now, settings, overwrite=False)
    assert discover_out.claim_out(tmp_path, now, settings, overwrite=True) is True
    # A discover.json written before checkpoint_file was recorded is compared without it.
    older = {k: v for k, v in settings.items() if k != "checkpoint_file"}
    assert discover_out.claim_out(tmp_path, now, older, overwrite=False) is False


def test_the_same_checkpoint_spelled_otherwise_continues(tmp_path, monkeypatch):
    ckpt = tmp_path / "runs" / "a.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    monkeypatch.chdir(tmp_path)
    recorded = {"checkpoint": "runs/a.pt", "checkpoint_file": discover_out.checkpoint_file("runs/a.pt"), "ks": [2],
                "size": 64, "features": "c4", "overlay_k": 2, "seed": 0, "refine": {"method": "none"},
                "padding": "zeros"}
    absolute = {**recorded, "checkpoint": str(ckpt)}
    assert discover_out.differences(recorded, absolute) == []
    assert discover_out.differences(recorded, {**absolute, "checkpoint": str(tmp_path / "b.pt")}) == ["checkpoint"]
