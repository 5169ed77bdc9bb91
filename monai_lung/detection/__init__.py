"""Detection: both stages over whole scans (stage 1 from :mod:`monai_lung.stage1`), findings with sizes, batch runs."""

from monai_lung.detection.batch import ScanItem, detect_items, items_from_datalist, items_from_paths, run_batch
from monai_lung.detection.detector import FINAL_SCORES, DetectorConfig, TwoStageDetector, TwoStageNetwork, final_score
from monai_lung.detection.loading import assemble_two_stage, load_detector
from monai_lung.detection.results import DetectionResultd

# bundles trained before stage 1 had a package of its own name the inferer here: it is the one in monai_lung.stage1
from monai_lung.stage1.inferer import LungSlidingWindowInferer
