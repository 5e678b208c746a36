"""Stage 2: drop floaters (connected components smaller than ``min_fraction`` of the largest) and wind every
component counter-clockwise seen from outside (positive signed volume), whatever the extractor did."""

from __future__ import annotations

import numpy as np


def compact(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove vertices no face references; faces are renumbered."""
    used, inverse = np.unique(faces, return_inverse=True)
    return vertices[used], inverse.reshape(faces.shape).astype(np.int64)


def component_labels(n_vertices: int, faces: np.ndarray) -> np.ndarray:
    """Connected-component id of every face (components connected through shared vertices)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    e = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    graph = coo_matrix((np.ones(len(e), dtype=np.int8), (e[:, 0], e[:, 1])), shape=(n_vertices, n_vertices))
    _, labels = connected_components(graph, directed=False)
    return labels[faces[:, 0]]


def keep_large_components(vertices: np.ndarray, faces: np.ndarray, min_fraction: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(vertices, faces, number of components dropped)."""
    labels = component_labels(len(vertices), faces)
    counts = np.bincount(labels)
    keep = counts >= min_fraction * counts.max()
    f = faces[keep[labels]]
    f = orient_outward(vertices, f, labels[keep[labels]])
    v, f = compact(vertices, f)
    return v, f, int((counts > 0).sum() - keep.sum())


def orient_outward(vertices: np.ndarray, faces: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Flip the faces of every component whose signed volume (divergence theorem, Σ a·(b×c)/6) is negative."""
    a, b, c = (vertices[faces[:, i]].astype(np.float64) for i in range(3))
    vol = np.bincount(labels, weights=np.einsum("ij,ij->i", a, np.cross(b, c)) / 6.0)
    flip = vol[labels] < 0
    out = faces.copy()
    out[flip] = out[flip][:, ::-1]
    return out
