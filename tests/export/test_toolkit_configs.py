"""`discorep export --write-config`: the detectron2 YAML and the mmseg Python config parse, hold the settings
users get wrong (SyncBN everywhere, no frozen stage, torchvision-style stride, RGB mean/std in 0..255), agree
with the weights file written beside them, and every detectron2 key is one detectron2's yacs merge accepts.
Neither toolkit is installed: detectron2's keys and default types are written out below from its
config/defaults.py, the oracle the generated file is checked against."""

from __future__ import annotations

import ast
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from discorep.cli import main
from discorep.cliargs import CONFIG_PROTOCOLS
from discorep.data.views import IMAGENET_MEAN, IMAGENET_STD
from discorep.errors import UsageError
from discorep.export import export_backbone
from discorep.export.toolkit_configs import config_path, toolkit_config
from tests.export.test_export import _checkpoint

# detectron2 config/defaults.py: every key the configs may set, with the type of its default. yacs refuses
# unknown keys and values of another type (a list may stand for a tuple and back; int is not float).
D2_KEYS = {
    "VERSION": int, "MODEL.META_ARCHITECTURE": str, "MODEL.WEIGHTS": str, "MODEL.MASK_ON": bool,
    "MODEL.PIXEL_MEAN": list, "MODEL.PIXEL_STD": list, "MODEL.BACKBONE.NAME": str, "MODEL.BACKBONE.FREEZE_AT": int,
    "MODEL.RESNETS.DEPTH": int, "MODEL.RESNETS.NORM": str, "MODEL.RESNETS.STRIDE_IN_1X1": bool,
    "MODEL.RESNETS.OUT_FEATURES": list, "MODEL.RESNETS.RES2_OUT_CHANNELS": int, "MODEL.FPN.IN_FEATURES": list,
    "MODEL.FPN.NORM": str, "MODEL.ANCHOR_GENERATOR.SIZES": list, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": list,
    "MODEL.RPN.IN_FEATURES": list, "MODEL.RPN.PRE_NMS_TOPK_TRAIN": int, "MODEL.RPN.PRE_NMS_TOPK_TEST": int,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": int, "MODEL.RPN.POST_NMS_TOPK_TEST": int, "MODEL.ROI_HEADS.NAME": str,
    "MODEL.ROI_HEADS.IN_FEATURES": list, "MODEL.ROI_HEADS.NUM_CLASSES": int, "MODEL.ROI_BOX_HEAD.NAME": str,
    "MODEL.ROI_BOX_HEAD.NUM_CONV": int, "MODEL.ROI_BOX_HEAD.NUM_FC": int, "MODEL.ROI_BOX_HEAD.NORM": str,
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": int, "MODEL.ROI_MASK_HEAD.NAME": str, "MODEL.ROI_MASK_HEAD.NUM_CONV": int,
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": int, "MODEL.ROI_MASK_HEAD.NORM": str, "DATASETS.TRAIN": tuple,
    "DATASETS.TEST": tuple, "SOLVER.IMS_PER_BATCH": int, "SOLVER.BASE_LR": float, "SOLVER.MOMENTUM": float,
    "SOLVER.WEIGHT_DECAY": float, "SOLVER.STEPS": tuple, "SOLVER.MAX_ITER": int, "SOLVER.WARMUP_ITERS": int,
    "SOLVER.WARMUP_FACTOR": float, "INPUT.FORMAT": str, "INPUT.MIN_SIZE_TRAIN": tuple,
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": str, "INPUT.MAX_SIZE_TRAIN": int, "INPUT.MIN_SIZE_TEST": int,
    "INPUT.MAX_SIZE_TEST": int, "TEST.PRECISE_BN.ENABLED": bool,
}
RGB_MEAN_255 = [255 * m for m in IMAGENET_MEAN]
RGB_STD_255 = [255 * s for s in IMAGENET_STD]


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _accepted_by_yacs(value, default_type) -> bool:
    if default_type in (list, tuple):
        return isinstance(value, (list, tuple))
    return type(value) is default_type  # bool is not int, int is not float


def _d2_export(tmp_path, spec="random:resnet18", protocol="coco_1x_d2"):
    out = export_backbone(checkpoint=spec, to="detectron2", out=tmp_path / "d2" / "model.pkl", protocol=protocol)
    text = config_path(out, "detectron2").read_text()
    return out, text, yaml.safe_load(text)


@pytest.mark.parametrize("protocol", CONFIG_PROTOCOLS["detectron2"])
def test_detectron2_yaml_has_the_settings_and_only_keys_detectron2_accepts(tmp_path, protocol):
    out, text, cfg = _d2_export(tmp_path, protocol=protocol)
    assert config_path(out, "detectron2") == tmp_path / "d2" / "model.yaml" and "_BASE_" not in cfg
    leaves = dict(_leaves(cfg))
    unknown = [k for k in leaves if k not in D2_KEYS]
    wrong_type = [k for k, v in leaves.items() if k in D2_KEYS and not _accepted_by_yacs(v, D2_KEYS[k])]
    assert not unknown and not wrong_type, (unknown, wrong_type)
    m = cfg["MODEL"]
    for section in (m["RESNETS"], m["FPN"], m["ROI_BOX_HEAD"], m["ROI_MASK_HEAD"]):
        assert section["NORM"] == "SyncBN"
    assert m["BACKBONE"]["FREEZE_AT"] == 0 and m["RESNETS"]["STRIDE_IN_1X1"] is False
    assert cfg["INPUT"]["FORMAT"] == "RGB" and m["MASK_ON"] is True
    assert m["META_ARCHITECTURE"] == "GeneralizedRCNN" and m["BACKBONE"]["NAME"] == "build_resnet_fpn_backbone"
    assert m["RESNETS"]["OUT_FEATURES"] == ["res2", "res3", "res4", "res5"]
    assert (m["ROI_BOX_HEAD"]["NAME"], m["ROI_BOX_HEAD"]["NUM_CONV"], m["ROI_BOX_HEAD"]["NUM_FC"]) == \
        ("FastRCNNConvFCHead", 4, 1)
    assert m["PIXEL_MEAN"] == pytest.approx(RGB_MEAN_255) and m["PIXEL_STD"] == pytest.approx(RGB_STD_255)
    assert Path(m["WEIGHTS"]) == out.resolve() and Path(m["WEIGHTS"]).is_file()
    solver = cfg["SOLVER"]
    assert solver["WARMUP_ITERS"] < solver["STEPS"][0] < solver["STEPS"][1] < solver["MAX_ITER"]
    if protocol == "coco_1x_d2":  # detectron2 / MoCo 1x
        assert (solver["IMS_PER_BATCH"], solver["BASE_LR"], solver["WEIGHT_DECAY"]) == (16, 0.02, 1e-4)
        assert (solver["STEPS"], solver["MAX_ITER"]) == ([60000, 80000], 90000)
        assert cfg["INPUT"]["MIN_SIZE_TRAIN"] == [640, 672, 704, 736, 768, 800]
        assert cfg["INPUT"]["MAX_SIZE_TRAIN"] == 1333
    else:  # R2O A.2 / Odin A.3: wd 4e-5 (a YAML float, not the string "4e-05"), 0.3 at batch 64, steps 2/3 and 8/9
        assert (solver["IMS_PER_BATCH"], solver["BASE_LR"], solver["WEIGHT_DECAY"]) == (64, 0.3, 4e-5)
        # the same number of images as detectron2's 1x (90k x 16) = 12.2 epochs of train2017
        assert solver["MAX_ITER"] * 64 == 90000 * 16
        assert solver["STEPS"] == [solver["MAX_ITER"] * 2 // 3, solver["MAX_ITER"] * 8 // 9]
        sizes = cfg["INPUT"]
        # a 640x480 image's longest side spans 1024 x [0.8, 1.25] under ResizeShortestEdge; test at 1024
        longest = [s * 640 / 480 for s in sizes["MIN_SIZE_TRAIN"]]
        assert longest == pytest.approx([0.8 * 1024, 1.25 * 1024], abs=1) and sizes["MAX_SIZE_TRAIN"] == 1280
        assert sizes["MIN_SIZE_TRAIN_SAMPLING"] == "range" and sizes["MAX_SIZE_TEST"] == 1024


@pytest.mark.parametrize("spec,depth,res2", [("random:resnet18", 18, 64), ("random:resnet50", 50, 256)])
def test_detectron2_depth_and_widths_match_the_written_weights(tmp_path, spec, depth, res2):
    out, _, cfg = _d2_export(tmp_path, spec)
    resnets = cfg["MODEL"]["RESNETS"]
    with open(cfg["MODEL"]["WEIGHTS"], "rb") as f:
        model = pickle.load(f)["model"]
    last = "conv3" if any(k.startswith("res2.0.conv3.") for k in model) else "conv2"  # Bottleneck vs BasicBlock
    assert (last == "conv3") == (depth >= 50) and resnets["DEPTH"] == depth
    assert model[f"res2.0.{last}.weight"].shape[0] == res2 == resnets["RES2_OUT_CHANNELS"]
    assert model["stem.conv1.weight"].shape[0] == 64  # detectron2's default STEM_OUT_CHANNELS


def _mmseg_export(tmp_path, spec="random:resnet18", protocol=None, name="seg.pth"):
    out = export_backbone(checkpoint=spec, to="mmseg", out=tmp_path / name, protocol=protocol or "voc_fcn_30k")
    text = config_path(out, "mmseg").read_text()
    ast.parse(text)
    namespace: dict = {}
    exec(compile(text, "config.py", "exec"), {"__builtins__": {"dict": dict}}, namespace)  # a config is data
    return out, namespace


@pytest.mark.parametrize("protocol", CONFIG_PROTOCOLS["mmseg"])
def test_mmseg_config_parses_and_loads_the_written_backbone(tmp_path, protocol):
    out, cfg = _mmseg_export(tmp_path, "random:resnet18", protocol)
    assert config_path(out, "mmseg") == tmp_path / "seg_config.py"
    model, backbone, head = cfg["model"], cfg["model"]["backbone"], cfg["model"]["decode_head"]
    assert model["type"] == "EncoderDecoder" and backbone["type"] == "ResNet" and backbone["style"] == "pytorch"
    assert backbone["depth"] == 18 and backbone["frozen_stages"] == -1 and backbone["norm_eval"] is False
    assert backbone["dilations"] == (1, 1, 1, 2) and backbone["strides"] == (1, 2, 2, 1)  # MoCo's dilated C5
    assert backbone["norm_cfg"]["type"] == head["norm_cfg"]["type"] == "SyncBN"
    pre = model["data_preprocessor"]
    assert pre["bgr_to_rgb"] is True and pre["mean"] == pytest.approx(RGB_MEAN_255)
    assert pre["std"] == pytest.approx(RGB_STD_255)
    assert (head["type"], head["channels"], head["num_convs"], head["dilation"], head["concat_input"]) == \
        ("FCNHead", 256, 2, 6, False)
    init = backbone["init_cfg"]
    assert init["type"] == "Pretrained" and Path(init["checkpoint"]) == out.resolve()
    # mmengine's Pretrained(prefix=...) keeps the keys under the prefix, stripped: they must be the whole
    # backbone, and C5's width the head's input
    state = torch.load(init["checkpoint"], weights_only=True)["state_dict"]
    stripped = {k[len(init["prefix"]):]: v for k, v in state.items() if k.startswith(init["prefix"])}
    assert len(stripped) == len(state) and "conv1.weight" in stripped
    assert stripped["layer4.1.conv2.weight"].shape[0] == head["in_channels"] == 512
    schedule, loop = cfg["param_scheduler"][0], cfg["train_cfg"]
    assert loop["max_iters"] == 30000 and schedule["milestones"] == [21000, 27000]  # R2O A.2: 7/10, 9/10
    assert cfg["train_dataloader"]["batch_size"] * 8 == 16  # per GPU, 8 GPUs
    assert cfg["optim_wrapper"]["optimizer"]["weight_decay"] == 1e-4
    crop = {"voc_fcn_30k": (513, 513), "cityscapes_fcn": (769, 769)}[protocol]
    assert cfg["crop_size"] == crop and head["num_classes"] == {"voc_fcn_30k": 21, "cityscapes_fcn": 19}[protocol]


def test_groupnorm_checkpoint_keeps_groupnorm_in_the_backbone_and_syncbn_in_neck_and_heads(tmp_path):
    ckpt, _ = _checkpoint(tmp_path, "resnet50", norm="gn")
    _, cfg = _mmseg_export(tmp_path, str(ckpt))
    assert cfg["model"]["backbone"]["norm_cfg"] == {"type": "GN", "num_groups": 32, "requires_grad": True}
    assert cfg["model"]["decode_head"]["norm_cfg"]["type"] == "SyncBN"
    assert cfg["model"]["decode_head"]["in_channels"] == 2048
    _, _, d2 = _d2_export(tmp_path, str(ckpt))
    assert d2["MODEL"]["RESNETS"]["NORM"] == "GN" and d2["MODEL"]["FPN"]["NORM"] == "SyncBN"


def test_protocol_names_are_checked_before_anything_is_written(tmp_path):
    with pytest.raises(UsageError, match="coco_1x_d2 \\(default\\), coco_1x_tpu"):
        export_backbone(checkpoint="random:resnet18", to="detectron2", out=tmp_path / "a.pkl", protocol="voc_fcn_30k")
    with pytest.raises(UsageError, match="--write-config writes detectron2/mmseg configs"):
        toolkit_config("torchvision", arch="resnet18", norm="bn", weights=tmp_path / "a.pth")
    assert not list(tmp_path.iterdir())


def _one_error_line(capsys, code: int) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    return lines[0]


REFUSALS = {  # extra arguments -> fragments of the one error line
    "torchvision": (["--to", "torchvision", "--write-config"],
                    ["--write-config writes detectron2/mmseg configs", "discorep transfer detect"]),
    "timm": (["--to", "timm", "--write-config"], ["--write-config writes detectron2/mmseg configs"]),
    "mismatched": (["--to", "detectron2", "--write-config", "--protocol", "voc_fcn_30k"],
                   ["voc_fcn_30k", "coco_1x_d2 (default), coco_1x_tpu"]),
    "unknown": (["--to", "mmseg", "--write-config", "--protocol", "coco_2x"],
                ["coco_2x", "voc_fcn_30k (default), cityscapes_fcn"]),
    "no --write-config": (["--to", "mmseg", "--protocol", "cityscapes_fcn"], ["add --write-config"]),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_cli_refusals_are_one_line_and_write_nothing(tmp_path, capsys, case):
    extra, fragments = REFUSALS[case]
    out = tmp_path / ("m.pkl" if "detectron2" in extra else "m.pth")
    code = main(["export", "--checkpoint", "random:resnet18", "--out", str(out), *extra])
    line = _one_error_line(capsys, code)
    assert all(f in line for f in fragments), line
    assert not list(tmp_path.iterdir())


def test_cli_protocol_refusal_comes_before_torch_loads(tmp_path):
    script = ("import sys\nfrom discorep.cli import main\ncode = main(sys.argv[1:])\n"
              "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')\nsys.exit(code)")
    args = ["export", "--checkpoint", "random:resnet18", "--to", "detectron2", "--out", "m.pkl", "--write-config",
            "--protocol", "cityscapes_fcn"]
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert proc.returncode == 2 and proc.stdout.strip() == "torch not loaded", (proc.stdout, proc.stderr)
    assert proc.stderr.count("\n") == 1 and "coco_1x_d2 (default), coco_1x_tpu" in proc.stderr


def test_cli_writes_weights_and_config_and_says_where(tmp_path, capsys):
    out = tmp_path / "exports" / "r18.pkl"
    assert main(["export", "--checkpoint", "random:resnet18", "--to", "detectron2", "--out", str(out),
                 "--write-config", "--protocol", "coco_1x_tpu"]) == 0
    printed = capsys.readouterr().out
    config = tmp_path / "exports" / "r18.yaml"
    assert f"wrote {out}" in printed and f"wrote {config}" in printed and "coco_1x_tpu" in printed
    assert yaml.safe_load(config.read_text())["SOLVER"]["BASE_LR"] == 0.3
    assert main(["export", "--checkpoint", "random:resnet18", "--to", "mmseg", "--out", str(tmp_path / "s.pth"),
                 "--write-config"]) == 0  # the default protocol
    assert "voc_fcn_30k" in capsys.readouterr().out and (tmp_path / "s_config.py").is_file()
