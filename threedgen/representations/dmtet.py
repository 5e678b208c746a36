"""DMTet: a deformable tetrahedral grid with a per-vertex SDF, meshed by marching tetrahedra.

Shen et al. 2021 ("Deep Marching Tetrahedra", NeurIPS), as used by Magic3D (Lin et al. 2023,
Sec. 4.2: the fine stage) and Fantasia3D. Each grid vertex carries

- an SDF value ``s = s_init + s_res`` (positive inside; ``s_init`` is a buffer set by the
  initialisation, ``s_res`` starts at zero) and
- a deformation ``dx = max_deformation * cell * tanh(raw)`` (bounded to a fraction of a cell so tets
  do not invert),

both either direct parameters (``geometry: parameters``) or the output of a hash-grid MLP at the
vertex (``geometry: hashgrid``; its last layer starts at zero, so the initial shape is ``s_init``).
Marching tetrahedra turns them into a mesh with gradients to both. Colour is an albedo field
(hash grid + MLP, sigmoid) queried at surface points, so the renderer shades per pixel and the
exporter can bake a texture with ``albedo_at``.

Initialisation: an analytic sphere / ellipsoid, or ``convert_from(nerf)``: the NeRF's density at
the grid vertices minus the NeRF's own automatic isosurface threshold ``tau``
(``NeRF.auto_threshold``), divided by ``tau`` and clipped to [-1, 1] (same zero level set as
``density - tau``; the scaling keeps the SDF's magnitude independent of the NeRF's density scale,
so one learning rate fits every scene). The NeRF's colour network is copied when the albedo field
has the same layout, otherwise distilled by a short regression on the surface.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np
import torch
from torch import nn

from ..schedule import Schedule
from .base import Representation
from .hashgrid import HashGrid, HashGridConfig
from .marching_tets import marching_tets
from .nerf import _mlp
from .tets import load_tet_grid

log = logging.getLogger(__name__)


def _default_grid() -> HashGridConfig:
    return HashGridConfig(n_levels=16, n_features_per_level=2, log2_hashmap_size=19, base_resolution=16, max_resolution=2048)


class DMTet(Representation):
    @dataclass
    class Config:
        RANGES = {"radius": (1e-6, None), "tet_resolution": (4, 256), "max_deformation": (0, 1), "mlp_width": (1, 1024),
                  "mlp_hidden_layers": (0, 16), "init_radius": (1e-6, None), "init_axes": (1e-6, None), "convert_resolution": (8, 512),
                  "convert_views": (1, 1000), "convert_view_resolution": (8, 4096)}
        radius: float = 1.0
        """Half-size of the box the tet grid spans (world units); match the coarse NeRF's radius."""
        tet_resolution: int = 64
        """Cube cells per axis of the tet grid (6 tets per cell); generated and cached on first use."""
        tet_cache_dir: Optional[str] = None
        """Folder for cached grids (None: $THREEDGEN_TET_CACHE or .cache/tets)."""
        geometry: Literal["parameters", "hashgrid"] = "parameters"
        """Per-vertex SDF residual and deformation as direct parameters, or from a hash-grid MLP."""
        geometry_grid: HashGridConfig = field(default_factory=_default_grid)
        deformation: bool = True
        max_deformation: float = 0.25
        """Largest vertex offset, as a fraction of a grid cell (DMTet bounds it to keep tets valid)."""
        albedo_grid: HashGridConfig = field(default_factory=_default_grid)
        mlp_width: int = 64
        mlp_hidden_layers: int = 1
        init: Literal["sphere", "ellipsoid", "none"] = "sphere"
        """Analytic start shape (replaced by ``convert_from`` when a previous stage exists)."""
        init_radius: float = 0.5
        init_axes: tuple[float, float, float] = (0.5, 0.5, 0.5)
        """Ellipsoid semi-axes (x, y, z)."""
        freeze_geometry: bool = False
        """Texture stage: SDF and deformation get requires_grad=False and the mesh is extracted once."""
        convert_resolution: int = 128
        """Density lattice used to choose the NeRF's threshold in ``convert_from`` (and the solid grid
        when converting from renders)."""
        convert_views: int = 40
        """Orbit views rendered when converting from another representation's renders (Gaussians)."""
        convert_view_resolution: int = 128
        """Their size in pixels."""
        convert_albedo_steps: int = 200
        """Regression steps when the NeRF's colour network cannot be copied."""
        lr_geometry: Schedule = Schedule(5e-3)
        lr_albedo_grid: Schedule = Schedule(1e-2)
        lr_albedo_mlp: Schedule = Schedule(1e-3)

    def __init__(self, cfg: "DMTet.Config"):
        super().__init__()
        self.cfg = cfg
        self.radius = float(cfg.radius)
        verts, tets = load_tet_grid(cfg.tet_resolution, cfg.tet_cache_dir)
        self.register_buffer("grid_verts", torch.from_numpy(verts) * self.radius, persistent=False)
        self.register_buffer("tets", torch.from_numpy(tets), persistent=False)
        self.cell = 2.0 * self.radius / cfg.tet_resolution
        V = verts.shape[0]
        self.register_buffer("sdf_init", self._analytic_sdf(self.grid_verts))
        if cfg.geometry == "parameters":
            self.sdf_res = nn.Parameter(torch.zeros(V))
            self.deform_raw = nn.Parameter(torch.zeros(V, 3)) if cfg.deformation else None
        else:
            self.geo_grid = HashGrid(cfg.geometry_grid)
            self.geo_mlp = _mlp(self.geo_grid.n_output_dims, cfg.mlp_width, cfg.mlp_hidden_layers, 4)
            nn.init.zeros_(self.geo_mlp[-1].weight)
            nn.init.zeros_(self.geo_mlp[-1].bias)
        self.albedo_grid = HashGrid(cfg.albedo_grid)
        self.albedo_mlp = _mlp(self.albedo_grid.n_output_dims, cfg.mlp_width, cfg.mlp_hidden_layers, 3)
        if cfg.freeze_geometry:
            for p in self.geometry_parameters():
                p.requires_grad_(False)
        self._frozen_mesh = None
        self.last_threshold: Optional[float] = None

    # ---- geometry -----------------------------------------------------------------------------

    def _analytic_sdf(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        if c.init == "sphere":
            return c.init_radius - x.norm(dim=-1)
        if c.init == "ellipsoid":
            axes = torch.tensor(c.init_axes, dtype=x.dtype)
            if bool((axes <= 0).any()):
                raise ValueError(f"init_axes must be positive semi-axes, got {c.init_axes}")
            return (1.0 - (x / axes).norm(dim=-1)) * float(axes.min())
        return torch.full_like(x[:, 0], -1.0)

    def geometry_parameters(self) -> list[nn.Parameter]:
        if self.cfg.geometry == "parameters":
            return [self.sdf_res] + ([self.deform_raw] if self.deform_raw is not None else [])
        return list(self.geo_grid.parameters()) + list(self.geo_mlp.parameters())

    def vertex_fields(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(deformed grid vertices [V,3], SDF [V]) with gradients to the geometry parameters."""
        x = self.grid_verts
        if self.cfg.geometry == "parameters":
            sdf = self.sdf_init + self.sdf_res
            raw = self.deform_raw
        else:
            out = self.geo_mlp(self.geo_grid((x / self.radius + 1.0) * 0.5))
            sdf = self.sdf_init + out[:, 0]
            raw = out[:, 1:] if self.cfg.deformation else None
        if raw is not None:
            x = x + self.cfg.max_deformation * self.cell * torch.tanh(raw)
        return x, sdf

    def mesh(self, threshold: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(vertices [M,3], faces [F,3] int64) of the surface ``sdf = threshold``, differentiable
        unless the geometry is frozen (then extracted once and reused)."""
        if self.cfg.freeze_geometry and threshold == 0.0:
            if self._frozen_mesh is None or self._frozen_mesh[0].device != self.grid_verts.device:
                with torch.no_grad():
                    self._frozen_mesh = marching_tets(*self.vertex_fields(), self.tets)
            return self._frozen_mesh
        x, sdf = self.vertex_fields()
        return marching_tets(x, sdf, self.tets, threshold)

    def _load_from_state_dict(self, *args, **kwargs):
        self._frozen_mesh = None  # a new state means a new surface
        return super()._load_from_state_dict(*args, **kwargs)

    # ---- appearance ---------------------------------------------------------------------------

    def albedo_at(self, points: torch.Tensor) -> torch.Tensor:
        """Albedo [N,3] in [0,1] at world points [N,3] (used by the renderer and for texture baking)."""
        h = self.albedo_grid((points / self.radius + 1.0) * 0.5)
        return torch.sigmoid(self.albedo_mlp(h))

    # ---- training hooks -----------------------------------------------------------------------

    def param_groups(self) -> list[dict]:
        groups = []
        geo = [p for p in self.geometry_parameters() if p.requires_grad]
        if geo:
            groups.append({"params": geo, "lr": self.cfg.lr_geometry, "name": "geometry", "eps": 1e-15})
        groups.append({"params": list(self.albedo_grid.parameters()), "lr": self.cfg.lr_albedo_grid, "name": "albedo_grid", "eps": 1e-15})
        groups.append({"params": list(self.albedo_mlp.parameters()), "lr": self.cfg.lr_albedo_mlp, "name": "albedo_mlp"})
        return groups

    # ---- conversion and export ----------------------------------------------------------------

    @torch.no_grad()
    def convert_from(self, src, render=None) -> None:
        """Initialise from a previous stage's representation: a NeRF (its density), a DMTet of the same grid,
        or anything its renderer can show (``render``: cameras -> RenderOutput, e.g. Gaussians), through the
        solid the renders show (``export/solid.py``)."""
        if isinstance(src, DMTet):
            if src.cfg.tet_resolution != self.cfg.tet_resolution or src.cfg.geometry != self.cfg.geometry:
                raise ValueError(
                    f"cannot continue a DMTet with tet_resolution={src.cfg.tet_resolution}, geometry={src.cfg.geometry!r} "
                    f"as one with tet_resolution={self.cfg.tet_resolution}, geometry={self.cfg.geometry!r}; "
                    "give the later stage the same tet_resolution and geometry"
                )
            self.load_state_dict(src.state_dict())
            return
        if hasattr(src, "splat_data") and render is not None:
            self._convert_from_renders(render)
            return
        if not (hasattr(src, "density_grid") and hasattr(src, "auto_threshold")):
            raise ValueError(f"DMTet can be initialised from a NeRF, a DMTet or Gaussians, not a {type(src).__name__}")
        dev = self.sdf_init.device
        src = src.to(dev)
        tau = src.auto_threshold(src.density_grid(self.cfg.convert_resolution))
        dens = torch.cat([src.density(c) for c in self.grid_verts.split(65536)])
        self.sdf_init.copy_(((dens - tau) / tau).clamp(-1.0, 1.0))
        self.last_threshold = tau
        self._reset_geometry()
        v, f = self.mesh()
        log.info("dmtet from nerf: density threshold %.4g, %d vertices, %d faces", tau, len(v), len(f))
        if len(f) == 0:
            raise ValueError(
                f"the NeRF's surface (density {tau:.4g}) falls between the vertices of the {self.cfg.tet_resolution}^3 "
                "tet grid: raise tet_resolution or train the coarse stage longer"
            )
        if not self._copy_albedo(src):
            self._fit_albedo(src, v.detach())

    def _reset_geometry(self) -> None:
        if self.cfg.geometry == "parameters":
            self.sdf_res.zero_()
            if self.deform_raw is not None:
                self.deform_raw.zero_()
        else:
            nn.init.zeros_(self.geo_mlp[-1].weight)
            nn.init.zeros_(self.geo_mlp[-1].bias)
        self._frozen_mesh = None

    def _convert_from_renders(self, render) -> None:
        """SDF from the solid the renders show (closed, the silhouettes' topology), albedo regressed onto the
        colours the renders show at the surface (back-projected where the surface is visible): a Gaussian
        scene's own colour field mixes in the dark splats inside it."""
        from ..export.decimate import surface_samples
        from ..export.mesh_views import rasterize_mesh
        from ..export.solid import sample_field, solid_field
        from ..export.texture_fit import back_project
        from ..export.views import capture

        views = capture(render, self.cfg.convert_views, self.cfg.convert_view_resolution)
        field, origin, cell = solid_field(views, self.cfg.convert_resolution)
        d = sample_field(field, origin, cell, self.grid_verts.cpu()).to(self.sdf_init.device)
        self.sdf_init.copy_((-d / self.cell).clamp(-1.0, 1.0))  # DMTet: positive inside, about one cell of band
        self._reset_geometry()
        v, f = self.mesh()
        log.info("dmtet from renders: %d views, %d vertices, %d faces", len(views), len(v), len(f))
        if len(f) == 0:
            raise ValueError(f"the solid the renders show falls between the vertices of the {self.cfg.tet_resolution}^3 "
                             "tet grid: raise tet_resolution")
        vn, fn = v.detach().cpu().numpy(), f.cpu().numpy()
        mv = rasterize_mesh(vn, fn, np.zeros((len(vn), 2), np.float32), views.cameras)
        pts = torch.from_numpy(surface_samples(vn, fn, 20000)).float()  # the vertices and 20k area-uniform points
        colour, weight = back_project(pts, views, mv.depth, 0.02 * float((views.hi - views.lo).max()))
        seen = weight > 0
        pts, colour = pts[seen].to(self.sdf_init.device), colour[seen].to(self.sdf_init.device)

        def batch(g):
            idx = torch.randint(len(pts), (4096,), generator=g).to(pts.device)
            return pts[idx], colour[idx]

        self._regress_albedo(batch, "renders")

    def _regress_albedo(self, batch, source: str) -> None:
        """Adam on the albedo field for ``convert_albedo_steps``; ``batch(g)`` draws (points [4096,3], target
        colours) with the seeded CPU generator ``g``."""
        g = torch.Generator(device="cpu").manual_seed(0)
        params = list(self.albedo_grid.parameters()) + list(self.albedo_mlp.parameters())
        opt = torch.optim.Adam(params, lr=1e-2, eps=1e-15)
        with torch.enable_grad():
            for _ in range(self.cfg.convert_albedo_steps):
                x, target = batch(g)
                loss = (self.albedo_at(x) - target).square().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        log.info("dmtet from %s: albedo regressed (mse %.4g)", source, float(loss))

    def _copy_albedo(self, nerf) -> bool:
        c, n = self.cfg, nerf.cfg
        same = (
            not n.view_dependent and n.radius == c.radius and n.grid == c.albedo_grid
            and n.mlp_width == c.mlp_width and n.mlp_hidden_layers == c.mlp_hidden_layers
        )
        if not same:
            return False
        self.albedo_grid.params.copy_(nerf.grid.params)
        for mine, theirs in zip(self.albedo_mlp[:-1], nerf.mlp[:-1]):
            if isinstance(mine, nn.Linear):
                mine.weight.copy_(theirs.weight)
                mine.bias.copy_(theirs.bias)
        self.albedo_mlp[-1].weight.copy_(nerf.mlp[-1].weight[1:4])  # NeRF head: [density, albedo logits]
        self.albedo_mlp[-1].bias.copy_(nerf.mlp[-1].bias[1:4])
        return True

    def _fit_albedo(self, nerf, surface: torch.Tensor) -> None:
        """Regress the albedo field onto the NeRF's colours near its surface (layouts differ)."""

        def batch(g):
            idx = torch.randint(len(surface), (4096,), generator=g).to(surface.device)
            x = surface[idx] + self.cell * torch.randn(4096, 3, generator=g).to(surface.device)
            with torch.no_grad():
                dirs = -torch.nn.functional.normalize(x, dim=-1) if nerf.cfg.view_dependent else None
                return x, nerf(x, dirs, normals=False)["albedo"]

        self._regress_albedo(batch, "nerf")

    @torch.no_grad()
    def isosurface(self, resolution: int = 128, threshold="auto"):
        """The DMTet surface itself (the mesh that was optimised): numpy (vertices [V,3] float32,
        faces [F,3] int64, outward winding; vertex colours [V,3]). ``resolution`` is ignored (the tet
        grid sets it); ``threshold`` 'auto' is the SDF's zero level, a number shifts the level."""
        thr = 0.0 if threshold == "auto" else float(threshold)
        v, f = self.mesh(thr)
        if len(f) == 0:
            raise ValueError(
                f"the DMTet surface is empty at SDF level {thr}: the SDF has no sign change on the "
                f"{self.cfg.tet_resolution}^3 grid (init, conversion or training removed the object)"
            )
        cols = torch.cat([self.albedo_at(c) for c in v.split(65536)]) if len(v) else v
        self.last_threshold = thr
        return v.float().cpu().numpy(), f.cpu().numpy().astype(np.int64), cols.float().cpu().numpy()
