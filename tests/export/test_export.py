"""Export round trips: torchvision/timm load strictly and give the trained features; detectron2 and
mmseg key layouts match the toolkits' documented naming (written out here, without installing them)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn

from discorep.checkpoint import CheckpointError
from discorep.cli import main
from discorep.export import export_backbone
from discorep.export.converters import detectron2_key
from discorep.models.backbones import Encoder

NORM_STATS = ("weight", "bias", "running_mean", "running_var")


def _checkpoint(tmp_path, arch: str, fpn: bool = False, norm: str = "bn"):
    """A pretraining-style checkpoint whose online encoder has random, non-default norm parameters
    (a swapped or dropped norm tensor changes the eval-mode features), plus parts the export must drop."""
    torch.manual_seed(0)
    enc = Encoder(arch, fpn=fpn, norm=norm)
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    online = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    online["projector.0.weight"] = torch.randn(8, 4)
    state = {"format": "discorep-checkpoint-v1", "online": online, "target": dict(online),
             "discovery": {"w": torch.zeros(2)},
             "config": {"model": {"arch": arch, "fpn": fpn, "fpn_dim": 256, "norm": norm}}}
    path = tmp_path / f"{arch}_{norm}.pt"
    torch.save(state, path)
    return path, enc.eval()


def _tv_c5(net, x):
    return net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_export_loads_strictly_and_reproduces_c5(tmp_path, arch):
    ckpt, enc = _checkpoint(tmp_path, arch, fpn=True)
    out = export_backbone(checkpoint=ckpt, to="torchvision", out=tmp_path / "tv.pth")
    sd = torch.load(out, weights_only=True)
    assert not any("fpn" in k or "projector" in k for k in sd)
    net = getattr(torchvision.models, arch)()
    net.load_state_dict(sd, strict=True)
    assert not net.fc.weight.any() and not net.fc.bias.any()  # the documented zero placeholder
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(_tv_c5(net.eval(), x), enc(x)["c5"])


def test_groupnorm_export_loads_into_a_groupnorm_resnet(tmp_path):
    ckpt, enc = _checkpoint(tmp_path, "resnet18", norm="gn")
    out = export_backbone(checkpoint=ckpt, to="torchvision", out=tmp_path / "gn.pth")
    net = torchvision.models.resnet18(norm_layer=lambda c: nn.GroupNorm(32, c))
    net.load_state_dict(torch.load(out, weights_only=True), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(_tv_c5(net.eval(), x), enc(x)["c5"])
    d2 = export_backbone(checkpoint=ckpt, to="detectron2", out=tmp_path / "gn.pkl")
    with open(d2, "rb") as f:
        model = pickle.load(f)["model"]
    assert "res2.0.conv1.norm.weight" in model and not any("running" in k for k in model)
    mm = torch.load(export_backbone(checkpoint=ckpt, to="mmseg", out=tmp_path / "gn.pth"),
                    weights_only=True)["state_dict"]
    # mmcv names GroupNorm layers gn1/gn2 (BatchNorm ones bn1/bn2)
    assert torch.equal(mm["backbone.gn1.weight"], enc.backbone.bn1.weight)
    assert torch.equal(mm["backbone.layer2.0.gn2.bias"], enc.backbone.layer2[0].bn2.bias)
    assert "backbone.layer2.0.downsample.1.weight" in mm and not any(".bn" in k for k in mm)


def test_timm_resnet_export_loads_strictly_and_gives_the_features(tmp_path):
    ckpt, enc = _checkpoint(tmp_path, "resnet18")
    out = export_backbone(checkpoint=ckpt, to="timm", out=tmp_path / "timm.pth")
    net = timm.create_model("resnet18", pretrained=False)
    net.load_state_dict(torch.load(out, weights_only=True), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net.eval().forward_features(x), enc(x)["c5"])


@pytest.mark.parametrize("arch,name", [("swin_t", "swin_tiny_patch4_window7_224"),
                                       ("vit_s", "vit_small_patch16_224")])
def test_timm_transformer_export_loads_into_the_default_timm_model(tmp_path, arch, name):
    ckpt, enc = _checkpoint(tmp_path, arch)
    out = export_backbone(checkpoint=ckpt, to="timm", out=tmp_path / "t.pth")
    net = timm.create_model(name, pretrained=False)
    net.load_state_dict(torch.load(out, weights_only=True), strict=True)
    assert not net.get_classifier().weight.any()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        feats = net.eval().forward_features(x)
        c5 = enc(x)["c5"]
    if arch == "swin_t":  # timm: (B, H, W, C) after the final norm; Encoder: NCHW
        feats = feats.permute(0, 3, 1, 2)
    else:  # timm: tokens incl. the class token; Encoder: patch tokens on the grid
        feats = feats[:, net.num_prefix_tokens:].transpose(1, 2).reshape(c5.shape)
    torch.testing.assert_close(feats, c5)


def _expected_d2_keys(blocks, convs) -> set[str]:
    """detectron2's documented ResNet layout: stem.conv1 (+ norm), res2..res5 blocks with
    conv1..convN (+ norm), shortcut (+ norm) only in block 0 of a stage whose width or stride changes
    (every stage of a bottleneck ResNet; not res2 of R18, whose 64 -> 64 channels need none)."""
    keys = {"stem.conv1.weight", *(f"stem.conv1.norm.{p}" for p in NORM_STATS)}
    for stage, n in zip(range(2, 6), blocks):
        for b in range(n):
            shortcut = b == 0 and (stage > 2 or len(convs) == 3)
            names = [f"conv{c}" for c in convs] + (["shortcut"] if shortcut else [])
            for name in names:
                keys |= {f"res{stage}.{b}.{name}.weight", *(f"res{stage}.{b}.{name}.norm.{p}" for p in NORM_STATS)}
    return keys


@pytest.mark.parametrize("arch,blocks,convs", [("resnet50", (3, 4, 6, 3), (1, 2, 3)),
                                               ("resnet18", (2, 2, 2, 2), (1, 2))])
def test_detectron2_export_matches_the_documented_layout_one_to_one(tmp_path, arch, blocks, convs):
    ckpt, enc = _checkpoint(tmp_path, arch, fpn=True)
    out = export_backbone(checkpoint=ckpt, to="detectron2", out=tmp_path / "d2.pkl")
    with open(out, "rb") as f:
        data = pickle.load(f)
    assert data["__author__"] == "discorep" and data["matching_heuristics"] is True
    expected = _expected_d2_keys(blocks, convs)
    assert set(data["model"]) == expected
    src = {k: v for k, v in enc.backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert {detectron2_key(k) for k in src} == expected and len(src) == len(expected)  # bijective
    for k, v in src.items():
        value = data["model"][detectron2_key(k)]
        assert isinstance(value, np.ndarray) and np.array_equal(value, v.numpy())


def test_detectron2_key_examples():
    assert detectron2_key("conv1.weight") == "stem.conv1.weight"
    assert detectron2_key("bn1.running_mean") == "stem.conv1.norm.running_mean"
    assert detectron2_key("layer1.0.downsample.0.weight") == "res2.0.shortcut.weight"
    assert detectron2_key("layer1.0.downsample.1.running_var") == "res2.0.shortcut.norm.running_var"
    assert detectron2_key("layer4.2.bn3.weight") == "res5.2.conv3.norm.weight"
    with pytest.raises(ValueError):
        detectron2_key("fc.weight")


def test_mmseg_export_puts_the_whole_backbone_under_backbone_prefix(tmp_path):
    ckpt, enc = _checkpoint(tmp_path, "resnet18", fpn=True)
    out = export_backbone(checkpoint=ckpt, to="mmseg", out=tmp_path / "mmseg.pth")
    sd = torch.load(out, weights_only=True)["state_dict"]
    src = enc.backbone.state_dict()
    assert set(sd) == {f"backbone.{k}" for k in src}  # no fc, fpn or projector; nothing lost
    for k, v in src.items():
        assert torch.equal(sd[f"backbone.{k}"], v)


def test_clear_errors_and_nothing_half_written(tmp_path):
    ckpt, _ = _checkpoint(tmp_path, "vit_s")
    for to in ("detectron2", "mmseg", "torchvision"):
        with pytest.raises(ValueError, match="vit_s.*--to timm"):
            export_backbone(checkpoint=ckpt, to=to, out=tmp_path / "x.pkl")
    with pytest.raises(ValueError, match="one of torchvision, timm, detectron2, mmseg"):
        export_backbone(checkpoint=ckpt, to="onnx", out=tmp_path / "x.pt")
    r18, _ = _checkpoint(tmp_path, "resnet18")
    with pytest.raises(ValueError, match=r"\.pkl"):
        export_backbone(checkpoint=r18, to="detectron2", out=tmp_path / "x.pth")
    torch.save({"online": {"encoder.backbone.conv1.weight": torch.zeros(1)}, "config": {}}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="architecture"):
        export_backbone(checkpoint=tmp_path / "c.pt", to="timm", out=tmp_path / "x.pt")
    state = torch.load(r18, weights_only=True)
    state["online"]["encoder.backbone.layer1.0.conv1.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not match"):
        export_backbone(checkpoint=tmp_path / "bad.pt", to="mmseg", out=tmp_path / "x.pt")
    assert not any(p.name.startswith(("x.", ".x.")) for p in tmp_path.iterdir())


def test_cli_export_writes_the_file_and_reports_foreign_checkpoints(tmp_path, capsys):
    ckpt, _ = _checkpoint(tmp_path, "resnet18")
    out = tmp_path / "sub" / "a.pth"
    assert main(["export", "--checkpoint", str(ckpt), "--to", "torchvision", "--out", str(out)]) == 0
    torchvision.models.resnet18().load_state_dict(torch.load(out, weights_only=True), strict=True)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    assert main(["export", "--checkpoint", str(tmp_path / "other.pt"), "--to", "mmseg",
                 "--out", str(tmp_path / "b.pth")]) == 2
    assert "not a discorep pretraining checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "b.pth").exists()


@pytest.mark.parametrize("arch", ["convnext_atto", "efficientnet_b0"])
def test_any_timm_arch_exports_to_timm_and_loads_strictly(tmp_path, arch):
    """A timm name beyond the four fixed ones: the file loads strictly into timm.create_model(arch) and
    gives the encoder's c5; the classifier is zeros, the layers the encoder drops after its deepest level
    (ConvNeXt's head norm, EfficientNet's conv_head + bn2) hold timm's initialisation, not zeros."""
    ckpt, enc = _checkpoint(tmp_path, arch)
    sd = torch.load(export_backbone(checkpoint=ckpt, to="timm", out=tmp_path / "t.pth"), weights_only=True)
    net = timm.create_model(arch, pretrained=False)
    net.load_state_dict(sd, strict=True)
    assert not net.get_classifier().weight.any() and not net.get_classifier().bias.any()
    torch.manual_seed(0)
    fresh = timm.create_model(arch, pretrained=False).state_dict()
    dropped = [k for k in fresh if k not in enc.backbone.state_dict() and k not in
               {f"{p}.{s}" for p in ("head.fc", "classifier") for s in ("weight", "bias")}]
    assert dropped  # both archs have such layers
    for k in dropped:
        assert torch.equal(sd[k], fresh[k]), k
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        (c5,) = net.eval().forward_intermediates(x, indices=[enc.levels["c5"].index], norm=True,
                                                 intermediates_only=True)
        assert torch.equal(c5, enc(x)["c5"])
    with pytest.raises(ValueError, match=f"{arch}.*--to timm"):
        export_backbone(checkpoint=ckpt, to="mmseg", out=tmp_path / "x.pth")


def test_random_export_writes_plain_contiguous_weights_equal_to_the_eval_baseline(tmp_path):
    """`random:<arch>` goes through eval's loader, whose CPU model is channels-last: the file must still
    hold ordinary contiguous tensors (what a checkpoint's export writes), with the baseline's values."""
    from discorep.eval.backbone import load_model

    out = export_backbone(checkpoint="random:resnet18", to="torchvision", out=tmp_path / "r.pth")
    weights = torch.load(out, map_location="cpu", weights_only=True)
    weights = weights.get("state_dict", weights) if isinstance(weights, dict) else weights
    baseline = load_model("random:resnet18").encoder.backbone.state_dict()
    convs = [k for k, v in weights.items() if v.dim() == 4]
    assert convs and all(weights[k].is_contiguous() for k in convs)
    for k in convs:
        torch.testing.assert_close(weights[k], baseline[k], rtol=0, atol=0)
