"""Reports and figures: per-finding review images and page, 3D Slicer point lists, FROC plots."""
