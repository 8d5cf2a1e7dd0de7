"""Transfer models: a real checkpoint's backbone goes strictly into Mask R-CNN and the segmenters, their
ResNet features equal `eval`'s backbone's, freezing follows torchvision's meaning, and dilation is a trous."""

from __future__ import annotations

import shutil
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, TwoMLPHead
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.ops import FrozenBatchNorm2d

from discorep.apps.demodata.scenes import make_scenes
from discorep.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from discorep.data.views import IMAGENET_MEAN, IMAGENET_STD
from discorep.engine.train import pretrain
from discorep.errors import UsageError
from discorep.eval.backbone import load_model, normalize_images
from discorep.export import online_backbone
from discorep.transfer.models import (Backbone, check_norm_device, load_backbone, maskrcnn, segmenter)
from tests.helpers import free_port, part, tiny_config

LAYERS = ("layer1", "layer2", "layer3", "layer4")
SIZE = dict(min_size=64, max_size=96)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A real 1-step BYOL resnet18 checkpoint (the EMA target lags the online network after the step)."""
    root = tmp_path_factory.mktemp("transfer")
    make_scenes(root / "scenes", 4, seed=1, image_size=(64, 64))
    small = {"views": {"size": 32, "spanning_size": 32, "raw_size": 32},
             "train": {"steps": 1, "checkpoint_every": 1, "picture_images": 0}}
    run = pretrain(tiny_config("byol", root / "scenes" / "images", root / "runs", small))
    yield latest_checkpoint(run)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def online(ckpt):
    return load_backbone(ckpt)


@pytest.fixture(scope="module")
def images():
    """(2, 3, 64, 96) in [0, 1]: not square, so that a swapped H and W shows."""
    return torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def ref(ckpt, images):
    """layer1..4 of the network `eval` measures (eval mode) at the ImageNet-normalised images."""
    net = load_model(ckpt).encoder.backbone
    with torch.no_grad():
        h = net.maxpool(net.relu(net.bn1(net.conv1(normalize_images(images)))))
        out = {}
        for name in LAYERS:
            h = out[name] = getattr(net, name)(h)
    return out


def _close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal up to float rounding (different code paths: FrozenBN vs eval-mode BN, channels-last)."""
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() <= 1e-4 * ref.abs().max().clamp_min(1e-6)


def _without_counters(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("norm", ["frozen", "bn", "syncbn"])
def test_maskrcnn_body_gives_the_eval_backbones_c2_to_c5(ckpt, online, images, ref, norm):
    model = maskrcnn(ckpt, 3, norm=norm, **SIZE).eval()
    body = model.backbone.body
    with torch.no_grad():
        ours = body(normalize_images(images))
    for key, name in zip(("0", "1", "2", "3"), LAYERS):
        _close(ours[key], ref[name])
    info = model.discorep_transfer
    file = online.state
    assert info["backbone_keys_loaded"] == len(_without_counters(file) if norm == "frozen" else file)
    body_state = body.state_dict()  # every body tensor is the file's (frozen stages hold no counters)
    assert set(_without_counters(body_state)) == set(_without_counters(file))
    assert all(torch.equal(v, file[k]) for k, v in body_state.items())
    assert {k: info[k] for k in ("source", "arch", "weights", "norm", "trainable_layers", "masks")} == {
        "source": str(ckpt), "arch": "resnet18", "weights": "online", "norm": norm, "trainable_layers": 3,
        "masks": True}
    assert model.transform.image_mean == list(IMAGENET_MEAN) and model.transform.image_std == list(IMAGENET_STD)


def test_target_weights_are_the_ema_targets(ckpt, online):
    state = load_checkpoint(ckpt)
    prefix = "encoder.backbone."
    expected = {k[len(prefix):]: v for k, v in part(state, "target").items() if k.startswith(prefix)}
    target = load_backbone(ckpt, "target")
    assert target.weights == "target" and set(target.state) == set(expected) == set(online.state)
    assert all(torch.equal(target.state[k], v) for k, v in expected.items())
    assert any(not torch.equal(target.state[k], online.state[k]) for k in expected
               if target.state[k].is_floating_point())  # training moved the online network away from it
    model = maskrcnn(ckpt, 3, weights="target", **SIZE)
    body = model.backbone.body.state_dict()
    assert all(torch.equal(body[k], target.state[k]) for k in body)
    assert model.discorep_transfer["weights"] == "target"


# torchvision's `trainable_backbone_layers`: k trains the last k of conv1, layer1..4 (5: bn1 too)
EXPECTED_TRAINED = {0: set(), 1: {"layer4"}, 2: {"layer3", "layer4"}, 3: {"layer2", "layer3", "layer4"},
                    4: {"layer1", "layer2", "layer3", "layer4"},
                    5: {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}}


@pytest.mark.parametrize("norm,k", [("bn", 0), ("bn", 2), ("bn", 5), ("frozen", 3)])
def test_trainable_layers_trains_exactly_torchvisions_layers(online, norm, k):
    model = maskrcnn(online, 3, norm=norm, trainable_layers=k, **SIZE)
    body = model.backbone.body
    trained = {name.split(".")[0] for name, p in body.named_parameters() if p.requires_grad}
    expected = EXPECTED_TRAINED[k] - ({"bn1"} if norm == "frozen" else set())
    assert trained == expected
    others = [p for name, p in model.named_parameters() if not name.startswith("backbone.body.")]
    assert others and all(p.requires_grad for p in others)  # FPN and heads always train
    assert model.discorep_transfer["trainable_layers"] == k
    # a frozen stage's norms keep their statistics in training mode; trained ones update theirs
    before = {k_: v.clone() for k_, v in body.state_dict().items() if k_.endswith("running_mean")}
    body.train()
    with torch.no_grad():
        body(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    after = body.state_dict()
    moved = {key.split(".")[0] for key, v in before.items() if not torch.equal(after[key], v)}
    assert moved == (expected - {"conv1"} if norm == "bn" else set())  # conv1 has no norm


def test_trainable_layers_outside_0_to_5_is_refused(online):
    with pytest.raises(UsageError, match="trainable_layers must be one of 0, 1, 2, 3, 4, 5, got 6"):
        maskrcnn(online, 3, trainable_layers=6)


def test_random_baseline_is_exports(online):
    baseline, arch, _ = online_backbone("random:resnet18")
    model = maskrcnn("random:resnet18", 2, norm="bn", **SIZE)
    body = model.backbone.body.state_dict()
    assert set(_without_counters(body)) == set(_without_counters(baseline))
    assert all(torch.equal(v, baseline[k]) for k, v in body.items())
    assert model.discorep_transfer["source"] == "random:resnet18" and arch == "resnet18"
    assert not torch.equal(online.state["conv1.weight"], baseline["conv1.weight"])  # the check can tell


def _fake_checkpoint(tmp_path, arch: str, norm: str = "bn", target: bool = True):
    """A v1-layout file (upgraded on load) naming `arch`: enough for the checks made before any build."""
    online = {"encoder.backbone.conv1.weight": torch.zeros(1)}
    state = {"format": "discorep-checkpoint-v1", "online": online,
             "config": {"model": {"arch": arch, "fpn": False, "fpn_dim": 256, "norm": norm}}}
    if target:
        state["target"] = dict(online)
    path = tmp_path / f"{arch}_{norm}.pt"
    torch.save(state, path)
    return path


def test_unsupported_archs_norms_and_weights_are_usage_errors(tmp_path):
    listed = r"transfer builds torchvision detectors on ResNets; use a checkpoint of one of resnet18, resnet50"
    with pytest.raises(UsageError, match=rf"random:vit_s: architecture 'vit_s' is not supported: {listed}"):
        maskrcnn("random:vit_s", 3)
    swin = _fake_checkpoint(tmp_path, "swin_t")
    with pytest.raises(UsageError, match=rf"swin_t_bn.pt: architecture 'swin_t' is not supported: {listed}"):
        segmenter(swin, 3)
    with pytest.raises(UsageError, match=rf"architecture 'swin_t' is not supported: {listed}"):
        load_backbone(swin, "target")
    with pytest.raises(UsageError, match="model.norm 'gn'; transfer builds BatchNorm ResNets"):
        load_backbone(_fake_checkpoint(tmp_path, "resnet18", norm="gn"))
    with pytest.raises(UsageError, match="random:resnet18: a random baseline has no EMA target"):
        load_backbone("random:resnet18", "target")
    with pytest.raises(UsageError, match="weights must be one of online, target, got 'teacher'"):
        load_backbone("random:resnet18", "teacher")
    with pytest.raises(UsageError, match="norm must be one of frozen, bn, syncbn, got 'gn'"):
        maskrcnn("random:resnet18", 3, norm="gn")


def test_a_checkpoint_without_target_is_one_checkpoint_error(tmp_path):
    path = _fake_checkpoint(tmp_path, "resnet18", target=False)
    with pytest.raises(CheckpointError, match=r"holds no EMA target encoder \(no 'target.encoder.backbone.\*' "
                                              r"weights\); use weights online") as err:
        load_backbone(path, "target")
    assert "\n" not in str(err.value)


def test_weights_that_do_not_fit_are_one_checkpoint_error(online):
    short = OrderedDict((k, v) for k, v in online.state.items() if k != "layer1.0.conv1.weight")
    with pytest.raises(CheckpointError, match=r"resnet18 backbone weights do not fit: 1 missing "
                                              r"\(e.g. layer1.0.conv1.weight\)") as err:
        maskrcnn(Backbone(short, "resnet18", "short.pt", "online"), 3)
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match=r"wrong.pt: its resnet50 backbone weights do not fit: .*"
                                              r"the file's backbone is not a torchvision resnet50"):
        segmenter(Backbone(online.state, "resnet50", "wrong.pt", "online"), 3)


@pytest.mark.parametrize("norm,masks,heads", [("bn", True, "auto"), ("frozen", False, "auto"), ("bn", True, "classic")])
def test_detector_heads_follow_the_norm_and_train(online, norm, masks, heads):
    torch.manual_seed(0)
    few = dict(rpn_pre_nms_top_n_train=64, rpn_post_nms_top_n_train=32, box_batch_size_per_image=16)
    model = maskrcnn(online, 3, norm=norm, masks=masks, heads=heads, **SIZE, **few)  # kwargs reach MaskRCNN
    assert model.discorep_transfer["heads"] == ("classic" if norm == "frozen" or heads == "classic" else "norm")
    outside = [m for name, m in model.named_modules() if not name.startswith("backbone.body")]
    norms = [m for m in outside if isinstance(m, nn.BatchNorm2d)]
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in outside)
    if model.discorep_transfer["heads"] == "classic":  # detectron2's default: no norm outside the ResNet
        assert not norms and isinstance(model.roi_heads.box_head, TwoMLPHead)
        assert len(model.rpn.head.conv) == 1
    else:  # SyncBN configs / torchvision v2: norms in FPN and heads, 2-conv RPN, 4conv1fc box head
        assert isinstance(model.roi_heads.box_head, FastRCNNConvFCHead) and len(model.rpn.head.conv) == 2
        for where in ("backbone.fpn", "roi_heads.box_head", "roi_heads.mask_head"):
            assert any(isinstance(m, nn.BatchNorm2d) for m in model.get_submodule(where).modules()), where
    assert model.roi_heads.has_mask() == masks
    model.train()
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    box = torch.tensor([[8.0, 8.0, 40.0, 48.0]])
    mask = torch.zeros(1, 64, 80, dtype=torch.uint8)
    mask[:, 8:48, 8:40] = 1
    targets = [{"boxes": box, "labels": torch.tensor([1]), "masks": mask},
               {"boxes": box, "labels": torch.tensor([2]), "masks": mask[:, :72, :64].clone()}]
    losses = model(images, targets)
    assert ("loss_mask" in losses) == masks and {"loss_classifier", "loss_box_reg"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.rpn._post_nms_top_n["training"] == 32


@pytest.mark.parametrize("head,strides", [("fcn", (1, 2)), ("deeplabv3", (2, 4))])
def test_segmenter_is_the_a_trous_eval_backbone_at_input_size(ckpt, online, images, ref, head, strides):
    """A dilated layer's output sampled every s-th cell equals the strided network's (exactly, up to float
    rounding): it checks the weights, the normalisation inside and the dilation at once."""
    model = segmenter(ckpt, 5, head=head).eval()
    seen = {}
    for name in ("layer3", "layer4"):
        getattr(model.backbone, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
    with torch.no_grad():
        logits = model(images)
    assert logits.shape == (2, 5, 64, 96)
    for name, s in zip(("layer3", "layer4"), strides):
        _close(seen[name][..., ::s, ::s], ref[name])
    assert seen["layer4"].shape[-2:] == ((4, 6) if head == "fcn" else (8, 12))  # output stride 16 / 8
    info = model.discorep_transfer
    assert info["head"] == head and info["backbone_keys_loaded"] == len(online.state)
    if head == "deeplabv3":
        assert isinstance(model.head, DeepLabHead)


def test_fcn_head_is_mocos():
    model = segmenter("random:resnet18", 7, head="fcn", norm="frozen")
    convs = [m for m in model.head.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.dilation, c.padding) for c in convs] == [
        (512, 256, (3, 3), (6, 6), (6, 6)), (256, 256, (3, 3), (6, 6), (6, 6)), (256, 7, (1, 1), (1, 1), (0, 0))]
    kinds = [type(m) for m in model.head]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 2 + [nn.Conv2d]  # the new head's norms train
    assert all(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.modules()
               if "Norm" in type(m).__name__)
    assert all(p.requires_grad for p in model.parameters())


def test_syncbn_is_refused_off_gpu_before_torch_refuses_it():
    check_norm_device("bn", "cpu")
    check_norm_device("frozen", "cpu")
    check_norm_device("syncbn", "cuda:0")
    with pytest.raises(UsageError, match="norm syncbn needs GPUs, got device cpu: .* use norm bn"):
        check_norm_device("syncbn", torch.device("cpu"))
    # what the check is for: under any process group torch's SyncBatchNorm does not train on CPU tensors
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="SyncBatchNorm expected input tensor to be on GPU"):
            nn.SyncBatchNorm(4).train()(torch.rand(2, 4, 3, 3))
    finally:
        dist.destroy_process_group()
