"""Shared helpers for tests: small SimpleITK scans with non-trivial geometry written to disk."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk

# keep each test process to one thread: pytest-xdist runs two processes on the 2-core CI machine
os.environ.setdefault("OMP_NUM_THREADS", "1")
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


def make_image(array_zyx: np.ndarray, spacing_xyz=(0.7, 0.8, 2.5), origin_xyz=(-170.5, -200.25, -310.0), direction=None):
    """A SimpleITK image from a numpy (z, y, x) array with the given (x, y, z) spacing/origin (mm)."""
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    image.SetOrigin(tuple(float(o) for o in origin_xyz))
    if direction is not None:
        image.SetDirection(tuple(float(d) for d in np.asarray(direction).ravel()))
    return image


def rotation_direction(deg_z: float = 20.0, flip_y: bool = True) -> np.ndarray:
    """A 3x3 direction matrix: rotation about z, optionally with a flipped y axis (non-trivial, orthonormal)."""
    t = np.deg2rad(deg_z)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    if flip_y:
        rot = rot @ np.diag([1.0, -1.0, 1.0])
    return rot


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A small synthetic LUNA16-layout data set (6 scans of 64x64 in-plane in 3 subsets) and its fold-0 list.

    Returns (data_dir, datalist_path). Built once per test session (per xdist worker).
    """
    from monai_lung.datalist import build_datalist, write_datalist
    from monai_lung.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("tiny_luna")
    data_dir = root / "data"
    generate_dataset(data_dir, num_scans=6, seed=7, size=64, num_subsets=3)
    datalist = build_datalist(data_dir, data_dir / "annotations.csv", data_dir / "annotations_excluded.csv", fold=0)
    path = root / "datalist.json"
    write_datalist(path, datalist)
    return data_dir, path
