"""Stage 1: the UNet's sliding window over the lungs and the candidates of its probability map.

- :mod:`~monai_lung.stage1.config`: :class:`Stage1Config`, every stage-1 setting in one object.
- :mod:`~monai_lung.stage1.inferer`: :class:`LungSlidingWindowInferer`, the one sliding-window implementation (a
  MONAI ``Inferer`` for bundles and MONAI Label, ``probability`` for the detector and the miner).
- :mod:`~monai_lung.stage1.candidates`: connected components of the probability map as world-mm candidates.
- :mod:`~monai_lung.stage1.run`: :func:`run_stage1`, grid + lung masks + sliding window + candidates of one scan.
"""

from monai_lung.stage1.config import Stage1Config, check_flip_axes
from monai_lung.stage1.inferer import BACKGROUND_LOGIT, BACKGROUND_PROBABILITY, LungSlidingWindowInferer, stage1_lung_masks
from monai_lung.stage1.candidates import CANDIDATE_FIELDS, extract_candidates, merge_close_candidates
from monai_lung.stage1.run import Stage1Result, run_stage1, stage1_candidates
