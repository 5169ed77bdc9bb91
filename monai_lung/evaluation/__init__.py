"""LUNA16 evaluation: FROC curve, sensitivities at 1/8..8 FPs per scan, CPM, bootstrap CIs over scans.

The hit rules and every choice the challenge leaves open are listed in :mod:`monai_lung.evaluation.froc`.
"""

from monai_lung.evaluation.froc import (
    DEFAULT_EXCLUDED_DIAMETER_MM,
    DEFAULT_FP_RATES,
    DEFAULT_MAX_PREDICTIONS_PER_SCAN,
    FROCEvents,
    FROCResult,
    bootstrap_weights,
    evaluate_froc,
    format_rate,
    interpolate_froc,
    match_predictions,
)
from monai_lung.evaluation.run import run_evaluation, summary_lines, write_outputs
from monai_lung.evaluation.plot import plot_froc
from monai_lung.evaluation.scanlist import read_datalist_seriesuids, read_seriesuid_list
