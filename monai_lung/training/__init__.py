"""Training helpers that the bundle configs call: datasets with caching, checkpoints to resume, metrics."""

from monai_lung.training.checkpoints import attach_checkpointing, initial_weights, latest_checkpoint
from monai_lung.training.datasets import build_dataset
from monai_lung.training.metrics import NoduleSensitivity, NoduleSensitivityHandler, PredictedComponents, PredictedComponentsHandler
