"""What an artist checks first in a mesh: is it closed, how many pieces, how many handles.

Computed on the mesh with coincident vertices merged (UV seams split vertices in the written file,
which is not a hole). ``watertight``: every edge has exactly two faces and they traverse it in
opposite directions (closed and consistently oriented). Euler characteristic χ = V − E + F; a
closed connected surface of genus g has χ = 2 − 2g (sphere and cube 2, torus 0).
"""

from __future__ import annotations

import numpy as np


def merge_coincident(vertices: np.ndarray, faces: np.ndarray, decimals: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Vertices at the same position (to ``decimals``) become one; degenerate faces are dropped."""
    key = np.ascontiguousarray(np.round(np.asarray(vertices, np.float64), decimals) + 0.0)  # + 0.0: no -0.0
    uniq, inverse = np.unique(key.view(np.dtype((np.void, 24))).ravel(), return_inverse=True)
    uniq = uniq.view(np.float64).reshape(-1, 3)
    f = inverse.reshape(-1)[np.asarray(faces)]
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])]
    return uniq, f.astype(np.int64)


def mesh_stats(vertices: np.ndarray, faces: np.ndarray) -> dict:
    """{faces, vertices, edges, watertight, euler, components} of the position-merged mesh."""
    from .cleanup import component_labels

    v, f = merge_coincident(vertices, faces)
    n = max(len(v), 1)
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    _, counts = np.unique(directed.min(1) * n + directed.max(1), return_counts=True)
    dir_unique = len(np.unique(directed[:, 0] * n + directed[:, 1]))
    used = np.unique(f)
    watertight = bool(len(f) > 0 and (counts == 2).all() and dir_unique == len(directed))
    comps = len(np.unique(component_labels(len(v), f))) if len(f) else 0
    return {
        "faces": int(len(faces)),
        "vertices": int(len(used)),
        "edges": int(len(counts)),
        "watertight": watertight,
        "euler": int(len(used) - len(counts) + len(f)),
        "components": int(comps),
    }
