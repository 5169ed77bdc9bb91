"""Whether a series' instance files hold all their pixels: a check for received or copied files, which a reader may
otherwise decode into a slice of garbage without complaint.

For native (uncompressed) pixel data the Pixel Data element must be as long as rows x columns x samples x bytes per
sample x frames (plus one padding byte at most) and lie within the file; encapsulated (compressed) pixel data must
lie within the file. Only headers and element lengths are read, not the pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
from pydicom.uid import UID

from monai_lung.dicom.series import SeriesInfo
from monai_lung.io.errors import DataError


def pixel_data_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with one instance file's pixel data, or None."""
    path = Path(path)
    try:
        ds = pydicom.dcmread(path, defer_size=1024)
        element = ds.get_item("PixelData", keep_deferred=True)
    except Exception as err:  # pydicom's errors for a file that does not parse
        return f"does not parse as DICOM ({type(err).__name__})"
    if element is None:
        return "has no Pixel Data"
    length, start = getattr(element, "length", None), getattr(element, "value_tell", None)
    if length is None or start is None:  # read in full (small): its bytes are there
        return None
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2")))
    if length != 0xFFFFFFFF and start + length > path.stat().st_size:
        return f"is cut short: its Pixel Data needs {start + length} bytes, the file has {path.stat().st_size}"
    if syntax.is_compressed:
        return None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * (int(ds.BitsAllocated) // 8) * frames
    if length not in (expected, expected + 1):
        return f"has {length} bytes of Pixel Data where {int(ds.Rows)}x{int(ds.Columns)} pixels need {expected} (a corrupt instance)"
    return None


def check_series_pixels(info: SeriesInfo) -> None:
    """Raise :class:`DataError` (one line: the instance and the problem) for the first file of ``info`` whose pixel
    data is incomplete or inconsistent (:func:`pixel_data_problem`)."""
    for path, ds in zip(info.files, info.datasets):
        problem = pixel_data_problem(path)
        if problem:
            raise DataError(path, f"instance {ds.SOPInstanceUID} of {info.label()} {problem}")
