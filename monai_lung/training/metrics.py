"""Nodule-level validation metrics for stage 1: sensitivity at nodule centres, predicted components per scan."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from monai.handlers import IgniteMetricHandler
from monai.handlers.utils import from_engine
from monai.metrics import CumulativeIterationMetric
from scipy import ndimage


def _foreground(x: torch.Tensor) -> np.ndarray:
    """(C, i, j, k) one-hot (C >= 2: channel 1) or (1, i, j, k) binary -> (i, j, k) bool."""
    x = x.detach().cpu()
    return (x[1] if x.shape[0] > 1 else x[0]).numpy() > 0.5


def component_centres(mask: np.ndarray) -> list[tuple[int, int, int]]:
    """Voxel (i, j, k) at the centre of each connected component of a boolean (i, j, k) mask.

    The rounded centre of mass, or the component's voxel nearest to it when the centre falls outside
    the component (crescent-shaped juxta-pleural nodules).
    """
    labels, n = ndimage.label(mask)
    centres = []
    for c, box in enumerate(ndimage.find_objects(labels), start=1):
        local = np.argwhere(labels[box] == c)
        com = local.mean(axis=0)
        nearest = local[np.argmin(((local - com) ** 2).sum(axis=1))]
        centres.append(tuple(int(v + s.start) for v, s in zip(nearest, box)))
    return centres


class NoduleSensitivity(CumulativeIterationMetric):
    """Share of ground-truth nodules whose centre voxel is covered by the prediction.

    ``y_pred`` and ``y``: (B, C, i, j, k), discrete (after ``AsDiscrete``); channel 1 is the nodule class
    when C >= 2. Each connected component of ``y`` is one nodule. ``aggregate()`` returns hits / nodules
    over everything seen (NaN before any nodule).
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None):
        counts = []
        for pred, gt in zip(y_pred, y):
            p = _foreground(pred)
            centres = component_centres(_foreground(gt))
            counts.append([sum(bool(p[c]) for c in centres), len(centres)])
        return torch.tensor(counts, dtype=torch.float32)

    def aggregate(self):
        data = self.get_buffer()
        if data is None or len(data) == 0 or float(data[:, 1].sum()) == 0:
            return torch.tensor(float("nan"))
        return data[:, 0].sum() / data[:, 1].sum()


class PredictedComponents(CumulativeIterationMetric):
    """Mean number of connected components in the predicted nodule mask per scan (stage-1 candidates)."""

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None):
        return torch.tensor([[float(ndimage.label(_foreground(p))[1])] for p in y_pred])

    def aggregate(self):
        data = self.get_buffer()
        return torch.tensor(float("nan")) if data is None or len(data) == 0 else data.mean()


class NoduleSensitivityHandler(IgniteMetricHandler):
    """Ignite handler for :class:`NoduleSensitivity` (``output_transform`` gives ``(y_pred, y)``)."""

    def __init__(self, output_transform: Callable = from_engine(["pred", "label"]), save_details: bool = True):
        super().__init__(metric_fn=NoduleSensitivity(), output_transform=output_transform, save_details=save_details)


class PredictedComponentsHandler(IgniteMetricHandler):
    """Ignite handler for :class:`PredictedComponents`."""

    def __init__(self, output_transform: Callable = from_engine(["pred", "label"]), save_details: bool = True):
        super().__init__(metric_fn=PredictedComponents(), output_transform=output_transform, save_details=save_details)
