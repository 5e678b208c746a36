"""Stage 4: UV unwrap (xatlas), albedo bake by rasterising UV space, seam dilation.

UV convention: ``uv = (u, v)`` in [0,1] with v pointing *down* the image (texel row = v * H). That is
glTF's TEXCOORD_0 convention, so GLB stores the UVs as they are; OBJ stores ``(u, 1 - v)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def unwrap(vertices: np.ndarray, faces: np.ndarray, texture_size: int, padding: int = 2, chart_faces: int = 1000):
    """xatlas charts packed for a ``texture_size`` square atlas.

    Charts are capped at about ``chart_faces`` triangles' worth of area: xatlas's chart growing and
    parameterisation scale worse than linearly with chart size (measured on a sphere: 20k faces in
    6.5 s as 9 charts, 2.6 s as 49 charts), so bounded charts keep a 100k-face unwrap to seconds.
    Returns (vmapping [V'] original vertex of each new vertex, faces [F,3] into the new vertices,
    uv [V',2]). Vertices on chart seams are duplicated; positions come from ``vertices[vmapping]``.
    """
    import xatlas

    v = np.ascontiguousarray(vertices, dtype=np.float32)
    atlas = xatlas.Atlas()
    atlas.add_mesh(v, np.ascontiguousarray(faces, dtype=np.uint32))
    area = 0.5 * float(np.linalg.norm(np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]]), axis=1).sum())
    charts = xatlas.ChartOptions()
    charts.max_chart_area = area * chart_faces / max(len(faces), 1)
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = int(padding)
    pack.bilinear = True
    atlas.generate(charts, pack)
    if atlas.atlas_count != 1:
        raise ValueError(f"the UV atlas needs {atlas.atlas_count} pages at {texture_size} px; raise export.texture_size")
    vmapping, idx, uv = atlas[0]
    return vmapping.astype(np.int64), idx.astype(np.int64), uv.astype(np.float32)


def rasterize_uv(uv: np.ndarray, faces: np.ndarray, size: int, conservative: float = 0.71, max_batch: int = 1 << 22,
                 depth: np.ndarray | None = None):
    """Which triangle covers each texel, and where.

    Returns (triangle id [size,size] int64, -1 where empty; barycentrics [size,size,3] float32).
    A texel whose centre is inside a triangle takes that triangle. A texel whose centre lies within
    ``conservative`` texels of a triangle's edges (the ring a bilinear or mip-mapped lookup near the
    edge still reads) takes the triangle's nearest-ish point (barycentrics clamped to the triangle),
    unless some triangle covers its centre. Vectorised by enumerating every triangle's texel bounding
    box as one flat index list (``repeat_interleave``) and testing the three edge functions.
    With per-vertex ``depth`` [V] (screen-space use: ``uv`` = pixel position / size), overlapping
    triangles are resolved by a z-buffer (nearest wins) instead.
    """
    p = torch.from_numpy(uv).double()[torch.from_numpy(faces)] * size  # [F,3,2] texel units
    lo = torch.ceil(p.amin(1) - 0.5 - conservative).clamp(0, size - 1).long()
    hi = torch.floor(p.amax(1) - 0.5 + conservative).clamp(-1, size - 1).long()
    wh = (hi - lo + 1).clamp_min(0)
    count = wh[:, 0] * wh[:, 1]
    a, b, c = p[:, 0], p[:, 1], p[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    count[area.abs() < 1e-12] = 0
    # height of the triangle over each edge (opposite vertex 0, 1, 2): barycentric l_i times it is the distance to that edge
    height = area.abs()[:, None] / torch.stack([(c - b).norm(dim=1), (a - c).norm(dim=1), (b - a).norm(dim=1)], 1).clamp_min(1e-12)
    tri_id = torch.full((size * size,), -1, dtype=torch.long)
    bary = torch.zeros(size * size, 3, dtype=torch.float32)
    ends = torch.cumsum(count, 0)
    hits = []
    start = 0
    while start < len(count):  # batches of triangles with at most max_batch candidate texels
        base = int(ends[start - 1]) if start else 0
        stop = max(int(torch.searchsorted(ends, base + max_batch, right=True)), start + 1)
        sel = torch.arange(start, min(stop, len(count)))
        start = int(sel[-1]) + 1
        n = count[sel]
        if int(n.sum()) == 0:
            continue
        t = torch.repeat_interleave(sel, n)
        local = torch.arange(int(n.sum())) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
        w = wh[t, 0]
        px, py = lo[t, 0] + local % w, lo[t, 1] + local // w
        q = torch.stack([px, py], -1).double() + 0.5

        def edge(u, v):  # twice the signed area of (u, v, q)
            return (v[t, 0] - u[t, 0]) * (q[:, 1] - u[t, 1]) - (v[t, 1] - u[t, 1]) * (q[:, 0] - u[t, 0])

        lam = torch.stack([edge(b, c), edge(c, a), edge(a, b)], -1) / area[t, None]
        dist = (lam * height[t]).amin(-1)  # signed distance (texels) from the triangle, > 0 inside
        keep = dist >= -conservative
        inside = dist >= -1e-9
        lam = lam.clamp_min(0)
        lam = lam / lam.sum(-1, keepdim=True)
        hits.append(((py * size + px)[keep], t[keep], lam[keep].float(), inside[keep]))
    if hits:
        flat, tri, lam, inside = (torch.cat(x) for x in zip(*hits))
        if depth is not None:
            z = (lam.double() * torch.from_numpy(np.asarray(depth, np.float64))[torch.from_numpy(faces)[tri]]).sum(-1)
            zbuf = torch.full((size * size,), float("inf"), dtype=torch.float64).scatter_reduce(0, flat, z, "amin")
            front = z <= zbuf[flat]
            flat, tri, lam, inside = flat[front], tri[front], lam[front], inside[front]
        for sel in (~inside, inside):  # texels whose centre a triangle covers are written last and win
            tri_id[flat[sel]] = tri[sel]
            bary[flat[sel]] = lam[sel]
    return tri_id.view(size, size), bary.view(size, size, 3)


def dilate(texture: torch.Tensor, mask: torch.Tensor, iterations: int) -> torch.Tensor:
    """Fill empty texels so mip-mapping never averages in background across UV seams.

    ``iterations`` rings of 3x3 averaging of filled neighbours (a sharp bleed next to each island),
    then push-pull (Gortler et al. 1996, "The Lumigraph", pull-push hole filling) for everything else.
    texture [H,W,3], mask [H,W] bool; returns a fully filled [H,W,3].
    """
    x = texture.permute(2, 0, 1)[None].float() * mask[None, None]
    m = mask[None, None].float()
    for _ in range(iterations):
        sums = _box3(torch.cat([x, m], 1))  # colour sums and filled counts of each 3x3 neighbourhood
        s, n = sums[:, :3], sums[:, 3:]
        new = (n > 0) & (m == 0)
        x = torch.where(new, s / n.clamp_min(1), x)
        m = torch.where(new, torch.ones_like(m), m)
    return _push_pull(x, m)[0].permute(1, 2, 0)


def _box3(x: torch.Tensor) -> torch.Tensor:
    """3x3 neighbourhood sums of [1,C,H,W] (zero padding) as two passes of shifted slices: on one CPU thread
    at 1024² about 6x faster than the same sums by a grouped 3x3 convolution (13 vs 83 ms, measured)."""
    H, W = x.shape[-2:]
    p = F.pad(x, (1, 1, 1, 1))
    rows = p[..., 0:W] + p[..., 1 : W + 1] + p[..., 2 : W + 2]
    return rows[..., 0:H, :] + rows[..., 1 : H + 1, :] + rows[..., 2 : H + 2, :]


def _push_pull(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    if bool(m.all()) or min(x.shape[-2:]) <= 1:
        return x if bool(m.all()) else torch.where(m > 0, x, (x * m).sum((-2, -1), keepdim=True) / m.sum().clamp_min(1))
    H, W = x.shape[-2:]
    xp = F.pad(x * m, (0, W % 2, 0, H % 2))
    mp = F.pad(m, (0, W % 2, 0, H % 2))
    s, n = F.avg_pool2d(xp, 2) * 4, F.avg_pool2d(mp, 2) * 4
    coarse = _push_pull(s / n.clamp_min(1e-8), (n > 0).float())
    up = F.interpolate(coarse, scale_factor=2, mode="nearest")[..., :H, :W]
    return torch.where(m > 0, x, up)


def bake_albedo(representation, positions: np.ndarray, faces: np.ndarray, uv: np.ndarray, size: int, dilation: int):
    """Texture [size,size,3] float in [0,1] and coverage mask [size,size], sampling ``albedo_at`` at each texel's surface point."""
    tri, bary = rasterize_uv(uv, faces, size)
    covered = tri >= 0
    if not bool(covered.any()):
        raise ValueError("the UV atlas covers no texel; raise export.texture_size")
    corners = torch.from_numpy(positions).float()[torch.from_numpy(faces)[tri[covered]]]  # [N,3,3]
    points = (bary[covered][..., None] * corners).sum(1)
    with torch.no_grad():  # a query, not training: some fields (DMTet) return tensors that track gradients
        colour = torch.as_tensor(representation.albedo_at(points)).float().cpu()
    if colour.shape != points.shape:
        raise ValueError(f"albedo_at returned shape {tuple(colour.shape)} for {tuple(points.shape)} points; expected [N,3]")
    if not bool(torch.isfinite(colour).all()):
        raise ValueError("albedo_at returned NaN/Inf colours: the representation's colour field has non-finite values")
    tex = torch.zeros(size, size, 3)
    tex[covered] = colour.clamp(0, 1)
    return dilate(tex, covered, dilation).clamp(0, 1), covered


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (the cross product's length is twice the face area)."""
    v = vertices.astype(np.float64)
    fn = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    n = np.where(length > 1e-20, n / np.maximum(length, 1e-20), np.array([0.0, 1.0, 0.0]))
    return n.astype(np.float32)
