"""Lung-RADS v2022: every row of the table (lungrads_v2022.json) by an example that meets it and no other, the
boundaries, growth, stepped management, the judgements flagged for a reader, and the exam category."""

from __future__ import annotations

import pytest

from monai_lung.clinical.lungrads import NoduleFacts, assess, exam_category, matching_rows, table


def solid(d, v=None, **kw):
    return NoduleFacts("solid", d, v if v is not None else 3.1416 / 6 * d**3, **kw)


def part_solid(d, s, v=None, sv=None, **kw):
    return NoduleFacts("part-solid", d, v if v is not None else 3.1416 / 6 * d**3, s, sv if sv is not None else 3.1416 / 6 * s**3, **kw)


def ggn(d, **kw):
    return NoduleFacts("non-solid", d, 3.1416 / 6 * d**3, **kw)


def existing(now: NoduleFacts, prior: NoduleFacts, days=365.0, prior_category=None) -> NoduleFacts:
    now.timepoint, now.prior, now.interval_days, now.prior_category = "existing", prior, days, prior_category
    return now


#: one example per row of the table: (row id, facts, the table time point it meets the row at)
EXAMPLES = [
    ("calcified", solid(12.0, calcified=True, calcification="central"), "baseline"),
    ("solid-baseline-lt6", solid(5.9), "baseline"),
    ("solid-new-lt4", solid(3.9, timepoint="new"), "new"),
    ("part-solid-baseline-lt6", part_solid(5.9, 3.0), "baseline"),
    ("non-solid-lt30", ggn(29.9), "baseline"),
    ("non-solid-ge30-stable", existing(ggn(31.0), ggn(30.5)), "stable"),
    ("stable-benign", existing(solid(5.0), solid(5.0)), "stable"),
    ("stable-after-3", existing(solid(7.0), solid(6.8), days=180, prior_category="3"), "stable"),
    ("solid-baseline-6to8", solid(6.0), "baseline"),
    ("solid-new-4to6", solid(4.0, timepoint="new"), "new"),
    ("part-solid-baseline-solid-lt6", part_solid(6.0, 5.9), "baseline"),
    ("part-solid-new-lt6", part_solid(5.9, 3.0, timepoint="new"), "new"),
    ("non-solid-ge30-baseline-new", ggn(30.0), "baseline"),
    ("stable-after-4A", existing(solid(9.0), solid(9.0), days=90, prior_category="4A"), "stable"),
    ("solid-baseline-8to15", solid(14.9), "baseline"),
    ("solid-growing-lt8", existing(solid(7.9), solid(6.3), days=300), "growing"),
    ("solid-new-6to8", solid(7.9, timepoint="new"), "new"),
    ("part-solid-baseline-solid-6to8", part_solid(12.0, 6.0), "baseline"),
    ("part-solid-new-solid-lt4", part_solid(6.0, 3.9, timepoint="new"), "new"),
    ("part-solid-growing-solid-lt4", existing(part_solid(12.0, 3.9), part_solid(12.0, 2.0)), "growing"),
    ("solid-baseline-ge15", solid(15.0), "baseline"),
    ("solid-new-growing-ge8", solid(8.0, timepoint="new"), "new"),
    ("part-solid-baseline-solid-ge8", part_solid(14.0, 8.0), "baseline"),
    ("part-solid-new-solid-ge4", part_solid(9.0, 4.0, timepoint="new"), "new"),
    ("part-solid-growing-solid-ge4", existing(part_solid(12.0, 6.0), part_solid(12.0, 4.0)), "growing"),
    ("stable-after-4B", existing(solid(16.0), solid(16.0), days=120, prior_category="4B"), "stable"),
]


def test_every_row_of_the_table_has_an_example():
    assert {r["id"] for r in table()["rows"]} - {"no-nodules"} == {e[0] for e in EXAMPLES}
    assert "ACR" in table()["source"] and "v2022" in table()["source"] and "Lung-RADS-2022.pdf" in table()["source"]


@pytest.mark.parametrize("row_id,facts,timepoint", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_each_row(row_id, facts, timepoint):
    row = next(r for r in table()["rows"] if r["id"] == row_id)
    got = assess(facts)
    assert (got.row, got.category, got.timepoint) == (row_id, row["category"], timepoint)
    if row_id != "calcified":  # the rows do not overlap: the example meets its row and no other
        prior_category = facts.prior_category or (assess(facts.prior).category if facts.prior else None)
        assert [r["id"] for r in matching_rows(facts, timepoint, prior_category=prior_category)] == [row_id]


@pytest.mark.parametrize("row_id,facts,timepoint", [e for e in EXAMPLES if "size_mm" in next(r for r in table()["rows"] if r["id"] == e[0])],
                         ids=[e[0] for e in EXAMPLES if "size_mm" in next(r for r in table()["rows"] if r["id"] == e[0])])
def test_each_sized_row_by_volume(row_id, facts, timepoint):
    """The rows' volume thresholds give the same row for the same nodules (volumes of balls of those mean diameters)."""
    assert assess(facts, measure="volume").row == row_id


@pytest.mark.parametrize("d,category", [(5.9, "2"), (5.94, "2"), (5.95, "3"), (6.0, "3"), (7.99, "4A"), (14.9, "4A"), (14.95, "4B")])
def test_mean_diameter_is_compared_to_one_decimal(d, category):
    assert assess(solid(d)).category == category


def test_volume_thresholds_are_whole_mm3():
    assert assess(solid(6.0, v=112.4), measure="volume").category == "2"  # rounds to 112
    assert assess(solid(6.0, v=112.5), measure="volume").category == "3"  # rounds (halves up) to 113
    assert assess(solid(6.0, v=113.0), measure="volume").category == "3"


def test_growth_needs_more_than_1_5_mm_within_12_months():
    assert assess(existing(solid(7.5), solid(6.0), days=300)).timepoint == "stable"  # exactly 1.5 mm: not growth
    assert assess(existing(solid(7.6), solid(6.0), days=300)).timepoint == "growing"
    # 1.8 mm over two years is slow growth: stable for the table, flagged for a reader (4B if it goes on)
    slow = assess(existing(solid(7.9), solid(6.1), days=730))
    assert slow.timepoint == "stable" and "slow-growth" in [r["id"] for r in slow.review]
    # 4 mm over two years grows faster than 1.5 mm a year
    assert assess(existing(solid(9.6), solid(5.6), days=730)).timepoint == "growing"
    # a non-solid nodule that gains a solid component: a new solid component grows
    assert assess(existing(part_solid(12.0, 3.0), ggn(12.0))).row == "part-solid-growing-solid-lt4"


def test_a_stable_nodule_that_reaches_a_higher_size_category_is_classified_by_size():
    got = assess(existing(solid(8.1), solid(7.0), days=365))  # +1.1 mm: not growth, but now 8 mm or more
    assert (got.category, got.row, got.timepoint) == ("4A", "solid-baseline-8to15", "baseline") and "size" in got.note


def test_judgements_are_flagged_never_decided():
    pleural = assess(solid(8.5, pleural=True))
    assert pleural.category == "4A" and {"4X", "juxtapleural"} <= {r["id"] for r in pleural.review}
    assert "juxtapleural" not in {r["id"] for r in assess(solid(10.5, pleural=True)).review}
    # a calcification that is neither complete nor central: size rules, and the pattern goes to a reader
    other = assess(solid(9.0, calcified=True, calcification="other"))
    assert other.category == "4A" and "calcification-pattern" in {r["id"] for r in other.review}
    assert assess(solid(9.0, calcified=True, calcification="complete")).category == "1"
    assert "infectious" in {r["id"] for r in assess(solid(9.0, timepoint="new")).review}
    assert "stable-after-4B" in {r["id"] for r in assess(EXAMPLES[-1][1]).review}
    # no row covers a growing non-solid nodule of 30 mm or more: no category, a reader decides
    big = assess(existing(ggn(34.0), ggn(31.0), days=200))
    assert big.category is None and "non-solid-ge30-growing" in {r["id"] for r in big.review}
    assert "4X" not in {r["id"] for r in assess(solid(5.0)).review}
    # mean diameter and volume disagree for a flat nodule
    flat = assess(solid(8.2, v=200.0))
    assert flat.category == "4A" and "measurement-choice" in {r["id"] for r in flat.review}


def test_exam_category_is_the_most_suspicious_findings():
    exam = exam_category([assess(solid(5.0)), assess(solid(9.0)), assess(existing(ggn(34.0), ggn(31.0), days=200))])
    assert exam["category"] == "4A" and exam["row"] == "solid-baseline-8to15" and exam["undecided"] == 1
    assert "3-month" in exam["management"] and {"4X", "non-solid-ge30-growing"} <= {r["id"] for r in exam["review"]}
    empty = exam_category([])
    assert (empty["category"], empty["row"]) == ("1", "no-nodules")


def test_bad_facts_are_refused():
    with pytest.raises(ValueError, match="measure"):
        assess(solid(5.0), measure="area")
    with pytest.raises(ValueError, match="timepoint"):
        assess(solid(5.0, timepoint="follow-up"))
    with pytest.raises(ValueError, match="prior"):
        assess(solid(5.0, timepoint="existing"))
