"""Detection: stage-1 sliding window over the lungs, candidates from the probability map, stage-2 scoring."""

from monai_lung.detection.candidates import CANDIDATE_FIELDS, extract_candidates
from monai_lung.detection.segment import LungGatedPredictor, LungSlidingWindowInferer, lung_gated_logits, segment_probability
from monai_lung.detection.batch import ScanItem, detect_items, items_from_datalist, items_from_paths, run_batch
from monai_lung.detection.detector import FINAL_SCORES, DetectorConfig, TwoStageDetector, TwoStageNetwork, final_score, merge_close_candidates
from monai_lung.detection.loading import assemble_two_stage, load_detector
from monai_lung.detection.scoring import score_points
from monai_lung.detection.results import DetectionResultd
