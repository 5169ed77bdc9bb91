"""DICOM outputs of one scan, written with highdicom: a SEG of the findings' masks and a TID 1500 SR.

- **SEG** (Segmentation Storage, binary): one segment per finding ("finding N", nodule), on the source series'
  own slices and pixel grid, so that a viewer overlays it on the scan;
- **SR** (Comprehensive 3D SR, TID 1500 Measurement Report): one volumetric measurement group (TID 1411) per
  finding, with the finding's centre as a 3D POINT in the series' frame of reference (world LPS mm, the numbers
  of the predictions CSV), its finding type (``Finding.kind``) and every attribute the finding record declares for
  the SR (:func:`monai_lung.findings.record.sr_items`: detection probability, equivalent-sphere diameter, volume,
  longest axial diameter, ...), referencing the source series; the scan's warnings as comments. A finding's SR
  group and SEG segment share one tracking UID.

Both are marked as research output (series description and the SR's text). UIDs derive from the source series
and the findings, so writing the same result twice gives the same objects (a PACS keeps one copy).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from scipy import ndimage

from monai_lung import __version__
from monai_lung.dicom.series import SeriesInfo
from monai_lung.findings import KIND_CODES, Finding, SRCode, SRMeasurement, attributes, sr_items
from monai_lung.io.atomic import atomic_path

MANUFACTURER = "monai_lung"
SEG_NAME, SR_NAME = "seg.dcm", "sr.dcm"
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
logging.getLogger("highdicom").setLevel(logging.WARNING)  # its INFO lines name every module it copies
_TIME_POINT = "C2348792"  # UMLS "Time Point", the concept of TID 1502's label
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


def code(value) -> hd.sr.CodedConcept:
    """A DICOM code from the finding record's notation: ``"SCT.Nodule"`` (pydicom's code dictionary) or ``(value,
    scheme designator, meaning)``."""
    if isinstance(value, str):
        scheme, _, name = value.partition(".")
        found = getattr(getattr(codes, scheme), name)
        return hd.sr.CodedConcept(found.value, found.scheme_designator, found.meaning)
    return hd.sr.CodedConcept(*value)


def _uid(series: SeriesInfo, kind: str, findings: Sequence[Finding]) -> str:
    content = json.dumps([[round(v, 3) for v in f.coord] + [round(f.probability, 6)] for f in findings])
    return generate_uid(entropy_srcs=[series.uid, kind, __version__, content])


def _common(series: SeriesInfo, kind: str, findings: Sequence[Finding], number: int) -> dict:
    return dict(
        series_instance_uid=_uid(series, kind + "-series", findings), series_number=number,
        sop_instance_uid=_uid(series, kind, findings), instance_number=1, manufacturer=MANUFACTURER,
    )


def build_seg(series: SeriesInfo, findings: Sequence[Finding], masks: Sequence[np.ndarray], tracking_uids: Sequence[str]) -> hd.seg.Segmentation:
    """The SEG of ``findings`` (one segment each, in order) from their (slices, rows, columns) bool ``masks``
    on the series (:func:`mask_on_series`)."""
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=f"finding {n}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=code(KIND_CODES[findings[n - 1].kind]),
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


def _sr_content(finding: Finding, algorithm: hd.sr.AlgorithmIdentification) -> tuple[list, list]:
    """(measurements, qualitative evaluations) of a finding's SR group, from its declared SR attributes."""
    measurements, evaluations = [], []
    for _, spec, value in sr_items(finding):
        if isinstance(spec.sr, SRMeasurement):
            if value is None or not np.isfinite(float(value)):
                continue  # not measured: no measurement item
            measurements.append(hd.sr.Measurement(
                name=code(spec.sr.concept), value=float(value), unit=code(spec.sr.unit),
                method=code(spec.sr.method) if spec.sr.method is not None else None, algorithm_id=algorithm,
            ))
        elif isinstance(spec.sr, SRCode) and value in spec.sr.values:
            evaluations.append(hd.sr.QualitativeEvaluation(name=code(spec.sr.concept), value=code(spec.sr.values[value])))
    return measurements, evaluations


@dataclass
class TimePoint:
    """A TID 1502 time point of an SR's measurements: ``label`` (e.g. "follow-up 2025-01-20"), ``order`` (1 the
    earliest) and the subject time point identifier (the exam's date)."""

    label: str
    order: int
    identifier: str = ""

    def context(self) -> hd.sr.TimePointContext:
        return hd.sr.TimePointContext(time_point=self.label, time_point_order=int(self.order),
                                      subject_time_point_identifier=self.identifier or None)


@dataclass
class PriorGroup:
    """A finding of an earlier exam carried in a later exam's SR: its record (centre world LPS mm in ``series``'
    frame), the series it was found on, its tracking UID (shared with the later finding it became) and time point."""

    finding: Finding
    series: SeriesInfo
    tracking_uid: str
    time_point: TimePoint


def _group(f: Finding, series: SeriesInfo, tracking_uid: str, identifier: str, algorithm, time_point: TimePoint | None):
    measurements, evaluations = _sr_content(f, algorithm)
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=identifier),
        referenced_volume_surface=hd.sr.VolumeSurface(
            graphic_type=hd.sr.GraphicTypeValues3D.POINT, graphic_data=np.asarray([f.coord], dtype=np.float64),
            frame_of_reference_uid=str(series.datasets[0].FrameOfReferenceUID), source_series=hd.sr.SourceSeriesForSegmentation(series.uid),
        ),
        time_point_context=None if time_point is None else time_point.context(),
        finding_type=code(KIND_CODES[f.kind]), algorithm_id=algorithm, measurements=measurements,
        qualitative_evaluations=evaluations or None,
    )


def build_sr(series: SeriesInfo, findings: Sequence[Finding], tracking_uids: Sequence[str], comments: Sequence[str] = (),
             time_point: TimePoint | None = None, prior_groups: Sequence[PriorGroup] = ()) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 measurement report of ``findings`` (centres world LPS mm), one TID 1411 group each, in order,
    with the measurements and evaluations their record declares; ``comments`` (the scan's warnings) as text items.
    With a ``time_point`` the groups carry it (TID 1502); ``prior_groups`` add an earlier exam's findings, each on
    its own series and time point, its tracking UID shared with the finding it became (a longitudinal report)."""
    algorithm = hd.sr.AlgorithmIdentification(**_ALGORITHM)
    groups = [_group(f, series, tracking_uids[n - 1], f"finding {n} (SEG segment {n})", algorithm, time_point)
              for n, f in enumerate(findings, start=1)]
    groups += [_group(g.finding, g.series, g.tracking_uid, f"prior finding {n}", algorithm, g.time_point)
               for n, g in enumerate(prior_groups, start=1)]
    if not groups:  # TID 1500 needs a measurement group: one that says the study has no nodule finding
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid(series, "no-findings", findings), identifier="no nodule found"),
            algorithm_id=algorithm, qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.SCT.Nodule, codes.SCT.Absent)],
        ))
    evidence = list(series.datasets)
    for uid in dict.fromkeys(g.series.uid for g in prior_groups if g.series.uid != series.uid):
        evidence += next(g.series for g in prior_groups if g.series.uid == uid).datasets
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(uid=generate_uid(entropy_srcs=["monai_lung", __version__]), name=MANUFACTURER),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=groups,
    )
    for text in comments:  # the scan's warnings travel with its findings
        report[0].ContentSequence.append(hd.sr.TextContentItem(
            name=codes.DCM.Comment, value=str(text)[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        ))
    return hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report, series_description="monai_lung nodule measurements - RESEARCH USE ONLY",
        **_common(series, "sr", [*findings, *(g.finding for g in prior_groups)], 9902),
    )


def tracking_uids(series: SeriesInfo, findings: Sequence[Finding]) -> list[str]:
    return [_uid(series, f"track{n}", findings) for n in range(1, len(findings) + 1)]


def write_dicom_outputs(series: SeriesInfo, findings: Sequence[Finding], out_dir: str | os.PathLike, comments: Sequence[str] = (),
                        tracking: Sequence[str | None] | None = None, time_point: TimePoint | None = None,
                        prior_groups: Sequence[PriorGroup] = ()) -> dict:
    """Write ``out_dir/<SeriesInstanceUID>/{sr.dcm, seg.dcm}`` for ``findings`` (their order; each with its ``mask``)
    and return ``{"sr": path, "seg": path or None, "sr_sop_instance_uid", "seg_sop_instance_uid",
    "series_instance_uid", "tracking_uids"}``. ``comments``: the scan's warnings, as text in the SR. ``tracking``: a
    tracking UID per finding to keep (an earlier exam's, for the same nodule), None for a new one; ``time_point``
    and ``prior_groups``: see :func:`build_sr`.

    Without findings no SEG is written (a SEG needs a segment); the SR then says "nodule: absent". A finding
    without a mask is refused (its SEG segment would be empty).
    """
    folder = Path(out_dir) / series.uid
    folder.mkdir(parents=True, exist_ok=True)
    tracks = [given or made for given, made in zip(tracking or [None] * len(findings), tracking_uids(series, findings))]
    outputs = {"series_instance_uid": series.uid, "seg": None, "seg_sop_instance_uid": None, "tracking_uids": tracks}
    if findings:
        on_series = []
        for n, f in enumerate(findings, start=1):
            if f.mask is None:
                raise ValueError(f"finding {n} has no mask: the SEG needs each finding's segmentation")
            on_series.append(mask_on_series(f.mask.array, f.mask.affine, series, f.mask.space))
        seg = build_seg(series, findings, on_series, tracks)
        with atomic_path(folder / SEG_NAME) as tmp:
            seg.save_as(tmp)
        outputs["seg"], outputs["seg_sop_instance_uid"] = str(folder / SEG_NAME), str(seg.SOPInstanceUID)
    sr = build_sr(series, findings, tracks, comments, time_point, prior_groups)
    with atomic_path(folder / SR_NAME) as tmp:
        sr.save_as(tmp)
    outputs["sr"], outputs["sr_sop_instance_uid"] = str(folder / SR_NAME), str(sr.SOPInstanceUID)
    return outputs


def read_sr_findings(path: str | os.PathLike) -> list[dict]:
    """The findings of an SR written by :func:`write_dicom_outputs`: ``[{"coord" (world LPS mm), "tracking_uid",
    "series_uid" (the series the point is on), "time_point" (its label, "" without), and each measured or coded
    attribute the finding record declares (``probability``, ``diameter_mm``, ``type``, ...)}]`` in group order."""
    sr = hd.sr.srread(path)
    names = [(code(spec.sr.concept), name) for name, spec in attributes(Finding) if isinstance(spec.sr, SRMeasurement)]
    coded = [(code(spec.sr.concept), name, {code(c): v for v, c in spec.sr.values.items()})
             for name, spec in attributes(Finding) if isinstance(spec.sr, SRCode)]
    out = []
    for group in sr.content.get_volumetric_roi_measurement_groups():
        item = {"coord": [float(v) for v in group.roi.graphic_data[0]], "tracking_uid": str(group.tracking_uid),
                "series_uid": "", "time_point": ""}
        for entry in group[0].ContentSequence:  # TID 1502 items sit in the group itself
            if entry.ConceptNameCodeSequence[0].CodeValue == _TIME_POINT and entry.ValueType == "TEXT":
                item["time_point"] = str(entry.TextValue)
        source = group.roi.source_series_for_segmentation
        item["series_uid"] = str(source.value) if source is not None else ""
        for m in group.get_measurements():
            for concept, key in names:
                if m.name == concept:
                    item[key] = float(m.value)
        for entry in group[0].ContentSequence:  # coded evaluations (finding sites among them)
            if entry.ValueType != "CODE":
                continue
            name = hd.sr.CodedConcept.from_dataset(entry.ConceptNameCodeSequence[0])
            value = hd.sr.CodedConcept.from_dataset(entry.ConceptCodeSequence[0])
            for concept, key, values in coded:
                if name == concept and value in values:
                    item[key] = values[value]
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

