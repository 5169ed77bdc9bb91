"""Readers and writers: LUNA16 CSVs, a SimpleITK MONAI reader, world <-> voxel conversion, atomic writes."""

from monai_lung.io.atomic import atomic_path, write_csv_atomic, write_image_atomic, write_json_atomic, write_text_atomic
from monai_lung.io.coords import (
    index_to_world,
    inside,
    lps_to_ras,
    ras_to_lps,
    sitk_index_to_world,
    voxel_spacing,
    world_to_index,
    world_to_sitk_index,
)
from monai_lung.io.errors import DataError
from monai_lung.io.luna16_csv import (
    ANNOTATION_COLUMNS,
    CANDIDATE_COLUMNS,
    PREDICTION_COLUMNS,
    read_annotations,
    read_candidates,
    read_excluded,
    read_mined_candidates,
    read_points,
    read_predictions,
    write_luna_csv,
)
from monai_lung.io.scans import find_scans, seriesuid_of
from monai_lung.io.sitk_reader import SimpleITKReader, lps_affine, read_image_header, read_sitk_image, resample_to_spacing
