"""`discorep.fileio`: the one atomic writer (checkpoints, exports, prior cache, shards)."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from discorep import fileio


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def half_then_full_disk(f):
        f.write(b"new but torn")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError, match="No space"):
        fileio.atomic_write(target, half_then_full_disk)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_content_names_and_mode(tmp_path, monkeypatch):
    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renamed.append((os.path.basename(a), os.path.basename(b))),
                                                     real_replace(a, b)))
    old = os.umask(0o027)
    try:
        fileio.atomic_write(tmp_path / "a.pt", memoryview(b"abc"))
        fileio.atomic_write(tmp_path / "b.npz", lambda f: f.write(b"xy"), prefix=".tmp-", suffix=".npz")
        fileio.atomic_write(tmp_path / "c.tar", b"z", temp_name="c.tar.tmp")
    finally:
        os.umask(old)
    assert [(tmp_path / n).read_bytes() for n in ("a.pt", "b.npz", "c.tar")] == [b"abc", b"xy", b"z"]
    (a_tmp, _), (b_tmp, _), (c_tmp, _) = renamed
    assert a_tmp.startswith(".a.pt.") and a_tmp.endswith(".tmp")
    assert b_tmp.startswith(".tmp-") and b_tmp.endswith(".npz")
    assert c_tmp == "c.tar.tmp"
    for name in ("a.pt", "b.npz", "c.tar"):  # what open() gives: 0666 minus the umask
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640


def test_the_folder_is_fsynced_after_the_rename_unless_asked_not_to(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(fileio, "fsync_dir", lambda d: synced.append(os.fspath(d)))
    fileio.atomic_write(tmp_path / "a", b"1")
    fileio.atomic_write(tmp_path / "b", b"2", sync_dir=False)
    assert synced == [os.fspath(tmp_path)]
