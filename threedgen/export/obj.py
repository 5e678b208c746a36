"""Wavefront OBJ + MTL with one diffuse texture (``map_Kd``), for tools that want OBJ.

OBJ's texture origin is the bottom-left corner, so ``vt = (u, 1 - v)`` for our top-left UVs.
Positions, UVs and normals share one index per corner (xatlas already split the seams).
"""

from __future__ import annotations

import io

import numpy as np


def _rows(fmt: str, array: np.ndarray) -> str:
    buf = io.StringIO()
    np.savetxt(buf, array, fmt=fmt)
    return buf.getvalue()


def textured_mesh_obj(positions, normals, uv, faces, mtl_name: str, texture_name: str, material: str = "material0") -> tuple[bytes, bytes]:
    """(OBJ bytes, MTL bytes)."""
    vt = np.stack([uv[:, 0], 1.0 - uv[:, 1]], 1)
    idx = np.repeat(faces + 1, 3, axis=1)  # f a/a/a b/b/b c/c/c
    obj = "".join([
        "# threedgen export: +Y up, metres, front +Z\n",
        f"mtllib {mtl_name}\n",
        "o model\n",
        _rows("v %.6f %.6f %.6f", positions),
        _rows("vt %.6f %.6f", vt),
        _rows("vn %.5f %.5f %.5f", normals),
        f"usemtl {material}\n",
        _rows("f %d/%d/%d %d/%d/%d %d/%d/%d", idx),
    ])
    mtl = (
        f"newmtl {material}\n"
        "Ka 1.000 1.000 1.000\nKd 1.000 1.000 1.000\nKs 0.000 0.000 0.000\n"
        "d 1.0\nillum 1\n"
        f"map_Kd {texture_name}\n"
    )
    return obj.encode(), mtl.encode()
