"""Odin's discovery-cost options (issue 16): each changes only what it says, and the paper default stays."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from discorep.apps.demodata.scenes import make_scenes
from discorep.methods import build_method
from discorep.methods.base import StepInfo
from discorep.models.dense import dense_features
from tests.helpers import fixed_batch, tiny_config


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, 4, seed=5, image_size=(96, 96))
    return root / "images"


def _projector_output_dtypes(method, run) -> set[torch.dtype]:
    """dtypes of every Linear output inside the discovery network's projector while `run()` runs."""
    seen: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
             for m in method.discovery.net.projector.modules() if isinstance(m, torch.nn.Linear)]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("dtype, expected", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_discovery_projector_dtype_casts_only_the_projector(scenes, tmp_path, dtype, expected):
    cfg = tiny_config("odin", scenes, tmp_path, {"method": {"discovery_projector_dtype": dtype}})
    torch.manual_seed(0)
    method = build_method(cfg)
    batch = fixed_batch(cfg, 2)
    seen = _projector_output_dtypes(method, lambda: method.segments(batch, StepInfo(0, 0.0, 4.0, seed=0)))
    assert seen == {expected}
    labels, _ = method.segments(batch, StepInfo(0, 0.0, 4.0, seed=0))
    assert labels.dtype == torch.long and int(labels.max()) < cfg.method.K


def test_bf16_projections_stay_close_and_a_bf16_run_keeps_its_autocast(scenes, tmp_path):
    cfg = tiny_config("odin", scenes, tmp_path)
    torch.manual_seed(0)
    method = build_method(cfg)
    net, images = method.discovery.net, fixed_batch(cfg, 2)["span"]
    z32 = dense_features(net, images, "fpn", True)
    z16 = dense_features(net, images, "fpn", True, project_dtype=torch.bfloat16)
    assert z16.dtype == torch.float32  # k-means always gets float32
    cosine = F.cosine_similarity(z32, z16, dim=1)
    assert cosine.min() > 0.99, float(cosine.min())
    # No project_dtype inside a bf16 step (train.precision: bf16): the projector stays in the step's bf16,
    # it is not switched back to fp32.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        seen = _projector_output_dtypes(method, lambda: dense_features(net, images, "fpn", True))
    assert seen == {torch.bfloat16}
