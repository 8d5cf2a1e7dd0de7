"""Fast paths of the segmentation output: identical to the straightforward versions they replace."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from discorep.eval.discover import _savez_fast
from discorep.eval.segment import upsample_nearest


@pytest.mark.parametrize("src, dst", [((7, 7), (480, 640)), ((14, 14), (333, 500)), ((12, 9), (12, 9)),
                                      ((56, 56), (20, 31)), ((1, 5), (7, 3))])
def test_upsample_nearest_equals_torch_nearest_exact(src, dst):
    labels = torch.randint(-1, 128, src, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(labels[None, None].float(), size=dst, mode="nearest-exact")[0, 0].to(torch.int32)
    got = upsample_nearest(labels, *dst)
    assert got.dtype == np.int32 and got.shape == dst
    assert np.array_equal(got, expected.numpy())
    assert np.array_equal(upsample_nearest(labels.numpy(), *dst), got)  # numpy input too


def test_fast_npz_is_read_back_by_np_load_as_written():
    arrays = {"labels_k1": np.zeros((5, 7), np.int32), "labels_k8": np.arange(35, dtype=np.int32).reshape(7, 5).T}
    buf = io.BytesIO()
    _savez_fast(buf, arrays)
    buf.seek(0)
    with np.load(buf) as loaded:
        assert sorted(loaded.files) == sorted(arrays)
        for name, a in arrays.items():
            assert loaded[name].dtype == a.dtype and np.array_equal(loaded[name], a)
