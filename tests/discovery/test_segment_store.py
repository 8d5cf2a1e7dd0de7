"""Odin's per-rank segment store (discovery/cache.py) and the rank-stable shards it relies on
(data/pretrain.py): hand-made label maps round-trip through the file, a reopened store trusts only the
slots filled at checkpoint time, and the sampler keeps each rank's images fixed for a period."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from discorep.checkpoint import prune_checkpoints, rank_state_path
from discorep.data.pretrain import ResumableBatchSampler, rank_shard
from discorep.discovery.cache import SegmentCache, SegmentStore


def _maps(n: int, h: int = 3, w: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    maps = torch.randint(-1, 32768, (n, h, w), generator=g)
    maps[0, 0, 0], maps[-1, -1, -1] = 32767, -1  # the int16 extremes the store must keep exactly
    return maps


def test_store_round_trips_maps_and_reopens_trusting_only_the_saved_slots(tmp_path):
    shard = torch.tensor([40, 3, 17, 8, 29])  # any order: slot k holds the k-th smallest index
    store = SegmentStore(tmp_path / "s.bin", shard)
    maps = _maps(3)
    assert store.missing([17, 3, 40]) == [0, 1, 2]
    store.store([17, 3, 40], maps)
    assert store.missing([3, 8, 17, 40, 29]) == [1, 4]
    assert np.array_equal(store.read([40, 17, 3]), maps[[2, 0, 1]].numpy())
    assert (tmp_path / "s.bin").stat().st_size <= 5 * 3 * 5 * 2  # one int16 map per shard slot, at most
    saved = store.state()
    store.store([29], _maps(1, seed=1))  # written after the "checkpoint": not trusted on reopening
    store.flush()
    store.close()
    again = SegmentStore(tmp_path / "s.bin", shard, filled=saved["filled"].numpy(), shape=tuple(saved["shape"]))
    assert again.missing([3, 8, 17, 29, 40]) == [1, 3]
    assert np.array_equal(again.read([3, 17, 40]), maps[[1, 0, 2]].numpy())
    fresh = SegmentStore(tmp_path / "s.bin", shard)  # a new version file never trusts what was there
    assert fresh.missing([3, 17, 40]) == [0, 1, 2]


def test_store_counts_images_outside_its_shard_and_rejects_ids_beyond_int16(tmp_path):
    store = SegmentStore(tmp_path / "s.bin", torch.tensor([1, 2]))
    store.store([2, 7], _maps(2))  # 7: a bad file's replacement from another rank's shard
    assert store.uncached == 1 and store.missing([2, 7]) == [1] and int(store.filled.sum()) == 1
    with pytest.raises(ValueError, match="exceed int16"):
        store.store([1], torch.full((1, 3, 5), 32768))
    with pytest.raises(ValueError, match="shorter than"):  # a file that lost its slots cannot be reopened
        SegmentStore(tmp_path / "gone.bin", torch.tensor([1, 2]), filled=np.array([True, True]), shape=(3, 5))


def test_store_without_a_shard_keeps_every_index(tmp_path):
    store = SegmentStore(tmp_path / "s.bin", None)
    maps = _maps(2)
    store.store([1000, 4], maps)
    assert store.missing([4, 5, 1000]) == [1] and np.array_equal(store.read([4, 1000]), maps[[1, 0]].numpy())


def test_cache_versions_keep_the_current_and_previous_file_and_save_no_maps(tmp_path):
    cache = SegmentCache()
    cache.attach(tmp_path, rank=1, world_size=2, shard_of=lambda v: rank_shard(10, 0, v, 2, 1))
    for _ in range(3):
        store = cache.current()
        ids = store.shard[:2].tolist()
        store.store(ids, _maps(2))
        cache.clear()
    cache.current()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank1-of-2-v2.bin", "rank1-of-2-v3.bin"]
    state = cache.rank_state_dict()
    assert state["version"] == 3 and not state["filled"].any() and state["filled"].dtype == torch.bool


def test_prune_removes_each_rank_part_with_its_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for step in (1, 2, 3):
        (folder / f"step_{step:08d}.pt").write_bytes(b"x")
        for rank in (0, 1):
            rank_state_path(folder / f"step_{step:08d}.pt", rank, 2).write_bytes(b"x")
    (folder / "step_00000004.rank1-of-2.pt").write_bytes(b"x")  # rank 1 saving ahead of rank 0: kept
    (folder / ".step_00000001.rank0-of-2.pt.ab12.tmp").write_bytes(b"x")  # a killed writer's temp: orphan
    prune_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in folder.iterdir()) == [
        "step_00000002.pt", "step_00000002.rank0-of-2.pt", "step_00000002.rank1-of-2.pt",
        "step_00000003.pt", "step_00000003.rank0-of-2.pt", "step_00000003.rank1-of-2.pt",
        "step_00000004.rank1-of-2.pt"]


def _epochs(n, batch, world, rank, period, epochs, start=0):
    s = ResumableBatchSampler(n, batch, world_size=world, rank=rank, seed=3, start_step=start,
                              total_steps=epochs * (n // (batch * world)), shard_period_epochs=period)
    return [[i for i, _ in b] for b in s]


def test_rank_stable_shards_stay_fixed_within_a_period_and_resume_exactly():
    n, batch, world, period = 41, 3, 2, 2
    spe = n // (batch * world)  # 6 steps of 3 images per rank: 18 of each rank's 20
    shards = [[set(rank_shard(n, 3, p, world, r).tolist()) for r in range(world)] for p in range(3)]
    for p in range(3):
        assert all(len(s) == n // world for s in shards[p]) and not shards[p][0] & shards[p][1]
    assert shards[0][0] != shards[1][0]  # another period, another shard
    for rank in range(world):
        batches = _epochs(n, batch, world, rank, period, 6)
        epochs = [sum(batches[e * spe:(e + 1) * spe], []) for e in range(6)]
        for e, images in enumerate(epochs):
            assert len(set(images)) == len(images) == spe * batch  # no image twice in an epoch
            assert set(images) <= shards[e // period][rank]
        assert epochs[0] != epochs[1]  # each epoch reorders the shard
        assert _epochs(n, batch, world, rank, period, 6, start=8) == batches[8:]  # resumed mid-period


def test_an_old_checkpoints_in_memory_cache_fills_each_ranks_store_with_its_shard(tmp_path, caplog):
    maps = _maps(10)
    for rank in (0, 1):
        cache = SegmentCache()
        cache.attach(tmp_path, rank=rank, world_size=2, shard_of=lambda v, r=rank: rank_shard(10, 0, v, 2, r))
        cache.load_legacy({"indices": torch.arange(10), "labels": maps.to(torch.int16), "version": 3})
        with caplog.at_level("WARNING", logger="discorep"):
            cache.load_rank_state_dict(None, "old checkpoint")  # the old format has no per-rank part
        assert "recomputed" not in caplog.text
        shard = sorted(rank_shard(10, 0, 3, 2, rank).tolist())
        store = cache.current()
        assert cache.version == 3 and store.missing(list(range(10))) == [i for i in range(10) if i not in shard]
        assert np.array_equal(store.read(shard), maps[shard].numpy())
