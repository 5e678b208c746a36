"""Base-colour texture fitted to the representation's renders, so the asset looks like what was trained.

Why not sample a colour field: a Gaussian scene's nearest-splat colour mixes in the dark interior
splats SDS leaves behind the surface, and a NeRF's albedo head is only constrained where rays
terminate. What the renders show is what the user approved, so the texture is fitted to them:

1. **Back-projection**: each covered texel's surface point is projected into every view; views
   that see it (the mesh's own depth there matches, within ``visibility_tol`` of the object's size)
   contribute the rendered unlit colour, weighted by ``cos(normal, view)^2 * alpha``.
2. **Least-squares fit**: the textured mesh rasterised over the same views (``mesh_views.py``) is a
   linear function of the texels (each pixel a bilinear lookup of four), so the fit is a sparse linear
   least-squares problem: min ||A t - y||² + smoothness · Σ over neighbouring texels of their squared
   difference, solved by a few Jacobi-preconditioned conjugate-gradient iterations from the
   back-projection. The views sample the texture far more sparsely than it has texels (a 128 px view
   taps about one texel in ten at 1024 px), so fitting the pixels alone moves only the few texels they tap,
   and those overshoot: what an Adam fit did, leaving speckles that held-out views show (about 1 dB
   below the back-projection there). The smoothness term spreads each pixel's correction over its
   neighbourhood instead; docs/export.md has the measurements.
3. **Seam dilation**: texels no view saw are filled from their neighbours (``bake.dilate``), so
   mip-mapping never averages in background across UV seams.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from .bake import dilate, rasterize_uv
from .mesh_views import lookup, rasterize_mesh
from .views import ViewSet

log = logging.getLogger("threedgen")

OPAQUE = 0.9


@torch.no_grad()
def back_project(points: torch.Tensor, views: ViewSet, mesh_depth: torch.Tensor, tol: float, chunk: int = 1 << 17):
    """(colour [M,3], weight [M]) of world points [M,3] seen in ``views`` (visibility from ``mesh_depth`` [N,H,W])."""
    cams = views.cameras
    N, H, W = views.alpha.shape
    col = torch.zeros(len(points), 3)
    wsum = torch.zeros(len(points))
    colour = views.colour.view(N, H * W, 3)
    alpha = views.alpha.view(N, H * W)
    md = mesh_depth.view(N, H * W)
    eye = cams.camera_position().float()
    for sl in torch.arange(len(points)).split(chunk):
        p = points[sl]
        uv, _ = cams.project(p[None].expand(N, -1, -1))
        u, v = uv[..., 0].floor().long(), uv[..., 1].floor().long()
        ok = (u >= 0) & (u < W) & (v >= 0) & (v < H)
        pix = (v.clamp(0, H - 1) * W + u.clamp(0, W - 1))
        to_cam = eye[:, None] - p[None]
        dist = to_cam.norm(dim=-1)
        seen = ok & ((torch.gather(md, 1, pix) - dist).abs() < tol)
        a = torch.gather(alpha, 1, pix)
        w = seen * (a >= OPAQUE) * a
        c = torch.gather(colour, 1, pix[..., None].expand(-1, -1, 3))
        col[sl] = (w[..., None] * c).sum(0)
        wsum[sl] = w.sum(0)
    return col / wsum.clamp_min(1e-9)[:, None], wsum


def bilinear_taps(uv: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(texel index [P,4] into the flattened ``size``² texture, weight [P,4]): ``lookup``'s bilinear filter
    (grid_sample, align_corners=False, border padding) at ``uv`` [P,2], as the rows of a sparse matrix."""
    x = (uv[:, 0] * size - 0.5).clamp(0, size - 1)
    y = (uv[:, 1] * size - 0.5).clamp(0, size - 1)
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=size - 1), (y0 + 1).clamp(max=size - 1)
    index = torch.stack([y0 * size + x0, y0 * size + x1, y1 * size + x0, y1 * size + x1], 1)
    weight = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], 1)
    return index, weight


def _edges(mask: torch.Tensor):
    """(first texels, second texels, edge mask) of the horizontal and the vertical 4-neighbour pairs, an edge
    where both texels are in ``mask`` [T,T]: UV islands are separated by unmasked gutters, so no edge joins two."""
    for a, b in (((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
                 ((slice(None, -1), slice(None)), (slice(1, None), slice(None)))):
        yield a, b, (mask[a] & mask[b])


def grid_laplacian(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L t [T,T,C] for the graph Laplacian of the texel grid's edges within ``mask`` (``_edges``)."""
    out = torch.zeros_like(t)
    for a, b, e in _edges(mask):
        d = (t[a] - t[b]) * e[..., None]
        out[a] += d
        out[b] -= d
    return out


def solve_texture(tex: torch.Tensor, uv: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, smoothness: float,
                  iterations: int) -> torch.Tensor:
    """The texture [T,T,3] minimising ||lookup(t, uv) - target||² + smoothness · Σ_edges ||t_i - t_j||²
    (``uv`` [P,2], ``target`` [P,3]; edges within ``mask``): ``iterations`` of conjugate gradients on the
    normal equations (A^T A + smoothness L) t = A^T y, preconditioned by their diagonal, from ``tex``.
    Texels that no pixel taps and no edge reaches keep their value."""
    T = tex.shape[0]
    index, weight = bilinear_taps(uv, T)
    flat = index.reshape(-1)

    def lookup_rows(t):  # A t: [P,3]
        return (weight[..., None] * t.reshape(T * T, 3)[index]).sum(1)

    def splat(r):  # A^T r: [T,T,3]
        return torch.zeros(T * T, 3).index_add_(0, flat, (weight[..., None] * r[:, None]).reshape(-1, 3)).view(T, T, 3)

    def normal(t):
        return splat(lookup_rows(t)) + smoothness * grid_laplacian(t, mask)

    diag = torch.zeros(T * T).index_add_(0, flat, (weight * weight).reshape(-1)).view(T, T)
    for a, b, e in _edges(mask):
        diag[a] += smoothness * e
        diag[b] += smoothness * e
    inv = torch.where(diag > 0, 1 / diag.clamp_min(1e-12), torch.zeros_like(diag))[..., None]
    x = tex.clone()
    r = splat(target - lookup_rows(x)) - smoothness * grid_laplacian(x, mask)
    z = inv * r
    p, rz = z, (r * z).sum((0, 1))
    for _ in range(iterations):
        q = normal(p)
        step = rz / (p * q).sum((0, 1)).clamp_min(1e-30)  # per channel: three independent systems, one matrix
        x = x + step * p
        r = r - step * q
        z = inv * r
        rz_next = (r * z).sum((0, 1))
        p = z + rz_next / rz.clamp_min(1e-30) * p
        rz = rz_next
    return x


def fit_texture(positions: np.ndarray, faces: np.ndarray, uv: np.ndarray, views: ViewSet, size: int, dilation: int,
                steps: int = 15, smoothness: float = 3.0, visibility_tol: float = 0.01) -> tuple[torch.Tensor, dict]:
    """(texture [size,size,3] in [0,1], info): the base colour of the UV-mapped mesh fitted to ``views``
    (``steps`` conjugate-gradient iterations of the least-squares fit, 0: back-projection only)."""
    t0 = time.perf_counter()
    scale = float((views.hi - views.lo).max())
    mv = rasterize_mesh(positions, faces, uv, views.cameras)
    tri, bary = rasterize_uv(uv, faces, size)
    covered = tri >= 0
    if not bool(covered.any()):
        raise ValueError("the UV atlas covers no texel; raise export.texture_size")
    corners = torch.from_numpy(positions).float()[torch.from_numpy(faces)[tri[covered]]]
    points = (bary[covered][..., None] * corners).sum(1)
    colour, weight = back_project(points, views, mv.depth, visibility_tol * scale)
    seen = torch.zeros(size, size, dtype=torch.bool)
    seen[covered] = weight > 0
    if not bool(seen.any()):
        raise ValueError("no texel of the mesh is visible in the export views with an opaque render behind it; "
                         "the mesh and the renders disagree (train longer or use export.mesher=density)")
    tex = torch.zeros(size, size, 3)
    tex[covered] = colour
    tex = dilate(tex, seen, dilation)
    t_init = time.perf_counter() - t0
    valid = mv.covered & (views.alpha >= OPAQUE)
    uv_valid, target_valid = mv.uv[valid], views.colour[valid]  # the loss reads only these pixels

    def mse(t):
        return float(((lookup(t, uv_valid) - target_valid) ** 2).mean())

    mse0 = mse(tex)
    if steps > 0:
        tex = solve_texture(tex, uv_valid, target_valid, covered, smoothness, steps).clamp(0, 1)
    mse1 = mse(tex)
    tex = dilate(tex, covered, dilation).clamp(0, 1)
    info = {"seen_texels": float(seen.sum() / covered.sum()), "mse_backprojected": mse0, "mse_fitted": mse1,
            "init_seconds": t_init, "seconds": time.perf_counter() - t0}
    log.info("export: texture fit %.1fs: %.0f%% of texels seen, render MSE %.5f (back-projection) -> %.5f (%d iterations)",
             info["seconds"], 100 * info["seen_texels"], mse0, mse1, steps)
    return tex, info
