"""Lung-RADS v2022 categories per finding and per exam, from the table in ``lungrads_v2022.json``.

The table (its rows, the judgements left to a reader, and its source, the ACR Lung-RADS v2022 document) lives in that
one data file; this module applies it. A finding is described by :class:`NoduleFacts` (type, sizes, calcification,
pleural contact, and for a follow-up exam whether it is new or its prior sizes and the interval). The engine:

1. a calcified nodule with a complete or central calcification is category 1;
2. the table's time point: ``baseline`` (no prior exam), ``new``, or for a nodule seen before ``growing`` (mean
   diameter, for a part-solid nodule its solid component, up by more than 1.5 mm within 12 months; a new solid
   component counts) or ``stable``. A stable nodule that enlarged into a higher size category is classified by size,
   as the table's size-threshold note says;
3. every row whose conditions hold; the highest category among them (the rows do not overlap, which the tests check);
4. the judgements the table leaves to a reader, as ``review`` entries: 4X, benign-looking juxtapleural nodules, a
   calcification's pattern, slow growth over several exams, and others. They are flagged, never decided: the category
   is what the measurable rows give (None when no row applies).

Sizes are compared by Lung-RADS mean diameter (one decimal) by default, or by volume (whole mm^3); ``measure`` picks.
Research use only: a radiologist assigns the category.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from monai_lung.clinical.measures import one_decimal

TABLE_FILE = Path(__file__).with_name("lungrads_v2022.json")
MEASURES = ("diameter", "volume")
TIMEPOINTS = ("baseline", "new", "existing")


@lru_cache(maxsize=1)
def table() -> dict:
    """The Lung-RADS v2022 table (``lungrads_v2022.json``), parsed once."""
    return json.loads(TABLE_FILE.read_text(encoding="utf-8"))


def category_rank(category: str | None) -> int:
    """Order of a category in the table (0 < 1 < 2 < 3 < 4A < 4B < 4X); -1 for None."""
    return -1 if category is None else table()["categories"].index(category)


@dataclass
class NoduleFacts:
    """What the table needs of one nodule. Sizes in mm (Lung-RADS mean diameter) and mm^3.

    ``timepoint``: ``"baseline"`` (an exam without a prior), ``"new"`` (not in the prior) or ``"existing"`` (in the
    prior: then ``prior`` holds its facts there and ``interval_days`` the time between the exams).
    ``prior_category``: the nodule's category at the prior exam, if known (else it is computed from ``prior`` as at
    a baseline exam).
    """

    type: str
    mean_diameter_mm: float
    volume_mm3: float
    solid_mean_diameter_mm: float = 0.0
    solid_volume_mm3: float = 0.0
    calcified: bool = False
    calcification: str = ""
    pleural: bool = False
    timepoint: str = "baseline"
    prior: "NoduleFacts | None" = None
    interval_days: float | None = None
    prior_category: str | None = None


@dataclass
class Assessment:
    """A finding's Lung-RADS v2022 assessment: ``category`` (None when no measurable row applies), ``row`` (its id in
    the table), ``timepoint`` (the table's: baseline, new, growing, stable) and the ``review`` entries (id, text)."""

    category: str | None
    row: str | None
    timepoint: str
    review: list = field(default_factory=list)
    note: str = ""

    def summary(self) -> dict:
        return {"category": self.category, "row": self.row, "timepoint": self.timepoint,
                "review": [r["id"] for r in self.review], "note": self.note}


def _in(value: float, bounds) -> bool:
    if bounds is None:
        return True
    lo, hi = bounds
    return (lo is None or value >= lo) and (hi is None or value < hi)


def _size(facts: NoduleFacts, measure: str, solid: bool = False) -> float:
    if measure == "volume":
        return float(math.floor((facts.solid_volume_mm3 if solid else facts.volume_mm3) + 0.5))  # whole mm^3, halves up
    return one_decimal(facts.solid_mean_diameter_mm if solid else facts.mean_diameter_mm)


def matching_rows(facts: NoduleFacts, timepoint: str, measure: str = "diameter", prior_category: str | None = None) -> list[dict]:
    """The table's rows whose conditions ``facts`` meet at the table time point ``timepoint``."""
    size_key, solid_key = ("size_mm", "solid_size_mm") if measure == "diameter" else ("volume_mm3", "solid_volume_mm3")
    out = []
    for row in table()["rows"]:
        if row["id"] in ("no-nodules", "calcified"):
            continue
        if "timepoint" in row and timepoint not in row["timepoint"]:
            continue
        if "type" in row and facts.type not in ([row["type"]] if isinstance(row["type"], str) else row["type"]):
            continue
        if "prior_category" in row and prior_category not in row["prior_category"]:
            continue
        if not _in(_size(facts, measure), row.get(size_key)) or not _in(_size(facts, measure, True), row.get(solid_key)):
            continue
        out.append(row)
    return out


def _best(rows: list[dict]) -> dict | None:
    return max(rows, key=lambda r: category_rank(r["category"])) if rows else None


def review_entry(review_id: str) -> dict:
    entry = next(r for r in table()["review"] if r["id"] == review_id)
    return {"id": entry["id"], "text": entry["text"]}


def _growth_measure(facts: NoduleFacts) -> float:
    """The size whose growth counts: a part-solid nodule's solid component, otherwise the mean diameter (mm)."""
    return facts.solid_mean_diameter_mm if facts.type == "part-solid" else facts.mean_diameter_mm


def growth(facts: NoduleFacts) -> tuple[bool, bool]:
    """``(growing, slow)`` of an existing nodule: growing when its size (:func:`_growth_measure`; a part-solid nodule
    whose prior was non-solid has a new solid component) rose by more than 1.5 mm within 12 months, or by more than
    1.5 mm per 12 months on average over a longer interval; ``slow`` when it rose by more than 1.5 mm but slower."""
    rule = table()["growth"]
    prior = facts.prior
    if prior is None:
        raise ValueError("an existing nodule needs its prior facts")
    before = _growth_measure(prior) if prior.type == facts.type or facts.type != "part-solid" else 0.0
    rise = one_decimal(_growth_measure(facts)) - one_decimal(before)
    if rise <= rule["mean_diameter_increase_mm"]:
        return False, False
    days = facts.interval_days
    if days is None or days <= rule["interval_days"]:
        return True, False
    per_year = rise * rule["interval_days"] / days
    return (per_year > rule["mean_diameter_increase_mm"]), (per_year <= rule["mean_diameter_increase_mm"])


def assess(facts: NoduleFacts, measure: str = "diameter") -> Assessment:
    """The Lung-RADS v2022 assessment of one nodule (module docstring)."""
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {', '.join(MEASURES)}, got {measure!r}")
    if facts.timepoint not in TIMEPOINTS:
        raise ValueError(f"timepoint must be one of {', '.join(TIMEPOINTS)}, got {facts.timepoint!r}")
    calc_row = next(r for r in table()["rows"] if r["id"] == "calcified")
    if facts.calcified and facts.calcification in calc_row["calcification"]:
        point = facts.timepoint if facts.timepoint != "existing" else "stable"
        return Assessment("1", "calcified", point)
    review = [review_entry("calcification-pattern")] if facts.calcified else []

    note = ""
    point = facts.timepoint
    prior_category = facts.prior_category
    if point == "existing":
        growing, slow = growth(facts)
        point = "growing" if growing else "stable"
        if slow and facts.type in ("solid", "part-solid"):
            review.append(review_entry("slow-growth"))
        if prior_category is None:
            prior_category = assess(replace(facts.prior, timepoint="baseline", prior=None), measure).category
        if point == "stable":
            # a nodule that enlarged into a higher size category is classified by size
            now = _best(matching_rows(facts, "baseline", measure))
            before = _best(matching_rows(facts.prior, "baseline", measure))
            larger = _size(facts, measure) > _size(facts.prior, measure)
            if larger and now and before and category_rank(now["category"]) > category_rank(before["category"]):
                point, note = "baseline", "reached a higher size category: classified by size"
    rows = matching_rows(facts, point, measure, prior_category)
    if point == "stable" and prior_category == "4B":
        review.append(review_entry("stable-after-4B"))
    row = _best(rows)
    category = row["category"] if row else None
    if facts.type == "non-solid" and point == "growing" and _size(facts, measure) >= (30 if measure == "diameter" else 14137):
        review.append(review_entry("non-solid-ge30-growing"))

    # judgements left to a reader
    rank = category_rank(category)
    if category in ("3", "4A", "4B"):
        review.append(review_entry("4X"))
    small = _size(facts, measure) < (10 if measure == "diameter" else 524)
    if facts.type == "solid" and facts.pleural and small and point in ("baseline", "new") and rank >= category_rank("3"):
        review.append(review_entry("juxtapleural"))
    if point == "new" and facts.type in ("solid", "part-solid") and _size(facts, measure) >= (8 if measure == "diameter" else 268):
        review.append(review_entry("infectious"))
    other = "volume" if measure == "diameter" else "diameter"
    other_row = _best(matching_rows(facts, point, other, prior_category))
    if category is not None and other_row is not None and other_row["category"] != category:
        review.append(review_entry("measurement-choice"))
    return Assessment(category, row["id"] if row else None, point, review, note)


def exam_category(assessments: list[Assessment]) -> dict:
    """The exam's category: its most suspicious finding's (1 when it has none), the findings' review entries, and
    how many findings no measurable row covers (``undecided``)."""
    decided = [a for a in assessments if a.category is not None]
    top = max(decided, key=lambda a: category_rank(a.category)) if decided else None
    category = top.category if top else "1"
    reviews = {}
    for a in assessments:
        for r in a.review:
            reviews.setdefault(r["id"], r)
    return {
        "category": category, "row": top.row if top else "no-nodules", "management": table()["management"][category],
        "review": list(reviews.values()), "undecided": sum(a.category is None for a in assessments),
        "table": table()["name"], "source": table()["source"],
    }


def lungrads_sort_key(category: str | None) -> float:
    """For sorting findings most suspicious first: minus the category's rank (None last)."""
    return -category_rank(category) if category is not None else math.inf
