"""Each method declares the extra views its step reads (`needs_views`); the data set builds only those.

Issue 23 item 8: every batch used to carry Odin's 448² spanning view and the raw view, which BYOL and
DetCon never read (R2O reads the raw view only): ~3 MB per image of host→device traffic at paper sizes.
"""

from __future__ import annotations

import pytest
import torch

from discorep.apps.demodata.scenes import make_scenes
from discorep.data.views import EXTRA_VIEWS
from discorep.engine import builders
from discorep.engine.distributed import DistInfo
from discorep.methods import build_method
from discorep.methods.base import StepInfo
from discorep.methods.registry import BUILTIN_MODULES, method_class, registered_methods
from tests.helpers import fixed_batch, tiny_config

# Every built-in method and every setting that reads another view; the expected views by hand.
EXPECTED = {
    ("byol", ()): set(),
    ("detcon", ()): set(),  # the prior's frame is raw_box (always shipped), never the raw image
    ("odin", ()): {"span"},  # continuous discovery updates segment v0
    ("odin_discrete", ()): {"raw"},  # cached segments are computed on the raw view
    ("r2o", ()): {"raw"},  # region embeddings from the target C4 on the raw view
    ("r2o", (("method", "region_network", "discovery"),)): {"raw"},  # Odin+R2O hybrid
    ("r2o", (("method", "loss", "contrastive"),)): {"raw"},
}
INFO = StepInfo(step=0, epoch=0.0, total_epochs=4.0, seed=0)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, 4, seed=5, image_size=(96, 96))
    return root / "images"


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("out")  # one prior cache for all (its key holds the prior's parameters)


def _config(method, extra, scenes, out):
    overrides: dict = {}
    for section, key, value in extra:
        overrides.setdefault(section, {})[key] = value
    return tiny_config(method, scenes, out, overrides)


def test_every_builtin_method_is_covered():
    covered = {m.replace("_discrete", "") for m, _ in EXPECTED}
    assert covered == {n for n in registered_methods() if method_class(n).__module__ in BUILTIN_MODULES}


@pytest.mark.parametrize("method,extra", list(EXPECTED), ids=lambda v: str(v))
def test_the_batch_has_exactly_the_views_the_step_reads(method, extra, scenes, out):
    cfg = _config(method, extra, scenes, out)
    declared = method_class(cfg.method.name).needs_views(cfg)
    assert declared == EXPECTED[(method, extra)]
    batch = fixed_batch(cfg, 2)  # built as training builds it (engine.builders.build_dataset)
    assert {k for k in batch if k in EXTRA_VIEWS} == declared
    assert ("span_box" in batch) == ("span" in declared) and "raw_box" in batch
    torch.manual_seed(0)
    model = build_method(cfg)
    loss, _ = model(batch, INFO)  # the declared views suffice
    assert torch.isfinite(loss)
    for view in declared:  # and each of them is read: without it the step fails
        without = {k: v for k, v in batch.items() if k != view}
        with pytest.raises(KeyError, match=view):
            model(without, StepInfo(step=1, epoch=0.5, total_epochs=4.0, seed=0))


@pytest.mark.parametrize("method,extra", list(EXPECTED), ids=lambda v: str(v))
def test_the_pictures_batch_adds_the_raw_view_for_discover(method, extra, scenes, out):
    """The mask pictures show the raw view and `discover` may read it, whatever the training views."""
    cfg = _config(method, extra, scenes, out)
    dataset = builders.build_dataset(cfg, DistInfo(0, 1, 0, torch.device("cpu")))
    batch = builders.picture_batch(dataset, 2)
    assert {k for k in batch if k in EXTRA_VIEWS} == EXPECTED[(method, extra)] | {"raw"}
    assert "raw" not in dataset[(0, 1)] or "raw" in EXPECTED[(method, extra)]  # training set unchanged
    labels, frames = build_method(cfg).discover(batch, INFO)
    assert labels.shape[0] == 2 and torch.equal(frames, batch["raw_box"])


def test_byol_ships_only_the_two_views(scenes, out):
    batch = fixed_batch(tiny_config("byol", scenes, out), 2)
    assert not {"span", "span_box", "raw"} & set(batch)
    images = {k for k, v in batch.items() if isinstance(v, torch.Tensor) and v.dim() == 4}
    assert images == {"view1", "view2"}
