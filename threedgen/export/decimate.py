"""Stage 3: quadric-error decimation (Garland & Heckbert 1997, via fast-simplification) to a face budget.

Two modes:

- ``decimate(v, f, target)``: about ``target`` triangles (the ``density`` mesher's behaviour);
- ``decimate_bounded(v, f, max_faces, tolerance)``: the *fewest* faces whose surface stays within
  ``tolerance`` (metres) of the input and keeps it closed with the same Euler characteristic, but
  never more than ``max_faces``. The collapse order of quadric decimation is fixed, so the error
  grows (nearly) monotonically as the count falls: a search over the face count (``_next_count``) finds
  the smallest count that passes, to 5 %. Flat regions collapse to a few large triangles, curved ones keep
  what they need, so a clean box ends with tens of faces and a sphere with a few thousand.

Decimating *before* the UV unwrap is what keeps xatlas fast (threestudio#511: >1 h on an undecimated mesh).
"""

from __future__ import annotations

import numpy as np

from .cleanup import compact
from .topology import mesh_stats


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


class SurfaceDistance:
    """Distance from points to a fixed, dense, regular mesh (the mesh before decimation): the exact
    point-triangle distance over the ``k`` triangles with the nearest centroids, which on a regular
    mesh always include the nearest triangle."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, k: int = 8):
        from scipy.spatial import cKDTree

        self.tri = vertices[faces].astype(np.float64)
        self.tree = cKDTree(self.tri.mean(1))
        self.k = min(k, len(faces))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        _, idx = self.tree.query(points, k=self.k, workers=-1)
        idx = np.asarray(idx).reshape(len(points), self.k)
        return np.sqrt(_point_triangle_d2(points[:, None, :].astype(np.float64), self.tri[idx]).min(1))

    def largest(self, points: np.ndarray, stop: float = np.inf, chunk: int = 4096) -> float:
        """The largest distance of ``points``, or, as soon as a chunk has one beyond ``stop``, that chunk's
        largest: a failing decimation is told apart after a fraction of the work."""
        worst = 0.0
        for i in range(0, len(points), chunk):
            worst = max(worst, float(self(points[i : i + chunk]).max()))
            if worst > stop:
                break
        return worst


def surface_samples(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """The vertices plus ``n`` area-uniform random points of the mesh's surface."""
    tri = vertices[faces].astype(np.float64)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    rng = np.random.default_rng(seed)
    owner = rng.choice(len(faces), n, p=area / max(area.sum(), 1e-30))
    r1, r2 = rng.random((2, n))
    s1 = np.sqrt(r1)
    w = np.stack([1 - s1, s1 * (1 - r2), s1 * r2], 1)
    return np.concatenate([vertices.astype(np.float64), np.einsum("nk,nkd->nd", w, tri[owner])])


def _point_triangle_d2(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Squared distance from points p [...,3] to triangles t [...,3,3] (Eberly's region tests, vectorised
    as: the plane projection if it is inside, else the nearest of the three edge segments)."""
    a, b, c = t[..., 0, :], t[..., 1, :], t[..., 2, :]
    n = np.cross(b - a, c - a)
    nn = np.maximum((n * n).sum(-1), 1e-30)
    d = ((p - a) * n).sum(-1)
    q = p - (d / nn)[..., None] * n
    inside = np.ones(d.shape, bool)
    for u, v in ((a, b), (b, c), (c, a)):
        inside &= (np.cross(v - u, q - u) * n).sum(-1) >= 0
    best = np.where(inside, d * d / nn, np.inf)
    for u, v in ((a, b), (b, c), (c, a)):
        e = v - u
        s = np.clip(((p - u) * e).sum(-1) / np.maximum((e * e).sum(-1), 1e-30), 0, 1)
        r = p - (u + s[..., None] * e)
        best = np.minimum(best, (r * r).sum(-1))
    return best


def decimate_bounded(vertices: np.ndarray, faces: np.ndarray, max_faces: int, tolerance: float,
                     min_faces: int = 12, probes: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """(vertices, faces, info): the fewest faces within ``tolerance`` of the input (largest distance from the
    result's vertices and ``probes`` points of its surface to the input surface), closed with the input's
    Euler characteristic; at most ``max_faces`` (0: no cap).

    ``info``: {faces, error (m) of the result, tried (counts tested)}.
    """
    ref = mesh_stats(vertices, faces)
    distance = SurfaceDistance(vertices, faces)
    cap = len(faces) if max_faces <= 0 else min(max_faces, len(faces))
    tried: dict[int, tuple[bool, float]] = {}

    def attempt(n: int):
        v, f = decimate(vertices, faces, n)
        st = mesh_stats(v, f)
        ok_topo = st["watertight"] == ref["watertight"] and st["euler"] == ref["euler"] and st["components"] == ref["components"]
        err = distance.largest(surface_samples(v, f, probes, seed), stop=tolerance) if ok_topo else float("inf")
        tried[n] = (ok_topo and err <= tolerance, err)
        return v, f, ok_topo, err

    best = None
    n = cap
    for _ in range(16):  # the budget is a hard maximum: if the cap breaks the topology, try below it
        v, f, ok_topo, err = attempt(n)
        if ok_topo:
            best = (v, f, err)  # kept even if it exceeds the tolerance
            break
        n = int(n * 0.8)
        if n < min_faces:
            break
    lo, hi = min_faces, n  # invariant: hi passes (or is the cap), lo - 1 is unknown/failing
    if best is not None and err <= tolerance:
        err_hi, err_lo = err, None
        while hi - lo > max(8, hi // 20):  # 5 % precision on the count
            mid = _next_count(lo, hi, err_lo, err_hi, tolerance)
            v2, f2, ok2, err2 = attempt(mid)
            if ok2 and err2 <= tolerance:
                best, hi, err_hi = (v2, f2, err2), mid, err2
            else:
                lo, err_lo = mid + 1, (err2 if ok2 else None)
    if best is None:  # no count at or below the cap keeps the topology: keep the input (logged by the caller)
        best = (vertices, faces, 0.0)
    v, f, err = best
    return v, f, {"faces": int(len(f)), "error": err, "tried": sorted(tried)}


def _next_count(lo: int, hi: int, err_lo, err_hi: float, tolerance: float) -> int:
    """The next face count to try between a failing ``lo - 1`` (error ``err_lo``, None: unknown) and a passing
    ``hi`` (``err_hi``): where the error, a power of the count, reaches the tolerance (the power from the two
    errors; -1, quadric error's rate on a curved surface, with one), kept inside the middle 80 % of the bracket
    so the bracket always shrinks. Fewer and cheaper trials than bisection (docs/export.md, item 4)."""
    if err_hi <= 0:
        return int(np.sqrt(lo * hi))
    power = -1.0
    if err_lo is not None and np.isfinite(err_lo) and err_lo > err_hi and lo - 1 > 0:
        power = float(np.log(err_lo / err_hi) / np.log((lo - 1) / hi))
    guess = hi * (0.98 * tolerance / err_hi) ** (1.0 / power)
    margin = 0.1 * (hi - lo)
    return int(round(min(max(guess, lo + margin), hi - margin)))
