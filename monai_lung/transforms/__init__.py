"""MONAI MapTransforms of our own: nodule masks from world coordinates, patch sampling, lung masks, crops."""

from monai_lung.transforms.nodule_mask import NoduleMaskd, nodule_arrays, sphere_mask
from monai_lung.transforms.sampling import NoduleSamplingIndicesd, balanced_indices
