"""Region priors: unsupervised image partitions that DetCon and R2O turn into masks.

Every prior returns an ``np.int32 (h, w)`` label map that covers the **whole image** (its frame box is
``(0, 0, W, H)``), with contiguous ids ``0..M-1``. The map may be smaller than the image (SLIC is
computed on a 224x224 copy, as in R2O appendix A.1); callers map it into views with
``discovery.align.align_masks``. Ids are relabelled after segmentation and stored as int32, so they
never wrap (DetCon's public code casts to uint8, which silently merges segments past 255).

One file per prior in this package (every module here is imported), each registering itself
(`registry.register_prior`) under its ``data.prior`` name:

* ``slic`` (:func:`slic_prior`) - SLIC superpixels (R2O: 100 segments on a 224x224 copy).
* ``felzenszwalb`` (:func:`felzenszwalb_prior`) - Felzenszwalb-Huttenlocher segmentation (DetCon's parameters).
* ``grid`` (:func:`grid_prior`) - an ``n x n`` grid of spatial cells (R2O appendix A.7 "spatial" prior, 14x14).
* ``precomputed`` (:func:`precomputed_prior`) - one PNG label map per image from ``prior_params.dir``.

:func:`compute_prior` runs one by name with validated parameters (:func:`resolve_params`). The on-disk
cache (``RegionPriorCache``) is ``discorep.data.prior_cache``, which imports this package (never the reverse).
"""

from __future__ import annotations

import importlib
import pkgutil

# The bundled priors register in this order, the order error messages list them in.
from discorep.data.priors.slic import slic_prior  # noqa: I001
from discorep.data.priors.felzenszwalb import felzenszwalb_prior
from discorep.data.priors.grid import grid_prior
from discorep.data.priors.precomputed import precomputed_prior
from discorep.data.priors.base import PriorError, relabel_contiguous, resize_rgb
from discorep.data.priors.registry import (
    PriorSpec,
    compute_prior,
    get_prior,
    prior_files,
    prior_names,
    register_prior,
    resolve_params,
)

__all__ = [
    "PRIOR_NAMES",
    "PriorError",
    "PriorSpec",
    "compute_prior",
    "felzenszwalb_prior",
    "get_prior",
    "grid_prior",
    "precomputed_prior",
    "prior_files",
    "prior_names",
    "register_prior",
    "relabel_contiguous",
    "resize_rgb",
    "resolve_params",
    "slic_prior",
]

# Any other file of this package is a prior too: adding one needs no edit here.
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

PRIOR_NAMES: tuple[str, ...] = prior_names()  # the bundled priors; prior_names() also lists later registrations
