"""Reports and figures: FROC plots."""
