"""Toy Gaussian scenes for editing: toy objects standing on a ground plane, written as a 3DGS PLY.

A scene edit needs a scene to edit that CI can build offline. Each object is one of the toy
world's analytic shapes (``world.py``) scaled by ``scale`` and standing on the ground; its Gaussians
lie on the exact surface (points drawn around it and projected along the SDF gradient), flattened
along the normal, coloured by the world's fixed light (``render.shade``), so a render of the scene
looks like the toy world. The ground is a grid of flat grey Gaussians.

Named layouts (``system.scene: toy:<name>`` builds one on first use into the cache folder):

- ``pair``: a red cube at x = -0.4 and a blue sphere at x = +0.4, the centre left free for an insert;
- ``row``: a green cylinder, the free centre, a yellow cone, and a purple torus behind the centre.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..representations.spherical_harmonics import rgb_to_sh0
from . import world as W
from .render import sdf_shape, shade

GROUND_Y = -0.2
GROUND_HALF = 1.0
GROUND_ALBEDO = (0.6, 0.6, 0.6)
_HALF_HEIGHT = {"cube": W.CUBE_HALF, "sphere": W.SPHERE_RADIUS, "cylinder": W.CYLINDER_HALF_HEIGHT,
                "cone": W.CONE_HALF_HEIGHT, "torus": W.TORUS_MINOR}


@dataclass(frozen=True)
class Placed:
    shape: str
    colour: str
    x: float
    z: float
    scale: float = 0.36

    @property
    def centre(self) -> tuple[float, float, float]:
        """Where the scaled object's centre sits so that it stands on the ground."""
        return (self.x, GROUND_Y + _HALF_HEIGHT[self.shape] * self.scale, self.z)


LAYOUTS = {
    "pair": (Placed("cube", "red", -0.4, 0.0), Placed("sphere", "blue", 0.4, 0.0)),
    "row": (Placed("cylinder", "green", -0.45, 0.0), Placed("cone", "yellow", 0.45, 0.0), Placed("torus", "purple", 0.0, -0.5)),
}


def insert_box(scale: float = 0.36) -> list[float]:
    """The edit box at the free centre of every layout that holds a toy object of ``scale`` on the ground."""
    h = 0.5 * scale * 1.05  # the largest toy half-extent (the sphere's 0.5), 5 % margin
    return [-h, GROUND_Y, -h, h, GROUND_Y + 2 * h, h]


def surface_points(shape: str, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points on the unit-scale toy ``shape``'s surface and their outward normals."""
    pts = (torch.rand(n * 4, 3, generator=generator) * 2 - 1) * W.BOUND_RADIUS
    for _ in range(8):  # Newton steps onto the zero level set
        p = pts.detach().requires_grad_(True)
        d = sdf_shape(shape, p)
        (g,) = torch.autograd.grad(d.sum(), p)
        pts = (p - d[:, None] * F.normalize(g, dim=-1)).detach()
    p = pts.requires_grad_(True)
    d = sdf_shape(shape, p)
    (g,) = torch.autograd.grad(d.sum(), p)
    ok = d.detach().abs() < 1e-3
    pts, nrm = pts.detach()[ok], F.normalize(g, dim=-1)[ok]
    keep = torch.randperm(len(pts), generator=generator)[:n]
    return pts[keep], nrm[keep]


def _flat_gaussians(points, normals, albedo, size: float) -> dict:
    """Gaussians of std ``size`` in the tangent plane and ``size / 6`` along the normal, lit by the world light."""
    n = len(points)
    z = torch.tensor([0.0, 0.0, 1.0]).expand(n, 3)
    axis = torch.cross(z, normals, dim=-1)
    s = axis.norm(dim=-1, keepdim=True)
    c = (z * normals).sum(-1, keepdim=True)
    half = torch.atan2(s, c) / 2  # quaternion turning +Z (the flat axis) onto the normal
    axis = torch.where(s > 1e-6, axis / s.clamp_min(1e-12), torch.tensor([1.0, 0.0, 0.0]).expand(n, 3))
    quats = torch.cat([torch.cos(half), axis * torch.sin(half)], -1)
    rgb = shade(torch.tensor(albedo).expand(n, 3), normals)
    return {"means": points, "log_scales": torch.log(torch.tensor([size, size, size / 6])).expand(n, 3).clone(),
            "quats": quats, "logit_opacities": torch.full((n,), 4.0), "sh": rgb_to_sh0(rgb)[:, None, :], "sh_degree": 0}



def build_scene(objects, points_per_object: int = 3000, ground_cells: int = 48, seed: int = 0) -> dict:
    """``splat_data()``-style tensors (world frame) of ``objects`` (``Placed``) on the ground plane
    (``ground_cells`` per side; 0: no ground)."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    if ground_cells > 0:
        u = (torch.arange(ground_cells) + 0.5) / ground_cells * 2 * GROUND_HALF - GROUND_HALF
        gx, gz = torch.meshgrid(u, u, indexing="ij")
        ground = torch.stack([gx.flatten(), torch.full_like(gx.flatten(), GROUND_Y), gz.flatten()], 1)
        parts.append(_flat_gaussians(ground, torch.tensor([0.0, 1.0, 0.0]).expand(len(ground), 3), GROUND_ALBEDO,
                                     size=GROUND_HALF / ground_cells * 1.2))
    for o in objects:
        pts, nrm = surface_points(o.shape, points_per_object, g)
        spacing = math.sqrt(4 * math.pi * 0.5 ** 2 / points_per_object) * o.scale
        parts.append(_flat_gaussians(pts * o.scale + torch.tensor(o.centre), nrm, W.COLOURS[o.colour], size=spacing * 1.2))
    keys = ("means", "log_scales", "quats", "logit_opacities", "sh")
    return {**{k: torch.cat([p[k] for p in parts]).float() for k in keys}, "sh_degree": 0}


def cache_folder() -> Path:
    return Path(os.environ.get("THREEDGEN_CACHE", Path.home() / ".cache" / "threedgen")) / "toy-scenes"


def toy_scene_path(spec: str) -> Path:
    """``toy:<layout>`` -> the PLY of that layout, built into the cache folder on first use (rdf axes,
    as every 3DGS PLY); ValueError naming the layouts for an unknown name."""
    from ..export.splats import check_splat_data, ply_bytes, to_axes

    name = spec.split(":", 1)[1]
    if name not in LAYOUTS:
        raise ValueError(f"unknown toy scene {name!r}; toy scenes: {', '.join('toy:' + k for k in LAYOUTS)}")
    path = cache_folder() / f"{name}-v1.ply"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(ply_bytes(to_axes(check_splat_data(build_scene(LAYOUTS[name])), "rdf")))
        os.replace(tmp, path)
    return path
