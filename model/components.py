"""Sizes of the 26-connected components of a 3D mask, fast for dense and sparse masks.

``scipy.ndimage.label`` costs about 10 ns per voxel of the array it is given,
filled or not: for a structure scattered over a large bounding box (a few
thousand voxels of false positives over half the volume) it spends most of
its time on empty voxels. Such sparse masks are labelled as a graph of their
own voxels instead (each voxel joined to its 13 forward neighbours found by
binary search, components by ``scipy.sparse.csgraph``), which costs about
1 us per set voxel. The two give the same components.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components

__all__ = ["component_sizes"]

# Above this many array voxels per set voxel, the graph of set voxels is cheaper.
_SPARSE_RATIO = 100
_FULL = np.ones((3, 3, 3), dtype=bool)
_FORWARD = [(dz, dy, dx) for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
            if (dz, dy, dx) > (0, 0, 0)]


def component_sizes(mask: np.ndarray) -> np.ndarray:
    """Voxel count of each 26-connected component of a 3D boolean mask (any order)."""
    if mask.ndim != 3:
        raise ValueError(f"component_sizes needs a 3D mask, got shape {mask.shape}")
    count = int(np.count_nonzero(mask))
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if mask.size > _SPARSE_RATIO * count:
        return _graph_component_sizes(np.argwhere(mask), mask.shape)
    components, _ = ndimage.label(mask, structure=_FULL)
    return np.bincount(components.ravel())[1:]


def _graph_component_sizes(coords: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Component sizes of the voxels at ``coords`` (n, 3), C order, joined to 26 neighbours."""
    padded = np.asarray(shape) + 2  # a ring of empty voxels: no neighbour wraps around a row
    index = np.ravel_multi_index((coords + 1).T, padded)  # ascending, as argwhere gives them
    strides = np.array([padded[1] * padded[2], padded[2], 1])
    n = index.size
    sources, targets = [], []
    for offset in _FORWARD:
        neighbour = index + int(np.dot(offset, strides))
        at = np.minimum(np.searchsorted(index, neighbour), n - 1)
        hit = index[at] == neighbour
        sources.append(np.flatnonzero(hit))
        targets.append(at[hit])
    rows, cols = np.concatenate(sources), np.concatenate(targets)
    graph = sparse.coo_matrix((np.ones(rows.size, np.int8), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return np.bincount(labels)
