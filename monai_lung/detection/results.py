"""Detector output as MONAI Label and JSON clients need it."""

from __future__ import annotations

from typing import Hashable, Mapping

import torch
from monai.transforms import MapTransform


class DetectionResultd(MapTransform):
    """Put a JSON-safe ``result`` beside the detector's ``box``/``label``/``label_scores`` tensors.

    ``box``: (N, 6) world mm, centre x, y, z (ITK/LPS) + size x, y, z; ``label``: (N,); ``label_scores``: (N,).
    The tensors stay (MONAI Label's detection writer reads them); ``result`` holds the same as lists,
    scores included (the writer's own output drops them), plus the coordinate convention.
    """

    def __init__(self, keys=("box", "label", "label_scores"), result_key: str = "result", allow_missing_keys: bool = True):
        super().__init__(keys, allow_missing_keys)
        self.result_key = result_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        result = {k: torch.as_tensor(d[k]).detach().cpu().tolist() for k in self.key_iterator(d)}
        result["box_format"] = "cccwhd: centre x, y, z + size x, y, z; world mm, ITK/LPS physical points (LUNA16)"
        d[self.result_key] = result
        return d
