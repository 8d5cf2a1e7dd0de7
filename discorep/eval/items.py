"""One Dataset for every evaluation over a labelled set: the image resized for the network, its truth.

A *labelled set* is anything with ``len()``, ``path(i) -> str`` and ``load(i) -> (PIL RGB image, truth)``:
``data.semantic``'s VOC layout and COCO class maps (dense evaluations), the foreground sets of
``eval.foreground``, the instance masks of ``eval.objects``. :class:`PreparedSet` decodes in the
DataLoader's workers and turns problems into skip records (named and counted by the caller, never
silent): ``"unreadable"`` for a ``BadImageError``/``DatasetError`` and ``"no_annotations"`` when the
optional ``empty(truth)`` gives a reason there is nothing to score.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from torch.utils.data import Dataset

from discorep.data.images import BadImageError, DatasetError
from discorep.eval.segment import prepare

UNREADABLE, NO_ANNOTATIONS = "unreadable", "no_annotations"


class PreparedSet(Dataset):
    """Item i: ``{"index", "path", "image": (3, size, size) float, "truth"}`` or ``{"index", "path", "skip",
    "reason"}``."""

    def __init__(self, data, size: int, empty: Optional[Callable[[Any], Optional[str]]] = None):
        self.data, self.size, self.empty = data, size, empty

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        path = str(self.data.path(i))
        try:
            image, truth = self.data.load(i)
        except (BadImageError, DatasetError) as err:
            return {"index": i, "path": path, "skip": UNREADABLE, "reason": str(getattr(err, "reason", err))}
        reason = self.empty(truth) if self.empty is not None else None
        if reason:
            return {"index": i, "path": path, "skip": NO_ANNOTATIONS, "reason": reason}
        return {"index": i, "path": path, "image": prepare(image, self.size), "truth": truth}
