"""Issue 12's smaller defects, each pinned by a test that failed on the code before the fix."""

from __future__ import annotations

import pytest
import torch

from discorep.apps.demodata.scenes import make_scenes
from discorep.engine.config import Config
from discorep.engine.configio import ConfigError, from_dict
from discorep.engine import builders
from discorep.engine.distributed import DistInfo
from discorep.engine.train import Trainer
from discorep.methods import build_method
from discorep.methods.base import StepInfo
from tests.helpers import fixed_batch, tiny_config
from tests.engine.test_host_syncs import record_readbacks


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, 8, seed=3, image_size=(96, 96))
    return root / "images"


def test_prior_params_keep_ints_and_null():
    """`discorep shard --prior-resize none` writes resize: null; configs must accept it, ints stay ints."""
    cfg = from_dict(Config, {"data": {"prior": "slic", "prior_params": {"n_segments": 50, "resize": None}},
                             "method": {"name": "detcon", "loss": "contrastive"}})
    assert cfg.data.prior_params == {"n_segments": 50, "resize": None}
    assert isinstance(cfg.data.prior_params["n_segments"], int)
    with pytest.raises(ConfigError, match="data.prior_params.*unknown slic parameter"):
        from_dict(Config, {"data": {"prior": "slic", "prior_params": {"segments": 50}},
                           "method": {"name": "detcon", "loss": "contrastive"}})
    with pytest.raises(ConfigError, match="data.prior is 'none'"):
        from_dict(Config, {"data": {"prior_params": {"n_segments": 50}}})


def test_vit_feature_grid_uses_stride_16_for_c5():
    """ViT-S is single-scale: a K that fits its 14×14 c5 grid (stride 16, not 32) is accepted."""
    cfg = {"model": {"arch": "vit_s"}, "views": {"spanning_size": 224},
           "method": {"name": "odin", "loss": "contrastive", "features": "c5", "discovery_features": "c5", "K": 100}}
    assert from_dict(Config, cfg).method.K == 100  # 7×7 = 49 points at stride 32 would have refused it
    cfg["method"]["K"] = 197
    with pytest.raises(ConfigError, match="196 feature-grid points"):
        from_dict(Config, cfg)


def test_odin_cached_segments_follow_train_seed(scenes, tmp_path):
    def segments(seed: int) -> torch.Tensor:
        cfg = tiny_config("odin_discrete", scenes, tmp_path, {"train": {"seed": seed}})
        torch.manual_seed(0)  # same weights for both seeds: only the k-means seeding may differ
        method = build_method(cfg)
        batch = fixed_batch(cfg, 4)
        labels, _ = method.segments(batch, StepInfo(step=0, epoch=0.0, total_epochs=4.0, seed=seed))
        return labels

    a, a_again, b = segments(0), segments(0), segments(1)
    assert torch.equal(a, a_again)
    assert not torch.equal(a, b), "another train.seed must give other cached segments"


def test_engine_step_with_clipping_and_the_segment_cache_reads_back_once(scenes, tmp_path):
    """clip_grad_norm and SegmentCache.store no longer read values back to the host (a GPU sync)."""
    cfg = tiny_config("odin_discrete", scenes, tmp_path, {"optim": {"clip_grad": 1.0}})
    trainer = Trainer(cfg, DistInfo(0, 1, 0, torch.device("cpu")), tmp_path / "run")
    batch = builders.to_device(fixed_batch(cfg, 4), torch.device("cpu"))  # as the engine hands it over
    with record_readbacks(host_tensors=(batch["index_host"],)) as sites:
        trainer.train_step(batch)  # the first step fills the segment cache (k-means + store)
    allowed = {"engine/agreement.py:exchange_flags (tolist)"}
    assert [s for s in sites if s not in allowed and ":_lloyd " not in s] == []


def test_picture_images_zero_turns_pictures_off_and_negative_is_refused(scenes, tmp_path):
    from discorep.engine.train import pretrain

    run = pretrain(tiny_config("byol", scenes, tmp_path, {"train": {"max_steps": 2, "picture_images": 0}}))
    assert not (run / "masks").exists()
    with pytest.raises(ConfigError, match="picture_images"):
        tiny_config("byol", scenes, tmp_path, {"train": {"picture_images": -1}})
