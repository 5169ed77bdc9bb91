"""One finding, from the detector to every output: :class:`Finding`, and per scan :class:`ScanResult`.

The detector returns a :class:`ScanResult` holding :class:`Finding` records; every output is written from them:

==============================  ==============================================================================
output                          written by
==============================  ==============================================================================
predictions CSV                 ``detection.batch.merge_outputs``: LUNA16's five columns, then :func:`csv_columns`
per-scan JSON (the ledger)      ``detection.batch``: :meth:`ScanResult.to_json` (read back: :meth:`ScanResult.from_json`)
review PNGs and ``index.html``  ``report.findings`` (titles), ``report.html`` (captions, tables): :func:`report_items`
3D Slicer ``.mrk.json``         ``report.slicer.finding_points``: :func:`report_items`
DICOM SR and SEG                ``dicom.objects``: :func:`sr_items`, :attr:`Finding.kind`, :attr:`Finding.mask`
MONAI Label boxes               ``detection.detector.TwoStageDetector.__call__``: :attr:`Finding.box`
==============================  ==============================================================================

**Adding an attribute.** A new per-finding value (a nodule type, a location, a Lung-RADS category, ...) is one
field of :class:`Finding` declared with :func:`attribute`; a new per-scan value (a domain check's verdict) is one
field of :class:`ScanResult`, declared the same way. Its declaration says how it shows in each output: its JSON key
is the field name; ``csv=True`` makes it a column of the predictions CSV; ``label`` (with ``unit`` and ``digits``)
shows it in the report's captions and tables and in the Slicer point's description; ``sr`` puts it into the DICOM
SR as a numeric measurement (:class:`SRMeasurement`) or a coded evaluation (:class:`SRCode`). The writers iterate
over the declarations, so none of them changes. Give the field a default that reads "not determined" (NaN, ``""``,
``None``), so that results written before it existed still load. Values must be JSON-able (numbers, strings,
booleans, lists). The producer fills the field (the detector, or a step after it) before the outputs are written.

Conventions: ``coord`` is the centre in world LPS (x, y, z) mm, ITK physical points as in LUNA16's CSVs; sizes
are mm and mm³; probabilities are in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Iterable, Iterator, Mapping, Sequence, Union

import numpy as np

#: a DICOM code: a name in pydicom's code dictionary, ``"SCT.Nodule"``, or ``(value, scheme designator, meaning)``
Code = Union[str, tuple]


@dataclass(frozen=True)
class SRMeasurement:
    """A numeric attribute as a TID 1419 measurement of the finding's SR group: ``concept`` (the measured quantity),
    ``unit`` (UCUM) and optionally the ``method``."""

    concept: Code
    unit: Code
    method: Code | None = None


@dataclass(frozen=True)
class SRCode:
    """A categorical attribute as a TID 1419 qualitative evaluation: ``concept`` (what is evaluated) and the code of
    each value (``values``: attribute value -> code); a value without a code is left out of the SR."""

    concept: Code
    values: Mapping[Any, Code]


@dataclass(frozen=True)
class Attribute:
    """How one field of a record shows in the outputs (see the module docstring).

    Attributes:
        label: words naming it in the report and the Slicer description; "" keeps it out of both.
        unit: written after the value ("mm").
        digits: decimals of a number; None: the value as text.
        csv: a column of the predictions CSV (after LUNA16's five; findings only).
        sr: how the DICOM SR carries it (findings only), or None.
    """

    label: str = ""
    unit: str = ""
    digits: int | None = None
    csv: bool = False
    sr: SRMeasurement | SRCode | None = None

    def format(self, value: Any) -> str:
        """``value`` as the report shows it: a number to ``digits`` decimals ("n/a" when missing), text as it is."""
        if self.digits is not None:
            try:
                number = float(value)
            except (TypeError, ValueError):
                return "n/a"
            text = f"{number:.{self.digits}f}" if math.isfinite(number) else "n/a"
        elif isinstance(value, (list, tuple)):
            text = "; ".join(str(v) for v in value)
        else:
            text = "" if value is None else str(value)
        return f"{text} {self.unit}" if self.unit and text not in ("", "n/a") else text


def attribute(label: str = "", *, default: Any = MISSING, default_factory: Any = MISSING, unit: str = "",
              digits: int | None = None, csv: bool = False, sr: SRMeasurement | SRCode | None = None):
    """A dataclass field of :class:`Finding` or :class:`ScanResult` with its :class:`Attribute` declaration."""
    spec = Attribute(label=label, unit=unit, digits=digits, csv=csv, sr=sr)
    return field(default=default, default_factory=default_factory, metadata={"attribute": spec})


def attributes(record_type: type) -> Iterator[tuple[str, Attribute]]:
    """``(field name, declaration)`` of each declared field of a record type (or of a record), in field order."""
    for f in fields(record_type):
        spec = f.metadata.get("attribute")
        if spec is not None:
            yield f.name, spec


@dataclass
class FindingMask:
    """A finding's segmentation: ``array`` (i, j, k) bool on a crop of a grid, ``affine`` that crop's (i, j, k) ->
    world mm matrix (4x4), ``space`` the world frame of the affine ("RAS" or "LPS")."""

    array: np.ndarray
    affine: np.ndarray
    space: str = "RAS"

    def num_voxels(self) -> int:
        return int(np.count_nonzero(self.array))


#: the DICOM finding type of each ``Finding.kind`` (SR group finding type, SEG segmented property type)
KIND_CODES = {"nodule": "SCT.Nodule", "mass": "SCT.Mass"}

# Codes of the clinical attributes (monai_lung.clinical). Standard where DICOM or SNOMED CT has the concept; where
# neither has one (a part-solid nodule, Lung-RADS categories, Lung-RADS sizes) a private code of this scheme, which
# DICOM allows for concepts outside the standard ones ("99" prefix, PS3.16 section 8).
PRIVATE_SCHEME = "99MONAILUNG"
#: nodule type: density of the finding (DCM, CID 6104); solid (SNOMED CT), ground glass (DCM), part-solid (private)
TYPE_CODES = {
    "solid": ("35702001", "SCT", "Solid"),
    "part-solid": ("PARTSOLID", PRIVATE_SCHEME, "Part-solid"),
    "non-solid": "DCM.GroundGlassOpacity",
}
_DENSITY = ("112118", "DCM", "Density")
#: calcification: SNOMED CT calcified / non-calcified, evaluated as the DCM calcification descriptor
CALCIFIED_CODES = {"true": "SCT.Calcified", "false": "SCT.NonCalcified"}
#: finding site: SNOMED CT right / left lung, and the lung zones (upper, middle, lower zone of lung, CID 6124)
SIDE_CODES = {"right": ("3341006", "SCT", "Right lung"), "left": ("44029006", "SCT", "Left lung")}
ZONE_CODES = {"upper": "SCT.UpperZoneOfLung", "middle": "SCT.MiddleZoneOfLung", "lower": "SCT.LowerZoneOfLung"}
#: Lung-RADS v2022 categories (private codes), evaluated as the DCM assessment category
LUNGRADS_CODES = {c: (f"LUNGRADS{c}", PRIVATE_SCHEME, f"Lung-RADS v2022 category {c}") for c in ("0", "1", "2", "3", "4A", "4B", "4X")}
_MEAN_DIAMETER = ("MEANDIAM", PRIVATE_SCHEME, "Mean diameter (Lung-RADS: long and short axis)")
_SOLID_VOLUME = ("SOLIDVOL", PRIVATE_SCHEME, "Solid component volume")
_SOLID_DIAMETER = ("SOLIDDIAM", PRIVATE_SCHEME, "Solid component mean diameter (Lung-RADS)")

_MM = "UCUM.Millimeter"
_BY_VOXELS = "DCM.SumOfSegmentedVoxelMethodForVolume"


@dataclass
class Finding:
    """One detected finding (see the module docstring for units and for adding attributes)."""

    #: centre, world LPS (x, y, z) mm: the numbers of LUNA16's coordX, coordY, coordZ
    coord: tuple[float, float, float]
    #: the final probability (``detection.detector.final_score`` of the two stages)
    probability: float = attribute("probability", digits=3, sr=SRMeasurement("DCM.Probability", "UCUM.NoUnits"))
    stage1_peak: float = attribute("stage 1", default=math.nan, digits=3)  # the UNet's peak probability
    stage2_prob: float = attribute("stage 2", default=math.nan, digits=3)  # the false-positive reducer's probability
    #: equivalent-sphere diameter of the measured segmentation (detection.sizing)
    diameter_mm: float = attribute("diameter", default=math.nan, unit="mm", digits=1, csv=True,
                                   sr=SRMeasurement("SCT.Diameter", _MM, _BY_VOXELS))
    volume_mm3: float = attribute("volume", default=math.nan, unit="mm³", digits=0, csv=True,
                                  sr=SRMeasurement("SCT.Volume", "UCUM.CubicMillimeter", _BY_VOXELS))
    longest_axial_mm: float = attribute("longest axial", default=math.nan, unit="mm", digits=1, csv=True,
                                        sr=SRMeasurement("SCT.LongAxis", _MM))
    #: Lung-RADS v2022 baseline size band of a solid nodule of this volume (research output, not a category)
    size_band_lungrads_v2022: str = attribute("Lung-RADS v2022 size band", default="")
    #: what was found, one of :data:`KIND_CODES`
    kind: str = attribute("kind", default="nodule")
    # The clinical attributes (monai_lung.clinical, for findings at the operating point; not determined otherwise)
    #: "solid", "part-solid" or "non-solid"
    type: str = attribute("type", default="", csv=True, sr=SRCode(_DENSITY, TYPE_CODES))
    #: "true" or "false" (text, so that the CSV reads true/false)
    calcified: str = attribute("calcified", default="", csv=True, sr=SRCode("DCM.CalcificationDescriptor", CALCIFIED_CODES))
    #: the calcification's pattern: "complete", "central" or "other"
    calcification: str = attribute("calcification", default="")
    #: Lung-RADS v2022 mean diameter: mean of the long and perpendicular short axis, one decimal
    mean_diameter_mm: float | None = attribute("mean diameter", default=None, unit="mm", digits=1, sr=SRMeasurement(_MEAN_DIAMETER, _MM))
    #: a part-solid nodule's solid component
    solid_volume_mm3: float | None = attribute("solid component", default=None, unit="mm³", digits=0,
                                        sr=SRMeasurement(_SOLID_VOLUME, "UCUM.CubicMillimeter", _BY_VOXELS))
    solid_mean_diameter_mm: float | None = attribute("solid component mean diameter", default=None, unit="mm", digits=1,
                                              sr=SRMeasurement(_SOLID_DIAMETER, _MM))
    #: lung side ("right", "left") and zone (third of that lung's height: "upper", "middle", "lower")
    side: str = attribute("lung", default="", sr=SRCode("SCT.FindingSite", SIDE_CODES))
    zone: str = attribute("zone", default="", sr=SRCode("SCT.FindingSite", ZONE_CODES))
    #: "true" when the finding touches the pleura (chest wall, mediastinum, diaphragm)
    touches_pleura: str = attribute("touches pleura", default="")
    #: Lung-RADS v2022 category at a baseline exam (a follow-up's: monai-lung followup), "" when no row applies
    lungrads: str = attribute("Lung-RADS v2022", default="", sr=SRCode("DCM.AssessmentCategory", LUNGRADS_CODES))
    #: the judgements Lung-RADS leaves to a reader that apply (ids of lungrads_v2022.json's "review" entries)
    lungrads_review: list = attribute("for review", default_factory=list)
    #: the segmentation the sizes were measured on (not serialised: the DICOM SEG carries it)
    mask: FindingMask | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.coord = tuple(float(v) for v in self.coord)
        if len(self.coord) != 3:
            raise ValueError(f"a finding's coord is three world mm values, got {self.coord!r}")
        if self.kind not in KIND_CODES:
            raise ValueError(f"finding kind must be one of {', '.join(KIND_CODES)}, got {self.kind!r}")

    @property
    def box(self) -> tuple[float, float, float, float, float, float]:
        """``(x, y, z, size_x, size_y, size_z)``: centre in world LPS mm and a cube of the finding's diameter (MONAI's
        "cccwhd" box mode), the one box every output uses."""
        return (*self.coord, *([float(self.diameter_mm)] * 3))

    def to_json(self) -> dict:
        """The finding as the per-scan JSON holds it: ``coord``, every declared attribute, and its ``box``."""
        out = {"coord": list(self.coord)}
        out.update((name, _plain(getattr(self, name))) for name, _ in attributes(self))
        out["box"] = list(self.box)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Finding":
        """A finding from :meth:`to_json`'s dict (keys it does not declare, such as ``box`` or a report's ``png``, are
        ignored; attributes it lacks take their defaults)."""
        values = {name: data[name] for name, _ in attributes(cls) if name in data}
        return cls(coord=tuple(data["coord"]), **values)

    def csv_row(self, seriesuid: str) -> dict:
        """Its row of the predictions CSV (:func:`csv_columns`)."""
        x, y, z = self.coord
        row = {"seriesuid": seriesuid, "coordX": x, "coordY": y, "coordZ": z, "probability": self.probability}
        row.update((name, getattr(self, name)) for name, spec in attributes(self) if spec.csv)
        return row


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as Python numbers and lists (JSON-able)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def csv_columns(record_type: type = Finding) -> list[str]:
    """The predictions CSV's columns: LUNA16's ``seriesuid,coordX,coordY,coordZ,probability``, then the CSV
    attributes of the finding type in field order (LUNA16 tools read the first five and ignore the rest)."""
    from monai_lung.io.luna16_csv import PREDICTION_COLUMNS

    return [*PREDICTION_COLUMNS, *(name for name, spec in attributes(record_type) if spec.csv)]


def report_items(record, with_defaults: bool = False, exclude: Iterable[str] = (), skip_missing: bool = False) -> list[tuple[str, str]]:
    """``(label, text)`` of each labelled attribute of a :class:`Finding` or :class:`ScanResult`, in field order, for
    the report and the Slicer description. A text attribute still at its default ("", "nodule") is left out unless
    ``with_defaults`` (tables show every column; captions only what was determined)."""
    out = []
    for f in fields(record):
        spec = f.metadata.get("attribute")
        if spec is None or not spec.label or f.name in exclude:
            continue
        value = getattr(record, f.name)
        if not with_defaults and spec.digits is None and (value in (None, "") or (isinstance(value, (list, tuple)) and not value)
                                                          or (f.default is not MISSING and value == f.default)):
            continue
        text = spec.format(value)
        if skip_missing and text == "n/a":
            continue
        out.append((spec.label, text))
    return out


def sr_items(finding: Finding) -> list[tuple[str, Attribute, Any]]:
    """``(field name, declaration, value)`` of each attribute the DICOM SR carries, in field order."""
    return [(name, spec, getattr(finding, name)) for name, spec in attributes(finding) if spec.sr is not None]


#: how the JSON states its conventions (written into every per-scan result)
COORDINATE_SYSTEM = "world mm, ITK/LPS physical points (LUNA16); box = centre x, y, z + size x, y, z"
SIZES = ("measured segmentation: diameter_mm equivalent-sphere, longest_axial_mm, volume_mm3; size band by "
         "Lung-RADS v2022 (solid nodule, baseline) volume bounds; research use only")


@dataclass
class ScanResult:
    """The detector's result for one scan (per-scan attributes are declared like a finding's, see the module
    docstring); ``seriesuid`` and ``image`` are filled in by the batch runner."""

    findings: list[Finding] = field(default_factory=list)  # sorted by probability, highest first
    seriesuid: str = ""
    image: str = ""  # the scan's path (a file or a DICOM folder)
    num_candidates: int = 0  # stage-1 candidates stage 2 scored
    timings_s: dict = field(default_factory=dict)  # seconds per step
    grid_shape: list = field(default_factory=list)  # (i, j, k) voxels of the preprocessed scan
    #: reasons to read this scan's findings with care (e.g. outside the range the detector was validated on)
    warnings: list = attribute("warnings", default_factory=list)
    #: the exam's Lung-RADS v2022 category over the findings at the operating point (monai_lung.clinical)
    lungrads_exam: str = attribute("exam Lung-RADS v2022", default="")
    #: "inside" or "outside" the range the detector was validated on (:mod:`monai_lung.domain`); "" when not checked
    validated_range: str = attribute("validated range", default="")
    #: the domain check in full: ``{"in_range", "warnings", "facts", "validated_range"}`` (the JSON only)
    domain: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The per-scan JSON: ``seriesuid``, ``image``, ``status``, ``findings``, the scan's other fields, and the
        conventions (``coordinate_system``, ``sizes``)."""
        out = {"seriesuid": self.seriesuid, "image": self.image, "status": "ok", "findings": [f.to_json() for f in self.findings]}
        out.update((f.name, _plain(getattr(self, f.name))) for f in fields(self) if f.name not in out)
        out.update(coordinate_system=COORDINATE_SYSTEM, sizes=SIZES)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], finding_type: type = Finding) -> "ScanResult":
        """A result from :meth:`to_json`'s dict (a per-scan JSON file); keys it does not declare are ignored."""
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data and f.name != "findings"}
        values["findings"] = [finding_type.from_json(f) for f in data.get("findings", [])]
        return cls(**values)

    def frame(self, columns: Sequence[str] | None = None):
        """The findings as a DataFrame for analysis: ``coordX, coordY, coordZ`` (world LPS mm), then every declared
        attribute (or only ``columns``); one row per finding, in order."""
        import pandas as pd

        names = [name for name, _ in attributes(Finding if not self.findings else self.findings[0])]
        rows = [{"coordX": f.coord[0], "coordY": f.coord[1], "coordZ": f.coord[2], **{n: getattr(f, n) for n in names}}
                for f in self.findings]
        frame = pd.DataFrame(rows, columns=["coordX", "coordY", "coordZ", *names])
        return frame if columns is None else frame[list(columns)]
