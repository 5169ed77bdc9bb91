"""The Hessian dot filter that ranks stage-1 candidates: balls over tubes and plates, in mm on any grid."""

import numpy as np
import pandas as pd
import pytest

from monai_lung.detection.blobness import dot_response, rank_by_blobness

BACKGROUND, DENSE = 0.1, 0.75  # scaled lung window: parenchyma, soft tissue


def _grid(shape, spacing):
    """World mm (x, y, z) of every voxel of an (i, j, k) grid with its centre voxel at 0."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    return np.meshgrid(*axes, indexing="ij")


def _soft(distance_inside_mm):
    """Intensity from a signed distance (positive inside), with a 1 mm partial-volume edge."""
    return BACKGROUND + (DENSE - BACKGROUND) * np.clip(distance_inside_mm + 0.5, 0.0, 1.0)


def _ball(shape=(41, 41, 41), spacing=(1.0, 1.0, 1.0), radius=3.0, value=None):
    x, y, z = _grid(shape, spacing)
    img = _soft(radius - np.sqrt(x**2 + y**2 + z**2)).astype(np.float32)
    if value is not None:  # a dark ball: the same shape below the background
        img = (2 * BACKGROUND - img).astype(np.float32)
    return img


def _centre(shape):
    return [(n - 1) / 2 for n in shape]


def test_a_ball_outscores_a_tube_and_a_plate_of_the_same_width():
    shape = (41, 41, 41)
    x, y, z = _grid(shape, (1.0,) * 3)
    ball = _ball(shape)
    tube = _soft(3.0 - np.sqrt(x**2 + y**2)).astype(np.float32)  # a 6 mm vessel along k
    plate = _soft(3.0 - np.abs(x)).astype(np.float32)  # a 6 mm sheet (pleura, fissure)
    c = _centre(shape)
    d_ball, d_tube, d_plate = (dot_response(v, c, (1.0,) * 3) for v in (ball, tube, plate))
    assert d_ball > 0.05
    assert d_ball > 5 * d_tube
    assert d_plate < 1e-3
    # a dark blob (an airway lumen, a bulla) is not a nodule
    assert dot_response(_ball(shape, value="dark"), c, (1.0,) * 3) == 0.0


def test_the_response_is_in_mm_so_an_anisotropic_grid_sees_the_same_ball():
    iso = dot_response(_ball((41, 41, 41), (1.0, 1.0, 1.0), radius=3.5), _centre((41, 41, 41)), (1.0, 1.0, 1.0))
    shape, spacing = (57, 57, 21), (0.7, 0.7, 2.0)
    aniso = dot_response(_ball(shape, spacing, radius=3.5), _centre(shape), spacing)
    assert aniso == pytest.approx(iso, rel=0.3)
    # the same anisotropic volume read as if it were isotropic looks like a flattened disc: much weaker
    assert dot_response(_ball(shape, spacing, radius=3.5), _centre(shape), (1.0, 1.0, 1.0)) < 0.7 * aniso


def test_the_search_radius_finds_a_blob_beside_the_given_point():
    shape = (41, 41, 41)
    img = _ball(shape, radius=2.5)
    off = np.array(_centre(shape)) + [4.0, 0.0, 0.0]  # 4 mm from the ball's centre, outside it
    assert dot_response(img, off, (1.0,) * 3, radius_mm=1.0) < 0.5 * dot_response(img, off, (1.0,) * 3, radius_mm=4.5)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="dot_response"):
        dot_response(np.zeros((8, 8), np.float32), [4, 4], (1.0, 1.0))


def test_rank_by_blobness_moves_the_ball_ahead_of_a_tube_with_a_better_shape_score():
    shape = (41, 81, 41)
    x, y, z = _grid(shape, (1.0,) * 3)
    # a ball at j = 20 and a tube along k at j = 60: (i, j, k) voxel indices
    img = np.maximum(
        _soft(3.0 - np.sqrt(x**2 + (y + 20) ** 2 + z**2)),
        _soft(3.0 - np.sqrt(x**2 + (y - 20) ** 2)),
    ).astype(np.float32)
    frame = pd.DataFrame({
        "index_i": [20.0, 20.0, 20.0], "index_j": [60.0, 20.0, 5.0], "index_k": [20.0, 20.0, 20.0],
        "diameter_mm": [6.0, 6.0, 2.0], "shape_score": [2.0, 1.5, 0.1],
    })
    ranked = rank_by_blobness(frame, img, (1.0, 1.0, 1.0), top_k=2, weight=20.0)
    assert ranked["index_j"].tolist() == [20.0, 60.0, 5.0]
    assert ranked.loc[0, "blob_score"] > ranked.loc[1, "blob_score"]
    assert np.isnan(ranked.loc[2, "dot"]) and ranked.loc[2, "blob_score"] == 0.1  # beyond top_k: not measured
    # weight 0 keeps the shape_score order; the input frame is left as it was
    assert rank_by_blobness(frame, img, (1.0,) * 3, weight=0.0)["index_j"].tolist() == [60.0, 20.0, 5.0]
    assert "dot" not in frame.columns
