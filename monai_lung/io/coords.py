"""World millimetres <-> voxel indices. The one place where coordinate conventions are converted.

Conventions (named in every function):

- **world LPS** ``(x, y, z)`` mm: ITK physical points, what LUNA16 CSVs and our outputs hold.
- **world RAS** ``(x, y, z)`` mm: what MONAI affines map to after ``LoadImage`` (``ITKReader`` and our
  :class:`~monai_lung.io.sitk_reader.SimpleITKReader` default to RAS). ``RAS = diag(-1, -1, 1) @ LPS``.
- **MONAI index** ``(i, j, k)``: index into a channel-first MONAI array ``(C, i, j, k)``, mapped to world by
  that array's ``affine`` (which follows it through ``Orientationd``, ``Spacingd``, crops...).
- **numpy/SimpleITK index**: SimpleITK's ``TransformPhysicalPointToIndex`` uses (x, y, z) index order;
  ``sitk.GetArrayFromImage`` arrays are indexed ``[z, y, x]``.

Points are always arrays of shape ``(N, 3)`` (a single point ``(3,)`` is accepted and returned as such).
"""

from __future__ import annotations

import numpy as np

_LPS_RAS_FLIP = np.array([-1.0, -1.0, 1.0])


def lps_to_ras(points_mm: np.ndarray) -> np.ndarray:
    """World LPS (x, y, z) mm -> world RAS (x, y, z) mm; shape (N, 3) or (3,). Its own inverse."""
    return np.asarray(points_mm, dtype=np.float64) * _LPS_RAS_FLIP


ras_to_lps = lps_to_ras


def _affine_np(affine) -> np.ndarray:
    affine = affine.detach().cpu().numpy() if hasattr(affine, "detach") else np.asarray(affine)
    return affine.astype(np.float64)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    single = points.ndim == 1
    pts = np.atleast_2d(points)
    out = pts @ matrix[:3, :3].T + matrix[:3, 3]
    return out[0] if single else out


def voxel_spacing(image) -> np.ndarray:
    """(3,) mm per (i, j, k) step of a channel-first MONAI image, from its ``affine`` (the column norms);
    1 mm per step for an array without one."""
    affine = getattr(image, "affine", None)
    if affine is None:
        return np.ones(3)
    return np.linalg.norm(_affine_np(affine)[:3, :3], axis=0)


def world_to_index(points_mm: np.ndarray, affine, space: str = "RAS", points_space: str = "LPS") -> np.ndarray:
    """World points -> continuous MONAI index (i, j, k) of the array whose affine is ``affine``.

    Args:
        points_mm: (N, 3) or (3,) world mm (x, y, z) in ``points_space`` (LUNA16 CSVs: "LPS").
        affine: 4x4 voxel -> world mm affine of the array (``img.affine`` / ``meta["affine"]``).
        space: the space ``affine`` maps into ("RAS" after our reader and ``ITKReader``; "LPS" otherwise).
        points_space: the space of ``points_mm``.

    Returns:
        float64 (N, 3) or (3,) continuous indices; voxel centres sit at integers.
    """
    pts = np.asarray(points_mm, dtype=np.float64)
    if space.upper() != points_space.upper():
        pts = lps_to_ras(pts)
    return _apply(np.linalg.inv(_affine_np(affine)), pts)


def index_to_world(indices: np.ndarray, affine, space: str = "RAS", points_space: str = "LPS") -> np.ndarray:
    """Continuous MONAI index (i, j, k) -> world mm (x, y, z) in ``points_space``; inverse of :func:`world_to_index`."""
    pts = _apply(_affine_np(affine), indices)
    if space.upper() != points_space.upper():
        pts = ras_to_lps(pts)
    return pts


def world_to_sitk_index(image, points_lps_mm: np.ndarray) -> np.ndarray:
    """World LPS (x, y, z) mm -> continuous SimpleITK index (x, y, z) of ``image`` (a ``sitk.Image``).

    Index ``[ix, iy, iz]`` addresses ``sitk.GetArrayFromImage(image)[iz, iy, ix]``.
    """
    pts = np.atleast_2d(np.asarray(points_lps_mm, dtype=np.float64))
    out = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(map(float, p))) for p in pts])
    return out[0] if np.ndim(points_lps_mm) == 1 else out


def sitk_index_to_world(image, indices_xyz: np.ndarray) -> np.ndarray:
    """Continuous SimpleITK index (x, y, z) -> world LPS (x, y, z) mm; inverse of :func:`world_to_sitk_index`."""
    idx = np.atleast_2d(np.asarray(indices_xyz, dtype=np.float64))
    out = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(map(float, p))) for p in idx])
    return out[0] if np.ndim(indices_xyz) == 1 else out


def slice_axis(affine) -> int:
    """The index axis (0, 1 or 2) of a grid that runs closest to world z, so its slices are the axial planes;
    ``affine``: 4x4 (i, j, k) -> world mm, or its 3x3 linear part (RAS or LPS alike: only |z| is used)."""
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    return int(np.argmax(np.abs(linear[2, :]) / np.linalg.norm(linear, axis=0)))


def inside(indices: np.ndarray, shape) -> np.ndarray:
    """Whether continuous indices (N, 3) round to voxels inside an array of spatial ``shape`` (3,)."""
    idx = np.rint(np.atleast_2d(indices))
    return np.all((idx >= 0) & (idx < np.asarray(shape)[None, :3]), axis=1)
