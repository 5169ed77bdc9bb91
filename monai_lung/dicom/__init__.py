"""DICOM in and out: choosing a study's CT series, SR (TID 1500) and SEG outputs with highdicom, DICOMweb."""
