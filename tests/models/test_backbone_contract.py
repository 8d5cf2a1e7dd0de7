"""The backbone contract, timm-style: every listed `model.arch` goes through the same checks.

For each name: the output keys and shapes (B, channels[k], H / stride, W / stride) on a non-square input;
`feature_strides` / `size_multiple` (no weights built) agree with the built encoder; a gradient reaches
the first layer from c4, c5 (and fpn), and every parameter is in the outputs' graph (no dead weights);
eval mode is deterministic and batch independent; `up_to="c4"` is the full forward's c4; a ViT's map is its
patch tokens on the patch grid, without the class token and registers. Random weights only (no download).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from discorep.models.backbones import Encoder, feature_strides, size_multiple, supports_fpn

# (arch, input side unit): inputs are (2u, 3u) pixels, u a multiple of the arch's size multiple.
BACKBONES = [
    ("resnet18", 32),  # torchvision's
    ("resnet50.a1_in1k", 32),  # timm's ResNet-50 (a tagged timm name; plain "resnet50" is torchvision's)
    ("convnext_atto", 32),
    ("efficientnet_b0", 32),  # timm's BatchNormAct layers; its conv_head is pruned
    ("swin_t", 32),
    ("vit_small_patch16_224", 16),
    ("vit_small_patch14_dinov2", 14),
    ("vit_small_patch14_reg4_dinov2", 14),
]
PREFIX_TOKENS = {"vit_small_patch16_224": 1, "vit_small_patch14_dinov2": 1, "vit_small_patch14_reg4_dinov2": 5}


@pytest.fixture(scope="module", params=BACKBONES, ids=[name for name, _ in BACKBONES])
def case(request):
    name, unit = request.param
    strides = feature_strides(name)  # before any model of this name is built
    torch.manual_seed(0)
    enc = Encoder(name, fpn=supports_fpn(name), fpn_dim=16)
    return name, unit, strides, enc


def _images(unit: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 2 * unit, 3 * unit, generator=g)


def test_keys_and_shapes(case):
    name, unit, _, enc = case
    x = _images(unit)
    out = enc.eval()(x)
    expected = {"c4", "c5", "fpn"} if enc.fpn is not None else {"c4", "c5"}
    assert set(out) == set(enc.channels) == set(enc.strides) == expected
    for key, t in out.items():
        s = enc.strides[key]
        assert tuple(t.shape) == (2, enc.channels[key], 2 * unit // s, 3 * unit // s), (name, key)
        assert torch.isfinite(t).all(), (name, key)


def test_strides_without_building_agree_with_the_encoder(case):
    name, unit, strides, enc = case
    assert {k: strides[k] for k in enc.strides} == enc.strides
    assert size_multiple(name) == enc.strides["c5"] == unit
    assert enc.strides["c4"] in (enc.strides["c5"], enc.strides["c5"] // 2)
    if enc.fpn is None:  # only a single-scale model lacks an FPN here
        assert enc.strides["c4"] == enc.strides["c5"]
        with pytest.raises(ValueError, match="single-scale"):
            Encoder(name, fpn=True)


def _first_conv(enc: Encoder) -> nn.Conv2d:
    return next(m for m in enc.backbone.modules() if isinstance(m, nn.Conv2d))


def test_gradients_reach_the_first_layer_and_every_parameter(case):
    name, unit, _, enc = case
    enc.train()
    x = _images(unit)
    conv = _first_conv(enc)
    g = torch.Generator().manual_seed(1)
    for key in enc.channels:
        enc.zero_grad(set_to_none=True)
        out = enc(x)[key]
        # a random projection: a plain sum of a LayerNorm'd map is constant (zero gradient)
        (out * torch.randn(out.shape, generator=g)).sum().backward()
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0, (name, key)
    enc.zero_grad(set_to_none=True)
    out = enc(x)
    sum((t * torch.randn(t.shape, generator=g)).sum() for t in out.values()).backward()
    # outside the graph = a dead weight (decayed, saved; DDP would need find_unused_parameters). Zero is
    # fine: timm's ResNets zero-initialise each block's last BN scale, so that block's grads start at 0.
    dead = [k for k, p in enc.named_parameters() if p.requires_grad and p.grad is None]
    assert not dead, (name, dead[:5])


@torch.no_grad()
def test_eval_mode_is_deterministic_and_batch_independent(case):
    name, unit, _, enc = case
    enc.eval()
    x = _images(unit, batch=3, seed=2)
    a, b = enc(x), enc(x)
    alone = enc(x[1:2])
    for key in a:
        assert torch.equal(a[key], b[key]), (name, key)
        torch.testing.assert_close(alone[key], a[key][1:2], atol=1e-4, rtol=1e-4, msg=f"{name} {key}")
    torch.testing.assert_close(enc(x, up_to="c4")["c4"], a["c4"], atol=0, rtol=0)


VITS = [(name, unit) for name, unit in BACKBONES if name in PREFIX_TOKENS]


@torch.no_grad()
@pytest.mark.parametrize("name,unit", VITS, ids=[name for name, _ in VITS])
def test_vit_map_is_the_patch_tokens_without_class_token_and_registers(name, unit):
    enc = Encoder(name).eval()
    vit = enc.backbone
    assert vit.num_prefix_tokens == PREFIX_TOKENS[name]  # the registers really are there
    assert vit.patch_embed.patch_size == (unit, unit)
    x = _images(unit)
    c5 = enc(x)["c5"]
    tokens = vit.forward_features(x)  # (B, prefix + grid tokens, C), final norm applied
    assert tokens.shape[1] == vit.num_prefix_tokens + 2 * 3
    grid = tokens[:, vit.num_prefix_tokens:].transpose(1, 2).reshape(c5.shape)
    torch.testing.assert_close(c5, grid)
