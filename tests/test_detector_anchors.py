"""Anchors: hand-computed grid, torchvision conventions, k-means anchor shapes."""
from __future__ import annotations

import numpy as np
import pytest

from sgg_jax.models.detection import anchors as A
from sgg_jax.models.detection.config import DetectorConfig, tiny_config


def test_base_anchors_hand_case():
    # size 32, ratio 0.5 (h/w): w = 32 / sqrt(.5) = 45.25 -> half 22.63 -> round 23; h = 22.63 -> 11
    base = A.base_anchors([32.0], [0.5, 1.0])
    np.testing.assert_array_equal(base, [[-23, -11, 23, 11], [-16, -16, 16, 16]])


def test_grid_anchors_hand_case():
    base = np.array([[-2.0, -1.0, 2.0, 1.0], [-4.0, -4.0, 4.0, 4.0]])
    grid = A.grid_anchors(base, (2, 3), stride=8)
    assert grid.shape == (2 * 3 * 2, 4)
    # (y, x, a) order: index = (y * 3 + x) * 2 + a
    np.testing.assert_array_equal(grid[0], [-2, -1, 2, 1])
    np.testing.assert_array_equal(grid[1], [-4, -4, 4, 4])
    np.testing.assert_array_equal(grid[(0 * 3 + 2) * 2 + 0], [14, -1, 18, 1])   # x = 2 -> +16
    np.testing.assert_array_equal(grid[(1 * 3 + 1) * 2 + 1], [4, 4, 12, 12])   # y = 1, x = 1


def test_multilevel_counts_and_config_anchor_count():
    cfg = tiny_config()
    bases = A.level_base_anchors(cfg.anchor_sizes, cfg.aspect_ratios)
    assert bases[0].shape == (cfg.anchors_per_location, 4) == (6, 4)
    allx, sizes = A.multilevel_anchors(bases + bases, [(4, 4), (2, 2)], [16, 32])
    assert sizes == [96, 24] and allx.shape == (120, 4)


def test_anchor_shapes_override_and_bad_config():
    shapes = ((10.0, 20.0), (30.0, 15.0))
    bases = A.level_base_anchors(((1.0,),), (1.0,), (shapes,))
    np.testing.assert_array_equal(bases[0], [[-5, -10, 5, 10], [-15, -8, 15, 8]])
    with pytest.raises(ValueError, match="backbone"):
        DetectorConfig(backbone="alexnet")
    with pytest.raises(ValueError, match="5 levels"):
        DetectorConfig(backbone="resnet50_fpn")
    with pytest.raises(ValueError, match="positive"):
        A.shapes_to_base_anchors(np.array([[1.0, -2.0]]))


def test_kmeans_anchors_recovers_clusters_deterministically():
    rng = np.random.default_rng(1)
    centers = np.array([[10.0, 10.0], [40.0, 20.0], [20.0, 80.0]])
    shapes = np.concatenate([c * rng.uniform(0.95, 1.05, size=(50, 2)) for c in centers])
    k1 = A.kmeans_anchors(shapes, 3, seed=3)
    k2 = A.kmeans_anchors(shapes, 3, seed=3)
    np.testing.assert_array_equal(k1, k2)
    np.testing.assert_allclose(k1, centers[np.argsort(centers.prod(1))], rtol=0.05)
    # shape IoU: corner-aligned boxes
    np.testing.assert_allclose(A.shape_iou(np.array([[2.0, 2.0]]), np.array([[1.0, 4.0]])),
                               [[2.0 / 6.0]])
    with pytest.raises(ValueError, match="at least k"):
        A.kmeans_anchors(shapes[:2], 3)
