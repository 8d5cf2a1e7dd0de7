"""Encoder shapes/strides, torchvision weight compatibility, norm conversion, MLP heads and EMA."""

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from discorep.models.backbones import ARCHS, Encoder, convert_norm
from discorep.models.ema import copy_params_, ema_update_, make_ema_copy
from discorep.models.heads import MLP

BN_TYPES = nn.modules.batchnorm._BatchNorm


def _check_maps(enc: Encoder, out: dict, size: int, batch: int) -> None:
    assert set(out) == set(enc.channels) == set(enc.strides)
    for key, t in out.items():
        side = size // enc.strides[key]
        assert tuple(t.shape) == (batch, enc.channels[key], side, side), key


# ----------------------------------------------------------------------------- encoders
@pytest.mark.parametrize("fpn", [False, True])
def test_resnet18_shapes_and_strides(fpn):
    enc = Encoder("resnet18", fpn=fpn, fpn_dim=32)
    out = enc(torch.randn(2, 3, 64, 64))
    assert enc.strides["c4"] == 16 and enc.strides["c5"] == 32
    assert enc.channels["c4"] == 256 and enc.channels["c5"] == 512
    if fpn:
        assert enc.strides["fpn"] == 4 and enc.channels["fpn"] == 32
    _check_maps(enc, out, 64, 2)


def test_up_to_c4_equals_the_full_forward_and_skips_layer4():
    torch.manual_seed(0)
    enc = Encoder("resnet18", fpn=True, fpn_dim=16).eval()
    x = torch.randn(2, 3, 64, 64)
    calls = []
    hook = enc.backbone.layer4.register_forward_hook(lambda *a: calls.append(1))
    full = enc(x)
    assert calls == [1]
    short = enc(x, up_to="c4")
    hook.remove()
    assert calls == [1] and set(short) == {"c4"}  # layer4 (and the FPN that needs it) never ran
    assert torch.equal(short["c4"], full["c4"])
    with pytest.raises(ValueError, match="up_to"):
        enc(x, up_to="c3")


def test_swin_t_shapes_at_small_input():
    enc = Encoder("swin_t", fpn=True, fpn_dim=16)
    out = enc(torch.randn(1, 3, 64, 64))
    assert enc.channels["c4"] == 384 and enc.channels["c5"] == 768
    _check_maps(enc, out, 64, 1)


def test_vit_s_single_scale():
    enc = Encoder("vit_s")
    out = enc(torch.randn(1, 3, 64, 64))
    assert enc.strides == {"c4": 16, "c5": 16}
    assert torch.equal(out["c4"], out["c5"])
    _check_maps(enc, out, 64, 1)
    with pytest.raises(ValueError, match="single-scale"):
        Encoder("vit_s", fpn=True)


def test_unknown_arch_and_bad_input_errors():
    # resnet34 was refused before timm names were accepted; a misspelt name is one error with suggestions.
    with pytest.raises(ValueError) as err:
        Encoder("resnet34x")
    assert all(a in str(err.value) for a in ARCHS)
    assert "did you mean" in str(err.value) and "resnet34" in str(err.value)
    with pytest.raises(ValueError, match="Invalid pretrained tag"):  # a timm name with a tag timm lacks
        Encoder("resnet18.no_such_tag")
    with pytest.raises(ValueError, match="norm"):
        Encoder("resnet18", norm="ln")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        Encoder("resnet18")(torch.randn(3, 64, 64))


def test_resnet50_state_dict_loads_into_torchvision():
    enc = Encoder("resnet50").eval()
    with torch.no_grad():  # non-trivial running stats so eval-mode BN really depends on the buffers
        for m in enc.backbone.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    tv = torchvision.models.resnet50(weights=None)
    sd = enc.backbone_state_dict()
    assert set(sd) == set(tv.state_dict()) - {"fc.weight", "fc.bias"}
    sd.update({"fc.weight": tv.fc.weight, "fc.bias": tv.fc.bias})
    tv.load_state_dict(sd, strict=True)
    tv.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = create_feature_extractor(tv, {"layer3": "c4", "layer4": "c5"})(x)
        out = enc(x)
    assert torch.equal(out["c5"], ref["c5"]) and torch.equal(out["c4"], ref["c4"])


def test_channels_last_matches_contiguous():
    enc = Encoder("resnet18", fpn=True, fpn_dim=16).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = enc(x)
        out = enc.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    for key in ref:
        assert torch.allclose(out[key], ref[key], atol=1e-4), key


# ----------------------------------------------------------------------------- norm conversion
def test_convert_norm_gn_removes_batchnorm_and_is_batch_split_independent():
    enc = Encoder("resnet18", norm="gn").train()
    assert not any(isinstance(m, BN_TYPES) for m in enc.modules())
    gns = [m for m in enc.modules() if isinstance(m, nn.GroupNorm)]
    assert len(gns) == 20 and all(m.num_channels % m.num_groups == 0 for m in gns)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        full = enc(x)["c5"]
        halves = torch.cat([enc(x[:2])["c5"], enc(x[2:])["c5"]])
    assert torch.allclose(full, halves, atol=1e-5)


def test_convert_norm_keeps_affine_and_handles_odd_channels():
    seq = nn.Sequential(nn.BatchNorm2d(48), nn.BatchNorm1d(10))
    with torch.no_grad():
        seq[0].weight.fill_(3.0)
    out = convert_norm(seq, "gn")
    assert isinstance(out[0], nn.GroupNorm) and out[0].num_groups == 24  # largest divisor of 48 <= 32
    assert out[1].num_groups == 10 and torch.all(out[0].weight == 3.0)
    with pytest.raises(ValueError, match="unknown norm"):
        convert_norm(seq, "batch")


def test_convert_norm_syncbn_and_none():
    net = convert_norm(torchvision.models.resnet18(weights=None), "syncbn")
    kinds = {type(m) for m in net.modules() if isinstance(m, BN_TYPES)}
    assert kinds == {nn.SyncBatchNorm}
    plain = convert_norm(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)), "none")
    assert isinstance(plain[1], nn.Identity)


# ----------------------------------------------------------------------------- heads
def test_mlp_layout_and_shapes():
    mlp = MLP(8, 16, 4)
    assert [type(m) for m in mlp.net] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    x = torch.randn(3, 5, 8)
    y3 = mlp(x)
    assert y3.shape == (3, 5, 4)
    # BN statistics over all B·M rows: the 3-D call equals the flattened 2-D call.
    assert torch.allclose(y3.reshape(15, 4), mlp(x.reshape(15, 8)), atol=1e-6)
    # BN sits right after the first Linear: in train mode its output has zero mean per feature.
    hidden = mlp.net[1](mlp.net[0](x.reshape(15, 8)))
    assert torch.allclose(hidden.mean(0), mlp.net[1].bias, atol=1e-5)
    assert isinstance(MLP(8, 16, 4, norm="none").net[1], nn.Identity)
    assert isinstance(MLP(8, 16, 4, norm="gn").net[1], nn.GroupNorm)
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        mlp(torch.randn(3, 7))


# ----------------------------------------------------------------------------- EMA
def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_ema_update_matches_hand_computation():
    online = _net()
    target = make_ema_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    assert target[0].weight.data_ptr() != online[0].weight.data_ptr()
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
        online[1].running_mean.fill_(2.0)
        online[1].num_batches_tracked.fill_(7)
    old = {k: v.clone() for k, v in target.state_dict().items()}
    ema_update_(target, online, 0.9)
    new, on = target.state_dict(), online.state_dict()
    for key in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        assert torch.allclose(new[key], 0.9 * old[key] + 0.1 * on[key], atol=1e-6), key
    assert new["1.num_batches_tracked"].item() == 7


def test_copy_params_and_structure_errors():
    online, target = _net(), _net()
    copy_params_(target, online)
    for (k, a), b in zip(target.state_dict().items(), online.state_dict().values()):
        assert torch.equal(a, b), k
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with torch.no_grad():
        online[0].weight.add_(1.0)
    ema_update_(target, online, 1.0)  # τ = 1 keeps the target
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
    with pytest.raises(ValueError, match="differ"):
        ema_update_(nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5)), online, 0.9)
    with pytest.raises(ValueError, match="tau"):
        ema_update_(target, online, 1.5)
