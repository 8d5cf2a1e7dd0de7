"""Backbone names beyond the contract: level selection, name errors, strides read without weights, norm
conversion of timm layers, and timm state dicts loading through `model.init`."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from discorep.checkpoint import CheckpointError
from discorep.engine import builders
from discorep.engine.config import Config
from discorep.eval.backbone import load_model
from discorep.models.backbones import Encoder, convert_norm, feature_strides, size_multiple, supports_fpn
from discorep.models.timm_backbones import Level, check_arch, feature_levels, select_levels

BN_TYPES = nn.modules.batchnorm._BatchNorm


def _levels(*strides: int) -> tuple[Level, ...]:
    return tuple(Level(i, 8 * (i + 1), s) for i, s in enumerate(strides))


def test_select_levels_hand_cases():
    cnn = select_levels(_levels(2, 4, 8, 16, 32))
    assert {k: lv.index for k, lv in cnn.items()} == {"c2": 1, "c3": 2, "c4": 3, "c5": 4}
    vit = select_levels(_levels(14, 14, 14))  # single-scale: the last block is both, no FPN
    assert vit == {"c4": Level(2, 24, 14), "c5": Level(2, 24, 14)}
    several = select_levels(_levels(4, 4, 8, 16, 16, 32))  # the deepest level of each stride
    assert (several["c2"].index, several["c4"].index) == (1, 4)
    no_fine = select_levels(_levels(8, 16, 32))  # no stride-4 level: c4/c5 but no FPN inputs
    assert set(no_fine) == {"c4", "c5"} and no_fine["c4"].stride == 16


def test_strides_of_named_families():
    assert feature_strides("resnet50") == {"c4": 16, "c5": 32, "fpn": 4}
    assert feature_strides("vit_s") == {"c4": 16, "c5": 16, "fpn": 4}
    assert size_multiple("vit_small_patch14_dinov2") == 14 and size_multiple("convnext_tiny") == 32
    assert size_multiple("vit_base_patch16_224") == 16
    assert supports_fpn("swin_t") and supports_fpn("convnext_tiny") and not supports_fpn("vit_small_patch14_dinov2")


def test_feature_strides_builds_no_weights(monkeypatch):
    """Config validation must stay cheap for any model size: every timm build it makes is on the meta device."""
    devices = []
    real = timm.create_model

    def spy(*args, **kwargs):
        devices.append(torch.get_default_device().type)
        return real(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    feature_levels.cache_clear()  # an earlier call would answer from the cache without building
    assert feature_strides("vit_large_patch14_reg4_dinov2") == {"c4": 14, "c5": 14, "fpn": 4}
    assert devices and set(devices) == {"meta"}


def test_unknown_names_are_one_error_with_suggestions():
    with pytest.raises(ValueError, match=r"unknown arch 'vit_small_patch14_dinov'.*did you mean .*patch14_dinov2"):
        check_arch("vit_small_patch14_dinov")
    with pytest.raises(ValueError, match="did you mean .*convnext_tiny"):
        feature_strides("convnxt_tiny")
    with pytest.raises(ValueError, match="model name"):
        check_arch("")
    with pytest.raises(ValueError, match="did you mean") as err:  # an alias that is also a timm name: once
        check_arch("resnett50")
    suggested = str(err.value).split("did you mean ")[1].rstrip("?").split(", ")
    assert "resnet50" in suggested and len(suggested) == len(set(suggested))
    with pytest.raises(CheckpointError, match="random:convnxt_tiny: unknown architecture"):
        load_model("random:convnxt_tiny")


def test_random_baseline_of_a_timm_name_is_seeded_and_multi_scale():
    a, b = load_model("random:convnext_atto"), load_model("random:convnext_atto")
    assert a.model_config["fpn"] is True and a.encoder.fpn is not None
    for (k, v), w in zip(a.encoder.state_dict().items(), b.encoder.state_dict().values()):
        assert torch.equal(v, w), k
    assert load_model("random:vit_small_patch14_dinov2").model_config["fpn"] is False


# ----------------------------------------------------------------------------- norm conversion
def test_gn_keeps_the_activation_of_timm_batchnormact_and_is_batch_split_independent():
    enc = Encoder("efficientnet_b0", norm="gn").train()
    assert not any(isinstance(m, BN_TYPES) for m in enc.modules())
    from timm.layers import GroupNormAct

    fused = [m for m in enc.modules() if isinstance(m, GroupNormAct)]
    assert fused and any(isinstance(m.act, nn.SiLU) for m in fused)  # EfficientNet's activation survived
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        full = enc(x)["c5"]
        halves = torch.cat([enc(x[:2])["c5"], enc(x[2:])["c5"]])
    torch.testing.assert_close(full, halves, atol=1e-5, rtol=1e-5)


def test_syncbn_keeps_the_activation_of_timm_batchnormact():
    from timm.layers import BatchNormAct2d, SyncBatchNormAct

    net = nn.Sequential(nn.Conv2d(3, 4, 1), BatchNormAct2d(4, act_layer=nn.SiLU), nn.BatchNorm2d(4))
    out = convert_norm(net, "syncbn")
    assert isinstance(out[1], SyncBatchNormAct) and isinstance(out[1].act, nn.SiLU)
    assert type(out[2]) is nn.SyncBatchNorm
    plain = convert_norm(nn.Sequential(BatchNormAct2d(4, act_layer=nn.SiLU)), "none")
    assert isinstance(plain[0], nn.Sequential) and isinstance(plain[0][1], nn.SiLU)


@pytest.mark.parametrize("arch", ["convnext_atto", "vit_small_patch16_224"])
def test_layernorm_models_are_unchanged_by_gn_and_syncbn(arch):
    """No batch norm to convert: LayerNorm statistics already are per sample (what gn/syncbn are for)."""
    encoders = []
    for norm in ("bn", "gn", "syncbn"):
        torch.manual_seed(0)
        encoders.append(Encoder(arch, norm=norm))
    ref = encoders[0].state_dict()
    for enc in encoders[1:]:
        assert [type(m) for m in enc.modules()] == [type(m) for m in encoders[0].modules()]
        assert all(torch.equal(v, ref[k]) for k, v in enc.state_dict().items())


# ----------------------------------------------------------------------------- model.init
class _TwoEncoders(nn.ModuleDict):
    """The one hook `init_backbone` uses of a method: `encoders()`, every backbone copy."""

    def encoders(self) -> list[Encoder]:
        return list(self.values())


def test_a_timm_state_dict_file_initialises_every_encoder(tmp_path):
    """What `model.init: PATH` does with a file written by timm (classifier and head norm included)."""
    torch.manual_seed(123)
    path = tmp_path / "convnext_atto.pth"
    torch.save(timm.create_model("convnext_atto", pretrained=False).state_dict(), path)
    expected = torch.load(path, weights_only=True)
    cfg = Config()
    cfg.model.arch, cfg.model.init = "convnext_atto", str(path)
    torch.manual_seed(0)
    method = _TwoEncoders({"online": Encoder("convnext_atto", fpn=True), "target": Encoder("convnext_atto")})
    builders.init_backbone(cfg, method)
    for enc in method.values():
        own = enc.backbone.state_dict()
        assert len(own) == len(expected) - 4  # head.norm and head.fc (weight, bias) are not in the encoder
        for k, v in own.items():
            assert torch.equal(v, expected[k]), k
    torch.save(timm.create_model("convnext_femto", pretrained=False).state_dict(), path)
    with pytest.raises(CheckpointError, match="do not fit.*model.arch"):
        builders.init_backbone(cfg, method)
