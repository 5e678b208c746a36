"""Base-colour texture fitted to the representation's renders, so the asset looks like what was trained.

Why not sample a colour field: a Gaussian scene's nearest-splat colour mixes in the dark interior
splats SDS leaves behind the surface, and a NeRF's albedo head is only constrained where rays
terminate. What the renders show is what the user approved, so the texture is fitted to them:

1. **Back-projection**: each covered texel's surface point is projected into every view; views
   that see it (the mesh's own depth there matches, within ``visibility_tol`` of the object's size)
   contribute the rendered unlit colour, weighted by ``cos(normal, view)^2 * alpha``.
2. **MSE fit**: Adam on the texture so that the textured mesh, rasterised over the same views
   (``mesh_views.py``, bilinear lookups), matches the renders at pixels both see as opaque.
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


def fit_texture(positions: np.ndarray, faces: np.ndarray, uv: np.ndarray, views: ViewSet, size: int, dilation: int,
                steps: int = 40, lr: float = 0.05, visibility_tol: float = 0.01) -> tuple[torch.Tensor, dict]:
    """(texture [size,size,3] in [0,1], info): the base colour of the UV-mapped mesh fitted to ``views``."""
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
    target = views.colour
    valid = mv.covered & (views.alpha >= OPAQUE)
    uv_valid, target_valid = mv.uv[valid], target[valid]  # the loss reads only these pixels: look up nothing else
    mse0 = float(((lookup(tex, uv_valid) - target_valid) ** 2).mean())
    param = tex.clone().requires_grad_(True)
    opt = torch.optim.Adam([param], lr=lr)
    mse = mse0
    for _ in range(steps):
        loss = ((lookup(param, uv_valid) - target_valid) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            param.clamp_(0, 1)
        mse = float(loss.detach())
    tex = dilate(param.detach(), covered, dilation).clamp(0, 1)
    info = {"seen_texels": float(seen.sum() / covered.sum()), "mse_backprojected": mse0, "mse_fitted": mse,
            "init_seconds": t_init, "seconds": time.perf_counter() - t0}
    log.info("export: texture fit %.1fs: %.0f%% of texels seen, render MSE %.5f (back-projection) -> %.5f (%d steps)",
             info["seconds"], 100 * info["seen_texels"], mse0, mse, steps)
    return tex, info
