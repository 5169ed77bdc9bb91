"""Key images of findings for viewers that cannot show SR coordinates: a DICOM Secondary Capture per finding and a
Key Object Selection (KOS) pointing at them, written with highdicom.

A key image is the source series' slice nearest the finding's centre, in a lung window (W 1500, L -600), as an RGB
image with a circle around the finding and its number, size and probability written on it (and "RESEARCH USE
ONLY"). It carries the study's patient and study modules (from the slice), references the slice it shows
(Source Image Sequence), and burns in nothing that identifies the patient. The KOS (document title "Of Interest")
lists the key images in finding order, so that a viewer's "key images" button opens them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from monai_lung import __version__
from monai_lung.dicom.objects import MANUFACTURER
from monai_lung.dicom.series import SeriesInfo

RESEARCH_NOTE = "RESEARCH USE ONLY - not for diagnosis"  # on every key image
LUNG_WINDOW = (-1350.0, 150.0)  # HU shown black to white: width 1500, level -600
MIN_DISPLAY_PIXELS = 512  # a smaller slice is enlarged so that its captions stay legible
SC_SERIES_NUMBER, KOS_SERIES_NUMBER = 9903, 9904
_MARK = (255, 210, 0)  # the circle and the captions: yellow reads on grey and on black


@dataclass
class KeyFinding:
    """What a key image marks: ``centre`` world LPS mm, ``diameter_mm``, and the caption lines written on it."""

    centre: Sequence[float]
    diameter_mm: float
    lines: Sequence[str]


def _orientation_letters(direction: np.ndarray) -> str:
    """The patient direction a unit vector (world LPS) points to, by its largest component: L/R, P/A, H/F."""
    axis = int(np.argmax(np.abs(direction)))
    return ("LR", "PA", "HF")[axis][0 if direction[axis] > 0 else 1]


def slice_position(series: SeriesInfo, centre_lps: Sequence[float]) -> tuple[int, float, float]:
    """``(slice index in series order, column, row)`` of a world LPS mm point on the series' grid; the slice is
    the nearest one, clipped to the series."""
    index = np.linalg.inv(series.affine) @ np.append(np.asarray(centre_lps, dtype=np.float64), 1.0)
    k = int(np.clip(np.rint(index[2]), 0, len(series.files) - 1))
    return k, float(index[0]), float(index[1])


def render_key_image(hu: np.ndarray, column: float, row: float, radius_px: float, lines: Sequence[str],
                     footer: str = RESEARCH_NOTE) -> tuple[np.ndarray, int]:
    """An RGB uint8 (rows', columns', 3) picture of a (rows, columns) HU slice with a circle of ``radius_px``
    (source pixels) around pixel (``column``, ``row``), ``lines`` at the top left and ``footer`` at the bottom.
    Returns it and its enlargement factor (1 for slices of at least 512 pixels)."""
    lo, hi = LUNG_WINDOW
    grey = np.clip((np.asarray(hu, dtype=np.float32) - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    scale = max(1, int(np.ceil(MIN_DISPLAY_PIXELS / max(grey.shape))))
    picture = Image.fromarray(grey, mode="L")
    if scale > 1:
        picture = picture.resize((grey.shape[1] * scale, grey.shape[0] * scale), Image.BILINEAR)
    picture = picture.convert("RGB")
    draw = ImageDraw.Draw(picture)
    cx, cy, r = (column + 0.5) * scale, (row + 0.5) * scale, max(radius_px * scale, 6.0)
    width = max(2, picture.width // 256)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=_MARK, width=width)
    size = max(12, picture.width // 36)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    y = 4
    for text in lines:
        box = draw.textbbox((6, y), text, font=font)
        draw.rectangle([box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2], fill=(0, 0, 0))
        draw.text((6, y), text, fill=_MARK, font=font)
        y = box[3] + 5
    box = draw.textbbox((6, 0), footer, font=font)
    y = picture.height - (box[3] - box[1]) - 8
    draw.rectangle([3, y - 2, box[2] + 3, picture.height - 3], fill=(0, 0, 0))
    draw.text((6, y - box[1]), footer, fill=_MARK, font=font)
    return np.asarray(picture, dtype=np.uint8), scale


def build_key_images(series: SeriesInfo, findings: Sequence[KeyFinding], series_uid: str, sop_uids: Sequence[str]) -> list[hd.sc.SCImage]:
    """One Secondary Capture per finding, in order (instance numbers 1, 2, ...), in the series ``series_uid``."""
    images = []
    row_dir, col_dir = series.affine[:3, 0], series.affine[:3, 1]
    spacing_col, spacing_row = float(np.linalg.norm(row_dir)), float(np.linalg.norm(col_dir))
    orientation = (_orientation_letters(row_dir), _orientation_letters(col_dir))
    for n, (finding, sop_uid) in enumerate(zip(findings, sop_uids), start=1):
        k, column, row = slice_position(series, finding.centre)
        source = series.datasets[k]
        hu = sitk.GetArrayFromImage(sitk.ReadImage(str(series.files[k])))[0]  # (rows, columns), rescaled to HU by GDCM
        radius = 0.5 * float(finding.diameter_mm) / min(spacing_col, spacing_row) + 3.0
        pixels, scale = render_key_image(hu, column, row, radius, finding.lines)
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source, pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=SC_SERIES_NUMBER,
            sop_instance_uid=sop_uid, instance_number=n, manufacturer=MANUFACTURER,
            pixel_spacing=(spacing_row / scale, spacing_col / scale), patient_orientation=orientation,
        )
        sc.SeriesDescription = "monai_lung key images - RESEARCH USE ONLY"
        sc.ImageComments = "; ".join(finding.lines)[:10240]
        # the body part tells validators that Laterality is not needed (the chest is not a paired structure)
        sc.BodyPartExamined = str(source.get("BodyPartExamined", "") or "CHEST")
        sc.BurnedInAnnotation = "NO"  # the captions name the finding, not the patient
        sc.DerivationDescription = f"slice of the source CT in a lung window with the finding marked, monai_lung {__version__}"
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        sc.SourceImageSequence = [reference]
        images.append(sc)
    return images


def build_key_object_selection(images: Sequence[Dataset], series_uid: str, sop_uid: str, description: str) -> hd.ko.KeyObjectSelectionDocument:
    """A KOS ("Of Interest") referencing ``images`` (at least one), in their order."""
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["monai_lung", __version__]), name=MANUFACTURER),  # the SR's device observer,
    )
    content = hd.ko.KeyObjectSelection(
        document_title=codes.DCM.OfInterest, referenced_objects=images, observer_device_context=observer, description=description,
    )
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=images, content=content, series_instance_uid=series_uid, series_number=KOS_SERIES_NUMBER,
        sop_instance_uid=sop_uid, instance_number=1, manufacturer=MANUFACTURER,
    )
    kos.SeriesDescription = "monai_lung key images (KOS) - RESEARCH USE ONLY"
    return kos
