"""On CPU the evaluated encoder runs in channels-last (oneDNN's layout, faster there): the layout must
change speed only, never what the features are."""

from __future__ import annotations

import copy

import pytest
import torch

from discorep.eval.backbone import load_model
from discorep.models.dense import dense_features


@pytest.mark.parametrize("feature", ["c4", "c5", "fpn"])
def test_cpu_eval_model_is_channels_last_and_its_features_equal_the_nchw_ones(feature):
    model = load_model("random:resnet18")
    convs = [p for p in model.encoder.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    reference = copy.deepcopy(model)
    reference.encoder.to(memory_format=torch.contiguous_format)
    assert not all(p.is_contiguous(memory_format=torch.channels_last) for p in reference.encoder.parameters()
                   if p.dim() == 4)
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    got, want = dense_features(model, x, feature), dense_features(reference, x, feature)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
