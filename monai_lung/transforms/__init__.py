"""MONAI MapTransforms of our own: nodule masks from world coordinates, patch sampling, lung masks, crops."""

from monai_lung.transforms.nodule_mask import NoduleMaskd, nodule_arrays, sphere_mask
from monai_lung.transforms.sampling import NoduleSamplingIndicesd, balanced_indices
from monai_lung.transforms.crops import crop_bounds, extract_crops
from monai_lung.transforms.lung_mask import lung_mask, lung_masks
from monai_lung.transforms.preprocessing import DEFAULT_HU_WINDOW, DEFAULT_SPACING, ct_preprocessing
from monai_lung.transforms.restore import RestoreSourceGridd, resample_to_grid
from monai_lung.transforms.compose import ComposeRandomWithoutMeta, meta_tracking
from monai_lung.transforms.nodule_insertion import NoduleAppearance, RandCentreNoduled, RandNoduleInsertiond, paint_nodule
from monai_lung.transforms.slice_grid import RandCropByPosNegLabelWithStartd, SourceSliceGridd, patch_slice_grid, source_slice_grid
from monai_lung.transforms.thick_slices import RandThickSlicesd, slab_weights, thick_slice_image, thick_slice_operator
