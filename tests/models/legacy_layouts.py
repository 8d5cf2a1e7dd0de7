"""The layouts written before backbones became timm config strings (issue 14), recorded by this module.

`python -m tests.models.legacy_layouts` (run once, on the code before the change) wrote
`legacy_layouts.json`; `test_legacy_layouts.py` recomputes the same summary with the current code and
compares. What is recorded:

* exports: for resnet18/resnet50 × norm bn/gn × every `--to` target, the exported file's keys, shapes and
  dtypes in file order (a sha256 and a count; resnet18/bn/torchvision also in full, for readable diffs);
* encoders: the `Encoder(arch, fpn, norm).state_dict()` layout of the four names that existed
  (old checkpoints hold `encoder.<these keys>`);
* random baselines: sums of `random:<arch>`'s weights (seed 0), so the baseline every result is compared
  with stays the same draw.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import tempfile
from pathlib import Path

import torch

from discorep.eval.backbone import load_model
from discorep.export import export_backbone
from discorep.models.backbones import Encoder

FIXTURE = Path(__file__).with_name("legacy_layouts.json")
LEGACY = ("resnet18", "resnet50", "swin_t", "vit_s")
RESNETS = ("resnet18", "resnet50")
TARGETS = ("torchvision", "timm", "detectron2", "mmseg")


def layout(state: dict) -> list[str]:
    """'key shape dtype' per entry, in order (numpy arrays for detectron2, tensors otherwise)."""
    rows = []
    for key, value in state.items():
        dtype = str(value.dtype).replace("torch.", "")
        rows.append(f"{key} {list(value.shape)} {dtype}")
    return rows


def summary(rows: list[str]) -> dict:
    return {"count": len(rows), "sha256": hashlib.sha256("\n".join(rows).encode()).hexdigest()}


def _checkpoint(folder: Path, arch: str, norm: str) -> Path:
    enc = Encoder(arch, fpn=True, norm=norm)
    online = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    state = {"format": "discorep-checkpoint-v1", "online": online, "target": dict(online),
             "config": {"model": {"arch": arch, "fpn": True, "fpn_dim": 256, "norm": norm}}}
    path = folder / f"{arch}_{norm}.pt"
    torch.save(state, path)
    return path


def _exported_state(path: Path, to: str) -> dict:
    if to == "detectron2":
        with open(path, "rb") as f:
            return pickle.load(f)["model"]
    payload = torch.load(path, weights_only=True)
    return payload["state_dict"] if to == "mmseg" else payload


def export_layouts() -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for arch in RESNETS:
            for norm in ("bn", "gn"):
                ckpt = _checkpoint(folder, arch, norm)
                for to in TARGETS:
                    suffix = ".pkl" if to == "detectron2" else ".pth"
                    written = export_backbone(checkpoint=ckpt, to=to, out=folder / f"{arch}_{norm}_{to}{suffix}")
                    out[f"{arch}/{norm}/{to}"] = layout(_exported_state(written, to))
    return out


def encoder_layouts() -> dict:
    out = {}
    for arch in LEGACY:
        for fpn in (False, True) if arch != "vit_s" else (False,):
            for norm in ("bn", "gn"):
                out[f"{arch}/fpn={fpn}/{norm}"] = layout(Encoder(arch, fpn=fpn, norm=norm).state_dict())
    return out


def random_baselines() -> dict:
    out = {}
    for arch in LEGACY:
        state = load_model(f"random:{arch}").encoder.state_dict()
        floats = [v.double() for v in state.values() if v.is_floating_point()]
        first = next(iter(state.values())).flatten()[:3]
        out[arch] = {"sum": float(sum(v.sum() for v in floats)), "sumsq": float(sum((v * v).sum() for v in floats)),
                     "first": [float(v) for v in first]}
    return out


def compute() -> dict:
    exports = export_layouts()
    return {"exports": {k: summary(v) for k, v in exports.items()},
            "exports_in_full": {"resnet18/bn/torchvision": exports["resnet18/bn/torchvision"]},
            "encoders": {k: summary(v) for k, v in encoder_layouts().items()},
            "random_baselines": random_baselines()}


if __name__ == "__main__":
    FIXTURE.write_text(json.dumps(compute(), indent=1) + "\n")
    print(f"wrote {FIXTURE}")
