"""Regular tetrahedral grids of any resolution, generated in the project and cached on disk.

DMTet (Shen et al. 2021, "Deep Marching Tetrahedra", NeurIPS) needs a tet grid; threestudio ships
fixed ``{32,64,128,256}_tets.npz`` files. Here a grid is generated for any ``resolution`` (cube
cells per axis) by the Kuhn (Freudenthal) split of each cube into 6 tets that all share the cube's
main diagonal ``(0,0,0)-(1,1,1)``: tet ``k`` walks from corner 000 to 111 adding one axis at a time
in the order of permutation ``k``. Every cube face is then cut along the diagonal from its lowest
to its highest corner in every cell, so neighbouring cells' tets meet face to face (a conforming
mesh), and each tet is ordered to positive volume (consistent orientation), which marching
tetrahedra relies on for outward-facing triangles.

Vertices span ``[-1, 1]^3`` (scale by the scene radius); the cache holds ``.cache/tets/tets_<R>.npz``
(``THREEDGEN_TET_CACHE`` overrides the folder), written atomically.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_CACHE = ".cache/tets"


def cache_dir(folder: Optional[str] = None) -> Path:
    return Path(folder or os.environ.get("THREEDGEN_TET_CACHE") or DEFAULT_CACHE)


def build_tet_grid(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """(vertices [(R+1)^3, 3] float32 in [-1,1], tets [6 R^3, 4] int64, positive volume)."""
    R = int(resolution)
    if R < 1:
        raise ValueError(f"tet grid resolution must be a positive number of cells per axis, got {resolution}")
    n = R + 1
    lin = np.linspace(-1.0, 1.0, n, dtype=np.float32)
    verts = np.stack(np.meshgrid(lin, lin, lin, indexing="ij"), -1).reshape(-1, 3)
    ar = np.arange(R, dtype=np.int64)
    stride = np.array([n * n, n, 1], dtype=np.int64)  # index of (i,j,k) in the ij-indexed vertex array
    # vertex index of every cell's origin corner [C]
    base = (ar[:, None, None] * stride[0] + ar[None, :, None] * stride[1] + ar[None, None, :] * stride[2]).reshape(-1)
    tets = np.empty((6, base.shape[0], 4), dtype=np.int64)  # filled in place: the 128^3 grid is 400 MB
    for k, perm in enumerate(itertools.permutations(range(3))):
        corner = np.zeros(3, dtype=np.int64)
        path = [corner.copy()]
        for axis in perm:
            corner[axis] = 1
            path.append(corner.copy())
        offs = np.stack(path) @ stride  # [4] index offsets of this tet's corners
        if _parity(perm):  # odd permutations give negatively oriented tets: swap two vertices
            offs = offs[[1, 0, 2, 3]]
        np.add(base[:, None], offs[None], out=tets[k])
    tets = tets.reshape(-1, 4)
    return verts, tets


def _parity(perm) -> int:
    p, swaps = list(perm), 0
    for i in range(len(p)):
        while p[i] != i:
            j = p[i]
            p[i], p[j] = p[j], p[i]
            swaps += 1
    return swaps % 2


def tet_volumes(verts: np.ndarray, tets: np.ndarray) -> np.ndarray:
    a, b, c, d = (verts[tets[:, i]] for i in range(4))
    return np.einsum("ij,ij->i", np.cross(b - a, c - a), d - a) / 6.0


def load_tet_grid(resolution: int, folder: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
    """The grid for ``resolution``, read from the cache or built and written there (atomically)."""
    path = cache_dir(folder) / f"tets_{int(resolution)}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return z["vertices"], z["tets"]
        except Exception as e:  # noqa: BLE001 - a bad cache file is rebuilt, never fatal
            log.warning("rebuilding unreadable tet grid cache %s (%s)", path, e)
    verts, tets = build_tet_grid(resolution)
    try:
        from ..utils.atomic import staged_path

        with staged_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, vertices=verts, tets=tets)
    except OSError as e:  # a read-only cache must not stop a run
        log.warning("could not cache the tet grid at %s (%s)", path, e)
    return verts, tets
