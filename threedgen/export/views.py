"""What the exported mesh is taken from: the representation's own renders over views that see every side.

The solid mesher (``solid.py``), the surface refinement (``refine.py``), the texture fit
(``texture_fit.py``) and the asset report (``report.py``) all read one ``ViewSet``: per view the
rendered alpha, the depth of the surface (distance from the camera centre along the pixel's ray,
alpha-normalised) and the unlit foreground colour (the render over black divided by alpha).

Views are a Fibonacci lattice on the sphere (top and bottom included) around the object. They are
framed in two passes: a coarse pass that sees the whole scene box finds the object's bounds from
the back-projected opaque pixels, then the full pass frames those bounds tightly, so every pixel
budget is spent on the object whatever its size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..data.cameras import CameraBatch, look_at

RenderFn = Callable[[CameraBatch], object]
"""cameras -> RenderOutput of the representation, unlit (albedo) colour over a black background."""

ALPHA_LEVEL = 0.5
MAX_ELEVATION = 80.0


@dataclass
class ViewSet:
    cameras: CameraBatch
    alpha: torch.Tensor  # [N,H,W]
    depth: torch.Tensor  # [N,H,W] distance along the ray to the surface; 0 where alpha < 1e-3
    colour: torch.Tensor  # [N,H,W,3] foreground colour (not premultiplied), 0 where alpha < 1e-3
    lo: torch.Tensor  # [3] the object's bounding box (with margin), world units
    hi: torch.Tensor  # [3]

    @property
    def centre(self) -> torch.Tensor:
        return (self.lo + self.hi) / 2

    @property
    def radius(self) -> float:
        """Radius of the sphere around the bounding box."""
        return float((self.hi - self.lo).norm() / 2)

    def __len__(self) -> int:
        return len(self.cameras)

    def points(self, level: float = ALPHA_LEVEL) -> torch.Tensor:
        """World points [M,3] of every pixel at least ``level`` opaque (back-projected depth)."""
        o, d = self.cameras.rays()
        m = self.alpha >= level
        return o[m] + d[m] * self.depth[m][:, None]


def sphere_directions(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(elevation, azimuth) in degrees of ``n`` near-uniform directions (Fibonacci lattice), poles clamped
    to +-80 deg (a camera straight above would need another up vector)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    el = torch.rad2deg(torch.asin(1.0 - 2.0 * i / n)).clamp(-MAX_ELEVATION, MAX_ELEVATION)
    az = torch.remainder(i * 180.0 * (3.0 - math.sqrt(5.0)), 360.0)  # golden angle
    return el.float(), az.float()


def framing_cameras(centre: torch.Tensor, radius: float, n: int, resolution: int, fovy_deg: float = 40.0,
                    azimuth_offset_deg: float = 0.0) -> CameraBatch:
    """``n`` cameras around ``centre`` looking at it, far enough that a sphere of ``radius`` fills the frame
    (the lattice of ``sphere_directions`` turned by ``azimuth_offset_deg``)."""
    el, az = sphere_directions(n)
    el, az = torch.deg2rad(el), torch.deg2rad(az + azimuth_offset_deg)
    dist = radius / math.sin(math.radians(fovy_deg) / 2)
    dirs = torch.stack([torch.cos(el) * torch.sin(az), torch.sin(el), torch.cos(el) * torch.cos(az)], -1)
    eye = centre.float()[None] + dist * dirs
    c2w = look_at(eye, centre.float()[None].expand_as(eye))
    fovy = torch.full((n,), math.radians(fovy_deg))
    d = torch.full((n,), dist)
    return CameraBatch(c2w, fovy, resolution, resolution, el, az, d, light_dir=dirs)


def object_bounds(points: torch.Tensor, lo: float, hi: float, cells: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounding box of the largest cluster of ``points`` [M,3] (floaters excluded): points are binned into a
    ``cells``^3 grid over [lo, hi]^3, occupied cells dilated by one, and the largest connected set kept."""
    from scipy import ndimage

    idx = ((points - lo) / (hi - lo) * cells).floor().long().clamp(0, cells - 1)
    occ = torch.zeros(cells, cells, cells, dtype=torch.bool)
    occ[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    labels, n = ndimage.label(ndimage.binary_dilation(occ.numpy()), structure=np.ones((3, 3, 3)))
    if n > 1:
        sizes = np.bincount(labels[idx[:, 0], idx[:, 1], idx[:, 2]].ravel(), minlength=n + 1)
        sizes[0] = 0
        keep = torch.from_numpy(labels[idx[:, 0], idx[:, 1], idx[:, 2]] == int(sizes.argmax()))
        points = points[keep]
    return points.amin(0), points.amax(0)


@torch.no_grad()
def render_views(render: RenderFn, cameras: CameraBatch, chunk: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(alpha [N,H,W], depth [N,H,W], colour [N,H,W,3]) of ``render`` over ``cameras``, on the CPU."""
    alphas, depths, colours = [], [], []
    for i in range(0, len(cameras), chunk):
        out = render(cameras[i : i + chunk])
        a = out.alpha[:, 0].float().cpu()
        seen = a > 1e-3
        ac = a.clamp_min(1e-3)
        alphas.append(a.clamp(0, 1))
        depths.append(torch.where(seen, out.depth[:, 0].float().cpu() / ac, torch.zeros_like(a)))
        rgb = out.rgb.float().cpu().permute(0, 2, 3, 1)
        colours.append(torch.where(seen[..., None], (rgb / ac[..., None]).clamp(0, 1), torch.zeros_like(rgb)))
    alpha, depth, colour = torch.cat(alphas), torch.cat(depths), torch.cat(colours)
    if not (torch.isfinite(alpha).all() and torch.isfinite(depth).all() and torch.isfinite(colour).all()):
        raise ValueError("the representation renders NaN/Inf: the run diverged. Export an earlier checkpoint (--resume PATH)")
    return alpha, depth, colour


def capture(render: RenderFn, n_views: int = 40, resolution: int = 128, scene_radius: float = 1.5,
            margin: float = 0.08) -> ViewSet:
    """Frame the object and render it from ``n_views`` directions at ``resolution``.

    Pass 1 (16 views, 96 px) frames a sphere of ``scene_radius`` around the origin; its opaque pixels,
    back-projected, give the object's bounding box. Pass 2 frames that box plus ``margin`` (a fraction
    of its size). Raises ValueError when no view shows anything opaque.
    """
    coarse = framing_cameras(torch.zeros(3), scene_radius, 16, 96)
    a, d, c = render_views(render, coarse)
    probe = ViewSet(coarse, a, d, c, torch.full((3,), -scene_radius), torch.full((3,), scene_radius))
    pts = probe.points()
    if len(pts) == 0:
        raise ValueError(
            f"the scene renders empty: no pixel of 16 views around the origin (radius {scene_radius:g}) is half opaque "
            f"(largest alpha {float(a.max()):.3g}). Train longer, lower the opacity regulariser, or export an earlier checkpoint"
        )
    lo, hi = object_bounds(pts, -scene_radius, scene_radius)
    pad = margin * float((hi - lo).max()) + 1e-3
    box = ViewSet(coarse, a, d, c, lo - pad, hi + pad)
    cams = framing_cameras(box.centre, box.radius, n_views, resolution)
    a, d, c = render_views(render, cams)
    return ViewSet(cams, a, d, c, box.lo, box.hi)


def held_out(render: RenderFn, views: ViewSet, n: int = 8, azimuth_offset_deg: float = 45.0) -> ViewSet:
    """``n`` views framed as ``views`` (same box, resolution and lens) from directions none of them has (a
    lattice of ``n`` turned by ``azimuth_offset_deg``): what the asset report compares the GLB with, so a
    texture fitted to ``views`` is not scored on the pixels it was fitted to."""
    cams = framing_cameras(views.centre, views.radius, n, int(views.alpha.shape[-1]), azimuth_offset_deg=azimuth_offset_deg)
    return ViewSet(cams, *render_views(render, cams), views.lo, views.hi)
