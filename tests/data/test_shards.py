"""`discorep shard` and the shard-backed pretraining data set (discorep/data/shard_writer.py, shards.py)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from discorep.cli import main
from discorep.apps.demodata.scenes import make_scenes
from discorep.data.images import BadImageError, DatasetError, list_images, load_rgb
from discorep.data.pretrain import (
    PretrainDataset,
    ResumableBatchSampler,
    collate_views,
    sample_seed,
)
from discorep.data.prior_cache import RegionPriorCache
from discorep.data.shard_writer import write_shards
from discorep.data.shards import (
    ShardPretrainDataset,
    ShardReader,
    decode_rgb,
    load_index,
    load_offsets,
    scan_tar,
)
from discorep.data.views import ViewConfig, ViewSampler
from discorep.engine import builders
from discorep.engine.config import Config, DataConfig
from discorep.engine.configio import ConfigError, load_config
from discorep.engine.distributed import DistInfo
from discorep.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")
VIEWS = ViewConfig(size=32, spanning_size=64, raw_size=32)
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _extras(folder: Path) -> None:
    """Images that exercise the decoding policy: alpha, palette transparency, EXIF rotation, upper-case."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 56, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    pal = Image.fromarray(rng.integers(0, 8, (36, 44), dtype=np.uint8), "P")
    pal.putpalette([v for i in range(8) for v in (30 * i, 255 - 30 * i, 90)])
    pal.save(folder / "palette.png", transparency=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    Image.fromarray(rng.integers(0, 256, (40, 52), dtype=np.uint8), "L").save(folder / "rot.JPG", exif=exif)
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(folder / "q.jpeg", quality=70)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src")
    make_scenes(root, 12, seed=3, image_size=(64, 64))
    _extras(root / "images" / "extra")
    return root / "images"  # 16 images


@pytest.fixture(scope="module")
def shards(images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    summary = write_shards(images, out, shard_size=5, prior="slic", workers=2, progress=False)
    assert (summary.total, summary.shards, summary.written, summary.skipped) == (16, 4, 4, [])
    return out


def test_layout_and_bytes_round_trip_exactly(images, shards):
    paths = list_images(images)
    index = json.loads((shards / "index.json").read_text())
    assert [s["count"] for s in index["shards"]] == [5, 5, 5, 1] and index["total"] == 16
    assert index["prior"] == {"name": "slic", "params": {"n_segments": 100, "compactness": 10.0, "resize": 224}}
    assert sorted(p.name for p in shards.glob("*")) == [".state", "index.json"] + [
        f"shard-{k:06d}.{ext}" for k in range(4) for ext in ("idx.json", "tar")]
    with tarfile.open(shards / "shard-000003.tar") as tar:  # webdataset layout: <key>.<ext>, consecutive
        assert tar.getnames() == ["00000015.png", "00000015.prior.npy", "00000015.json"]
    reader = ShardReader(shards)
    for i, path in enumerate(paths):
        sample = reader.read(i)
        assert sample.image == path.read_bytes(), path  # never re-encoded
        assert sample.ext == path.suffix.lower().lstrip(".")
        upright = load_rgb(path)
        assert sample.meta == {"path": path.relative_to(images).as_posix(), "width": upright.width,
                               "height": upright.height, "bytes": path.stat().st_size}
        assert np.array_equal(np.asarray(decode_rgb(sample.image, sample.name)), np.asarray(upright)), path
    with pytest.raises(BadImageError, match="corrupt or truncated"):
        decode_rgb(paths[0].read_bytes()[:200], "cut.png")
    for k, shard in enumerate(reader.index.shards):  # the stored offset table is what the tar headers say
        stored, scanned = reader._table(k), scan_tar(shards / shard["name"])
        assert stored.keys == scanned.keys and stored.exts == scanned.exts
        assert np.array_equal(stored.rows, scanned.rows)
        assert load_offsets(shards / shard["offsets"], shard) is not None
        assert load_offsets(shards / shard["offsets"], {**shard, "sha256": "0" * 64}) is None  # not this shard's


def test_priors_are_bit_identical_to_the_region_prior_cache(images, shards, tmp_path):
    cache = RegionPriorCache(tmp_path / "cache", "slic", {})
    reader = ShardReader(shards)
    for i, path in enumerate(list_images(images)):
        prior = reader.read(i).prior
        expected = cache.get(path.relative_to(images).as_posix(), path)
        assert prior.dtype == np.int32 and np.array_equal(prior, expected), path


def test_shard_dataset_yields_the_folder_datasets_tensors(images, shards, tmp_path):
    paths = list_images(images)
    cache = RegionPriorCache(tmp_path / "cache", "slic", {})
    folder = PretrainDataset(paths, ViewSampler(VIEWS), cache, prior_size=32, root=images)
    sharded = ShardPretrainDataset(shards, ViewSampler(VIEWS), "slic", {"n_segments": 100}, prior_size=32)
    assert len(sharded) == len(folder) == 16
    for i in range(16):
        item = (i, sample_seed(7, 2, i))
        a, b = folder[item], sharded[item]
        assert list(a) == list(b) and "prior" in b
        for key in a:
            same = torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key]
            assert same, (i, key)


def test_ranks_workers_and_resume_split_the_shards_like_a_folder(shards):
    ds = ShardPretrainDataset(shards, ViewSampler(VIEWS), "slic", {}, prior_size=32)
    ds[(0, 0)]  # the main process opens shard 0 before the loader's workers fork
    assert ds.reader._fds
    copy = pickle.loads(pickle.dumps(ds))  # what a spawned worker receives: no descriptors, no tables
    assert not copy.reader._fds and not copy.reader._tables and len(copy) == 16

    def batches(rank, workers, start=0):
        sampler = ResumableBatchSampler(len(ds), 4, world_size=2, rank=rank, seed=5, start_step=start,
                                        total_steps=6)
        loader = DataLoader(ds, batch_sampler=sampler, num_workers=workers, collate_fn=collate_views)
        return list(loader)

    rank0, rank1 = batches(0, workers=2), batches(1, workers=0)
    for epoch in range(3):  # 16 images, global batch 8: 2 steps per epoch cover every index exactly once
        seen = torch.cat([b["index"] for b in rank0[2 * epoch:2 * epoch + 2] + rank1[2 * epoch:2 * epoch + 2]])
        assert sorted(seen.tolist()) == list(range(16))
    assert rank0[0]["index"].tolist() != rank0[2]["index"].tolist()  # a new order each epoch
    in_process = batches(0, workers=0)
    resumed = batches(0, workers=2, start=3)  # a run resumed at step 3 sees the rest unchanged
    for got, want in zip(rank0 + resumed, in_process + in_process[3:], strict=True):
        for key in ("index", "box1", "span_box", "prior"):  # ids, integer boxes, label maps: exact
            assert torch.equal(got[key], want[key]), key
        for key in ("view1", "view2"):  # pixels made by float kernels on 1 thread (a worker) or several
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-5, msg=key)


def test_bad_files_are_skipped_and_listed(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.new("RGB", (20, 20), (60 * i, 0, 0)).save(src / f"good{i}.png")
    (src / "empty.jpg").write_bytes(b"")
    (src / "text.png").write_text("not an image")
    noise = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(src / "cut.png")
    (src / "cut.png").write_bytes((src / "cut.png").read_bytes()[:2000])  # truncated
    out = tmp_path / "out"
    assert main(["shard", "--images", str(src), "--out", str(out), "--shard-size", "2", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "3 images in 3 shards" in printed and "skipped 3 unreadable" in printed
    lines = (out / "skipped.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in lines) == ["cut.png", "empty.jpg", "text.png"]
    assert all(len(line.split("\t")) == 2 and line.split("\t")[1] for line in lines)  # each with a reason
    index = load_index(out)
    assert index.total == 3 and index.raw["skipped"] == 3 and index.prior == "none"
    assert [ShardReader(out).read(i).meta["path"] for i in range(3)] == ["good0.png", "good1.png", "good2.png"]
    for bad in ("good0.png", "good1.png", "good2.png"):
        (src / bad).unlink()
    with pytest.raises(DatasetError, match="none of the 3 images could be read"):
        write_shards(src, tmp_path / "all_bad", workers=0, progress=False)
    assert (tmp_path / "all_bad" / "skipped.txt").exists() and not (tmp_path / "all_bad" / "index.json").exists()
    (tmp_path / "empty").mkdir()
    code = main(["shard", "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o2")])
    assert code == 2 and "no image files" in capsys.readouterr().err


_KILLED_WRITER = """
import pathlib, sys, time
from discorep.data import shard_writer
images, out, flag = sys.argv[1:]
encode, calls = shard_writer._encode, []
def stalling(*args, **kwargs):
    calls.append(1)
    if len(calls) == 8:  # inside shard 1: tell the test, then wait for SIGKILL
        pathlib.Path(flag).touch()
        time.sleep(120)
    return encode(*args, **kwargs)
shard_writer._encode = stalling
shard_writer.write_shards(images, out, shard_size=5, prior="slic", workers=0, progress=False)
"""


def test_a_killed_run_leaves_no_complete_looking_shard_and_a_rerun_completes_it(images, shards, tmp_path):
    out, flag = tmp_path / "out", tmp_path / "stalled"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(images), str(out), str(flag)])
    try:
        deadline = time.monotonic() + 60
        while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert flag.exists(), "the writer never reached shard 1"
    finally:
        proc.kill()  # SIGKILL: no cleanup handler runs
        proc.wait()
    assert sorted(p.name for p in out.glob("shard-*")) == [
        "shard-000000.idx.json", "shard-000000.tar", "shard-000001.tar.tmp"]
    with pytest.raises(DatasetError, match="re-run the same command"):
        load_index(out)
    summary = write_shards(images, out, shard_size=5, prior="slic", workers=0, progress=False)
    assert (summary.reused, summary.written, summary.total) == (1, 3, 16)
    assert not list(out.glob("*.tmp"))
    reference = load_index(shards).shards
    assert load_index(out).shards == reference  # byte-identical to an uninterrupted run (sha256)

    (out / "shard-000002.tar").unlink()
    (out / "shard-000001.idx.json").unlink()  # rebuilt from the tar, which is kept
    with open(out / "shard-000000.tar", "r+b") as f:  # truncated after the fact
        f.truncate(1024)
    with pytest.raises(DatasetError, match="shard-000000.tar has 1024 bytes"):
        load_index(out)
    summary = write_shards(images, out, shard_size=5, prior="slic", workers=0, progress=False)
    assert (summary.reused, summary.written) == (2, 2) and load_index(out).shards == reference
    assert load_offsets(out / "shard-000001.idx.json", reference[1]) is not None
    with pytest.raises(UsageError, match="differing: .*shard_size"):
        write_shards(images, out, shard_size=4, prior="slic", workers=0, progress=False)


def test_config_and_builder(shards, tmp_path):
    cfg = load_config(Config, CONFIGS / "byol_cpu_demo.yaml",
                      ["data.kind=shards", f"data.shards={shards / 'index.json'}", "data.prior=slic",
                       "data.prior_size=32", "views.size=32", "views.spanning_size=64", "views.raw_size=32"])
    dataset = builders.build_dataset(cfg, DistInfo(0, 1, 0, torch.device("cpu")))
    assert isinstance(dataset, ShardPretrainDataset) and len(dataset) == 16
    batch = builders.picture_batch(dataset, 3)
    assert batch["index"].tolist() == [0, 1, 2] and batch["prior"].shape == (3, 32, 32)
    with pytest.raises(ConfigError, match="data.kind: shards"):
        load_config(Config, CONFIGS / "byol_cpu_demo.yaml", [f"data.shards={shards}"])
    with pytest.raises(ConfigError, match="data.shards .* is required"):
        DataConfig(kind="shards").validate()
    with pytest.raises(ConfigError, match="remove data.ann_file"):
        DataConfig(kind="shards", shards=str(shards), ann_file="a.json").validate()
    with pytest.raises(DatasetError, match="hold the slic prior .* config asks for grid"):
        ShardPretrainDataset(shards, ViewSampler(VIEWS), "grid", {})
    with pytest.raises(DatasetError, match="hold the slic prior"):
        ShardPretrainDataset(shards, ViewSampler(VIEWS), "slic", {"n_segments": 50})
    assert "prior" not in ShardPretrainDataset(shards, ViewSampler(VIEWS), "none")[(0, 1)]


def test_cli_prior_flags_and_coco_ids(images, tmp_path, capsys):
    out = tmp_path / "grid"
    code = main(["shard", "--images", str(images), "--coco", str(images.parent / "annotations.json"),
                 "--out", str(out), "--prior", "grid", "--prior-n", "4", "--shard-size", "8", "--workers", "0"])
    assert code == 0
    index = load_index(out)
    assert (index.total, index.prior, index.prior_params) == (12, "grid", {"n": 4})  # the json's 12 scenes
    sample = ShardReader(out).read(11)
    assert sample.meta["coco_id"] == 12 and sample.meta["path"] == "scene_000011.png"
    assert np.array_equal(sample.prior, np.repeat(np.repeat(np.arange(16).reshape(4, 4), 16, 0), 16, 1))
    code = main(["shard", "--images", str(images), "--out", str(tmp_path / "x"), "--prior-n-segments", "9"])
    assert code == 2 and "--prior-n-segments given without --prior" in capsys.readouterr().err
    code = main(["shard", "--images", str(images), "--out", str(tmp_path / "y"), "--prior", "grid",
                 "--prior-n-segments", "9"])
    assert code == 2 and "unknown grid parameter" in capsys.readouterr().err


def test_a_coco_file_name_without_extension_gets_the_detected_format(tmp_path):
    Image.new("RGB", (10, 8), (1, 2, 3)).save(tmp_path / "photo", format="JPEG")
    coco = {"images": [{"id": 7, "file_name": "photo", "width": 10, "height": 8}], "annotations": [],
            "categories": []}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    write_shards(tmp_path, tmp_path / "out", coco=tmp_path / "ann.json", workers=0, progress=False)
    sample = ShardReader(tmp_path / "out").read(0)
    assert (sample.ext, sample.meta["coco_id"]) == ("jpg", 7) and sample.image == (tmp_path / "photo").read_bytes()
