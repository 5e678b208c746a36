"""Stage 3: quadric-error decimation (Garland & Heckbert 1997) to a triangle budget, via fast-simplification.

Decimating *before* the UV unwrap is what keeps xatlas fast (threestudio#511: >1 h on an undecimated mesh).
"""

from __future__ import annotations

import numpy as np

from .cleanup import compact


def decimate(vertices: np.ndarray, faces: np.ndarray, target_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Reduce to about ``target_faces`` triangles (0 or a larger target: unchanged)."""
    if target_faces <= 0 or len(faces) <= target_faces:
        return vertices, faces
    import fast_simplification

    v, f = fast_simplification.simplify(
        vertices.astype(np.float64), faces.astype(np.int32), target_count=int(target_faces)
    )
    f = np.asarray(f, dtype=np.int64)
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])]
    return compact(np.asarray(v, dtype=np.float32), f)
