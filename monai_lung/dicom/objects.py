"""DICOM outputs of one scan, written with highdicom: a SEG of the findings' masks and a TID 1500 SR.

- **SEG** (Segmentation Storage, binary): one segment per finding ("finding N", nodule), on the source series'
  own slices and pixel grid, so that a viewer overlays it on the scan;
- **SR** (Comprehensive 3D SR, TID 1500 Measurement Report): one volumetric measurement group (TID 1411) per
  finding, with the finding's centre as a 3D POINT in the series' frame of reference (world LPS mm, the numbers
  of the predictions CSV), its equivalent-sphere diameter, longest axial diameter (mm), volume (mm3) and
  detection probability, referencing the source series. A finding's SR group and SEG segment share one
  tracking UID.

Both are marked as research output (series description and the SR's text). UIDs derive from the source series
and the findings, so writing the same result twice gives the same objects (a PACS keeps one copy).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from scipy import ndimage

from monai_lung import __version__
from monai_lung.dicom.series import SeriesInfo
from monai_lung.io.atomic import atomic_path

RESEARCH_NOTE = "RESEARCH USE ONLY - not for diagnosis"
MANUFACTURER = "monai_lung"
SEG_NAME, SR_NAME = "seg.dcm", "sr.dcm"
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
logging.getLogger("highdicom").setLevel(logging.WARNING)  # its INFO lines name every module it copies
_ALGORITHM = dict(name="monai_lung two-stage nodule detector", version=__version__)


def mask_on_series(mask: np.ndarray, mask_affine: np.ndarray, series: SeriesInfo, space: str = "RAS") -> np.ndarray:
    """A finding's bool (i, j, k) mask (on ``mask_affine``, mapping to world ``space``) resampled onto the
    series' voxels: bool (slices, rows, columns), the frame order of ``series.datasets``.

    A source voxel belongs to the finding where the linearly interpolated mask is at least 0.5 at its centre;
    a finding too small to cover any source voxel centre keeps the one nearest its centroid.
    """
    affine = np.asarray(mask_affine, dtype=np.float64)
    if space.upper() == "RAS":
        affine = _RAS_TO_LPS @ affine
    cols, rows, slices = series.shape
    out = np.zeros((slices, rows, cols), dtype=bool)
    if not mask.any():
        return out
    where = np.argwhere(mask)  # only the mask's own box (plus one voxel for interpolation) is resampled
    lo_box = np.maximum(where.min(axis=0) - 1, 0)
    hi_box = np.minimum(where.max(axis=0) + 2, mask.shape)
    mask = mask[tuple(slice(int(a), int(b)) for a, b in zip(lo_box, hi_box))]
    shift = np.eye(4)
    shift[:3, 3] = lo_box
    affine = affine @ shift
    to_mask = np.linalg.inv(affine) @ series.affine  # source (column, row, slice) -> mask (i, j, k)
    corners = np.array([[a, b, c, 1.0] for a in (-0.5, mask.shape[0] - 0.5) for b in (-0.5, mask.shape[1] - 0.5) for c in (-0.5, mask.shape[2] - 0.5)])
    src = (np.linalg.inv(to_mask) @ corners.T).T[:, :3]
    lo = np.clip(np.floor(src.min(axis=0)).astype(int), 0, [cols - 1, rows - 1, slices - 1])
    hi = np.clip(np.ceil(src.max(axis=0)).astype(int), 0, [cols - 1, rows - 1, slices - 1])
    plane = np.stack(np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij"), axis=-1).reshape(-1, 2)
    source = mask.astype(np.float32)
    found = []
    for s in range(lo[2], hi[2] + 1):  # one source slice at a time keeps the index arrays small
        grid = np.concatenate([plane, np.full((len(plane), 1), s)], axis=1)
        idx = (grid @ to_mask[:3, :3].T + to_mask[:3, 3]).astype(np.float32)
        values = ndimage.map_coordinates(source, idx.T, order=1, mode="constant", cval=0.0)
        found.append(grid[values >= 0.5])
    inside = np.concatenate(found)
    if inside.size == 0:  # smaller than a source voxel: keep the voxel at its centroid
        centroid = np.append(np.argwhere(mask).mean(axis=0), 1.0)
        inside = np.rint((np.linalg.inv(to_mask) @ centroid)[:3]).astype(int)[None]
        inside = np.clip(inside, 0, [cols - 1, rows - 1, slices - 1])
    out[inside[:, 2], inside[:, 1], inside[:, 0]] = True
    return out


def _uid(series: SeriesInfo, kind: str, findings: Sequence[dict]) -> str:
    content = json.dumps([[round(v, 3) for v in f["coord"]] + [round(f["probability"], 6)] for f in findings])
    return generate_uid(entropy_srcs=[series.uid, kind, __version__, content])


def _common(series: SeriesInfo, kind: str, findings: Sequence[dict], number: int) -> dict:
    return dict(
        series_instance_uid=_uid(series, kind + "-series", findings), series_number=number,
        sop_instance_uid=_uid(series, kind, findings), instance_number=1, manufacturer=MANUFACTURER,
    )


def build_seg(series: SeriesInfo, findings: Sequence[dict], masks: Sequence[np.ndarray], tracking_uids: Sequence[str]) -> hd.seg.Segmentation:
    """The SEG of ``findings`` (one segment each, in order) from their (slices, rows, columns) bool ``masks``
    on the series (:func:`mask_on_series`)."""
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=f"finding {n}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Nodule,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(family=codes.cid7162.ArtificialIntelligence, **_ALGORITHM),
            tracking_uid=tracking_uids[n - 1], tracking_id=f"finding {n}",
        )
        for n in range(1, len(findings) + 1)
    ]
    # only the slices some finding touches (a nodule spans a few of a scan's hundreds), placed by their positions
    frames = np.flatnonzero(np.any([m.any(axis=(1, 2)) for m in masks], axis=0))
    pixels = np.stack([m[frames] for m in masks], axis=-1).astype(np.uint8)  # (frames, rows, columns, segments)
    positions = [hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, series.datasets[int(k)].ImagePositionPatient) for k in frames]
    return hd.seg.Segmentation(
        source_images=series.datasets, pixel_array=pixels, plane_positions=positions,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, manufacturer_model_name="monai_lung", software_versions=__version__,
        device_serial_number="none", series_description="monai_lung nodule findings - RESEARCH USE ONLY",
        **_common(series, "seg", findings, 9901),
    )


def build_sr(series: SeriesInfo, findings: Sequence[dict], tracking_uids: Sequence[str]) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 measurement report of ``findings`` (dicts with ``coord`` world LPS mm, ``probability``,
    ``diameter_mm``, ``longest_axial_mm``, ``volume_mm3``), one TID 1411 group each, in order."""
    frame_of_reference = str(series.datasets[0].FrameOfReferenceUID)
    algorithm = hd.sr.AlgorithmIdentification(**_ALGORITHM)
    groups = []
    for n, f in enumerate(findings, start=1):
        measurements = [
            hd.sr.Measurement(name=codes.SCT.Diameter, value=float(f["diameter_mm"]), unit=codes.UCUM.Millimeter,
                              method=codes.DCM.SumOfSegmentedVoxelMethodForVolume, algorithm_id=algorithm),
            hd.sr.Measurement(name=codes.SCT.LongAxis, value=float(f["longest_axial_mm"]), unit=codes.UCUM.Millimeter, algorithm_id=algorithm),
            hd.sr.Measurement(name=codes.SCT.Volume, value=float(f["volume_mm3"]), unit=codes.UCUM.CubicMillimeter,
                              method=codes.DCM.SumOfSegmentedVoxelMethodForVolume, algorithm_id=algorithm),
            hd.sr.Measurement(name=codes.DCM.Probability, value=float(f["probability"]), unit=codes.UCUM.NoUnits, algorithm_id=algorithm),
        ]
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uids[n - 1], identifier=f"finding {n} (SEG segment {n})"),
            referenced_volume_surface=hd.sr.VolumeSurface(
                graphic_type=hd.sr.GraphicTypeValues3D.POINT, graphic_data=np.asarray([f["coord"]], dtype=np.float64),
                frame_of_reference_uid=frame_of_reference, source_series=hd.sr.SourceSeriesForSegmentation(series.uid),
            ),
            finding_type=codes.SCT.Nodule, algorithm_id=algorithm, measurements=measurements,
        ))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(uid=generate_uid(entropy_srcs=["monai_lung", __version__]), name=MANUFACTURER),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=groups,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=series.datasets, content=report, series_description="monai_lung nodule measurements - RESEARCH USE ONLY",
        **_common(series, "sr", findings, 9902),
    )


def tracking_uids(series: SeriesInfo, findings: Sequence[dict]) -> list[str]:
    return [_uid(series, f"track{n}", findings) for n in range(1, len(findings) + 1)]


def write_dicom_outputs(
    series: SeriesInfo, findings: Sequence[dict], masks: Sequence[tuple], mask_affine: np.ndarray, out_dir: str | os.PathLike,
    space: str = "RAS",
) -> dict:
    """Write ``out_dir/<SeriesInstanceUID>/{sr.dcm, seg.dcm}`` for ``findings`` (their order) and return
    ``{"sr": path, "seg": path or None, "sr_sop_instance_uid", "seg_sop_instance_uid", "series_instance_uid"}``.

    ``masks``: per finding ``(lo (3,) int, bool crop)`` in voxels of the grid ``mask_affine`` (world ``space``),
    offset by ``lo``. Without findings no SEG is written (a SEG needs a segment); the SR then has no groups.
    """
    folder = Path(out_dir) / series.uid
    folder.mkdir(parents=True, exist_ok=True)
    tracks = tracking_uids(series, findings)
    outputs = {"series_instance_uid": series.uid, "seg": None, "seg_sop_instance_uid": None}
    mask_affine = np.asarray(mask_affine, dtype=np.float64)
    if findings:
        on_series = []
        for lo, crop in masks:
            shift = np.eye(4)
            shift[:3, 3] = np.asarray(lo, dtype=np.float64)
            on_series.append(mask_on_series(crop, mask_affine @ shift, series, space))
        seg = build_seg(series, findings, on_series, tracks)
        with atomic_path(folder / SEG_NAME) as tmp:
            seg.save_as(tmp)
        outputs["seg"], outputs["seg_sop_instance_uid"] = str(folder / SEG_NAME), str(seg.SOPInstanceUID)
    sr = build_sr(series, findings, tracks)
    with atomic_path(folder / SR_NAME) as tmp:
        sr.save_as(tmp)
    outputs["sr"], outputs["sr_sop_instance_uid"] = str(folder / SR_NAME), str(sr.SOPInstanceUID)
    return outputs


def read_sr_findings(path: str | os.PathLike) -> list[dict]:
    """The findings of an SR written by :func:`write_dicom_outputs`: ``[{"coord" (world LPS mm), "diameter_mm",
    "longest_axial_mm", "volume_mm3", "probability", "tracking_uid"}]`` in group order."""
    sr = hd.sr.srread(path)
    names = {codes.SCT.Diameter: "diameter_mm", codes.SCT.LongAxis: "longest_axial_mm", codes.SCT.Volume: "volume_mm3",
             codes.DCM.Probability: "probability"}
    out = []
    for group in sr.content.get_volumetric_roi_measurement_groups():
        item = {"coord": [float(v) for v in group.roi.graphic_data[0]], "tracking_uid": str(group.tracking_uid)}
        for m in group.get_measurements():
            for code, key in names.items():
                if m.name == code:
                    item[key] = float(m.value)
        out.append(item)
    return out


def read_seg_masks(path: str | os.PathLike, series: SeriesInfo) -> list[np.ndarray]:
    """Each segment of a SEG on ``series`` as a bool (slices, rows, columns) mask in the series' frame order."""
    seg = hd.seg.segread(path)
    sop_uids = [str(ds.SOPInstanceUID) for ds in series.datasets]
    masks = []
    for number in seg.segment_numbers:
        arr = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=sop_uids, segment_numbers=[number], ignore_spatial_locations=True,
            assert_missing_frames_are_empty=True,
        )
        masks.append(np.asarray(arr[..., 0], dtype=bool))
    return masks

