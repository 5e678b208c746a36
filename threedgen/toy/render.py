"""Analytic renderer of toy scenes: batched SDF sphere tracing in torch, with optional supersampling.

Why sphere tracing: every toy shape has an exact signed distance function (Inigo Quilez's closed forms),
so one generic tracer covers all five shapes and the union with the marker sphere, and the result is the
exact analytic surface up to a 1e-4 m tolerance. Rays are first clipped to a bounding sphere and the set of
still-marching rays is compacted as rays finish, so the cost is proportional to the rays that see the
object; a few thousand 32x32 images take seconds on two CPU cores.

Outputs follow ``RenderOutput``'s conventions: ``rgb`` composited on the white background, ``mask`` is the
(antialiased) coverage, ``depth`` the expected distance along the ray (coverage-weighted, 0 where empty),
``normal`` the coverage-weighted world normal. Shading is ``world.shade``'s fixed-light Lambertian.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F

from ..data.cameras import CameraBatch
from . import world as W
from .world import ToyScene


def _length2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(x * x + y * y)


def sdf_shape(shape: str, p: torch.Tensor) -> torch.Tensor:
    """Exact signed distance [N] of ``shape`` (without marker) at points ``p`` [N,3]."""
    x, y, z = p.unbind(-1)
    if shape == "sphere":
        return p.norm(dim=-1) - W.SPHERE_RADIUS
    if shape == "cube":
        q = p.abs() - W.CUBE_HALF
        return q.clamp_min(0).norm(dim=-1) + q.max(dim=-1).values.clamp_max(0)
    if shape == "cylinder":
        dx = _length2(x, z) - W.CYLINDER_RADIUS
        dy = y.abs() - W.CYLINDER_HALF_HEIGHT
        return torch.maximum(dx, dy).clamp_max(0) + _length2(dx.clamp_min(0), dy.clamp_min(0))
    if shape == "torus":
        return _length2(_length2(x, z) - W.TORUS_MAJOR, y) - W.TORUS_MINOR
    if shape == "cone":
        # capped cone, half-height h, radius r1 at y=-h and r2=0 at y=+h (IQ's sdCappedCone, exact)
        h, r1, r2 = W.CONE_HALF_HEIGHT, W.CONE_BASE_RADIUS, 0.0
        qx, qy = _length2(x, z), y
        k2x, k2y = r2 - r1, 2.0 * h
        cax = qx - torch.minimum(qx, torch.where(qy < 0, torch.full_like(qy, r1), torch.full_like(qy, r2)))
        cay = qy.abs() - h
        s = ((r2 - qx) * k2x + (h - qy) * k2y) / (k2x * k2x + k2y * k2y)
        s = s.clamp(0.0, 1.0)
        cbx = qx - r2 + k2x * s
        cby = qy - h + k2y * s
        sign = torch.where((cbx < 0) & (cay < 0), -1.0, 1.0)
        return sign * torch.sqrt(torch.minimum(cax * cax + cay * cay, cbx * cbx + cby * cby))
    raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(W.SHAPES)}")


def sdf_marker(p: torch.Tensor, marker_z: torch.Tensor) -> torch.Tensor:
    """Distance to the marker sphere centred at (0, 0, marker_z) per point (use a huge z for 'no marker')."""
    c = torch.stack([torch.zeros_like(marker_z), torch.zeros_like(marker_z), marker_z], dim=-1)
    return (p - c).norm(dim=-1) - W.MARKER_RADIUS


def shade(albedo: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """``clamp(albedo * (AMBIENT + (1 - AMBIENT) * max(0, n . l)), 0, 1)`` with the fixed world light."""
    l = torch.tensor(W.LIGHT_DIR, dtype=normal.dtype, device=normal.device)
    lam = (normal * l).sum(-1, keepdim=True).clamp_min(0)
    return (albedo * (W.AMBIENT + (1.0 - W.AMBIENT) * lam)).clamp(0, 1)


_NO_MARKER_Z = 100.0


@torch.no_grad()
def _trace(shape: str, o: torch.Tensor, d: torch.Tensor, mz: torch.Tensor, max_iter: int, eps: float):
    """Sphere-trace rays (o, d) [N,3]; return hit [N] bool and t [N]."""
    N = o.shape[0]
    hit = torch.zeros(N, dtype=torch.bool, device=o.device)
    t_out = torch.zeros(N, dtype=o.dtype, device=o.device)
    b = (o * d).sum(-1)
    c = (o * o).sum(-1) - W.BOUND_RADIUS**2
    disc = b * b - c
    t_far = -b + disc.clamp_min(0).sqrt()
    idx = torch.nonzero((disc > 0) & (t_far > 0)).squeeze(-1)
    t = (-b - disc.clamp_min(0).sqrt()).clamp_min(0)[idx]
    t_far = t_far[idx]
    oo, dd, mm = o[idx], d[idx], mz[idx]
    dist = None
    for _ in range(max_iter):
        if idx.numel() == 0:
            break
        p = oo + t[:, None] * dd
        dist = torch.minimum(sdf_shape(shape, p), sdf_marker(p, mm))
        done_hit = dist < eps * (1.0 + t)
        done_miss = t > t_far
        done = done_hit | done_miss
        if done.any():
            h = done_hit & ~done_miss
            hit[idx[h]] = True
            t_out[idx[h]] = t[h]
            keep = ~done
            idx, t, t_far, oo, dd, mm, dist = idx[keep], t[keep], t_far[keep], oo[keep], dd[keep], mm[keep], dist[keep]
        t = t + dist
    if idx.numel() and dist is not None:  # grazing rays that ran out of iterations: near-surface counts as a hit
        p = oo + t[:, None] * dd
        dist = torch.minimum(sdf_shape(shape, p), sdf_marker(p, mm))
        h = (dist < 1e-3) & (t <= t_far)
        hit[idx[h]] = True
        t_out[idx[h]] = t[h]
    return hit, t_out


def _normals_and_part(shape: str, p: torch.Tensor, mz: torch.Tensor):
    """Unit SDF gradient at surface points and whether the marker (not the object) was hit."""
    with torch.enable_grad():
        q = p.detach().requires_grad_(True)
        ds, dm = sdf_shape(shape, q), sdf_marker(q, mz)
        dist = torch.minimum(ds, dm)
        (g,) = torch.autograd.grad(dist.sum(), q)
    n = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return n, (dm <= ds).detach()


def render_scene(
    scenes: Union[ToyScene, Sequence[ToyScene]],
    cameras: CameraBatch,
    ssaa: int = 1,
    chunk: int = 512,
    max_iter: int = 96,
    eps: float = 1e-4,
) -> dict[str, torch.Tensor]:
    """Render one scene per camera (a single scene is broadcast; a single camera is broadcast too).

    Returns ``rgb [B,3,H,W]``, ``mask [B,1,H,W]``, ``depth [B,1,H,W]``, ``normal [B,3,H,W]`` and ``marker
    [B,1,H,W]`` (coverage of the visible front marker; ground truth for the Janus score), float32 on the
    cameras' device. ``ssaa=k`` traces k x k rays per pixel and box-filters them (antialiasing).
    """
    if isinstance(scenes, ToyScene):
        scenes = [scenes] * len(cameras)
    scenes = list(scenes)
    if len(cameras) == 1 and len(scenes) > 1:
        cameras = cameras[[0] * len(scenes)]
    if len(scenes) != len(cameras):
        raise ValueError(f"{len(scenes)} scenes for {len(cameras)} cameras")
    B = len(scenes)
    outs = {k: [] for k in ("rgb", "mask", "depth", "normal", "marker")}
    for s in range(0, B, chunk):
        out = _render_chunk(scenes[s : s + chunk], cameras[list(range(s, min(B, s + chunk)))], ssaa, max_iter, eps)
        for k in outs:
            outs[k].append(out[k])
    return {k: torch.cat(v) for k, v in outs.items()}


def _render_chunk(scenes, cameras: CameraBatch, ssaa: int, max_iter: int, eps: float):
    B, H, Wd = len(scenes), cameras.height, cameras.width
    cams = cameras.with_resolution(Wd * ssaa, H * ssaa) if ssaa > 1 else cameras
    o, d = cams.rays()
    P = o.shape[1] * o.shape[2]
    o, d = o.reshape(B, P, 3), d.reshape(B, P, 3)
    dev, dt = o.device, o.dtype
    rgb = torch.ones(B, P, 3, dtype=dt, device=dev)
    mask = torch.zeros(B, P, dtype=dt, device=dev)
    depth = torch.zeros(B, P, dtype=dt, device=dev)
    normal = torch.zeros(B, P, 3, dtype=dt, device=dev)
    marker = torch.zeros(B, P, dtype=dt, device=dev)
    marker_rgb = torch.tensor(W.MARKER_COLOUR, dtype=dt, device=dev)
    for shape in sorted({sc.shape for sc in scenes}):
        items = [i for i, sc in enumerate(scenes) if sc.shape == shape]
        it = torch.tensor(items, device=dev)
        mz_item = torch.tensor(
            [W.FRONT_Z[shape] if scenes[i].marker else _NO_MARKER_Z for i in items], dtype=dt, device=dev
        )
        alb_item = torch.tensor([scenes[i].albedo for i in items], dtype=dt, device=dev)
        oo, dd = o[it].reshape(-1, 3), d[it].reshape(-1, 3)
        mz = mz_item.repeat_interleave(P)
        hit, t = _trace(shape, oo, dd, mz, max_iter, eps)
        hidx = torch.nonzero(hit).squeeze(-1)
        p = oo[hidx] + t[hidx, None] * dd[hidx]
        n, is_marker = _normals_and_part(shape, p, mz[hidx])
        alb = torch.where(is_marker[:, None], marker_rgb, alb_item[hidx // P])
        col = shade(alb, n)
        g_rgb = torch.ones(len(items) * P, 3, dtype=dt, device=dev)
        g_rgb[hidx] = col
        g_n = torch.zeros(len(items) * P, 3, dtype=dt, device=dev)
        g_n[hidx] = n
        g_m = torch.zeros(len(items) * P, dtype=dt, device=dev)
        g_m[hidx] = is_marker.to(dt)
        marker[it] = g_m.view(len(items), P)
        rgb[it] = g_rgb.view(len(items), P, 3)
        normal[it] = g_n.view(len(items), P, 3)
        mask[it] = hit.to(dt).view(len(items), P)
        depth[it] = t.view(len(items), P)  # t is 0 where there was no hit
    Hs, Ws = cams.height, cams.width

    def img(x, c):
        x = x.view(B, Hs, Ws, c).permute(0, 3, 1, 2)
        return F.avg_pool2d(x, ssaa) if ssaa > 1 else x.contiguous()

    return {
        "rgb": img(rgb, 3),
        "mask": img(mask, 1),
        "depth": img(depth, 1),
        "normal": img(normal, 3),
        "marker": img(marker, 1),
    }
