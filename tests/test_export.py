"""Export round trips: torchvision/timm load strictly and give the trained features; detectron2 and
mmseg key layouts match the toolkits' documented naming (without installing them)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import timm
import torch
import torchvision

from discorep.cli import main
from discorep.export import export_backbone
from discorep.export.converters import detectron2_key
from discorep.models.backbones import Encoder


def _checkpoint(tmp_path, arch: str, fpn: bool = False):
    torch.manual_seed(0)
    enc = Encoder(arch, fpn=fpn)
    with torch.no_grad():  # non-trivial BN statistics, so eval-mode outputs depend on them
        for m in enc.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    state = {"online": {f"encoder.{k}": v for k, v in enc.state_dict().items()},
             "target": {}, "config": {"model": {"arch": arch, "fpn": fpn, "fpn_dim": 256, "norm": "bn"}}}
    path = tmp_path / f"{arch}.pt"
    torch.save(state, path)
    return path, enc.eval()


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_export_loads_strictly_and_reproduces_c5(tmp_path, arch):
    ckpt, enc = _checkpoint(tmp_path, arch, fpn=True)
    out = export_backbone(checkpoint=ckpt, to="torchvision", out=tmp_path / "tv.pth")
    net = getattr(torchvision.models, arch)()
    net.load_state_dict(torch.load(out, weights_only=True), strict=True)
    net.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        c5 = net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))))
        assert torch.equal(c5, enc(x)["c5"])


def test_timm_export_loads_into_timm_resnet(tmp_path):
    ckpt, enc = _checkpoint(tmp_path, "resnet18")
    out = export_backbone(checkpoint=ckpt, to="timm", out=tmp_path / "timm.pth")
    net = timm.create_model("resnet18", pretrained=False)
    net.load_state_dict(torch.load(out, weights_only=True), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net.eval().forward_features(x), enc(x)["c5"])


def _expected_d2_keys(blocks=(3, 4, 6, 3)) -> set[str]:
    """detectron2's documented ResNet-50 layout: stem.conv1 (+norm), resN.B.conv{1,2,3} (+norm),
    shortcut (+norm) only in block 0 of each stage."""
    norm = ("weight", "bias", "running_mean", "running_var")
    keys = {"stem.conv1.weight", *(f"stem.conv1.norm.{p}" for p in norm)}
    for stage, n in zip(range(2, 6), blocks):
        for b in range(n):
            for c in (1, 2, 3):
                keys |= {f"res{stage}.{b}.conv{c}.weight", *(f"res{stage}.{b}.conv{c}.norm.{p}" for p in norm)}
            if b == 0:
                keys |= {f"res{stage}.0.shortcut.weight", *(f"res{stage}.0.shortcut.norm.{p}" for p in norm)}
    return keys


def test_detectron2_export_matches_the_documented_layout_one_to_one(tmp_path):
    ckpt, enc = _checkpoint(tmp_path, "resnet50")
    out = export_backbone(checkpoint=ckpt, to="detectron2", out=tmp_path / "d2.pkl")
    with open(out, "rb") as f:
        data = pickle.load(f)
    assert data["__author__"] == "discorep" and data["matching_heuristics"] is True
    assert set(data["model"]) == _expected_d2_keys()
    src = {k: v for k, v in enc.backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len({detectron2_key(k) for k in src}) == len(src)  # injective
    for k, v in src.items():
        assert isinstance(data["model"][detectron2_key(k)], np.ndarray)
        assert np.array_equal(data["model"][detectron2_key(k)], v.numpy())
    assert detectron2_key("layer1.0.downsample.1.running_var") == "res2.0.shortcut.norm.running_var"
    assert detectron2_key("layer4.2.bn3.weight") == "res5.2.conv3.norm.weight"


def test_mmseg_export_puts_the_backbone_under_backbone_prefix(tmp_path):
    ckpt, enc = _checkpoint(tmp_path, "resnet18", fpn=True)
    out = export_backbone(checkpoint=ckpt, to="mmseg", out=tmp_path / "mmseg.pth")
    sd = torch.load(out, weights_only=True)["state_dict"]
    assert all(k.startswith("backbone.") for k in sd) and not any(".fc." in k or "fpn" in k for k in sd)
    for k, v in enc.backbone.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(sd[f"backbone.{k}"], v)


def test_cli_export_and_clear_errors(tmp_path, capsys):
    ckpt, _ = _checkpoint(tmp_path, "resnet18")
    assert main(["export", "--checkpoint", str(ckpt), "--to", "torchvision", "--out", str(tmp_path / "a.pth")]) == 0
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    assert main(["export", "--checkpoint", str(tmp_path / "other.pt"), "--to", "mmseg",
                 "--out", str(tmp_path / "b.pth")]) == 2
    assert "not a discorep pretraining checkpoint" in capsys.readouterr().err
