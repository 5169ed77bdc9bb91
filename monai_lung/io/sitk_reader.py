"""A SimpleITK-backed ``monai.data.ImageReader``: MetaImage, NRRD, NIfTI and DICOM series for ``LoadImage(d)``.

MONAI's own ``ITKReader`` needs the ``itk`` package (~1.5 GB installed); SimpleITK (~50 MB) reads the
same formats through the same ITK IO code. This reader returns exactly what ``ITKReader`` returns
with its defaults, so configs and downstream transforms cannot tell them apart:

- array: numpy, spatial axes in ITK order **(x, y, z)** (``ITKReader(reverse_indexing=False)``),
  i.e. the transpose of ``sitk.GetArrayFromImage``'s (z, y, x);
- ``affine`` / ``original_affine``: 4x4 voxel (i, j, k) -> world mm, **RAS** when
  ``affine_lps_to_ras=True`` (the default, like ``ITKReader``), else ITK's LPS;
- ``spacing`` (x, y, z mm), ``spatial_shape`` (x, y, z), ``space``, ``original_channel_dim``.

LUNA16 coordinates are ITK/LPS physical points; convert with :mod:`monai_lung.io.coords`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
from monai.data import ImageReader
from monai.data.utils import orientation_ras_lps
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from monai_lung.io.errors import DataError

SUFFIXES = (".mhd", ".mha", ".nrrd", ".nhdr", ".nii", ".nii.gz", ".dcm")


def read_image_header(path: str | os.PathLike) -> sitk.ImageFileReader:
    """A reader holding the image file's header (size, spacing, origin, direction; ITK (x, y, z) order, world LPS
    mm) without its voxels; an unreadable header raises :class:`DataError`."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise DataError(path, "unreadable image header") from None
    return reader


def read_sitk_image(path: str | os.PathLike, series_name: str = "") -> sitk.Image:
    """Read one image file or a DICOM series folder with SimpleITK; problems raise :class:`DataError`."""
    path = Path(path)
    if path.is_dir():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise DataError(path, "folder holds no DICOM series")
        uid = series_name or series[0]
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), uid)
        if not files:
            raise DataError(path, f"DICOM series {uid!r} not found in folder")
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        try:
            return reader.Execute()
        except RuntimeError as err:
            raise DataError(path, f"unreadable DICOM series ({_first_line(err)})") from None
    if not path.is_file():
        raise DataError(path, "image file not found")
    if path.suffix.lower() == ".mhd":
        _check_metaimage(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise DataError(path, f"unreadable image ({_first_line(err)})") from None


def _first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    # ITK messages start with a file:line location; the description is the useful part
    for ln in lines:
        if ln.lower().startswith("description:"):
            return ln.split(":", 1)[1].strip()
    return lines[-1] if lines else type(err).__name__


_MET_BYTES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}


def _check_metaimage(path: Path) -> None:
    """Check a ``.mhd`` header and its data file before decoding, for errors that name the real problem."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise DataError(path, f"unreadable MetaImage header ({_first_line(err)})") from None
    header = {}
    for line in path.read_text(errors="replace").splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            header[key.strip()] = value.strip()
    data_file = header.get("ElementDataFile", "")
    if data_file and data_file != "LOCAL" and "%" not in data_file and header.get("CompressedData", "False") != "True":
        raw = path.parent / data_file
        if not raw.is_file():
            raise DataError(path, f"data file {raw.name} not found")
        n_voxels = int(np.prod(reader.GetSize())) * reader.GetNumberOfComponents()
        bytes_per_voxel = _MET_BYTES.get(header.get("ElementType", ""), 0)
        expected = n_voxels * bytes_per_voxel
        actual = raw.stat().st_size
        if actual < expected:
            raise DataError(raw, f"truncated data file: {actual} bytes, header {path.name} needs {expected}")


def lps_affine(image: sitk.Image) -> np.ndarray:
    """4x4 affine mapping an (x, y, z) voxel index of ``image`` to ITK/LPS world mm."""
    dim = image.GetDimension()
    sr = min(dim, 3)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)[:sr, :sr]
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)[:sr]
    affine = np.eye(sr + 1)
    affine[:sr, :sr] = direction @ np.diag(spacing)
    affine[:sr, -1] = np.asarray(image.GetOrigin(), dtype=np.float64)[:sr]
    return affine


def resample_to_spacing(
    image: sitk.Image, spacing_xyz, linear: bool = True, default_value: float = -1024.0
) -> sitk.Image:
    """Resample a 3D ``sitk.Image`` onto a grid of ``spacing_xyz`` (x, y, z) mm, same origin and direction.

    The first voxel centre stays at the origin and the grid stops at the last source voxel centre, so
    nothing is extrapolated. The pixel type is kept (int16 HU stays int16). Linear interpolation for
    images, nearest neighbour (``linear=False``) for label maps.
    """
    spacing_xyz = tuple(float(s) for s in spacing_xyz)
    if np.allclose(image.GetSpacing(), spacing_xyz):
        return image
    extent = (np.asarray(image.GetSize()) - 1) * np.asarray(image.GetSpacing())
    size = [int(n) for n in np.floor(extent / np.asarray(spacing_xyz) + 1e-6).astype(int) + 1]
    return sitk.Resample(
        image,
        size,
        sitk.Transform(),
        sitk.sitkLinear if linear else sitk.sitkNearestNeighbor,
        image.GetOrigin(),
        spacing_xyz,
        image.GetDirection(),
        default_value,
        image.GetPixelID(),
    )


class SimpleITKReader(ImageReader):
    """``LoadImage(reader=SimpleITKReader())``: ITKReader-compatible output without the ``itk`` package.

    Args:
        affine_lps_to_ras: give RAS affines like ``ITKReader`` (default True); False keeps LPS.
        series_name: DICOM series UID to read when a folder holds several (default: the first).
        dtype: optional numpy dtype to cast the voxel array to (None keeps the file's, int16 for LUNA16).
        spacing: optional (x, y, z) mm to resample to while reading, with SimpleITK (linear): it keeps
            int16 and is an order of magnitude faster and lighter than ``Spacingd`` on the float tensor of a
            full-size CT. The returned ``affine`` is the resampled grid's, while
            ``original_affine`` and ``spatial_shape`` stay those of the file, so that
            ``SaveImage(resample=True)`` writes results back in the scan's own geometry. A later
            ``Spacingd`` to the same spacing is a no-op.
        linear: linear interpolation when resampling (False: nearest neighbour, for label files).
    """

    def __init__(
        self,
        affine_lps_to_ras: bool = True,
        series_name: str = "",
        dtype=None,
        spacing: Sequence[float] | None = None,
        linear: bool = True,
    ):
        super().__init__()
        self.affine_lps_to_ras = affine_lps_to_ras
        self.series_name = series_name
        self.dtype = dtype
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.linear = linear

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        for name in ensure_tuple(filename):
            name = str(name)
            if not (Path(name).is_dir() or name.lower().endswith(SUFFIXES)):
                return False
        return True

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs) -> Any:
        start = time.perf_counter()
        images = [read_sitk_image(name, self.series_name) for name in ensure_tuple(data)]
        self._read_s = time.perf_counter() - start  # reported in the meta as "read_s" (profiling)
        return images if len(images) > 1 else images[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        arrays, meta = [], {}
        # a sitk.Image is itself iterable (over pixels), so ensure_tuple must not be used on it
        for image in (img if isinstance(img, (list, tuple)) else [img]):
            source_affine = lps_affine(image)
            source_shape = np.asarray(image.GetSize()[: min(image.GetDimension(), 3)])
            start = time.perf_counter()
            if self.spacing is not None and image.GetDimension() == 3:
                image = resample_to_spacing(image, self.spacing, linear=self.linear)
            resample_s = time.perf_counter() - start
            # (z, y, x) view -> (x, y, z), as ITKReader returns it
            array = sitk.GetArrayFromImage(image)
            n_spatial = image.GetDimension()
            axes = tuple(range(n_spatial - 1, -1, -1))
            if image.GetNumberOfComponentsPerPixel() > 1:
                axes = axes + (n_spatial,)  # the component axis stays last, as in ITKReader
            array = array.transpose(axes)
            if self.dtype is not None:
                array = array.astype(self.dtype, copy=False)
            arrays.append(np.ascontiguousarray(array))
            affine = lps_affine(image)
            if self.affine_lps_to_ras:
                affine, source_affine = orientation_ras_lps(affine), orientation_ras_lps(source_affine)
            header = {
                "spacing": np.asarray(image.GetSpacing()),
                MetaKeys.ORIGINAL_AFFINE: source_affine,
                MetaKeys.AFFINE: affine,
                MetaKeys.SPACE: SpaceKeys.RAS if self.affine_lps_to_ras else SpaceKeys.LPS,
                MetaKeys.SPATIAL_SHAPE: source_shape,
                MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan") if image.GetNumberOfComponentsPerPixel() == 1 else -1,
                "read_s": float(getattr(self, "_read_s", 0.0)),
                "resample_s": float(resample_s),
            }
            if not meta:
                meta = header
            elif not (np.allclose(meta[MetaKeys.AFFINE], affine) and np.array_equal(meta["spatial_shape"], header["spatial_shape"])):
                raise DataError(None, "images stacked as channels must share affine and shape")
        if len(arrays) == 1:
            return arrays[0], meta
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack(arrays, axis=0), meta
