"""Detection: stage-1 sliding window over the lungs, candidates from the probability map, stage-2 scoring."""

from monai_lung.detection.candidates import CANDIDATE_FIELDS, extract_candidates
from monai_lung.detection.segment import LungGatedPredictor, segment_probability
