"""Pretraining methods: each a short composition of the shared parts."""

from __future__ import annotations

from discorep.engine.config import Config


def build_method(cfg: Config):
    from discorep.methods.byol import BYOL
    from discorep.methods.detcon import DetCon
    from discorep.methods.odin import Odin
    from discorep.methods.r2o import R2O

    registry = {"byol": BYOL, "detcon": DetCon, "odin": Odin, "r2o": R2O}
    return registry[cfg.method.name](cfg)
