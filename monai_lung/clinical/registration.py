"""Registering a follow-up CT to its prior, driven by the lungs (SimpleITK).

Both scans are taken on the coarse grid of :meth:`~monai_lung.clinical.ct.ScanCT.coarse` (about 4 mm), clipped to
[-1000, 0] HU, and the metric (mean squares) is counted only on the prior's lungs grown by :data:`LUNG_MARGIN_MM`,
so that the lungs and their borders (pleura, diaphragm, mediastinum, vessels) drive the fit and the table, arms and
a different field of view do not. A rigid (Euler) fit from the lungs' centres of mass, then an affine one that takes
up a different depth of breath. World points are LPS mm throughout.

The residual reported is the mean distance (mm) from the prior's lung surface, mapped into the current scan, to the
current scan's lung surface.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

#: the metric counts the prior's lungs grown by this much (mm): their borders are what aligns two scans
LUNG_MARGIN_MM = 10.0
CLIP_HU = (-1000.0, 0.0)
#: share of the lung region's voxels the metric samples (randomly, seeded: the same scans register the same way)
SAMPLING = 0.1


def _image(array: np.ndarray, affine: np.ndarray, pixel=sitk.sitkFloat32) -> sitk.Image:
    """A ``sitk.Image`` of an (i, j, k) array on an index -> world LPS ``affine``."""
    array = np.asarray(array)
    array = array.astype(np.uint8) if array.dtype == bool else array
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image = sitk.Cast(image, pixel)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(v) for v in affine[:3, 3]))
    image.SetDirection(tuple(float(v) for v in (affine[:3, :3] / spacing).ravel()))
    return image


@dataclass
class Registration:
    """``transform`` maps world LPS points of the prior scan to the current scan's (ITK: prior is the fixed image)."""

    transform: sitk.Transform
    residual_mm: float
    metric: float
    seconds: float

    def prior_to_current(self, points_lps) -> np.ndarray:
        """(N, 3) world LPS mm of the prior -> the same anatomy's world LPS mm in the current scan."""
        pts = np.atleast_2d(np.asarray(points_lps, dtype=np.float64))
        return np.array([self.transform.TransformPoint(tuple(map(float, p))) for p in pts]).reshape(-1, 3)

    def current_to_prior(self, points_lps) -> np.ndarray:
        """(N, 3) world LPS mm of the current scan -> the prior's."""
        inverse = self.transform.GetInverse()
        pts = np.atleast_2d(np.asarray(points_lps, dtype=np.float64))
        return np.array([inverse.TransformPoint(tuple(map(float, p))) for p in pts]).reshape(-1, 3)

    def summary(self) -> dict:
        matrix = np.asarray(self.transform.GetNthTransform(self.transform.GetNumberOfTransforms() - 1).GetMatrix()
                            if isinstance(self.transform, sitk.CompositeTransform) else np.eye(3).ravel())
        return {"residual_mm": round(self.residual_mm, 2), "metric": float(self.metric), "seconds": round(self.seconds, 2),
                "method": "SimpleITK: rigid then affine, mean squares on CT clipped to [-1000, 0] HU within the prior's lungs "
                          f"+ {LUNG_MARGIN_MM:.0f} mm, ~4 mm grid", "affine_matrix": [round(float(v), 5) for v in matrix]}


def _surface_distance(fixed_lung: sitk.Image, moving_lung: sitk.Image, transform: sitk.Transform) -> float:
    """Mean distance (mm) from the fixed lungs' surface, mapped by ``transform``, to the moving lungs' surface."""
    contour = sitk.GetArrayFromImage(sitk.BinaryContour(fixed_lung)).transpose(2, 1, 0)
    idx = np.argwhere(contour > 0)
    if len(idx) == 0:
        return float("nan")
    idx = idx[:: max(1, len(idx) // 4000)]
    distance = sitk.Abs(sitk.SignedMaurerDistanceMap(moving_lung, insideIsPositive=False, squaredDistance=False, useImageSpacing=True))
    interp = sitk.Resample(distance, fixed_lung, transform, sitk.sitkLinear, 1e3, sitk.sitkFloat32)
    values = sitk.GetArrayFromImage(interp).transpose(2, 1, 0)[tuple(idx.T)]
    return float(np.mean(values[values < 1e3])) if np.any(values < 1e3) else float("nan")


def register_lungs(prior_hu: np.ndarray, prior_affine: np.ndarray, prior_lungs: np.ndarray,
                   current_hu: np.ndarray, current_affine: np.ndarray, current_lungs: np.ndarray, affine_stage: bool = True) -> Registration:
    """Register the current scan to the prior (module docstring).

    Args:
        prior_hu, current_hu: (i, j, k) coarse CT in HU; ``*_affine``: index -> world LPS mm.
        prior_lungs, current_lungs: (i, j, k) bool lung masks on the same grids (:func:`~.location.find_lungs`).
        affine_stage: follow the rigid fit with an affine one.
    """
    import time

    t = time.perf_counter()
    lo, hi = CLIP_HU
    fixed = _image(np.clip(prior_hu, lo, hi), prior_affine)
    moving = _image(np.clip(current_hu, lo, hi), current_affine)
    fixed_lung = _image(prior_lungs, prior_affine, sitk.sitkUInt8)
    moving_lung = _image(current_lungs, current_affine, sitk.sitkUInt8)
    margin = [max(1, int(round(LUNG_MARGIN_MM / s))) for s in fixed.GetSpacing()]
    region = sitk.BinaryDilate(fixed_lung, margin)

    initial = sitk.CenteredTransformInitializer(fixed_lung, moving_lung, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS)

    def fit(transform: sitk.Transform, iterations: int, levels: tuple = ((2, 4.0), (1, 0.0))) -> tuple[sitk.Transform, float]:
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMeanSquares()
        method.SetMetricFixedMask(region)
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(SAMPLING, seed=1)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=0.01, numberOfIterations=iterations,
                                                        relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel([f for f, _ in levels])
        method.SetSmoothingSigmasPerLevel([sigma for _, sigma in levels])
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        method.SetInitialTransform(transform, inPlace=False)
        result = method.Execute(fixed, moving)
        return result, float(method.GetMetricValue())

    rigid, metric = fit(initial, 200)
    transform = rigid
    if affine_stage:
        rigid_final = rigid.GetNthTransform(0) if isinstance(rigid, sitk.CompositeTransform) else rigid
        euler = sitk.Euler3DTransform(rigid_final)
        affine = sitk.AffineTransform(3)
        affine.SetCenter(euler.GetCenter())
        affine.SetMatrix(euler.GetMatrix())
        affine.SetTranslation(euler.GetTranslation())
        transform, metric = fit(affine, 100, levels=((1, 0.0),))  # it starts where the rigid fit ended
    residual = _surface_distance(fixed_lung, moving_lung, transform)
    return Registration(transform, residual, metric, time.perf_counter() - t)
