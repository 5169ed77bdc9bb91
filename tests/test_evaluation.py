"""LUNA16 FROC evaluation on small cases whose expected figures are worked out by hand in the comments.

Notation: S scans, N nodules; a curve point is (FPs per scan, sensitivity); sensitivity at r FPs/scan is
the last point with FPs/scan <= r, interpolated linearly towards the next point.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from monai_lung.evaluation import (
    FROCEvents,
    bootstrap_weights,
    evaluate_froc,
    interpolate_froc,
    match_predictions,
    run_evaluation,
)
from monai_lung.evaluation.cli import add_evaluate_arguments, evaluate_main
from monai_lung.evaluation.froc import interpolate_counts
from monai_lung.io import DataError

RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
ANN = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
PRED = ["seriesuid", "coordX", "coordY", "coordZ", "probability"]


def ann(rows):
    return pd.DataFrame(rows, columns=ANN)


def preds(rows):
    return pd.DataFrame(rows, columns=PRED)


def sens_list(result):
    return [result.sensitivities[r] for r in RATES]


# Case "tie": S=2, N=2.
#   s1: nodule A at origin, d=10 (r=5); p1 hits A at 0.9, p2 is an FP tied at 0.9.
#   s2: nodule B at (100,0,0), d=6 (r=3); p3 FP at 0.5, p4 hits B at 0.3.
# Points: origin; 0.9 -> 1 TP + 1 FP = (0.5, 0.5); 0.5 -> (1.0, 0.5); 0.3 -> (1.0, 1.0).
# 1/8 -> 0.5 * 0.125/0.5 = 0.125, 1/4 -> 0.25, 1/2 -> 0.5, 1..8 -> 1.0; CPM = 4.875 / 7.
TIE_ANN = [("s1", 0, 0, 0, 10.0), ("s2", 100, 0, 0, 6.0)]
TIE_PRED = [("s1", 1, 0, 0, 0.9), ("s1", 50, 50, 50, 0.9), ("s2", 200, 0, 0, 0.5), ("s2", 100, 2, 0, 0.3)]
TIE_SENS = [0.125, 0.25, 0.5, 1.0, 1.0, 1.0, 1.0]
TIE_CPM = 4.875 / 7


def test_tied_scores_enter_the_curve_together():
    result = evaluate_froc(ann(TIE_ANN), None, preds(TIE_PRED), ["s1", "s2"], n_bootstrap=0)
    np.testing.assert_allclose(result.fps_per_scan, [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(result.sensitivity, [0.0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(result.thresholds, [np.inf, 0.9, 0.5, 0.3])
    np.testing.assert_allclose(sens_list(result), TIE_SENS)
    assert result.cpm == pytest.approx(TIE_CPM)
    assert (result.num_tp, result.num_fp, result.num_predictions_used) == (2, 2, 4)
    # the tied pair in the other file order gives the same curve (neither TP-first 0.5 nor FP-first 0.0 at 1/8)
    swapped = [TIE_PRED[1], TIE_PRED[0], *TIE_PRED[2:]]
    again = evaluate_froc(ann(TIE_ANN), None, preds(swapped), ["s1", "s2"], n_bootstrap=0)
    np.testing.assert_allclose(sens_list(again), TIE_SENS)
    np.testing.assert_allclose(result.sensitivity_at([0.125, 0.75, 100.0]), [0.125, 0.5, 1.0])
    # no bootstrap: no intervals
    assert np.isnan(result.cpm_ci_low) and result.n_bootstrap_used == 0


def test_two_predictions_on_one_nodule_count_once_and_the_other_is_not_an_fp():
    # S=1, N=1: p1 (0.8) and p3 (0.6) both hit A; p2 (0.7) is far. TP at 0.8 -> (0, 1); FP at 0.7 -> (1, 1);
    # p3 is a duplicate (no point, not an FP). All seven sensitivities 1, CPM 1, the curve ends at 1 FP/scan.
    annotations = ann([("s1", 0, 0, 0, 10.0)])
    predictions = preds([("s1", 0, 0, 1, 0.8), ("s1", 60, 0, 0, 0.7), ("s1", 0, 2, 0, 0.6)])
    result = evaluate_froc(annotations, None, predictions, ["s1"], n_bootstrap=0)
    assert list(result.predictions["outcome"]) == ["tp", "fp", "duplicate"]
    assert (result.num_tp, result.num_fp, result.num_ignored_duplicate) == (1, 1, 1)
    assert result.fps_per_scan[-1] == 1.0
    np.testing.assert_allclose(sens_list(result), [1.0] * 7)
    assert result.cpm == 1.0
    assert result.nodules["best_score"].tolist() == [0.8]
    assert result.nodules["prediction_row"].tolist() == [0]


def test_prediction_inside_two_nodules_detects_both():
    # A at origin and B at (6,0,0), both d=10 (r=5). p1 at (2,0,0): 2 mm from A, 4 mm from B -> hits both.
    # p2 is a far FP. Both nodules are detected at 0.9: (0, 1) then (1, 1); CPM 1 (a "nearer nodule only" rule: 0.5).
    annotations = ann([("s1", 0, 0, 0, 10.0), ("s1", 6, 0, 0, 10.0)])
    predictions = preds([("s1", 2, 0, 0, 0.9), ("s1", -80, 0, 0, 0.8)])
    result = evaluate_froc(annotations, None, predictions, ["s1"], n_bootstrap=0)
    assert result.nodules["hit"].tolist() == [True, True]
    assert result.nodules["best_score"].tolist() == [0.9, 0.9]
    assert (result.num_tp, result.num_fp) == (2, 1)
    assert result.cpm == 1.0
    np.testing.assert_allclose(result.sensitivity, [0.0, 1.0, 1.0])


def test_hit_radius_is_inclusive():
    # d=10 -> r=5: a prediction exactly 5 mm away hits, one 5.001 mm away is an FP.
    annotations = ann([("s1", 0, 0, 0, 10.0), ("s2", 0, 0, 0, 10.0)])
    predictions = preds([("s1", 5, 0, 0, 0.9), ("s2", 0, 0, 5.001, 0.8)])
    result = evaluate_froc(annotations, None, predictions, ["s1", "s2"], n_bootstrap=0)
    assert list(result.predictions["outcome"]) == ["tp", "fp"]
    assert result.nodules["hit"].tolist() == [True, False]


def test_match_predictions_equal_best_scores_go_to_the_first_row():
    outcome, best = match_predictions(
        np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [30.0, 0.0, 0.0]]),
        np.array([0.5, 0.5, 0.7]),
        np.array([[0.0, 0.0, 0.0]]),
        np.array([6.0]),
    )
    assert list(outcome) == ["tp", "duplicate", "fp"]
    assert best.tolist() == [0]
    outcome, best = match_predictions(np.zeros((0, 3)), np.zeros(0), np.array([[0.0, 0.0, 0.0]]), np.array([6.0]))
    assert len(outcome) == 0 and best.tolist() == [-1]


EXC_ANN = [("s1", 0, 0, 0, 6.0)]
# E1 at (50,0,0) d=8 (r=4); E2 at (-50,0,0) size unknown; E3 at the origin, d=20, overlapping nodule A.
EXC_EXC = [("s1", 50, 0, 0, 8.0), ("s1", -50, 0, 0, -1.0), ("s1", 0, 0, 0, 20.0)]
EXC_PRED = [
    ("s1", 52, 0, 0, 0.9),  # 2 mm from E1 -> ignored
    ("s1", -46, 0, 0, 0.8),  # 4 mm from E2 (default r=5) -> ignored
    ("s1", -56, 0, 0, 0.7),  # 6 mm from E2 -> FP (ignored when the default diameter is 14 mm)
    ("s1", 55, 0, 0, 0.75),  # 5 mm from E1 (r=4) -> FP
    ("s1", 1, 0, 0, 0.6),  # hits A (and E3): a TP, not ignored
]


def test_predictions_on_excluded_findings_are_ignored():
    # default 10 mm: FP 0.75 -> (1, 0), FP 0.7 -> (2, 0), TP 0.6 -> (2, 1); S=1, N=1.
    # 1/8..1 -> 0 (at 1 the next point (2, 0) is flat), 2, 4, 8 -> 1: CPM 3/7.
    result = evaluate_froc(ann(EXC_ANN), ann(EXC_EXC), preds(EXC_PRED), ["s1"], n_bootstrap=0)
    assert list(result.predictions["outcome"]) == ["excluded", "excluded", "fp", "fp", "tp"]
    assert (result.num_ignored_excluded, result.num_fp, result.num_tp, result.num_predictions_used) == (2, 2, 1, 5)
    np.testing.assert_allclose(sens_list(result), [0, 0, 0, 0, 1, 1, 1])
    assert result.cpm == pytest.approx(3 / 7)
    assert result.to_dict()["settings"]["excluded_default_diameter_mm"] == 10.0
    # 14 mm (r=7) for the unknown-size finding: the 0.7 prediction is ignored too -> (1, 0), (1, 1): CPM 4/7.
    wider = evaluate_froc(
        ann(EXC_ANN), ann(EXC_EXC), preds(EXC_PRED), ["s1"], n_bootstrap=0, excluded_default_diameter_mm=14.0
    )
    assert wider.num_ignored_excluded == 3
    assert wider.cpm == pytest.approx(4 / 7)
    # without the excluded file all four non-hits are FPs: (1,0),(2,0),(3,0),(4,0),(4,1) -> 4, 8 only: 2/7
    plain = evaluate_froc(ann(EXC_ANN), None, preds(EXC_PRED), ["s1"], n_bootstrap=0)
    assert plain.num_fp == 4 and plain.cpm == pytest.approx(2 / 7)


def test_scans_without_nodules_or_predictions_count_in_the_fp_denominator():
    # S=4, N=2. s1: A, TP 0.9 + FP 0.8; s2: no nodule, FP 0.7; s3: nothing; s4: B, TP 0.6.
    # Points: (0,0) (0,.5) (.25,.5) (.5,.5) (.5,1). 1/8, 1/4 -> .5; 1/2..8 -> 1; CPM 6/7.
    # (Leaving s3 out, S=3, would put the FPs at 1/3, 2/3 and give 5.5/7.)
    annotations = ann([("s1", 0, 0, 0, 10.0), ("s4", 0, 0, 0, 10.0)])
    predictions = preds([("s1", 0, 0, 0, 0.9), ("s1", 80, 0, 0, 0.8), ("s2", 0, 0, 0, 0.7), ("s4", 0, 0, 0, 0.6)])
    result = evaluate_froc(annotations, None, predictions, ["s1", "s2", "s3", "s4"], n_bootstrap=0)
    assert result.num_scans == 4
    np.testing.assert_allclose(result.fps_per_scan, [0, 0, 0.25, 0.5, 0.5])
    np.testing.assert_allclose(sens_list(result), [0.5, 0.5, 1, 1, 1, 1, 1])
    assert result.cpm == pytest.approx(6 / 7)
    # a repeated uid in the list is one scan
    again = evaluate_froc(annotations, None, predictions, ["s1", "s2", "s3", "s4", "s3"], n_bootstrap=0)
    assert again.num_scans == 4 and again.cpm == pytest.approx(6 / 7)


def test_predictions_for_scans_outside_the_evaluated_set_are_ignored_and_reported():
    extra = [("s9", 0, 0, 0, 0.99), ("s9", 5, 0, 0, 0.98), ("s8", 1, 1, 1, 0.97), ("s9", 7, 0, 0, 0.1)]
    annotations = ann(TIE_ANN + [("s9", 0, 0, 0, 10.0)])
    result = evaluate_froc(annotations, None, preds(TIE_PRED + extra), ["s1", "s2"], n_bootstrap=0)
    assert result.num_ignored_outside == 4
    assert result.ignored_seriesuids == ["s8", "s9"]
    assert result.num_nodules_outside == 1
    assert (result.num_scans, result.num_nodules, result.num_predictions_used) == (2, 2, 4)
    assert result.cpm == pytest.approx(TIE_CPM)
    assert (result.predictions["outcome"].iloc[4:] == "outside").all()


def test_at_most_100_predictions_per_scan_are_kept():
    # 100 far FPs scored 0.500..0.599 and a hit on A scored 0.4: the cap keeps the FPs, A is missed.
    fps = [("s1", 200 + 10 * i, 0, 0, 0.5 + 0.001 * i) for i in range(100)]
    predictions = preds(fps + [("s1", 0, 0, 0, 0.4)])
    annotations = ann([("s1", 0, 0, 0, 10.0)])
    result = evaluate_froc(annotations, None, predictions, ["s1"], n_bootstrap=0)
    assert (result.num_dropped_by_cap, result.num_fp, result.num_tp, result.num_predictions_used) == (1, 100, 0, 100)
    assert result.predictions["outcome"].iloc[100] == "capped"
    assert result.cpm == 0.0 and not result.nodules["hit"].iloc[0]
    # no cap: A is found, but only after 100 FPs/scan -> still 0 at 8 FPs/scan; the curve ends at (100, 1)
    uncapped = evaluate_froc(annotations, None, predictions, ["s1"], n_bootstrap=0, max_predictions_per_scan=None)
    assert uncapped.num_tp == 1 and uncapped.num_dropped_by_cap == 0
    assert (uncapped.fps_per_scan[-1], uncapped.sensitivity[-1]) == (100.0, 1.0)
    assert uncapped.cpm == 0.0
    # ties at the cut are broken by file order
    cut = [("s1", 90, 0, 0, 0.9), ("s1", 70, 0, 0, 0.5), ("s1", 0, 0, 0, 0.5)]
    first_fp = evaluate_froc(annotations, None, preds(cut), ["s1"], n_bootstrap=0, max_predictions_per_scan=2)
    assert first_fp.num_tp == 0 and first_fp.num_dropped_by_cap == 1
    first_tp = evaluate_froc(
        annotations, None, preds([cut[0], cut[2], cut[1]]), ["s1"], n_bootstrap=0, max_predictions_per_scan=2
    )
    assert first_tp.num_tp == 1


def test_perfect_predictions_give_cpm_1_with_a_degenerate_interval():
    rows = [(f"s{i}", 10.0 * i, -5.0, 3.0, 4.0 + i) for i in range(6)] + [("s2", 40, 40, 40, 8.0)]
    annotations = ann(rows)
    predictions = preds([(u, x, y, z, 1.0) for u, x, y, z, _ in rows])
    result = evaluate_froc(annotations, None, predictions, [f"s{i}" for i in range(8)], n_bootstrap=200, seed=3)
    assert result.cpm == 1.0 and result.num_fp == 0 and result.num_tp == 7
    assert result.cpm_ci_low == 1.0 and result.cpm_ci_high == 1.0
    assert all(result.ci_low[r] == 1.0 for r in RATES)


def test_bootstrap_weights_a_scan_drawn_twice_counts_twice():
    # The "tie" case as events; scans drawn (1,1), (2,0) and (0,2) times.
    events = FROCEvents(
        num_scans=2,
        nodules_per_scan=np.array([1, 1]),
        tp_scan=np.array([0, 1]),
        tp_score=np.array([0.9, 0.3]),
        fp_scan=np.array([0, 1]),
        fp_score=np.array([0.9, 0.5]),
    )
    fp, tp, nodules = events.counts(np.array([[1, 1], [2, 0], [0, 2]]))
    np.testing.assert_allclose(fp, [[0, 1, 2, 2], [0, 2, 2, 2], [0, 0, 2, 2]])
    np.testing.assert_allclose(tp, [[0, 1, 1, 2], [0, 2, 2, 2], [0, 0, 0, 2]])
    np.testing.assert_allclose(nodules, [2, 2, 2])
    sens = interpolate_counts(fp, tp, np.array(RATES) * 2) / nodules[:, None]
    # (2,0): s1 twice: (0,0) -> (1, 1) in one tie group: r for r <= 1, then 1 -> same as the tie case.
    # (0,2): s2 twice: FP 0.5 -> (1, 0), TP 0.3 -> (1, 1): 0 below 1 FP/scan, 1 from there: CPM 4/7.
    np.testing.assert_allclose(sens[0], TIE_SENS)
    np.testing.assert_allclose(sens[1], TIE_SENS)
    np.testing.assert_allclose(sens[2], [0, 0, 0, 1, 1, 1, 1])
    weights = bootstrap_weights(5, 40, seed=7)
    assert weights.shape == (40, 5) and (weights.sum(axis=1) == 5).all()
    np.testing.assert_array_equal(weights, bootstrap_weights(5, 40, seed=7))
    assert not np.array_equal(weights, bootstrap_weights(5, 40, seed=8))


def _random_case(num_scans=30, seed=0):
    rng = np.random.default_rng(seed)
    nodules, predictions = [], []
    for i in range(num_scans):
        uid = f"1.2.840.{i}"
        for _ in range(rng.integers(0, 3)):
            centre, diameter = rng.uniform(-100, 100, 3), rng.uniform(4, 20)
            nodules.append((uid, *centre, diameter))
            if rng.random() < 0.7:
                predictions.append((uid, *(centre + rng.normal(0, 0.5, 3)), rng.uniform(0.4, 1.0)))
        for _ in range(rng.integers(0, 12)):
            predictions.append((uid, *rng.uniform(-300, 300, 3), rng.uniform(0.0, 0.9)))
    return ann(nodules), preds(predictions), [f"1.2.840.{i}" for i in range(num_scans)]


def test_bootstrap_interval_brackets_the_estimate_and_is_reproducible():
    annotations, predictions, uids = _random_case()
    result = evaluate_froc(annotations, None, predictions, uids, n_bootstrap=300, seed=11)
    same = evaluate_froc(annotations, None, predictions, uids, n_bootstrap=300, seed=11)
    other = evaluate_froc(annotations, None, predictions, uids, n_bootstrap=300, seed=12)
    assert result.n_bootstrap_used == 300
    assert result.cpm_ci_low <= result.cpm <= result.cpm_ci_high
    assert result.cpm_ci_low < result.cpm_ci_high
    for r in RATES:
        assert result.ci_low[r] <= result.sensitivities[r] <= result.ci_high[r]
    assert (same.cpm_ci_low, same.cpm_ci_high, same.ci_low, same.ci_high) == (
        result.cpm_ci_low,
        result.cpm_ci_high,
        result.ci_low,
        result.ci_high,
    )
    np.testing.assert_array_equal(same.curve_ci_low, result.curve_ci_low)
    assert (other.cpm_ci_low, other.cpm_ci_high) != (result.cpm_ci_low, result.cpm_ci_high)
    assert result.curve_ci_low.shape == result.fps_per_scan.shape
    assert (result.curve_ci_low <= result.curve_ci_high).all()
    # the band at each rate's FPs/scan is the rate's interval (same draws, same reading of the curve)
    for r in RATES:
        at = np.flatnonzero(np.isclose(result.fps_per_scan, r))
        if len(at):
            assert result.curve_ci_low[at[-1]] == pytest.approx(result.ci_low[r], abs=1e-6)
    # the reported sensitivities are the curve read at the rates
    np.testing.assert_allclose(interpolate_froc(result.fps_per_scan, result.sensitivity, RATES), sens_list(result))


def _write_inputs(tmp_path):
    ann(TIE_ANN).to_csv(tmp_path / "annotations.csv", index=False)
    ann([("s2", 200, 0, 0, -1.0)]).to_csv(tmp_path / "excluded.csv", index=False)  # makes p3 (0.5) ignored
    preds(TIE_PRED + [("s7", 0, 0, 0, 0.5)]).to_csv(tmp_path / "predictions.csv", index=False)
    (tmp_path / "uids.csv").write_text("seriesuid\ns1\ns2\n")
    datalist = {"training": [{"seriesuid": "s7"}], "test": [{"image": "subset0/s1.mhd", "seriesuid": "s1"}, {"image": "subset0/s2.mhd"}]}
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    return parser.parse_args(argv)


def test_cli_writes_json_csv_png_and_reports(tmp_path, capsys):
    # The tie case with an excluded (size unknown, r=5) finding on p3: points (0,0) (.5,.5) (.5,1):
    # 1/8 -> .125, 1/4 -> .25, 1/2..8 -> 1: CPM 5.375/7. One prediction (s7) is outside the evaluated set.
    _write_inputs(tmp_path)
    out = tmp_path / "out"
    common = ["--annotations", str(tmp_path / "annotations.csv"), "--excluded", str(tmp_path / "excluded.csv")]
    common += ["--predictions", str(tmp_path / "predictions.csv"), "--bootstrap", "50", "--seed", "1"]
    assert evaluate_main(_parse(common + ["--seriesuids", str(tmp_path / "uids.csv"), "--output-dir", str(out)])) == 0
    summary = json.loads((out / "froc.json").read_text(encoding="utf-8"))
    assert summary["cpm"] == pytest.approx(5.375 / 7)
    assert [s["sensitivity"] for s in summary["sensitivities"]] == pytest.approx([0.125, 0.25, 1, 1, 1, 1, 1])
    assert summary["counts"]["num_ignored_outside"] == 1 and summary["counts"]["ignored_seriesuids"] == ["s7"]
    assert summary["counts"]["num_ignored_excluded"] == 1
    assert summary["settings"]["excluded_default_diameter_mm"] == 10.0
    curve = pd.read_csv(out / "froc.csv")
    assert list(curve.columns) == ["fps_per_scan", "sensitivity", "ci_low", "ci_high", "threshold"]
    np.testing.assert_allclose(curve["fps_per_scan"], [0, 0.5, 0.5])
    np.testing.assert_allclose(curve["sensitivity"], [0, 0.5, 1.0])
    nodules = pd.read_csv(out / "nodules.csv")
    assert nodules["hit"].tolist() == [True, True] and nodules["best_score"].tolist() == [0.9, 0.3]
    assert (out / "froc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["froc.csv", "froc.json", "froc.png", "nodules.csv"]
    text = capsys.readouterr().out
    assert "CPM 0.768 (95% CI" in text
    assert sum(line.startswith("sensitivity at ") for line in text.splitlines()) == 7
    assert "sensitivity at 1/8 FPs/scan: 0.125" in text
    assert "ignored 1 predictions on 1 scans not in the evaluated set: s7" in text
    # the data list variant: its test list (s2 named by its image only) gives the same scans
    out2 = tmp_path / "out2"
    args = _parse(common + ["--datalist", str(tmp_path / "datalist.json"), "--output-dir", str(out2)])
    assert evaluate_main(args) == 0
    assert json.loads((out2 / "froc.json").read_text(encoding="utf-8"))["cpm"] == pytest.approx(5.375 / 7)
    with pytest.raises(SystemExit):  # --datalist and --seriesuids are exclusive
        _parse(common + ["--datalist", "a.json", "--seriesuids", "b.csv", "--output-dir", str(out2)])


def test_bad_input_raises_data_error_naming_the_file(tmp_path):
    _write_inputs(tmp_path)
    annotations = tmp_path / "annotations.csv"
    # a header without rows is zero predictions: valid, nothing detected
    empty = tmp_path / "empty.csv"
    empty.write_text("seriesuid,coordX,coordY,coordZ,probability\n")
    lines = []
    result = run_evaluation(annotations, empty, tmp_path / "o1", seriesuids=["s1", "s2"], n_bootstrap=20, log=lines.append)
    assert (result.num_predictions_used, result.cpm, result.num_tp) == (0, 0.0, 0)
    assert any(line.startswith("ignored 0 predictions") for line in lines)
    assert (tmp_path / "o1" / "froc.png").is_file()
    # rows without a header
    headless = tmp_path / "headless.csv"
    headless.write_text("s1,1,0,0,0.9\ns2,100,2,0,0.3\n")
    with pytest.raises(DataError, match="headless.csv"):
        run_evaluation(annotations, headless, tmp_path / "o2", seriesuids=["s1"], n_bootstrap=0, log=lines.append)
    # a missing column
    missing = tmp_path / "missing.csv"
    missing.write_text("seriesuid,coordX,coordY,probability\ns1,1,0,0.9\n")
    with pytest.raises(DataError, match="missing.csv.*coordZ"):
        run_evaluation(annotations, missing, tmp_path / "o3", seriesuids=["s1"], n_bootstrap=0, log=lines.append)
    with pytest.raises(DataError, match="probability"):
        evaluate_froc(ann(TIE_ANN), None, pd.DataFrame({"seriesuid": ["s1"]}), ["s1"])
    # no nodule among the evaluated scans: sensitivity undefined
    with pytest.raises(DataError, match="annotations.csv"):
        run_evaluation(annotations, empty, tmp_path / "o4", seriesuids=["s5"], n_bootstrap=0, log=lines.append)
    # scan lists
    (tmp_path / "blank.csv").write_text("\n\n")
    (tmp_path / "wrong.csv").write_text("uid,subset\ns1,0\n")
    base = ["--annotations", str(annotations), "--predictions", str(empty), "--output-dir", str(tmp_path / "o5")]
    with pytest.raises(DataError, match="blank.csv"):
        evaluate_main(_parse(base + ["--seriesuids", str(tmp_path / "blank.csv")]))
    with pytest.raises(DataError, match="wrong.csv.*seriesuid"):
        evaluate_main(_parse(base + ["--seriesuids", str(tmp_path / "wrong.csv")]))
    with pytest.raises(DataError, match="datalist.json.*'validation'"):
        evaluate_main(_parse(base + ["--datalist", str(tmp_path / "datalist.json"), "--key", "validation"]))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="broken.json"):
        evaluate_main(_parse(base + ["--datalist", str(tmp_path / "broken.json")]))
    (tmp_path / "header.txt").write_text("uid\n1.2.3\n")  # a header that is not "seriesuid" is not a scan
    with pytest.raises(DataError, match="header.txt.*header"):
        evaluate_main(_parse(base + ["--seriesuids", str(tmp_path / "header.txt")]))
    # one uid per line, no header, is a valid list
    (tmp_path / "plain.txt").write_text("s1\n\ns2\n")
    assert evaluate_main(_parse(base + ["--seriesuids", str(tmp_path / "plain.txt"), "--bootstrap", "0"])) == 0



def test_the_scan_list_comes_from_a_pipe_standard_input_or_the_data_folder(tmp_path, monkeypatch, capsys):
    """`--seriesuids <(ls ...)` (a pipe, as a shell's process substitution passes it: /dev/fd/N), `--seriesuids -` and
    `--data-dir` name the same scans as a list file: every form gives the same CPM."""
    import io
    import os
    import threading

    _write_inputs(tmp_path)
    data = tmp_path / "data"
    for name in ("subset0/s1.mhd", "subset1/s2.mhd"):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_text("")
    base = ["--annotations", str(tmp_path / "annotations.csv"), "--excluded", str(tmp_path / "excluded.csv"),
            "--predictions", str(tmp_path / "predictions.csv"), "--bootstrap", "0"]
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write_end, b"s1\ns2\n"), os.close(write_end)))
    writer.start()
    try:
        assert evaluate_main(_parse(base + ["--seriesuids", f"/dev/fd/{read_end}", "--output-dir", str(tmp_path / "pipe")])) == 0
    finally:
        writer.join()
        os.close(read_end)
    monkeypatch.setattr("sys.stdin", io.StringIO("seriesuid\ns2\ns1\n"))
    assert evaluate_main(_parse(base + ["--seriesuids", "-", "--output-dir", str(tmp_path / "stdin")])) == 0
    assert evaluate_main(_parse(base + ["--data-dir", str(data), "--output-dir", str(tmp_path / "data_dir")])) == 0
    assert capsys.readouterr().out.count("evaluating 2 scans") == 3
    for name in ("pipe", "stdin", "data_dir"):
        assert json.loads((tmp_path / name / "froc.json").read_text(encoding="utf-8"))["cpm"] == pytest.approx(5.375 / 7)
    with pytest.raises(DataError, match="no scans found"):
        evaluate_main(_parse(base + ["--data-dir", str(tmp_path / "pipe"), "--output-dir", str(tmp_path / "x")]))
    with pytest.raises(DataError, match="is a folder"):
        evaluate_main(_parse(base + ["--seriesuids", str(data), "--output-dir", str(tmp_path / "x")]))
