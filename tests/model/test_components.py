"""Component sizes: the sparse graph path and the dense ndimage path agree with ndimage."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from model import components
from model.components import component_sizes


def _ndimage_sizes(mask: np.ndarray) -> list[int]:
    labelled, _ = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    return sorted(np.bincount(labelled.ravel())[1:].tolist())


@pytest.mark.parametrize("density", [0.0005, 0.003, 0.05, 0.3])
def test_sizes_match_ndimage_sparse_and_dense(density):
    rng = np.random.default_rng(int(density * 1e4))
    mask = rng.random((23, 31, 17)) < density
    # Touching only along an edge or at a corner still joins (26-connectivity);
    # voxels at the faces of the array must not join across a row's end.
    mask[0, 0, 16] = mask[0, 1, 0] = mask[5, 5, 5] = mask[6, 6, 6] = mask[7, 6, 5] = True
    expected = _ndimage_sizes(mask)
    assert sorted(component_sizes(mask).tolist()) == expected
    assert sorted(components._graph_component_sizes(np.argwhere(mask), mask.shape).tolist()) \
        == expected


def test_sparse_path_is_taken_for_scattered_voxels(monkeypatch):
    mask = np.zeros((40, 40, 40), bool)
    mask[2, 2, 2] = mask[3, 3, 3] = mask[30, 30, 30] = True
    monkeypatch.setattr(components.ndimage, "label", None)  # would fail if used
    assert sorted(component_sizes(mask).tolist()) == [1, 2]


def test_empty_and_wrong_shape():
    assert component_sizes(np.zeros((3, 3, 3), bool)).size == 0
    with pytest.raises(ValueError, match="3D mask"):
        component_sizes(np.zeros((3, 3), bool))
