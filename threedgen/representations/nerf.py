"""Hash-grid NeRF: multi-resolution hash encoding + small MLP -> density and albedo (Instant-NGP style).

World points inside the AABB ``[-radius, radius]^3`` map to the grid's ``[0,1]^3``. Density gets a
"blob" bias at initialisation (Magic3D / DreamFusion) so score distillation starts from an object
in the middle rather than empty space. Colour is an albedo (sigmoid); the renderer applies shading.
Normals come from the density gradient (autograd or central differences) only when asked for,
because on a CPU they cost an extra backward or six extra density evaluations.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..schedule import Schedule
from .base import Representation
from .hashgrid import HashGrid, HashGridConfig

log = logging.getLogger(__name__)


class _TruncExp(torch.autograd.Function):
    """exp with the gradient clamped at exp(15): the density activation of Instant-NGP / torch-ngp."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):  # written with torch ops so analytic normals can double-backward through it
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    return _TruncExp.apply(x)


def _mlp(n_in: int, width: int, n_hidden: int, n_out: int) -> nn.Sequential:
    layers, d = [], n_in
    for _ in range(n_hidden):
        layers += [nn.Linear(d, width), nn.ReLU(inplace=True)]
        d = width
    layers.append(nn.Linear(d, n_out))
    return nn.Sequential(*layers)


class NeRF(Representation):
    @dataclass
    class Config:
        RANGES = {"radius": (1e-6, None), "mlp_width": (1, 1024), "mlp_hidden_layers": (0, 16), "density_blob_scale": (0, None),
                  "density_blob_std": (1e-6, None), "n_dir_frequencies": (0, 16), "finite_difference_eps": (1e-8, None),
                  "isosurface_chunk": (1, 1 << 24)}
        radius: float = 1.0
        """Half-size of the scene's axis-aligned bounding box (world units)."""
        grid: HashGridConfig = field(default_factory=HashGridConfig)
        mlp_width: int = 64
        mlp_hidden_layers: int = 1
        density_activation: Literal["trunc_exp", "softplus"] = "trunc_exp"
        density_bias: Literal["blob_magic3d", "blob_dreamfusion", "none"] = "blob_magic3d"
        """magic3d: scale * (1 - |x| / std); dreamfusion: scale * exp(-|x|^2 / (2 std^2)); added before activation."""
        density_blob_scale: float = 10.0
        density_blob_std: float = 0.5
        view_dependent: bool = False
        """Feed the view direction to a small colour head (radiance instead of albedo)."""
        n_dir_frequencies: int = 4
        normals: Literal["none", "analytic", "finite_difference"] = "analytic"
        """How normals are derived from the density gradient (needed for lambertian/textureless shading)."""
        finite_difference_eps: float = 0.01
        """Central-difference step in world units (smooths hash-grid noise in the normals)."""
        progressive_levels: Optional[Schedule] = None
        """Number of active hash-grid levels vs step (coarse-to-fine); None: all levels from the start."""
        lr_grid: Schedule = Schedule(1e-2)
        lr_mlp: Schedule = Schedule(1e-3)
        isosurface_chunk: int = 65536

    def __init__(self, cfg: "NeRF.Config"):
        super().__init__()
        self.cfg = cfg
        self.radius = float(cfg.radius)
        self.view_dependent = cfg.view_dependent
        self.grid = HashGrid(cfg.grid)
        n_geo = 15 if cfg.view_dependent else 3
        self.mlp = _mlp(self.grid.n_output_dims, cfg.mlp_width, cfg.mlp_hidden_layers, 1 + n_geo)
        if cfg.view_dependent:
            n_dir = 3 + 6 * cfg.n_dir_frequencies
            self.color_head = _mlp(n_geo + n_dir, cfg.mlp_width, 1, 3)
        self.last_threshold: Optional[float] = None

    # ---- fields -------------------------------------------------------------------------------

    @property
    def has_normals(self) -> bool:
        return self.cfg.normals != "none"

    def _density_bias(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        if c.density_bias == "blob_magic3d":
            return c.density_blob_scale * (1 - x.norm(dim=-1) / c.density_blob_std)
        if c.density_bias == "blob_dreamfusion":
            return c.density_blob_scale * torch.exp(-0.5 * x.square().sum(-1) / c.density_blob_std**2)
        return torch.zeros_like(x[..., 0])

    def _activate(self, raw: torch.Tensor) -> torch.Tensor:
        if self.cfg.density_activation == "softplus":
            return F.softplus(raw)
        return trunc_exp(raw)

    def _trunk(self, x: torch.Tensor):
        h = self.grid((x / self.radius + 1.0) * 0.5)
        out = self.mlp(h)
        density = self._activate(out[..., 0] + self._density_bias(x))
        return density, out[..., 1:]

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """Density [...] at world points x [..., 3]."""
        return self._trunk(x)[0]

    def _albedo(self, geo: torch.Tensor, dirs: Optional[torch.Tensor]) -> torch.Tensor:
        if not self.cfg.view_dependent:
            return torch.sigmoid(geo)
        if dirs is None:
            raise ValueError("this NeRF is view-dependent (view_dependent: true); pass dirs to forward()")
        freqs = 2.0 ** torch.arange(self.cfg.n_dir_frequencies, device=dirs.device, dtype=dirs.dtype) * math.pi
        a = dirs[..., None] * freqs
        enc = torch.cat([dirs, torch.sin(a).flatten(-2), torch.cos(a).flatten(-2)], -1)
        return torch.sigmoid(self.color_head(torch.cat([geo, enc], -1)))

    def forward(self, x: torch.Tensor, dirs: Optional[torch.Tensor] = None, normals: Optional[bool] = None) -> dict:
        """Fields at world points x [N,3]: {'density' [N], 'albedo' [N,3], 'normal' [N,3] (if computed)}.

        ``normals`` (default: whenever the config enables them) lets a renderer skip their cost.
        """
        want = self.has_normals if normals is None else bool(normals)
        if want and not self.has_normals:
            raise ValueError(
                "normals were requested but this NeRF has normals: none; set normals: analytic or finite_difference"
            )
        if not want:
            density, geo = self._trunk(x)
            return {"density": density, "albedo": self._albedo(geo, dirs)}
        if self.cfg.normals == "analytic":
            outer = torch.is_grad_enabled()
            with torch.enable_grad():
                xg = x if x.requires_grad else x.detach().requires_grad_(True)
                density, geo = self._trunk(xg)
                (grad,) = torch.autograd.grad(density, xg, torch.ones_like(density), create_graph=outer)
            if not outer:
                density, geo = density.detach(), geo.detach()
        else:
            eps = self.cfg.finite_difference_eps
            offs = torch.eye(3, device=x.device, dtype=x.dtype) * eps
            offs = torch.cat([offs, -offs])  # [6,3]
            xs = torch.cat([x[None], x[None] + offs[:, None]], 0)  # [7,N,3]: one batched pass
            d_all, g_all = self._trunk(xs.reshape(-1, 3))
            d_all = d_all.view(7, -1)
            density, geo = d_all[0], g_all.view(7, x.shape[0], -1)[0]
            grad = (d_all[1:4] - d_all[4:7]).t() / (2 * eps)
        normal = -F.normalize(grad, dim=-1, eps=1e-12)
        return {"density": density, "albedo": self._albedo(geo, dirs), "normal": normal}

    # ---- training hooks -----------------------------------------------------------------------

    def param_groups(self) -> list[dict]:
        mlp = [p for n, p in self.named_parameters() if not n.startswith("grid.")]
        # Instant-NGP's Adam eps=1e-15: hash-table gradients are tiny and sparse
        return [
            {"params": list(self.grid.parameters()), "lr": self.cfg.lr_grid, "name": "grid", "eps": 1e-15},
            {"params": mlp, "lr": self.cfg.lr_mlp, "name": "mlp"},
        ]

    def update_step(self, epoch: int, step: int) -> None:
        if self.cfg.progressive_levels is not None:
            self.grid.mask_levels(int(self.cfg.progressive_levels(step)))

    def after_step(self, step: int, render_out) -> None:
        """Nothing to do: the occupancy grid lives in (and is updated by) the volume renderer."""

    # ---- export -------------------------------------------------------------------------------

    @torch.no_grad()
    def density_grid(self, resolution: int) -> torch.Tensor:
        """Density on a ``resolution^3`` lattice spanning the AABB, indexed [x, y, z]."""
        dev = self.grid.params.device
        lin = torch.linspace(-self.radius, self.radius, resolution, device=dev)
        pts = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), -1).reshape(-1, 3)
        out = [self.density(c) for c in pts.split(self.cfg.isosurface_chunk)]
        return torch.cat(out).view(resolution, resolution, resolution).float().cpu()

    def auto_threshold(self, density: torch.Tensor) -> float:
        """Isosurface level whose silhouettes match the rendered ones.

        Rule: along the grid's 3 axes (orthographic rays, one per grid line) a render is opaque
        where the ray's optical depth reaches ln 2 (alpha 0.5); the level-``L`` surface covers the
        rays whose largest density exceeds ``L``. ``L`` is chosen to maximise the IoU of the two
        silhouettes over all rays. Matching where renders are opaque, rather than the density at
        the 50 % point, keeps thin or soft parts (a slab, a fuzzy edge) that renders show as
        opaque: an SDS-trained NeRF is soft, and the density at its 50 % points sits well above the
        density of its thin parts. Raises ValueError when no ray gets half opaque (empty scene) or
        the density is a featureless fog.
        """
        dens = density.double().clamp_min(0.0)
        cell = 2.0 * self.radius / (dens.shape[0] - 1)
        peak = torch.cat([dens.amax(axis).flatten() for axis in range(3)])
        opaque = torch.cat([((dens * cell).sum(axis) >= math.log(2.0)).flatten() for axis in range(3)])
        if not bool(opaque.any()):
            raise ValueError(
                f"the scene is empty: no ray through the box becomes half opaque (largest density "
                f"{float(dens.max()):.3g}). Train longer, lower the opacity/sparsity regulariser weight, "
                "check density_bias, or pass an explicit threshold."
            )
        order = torch.argsort(peak, descending=True)  # level just below peak[order[k]] covers the top k+1 rays
        ranked, hits = peak[order], opaque[order].double()
        inter = torch.cumsum(hits, 0)
        iou = inter / (torch.arange(1, len(ranked) + 1, dtype=torch.double) + hits.sum() - inter)
        k = int(iou.argmax())
        below = ranked[k + 1] if k + 1 < len(ranked) else ranked[k] * 0.5
        level = (ranked[k].clamp_min(1e-12) * below.clamp_min(1e-12)).sqrt()  # between the last ray in and the first out
        _, contrast = _otsu(torch.log10(dens.flatten().clamp_min(1e-8)))
        if contrast < 1.0:  # the two density classes differ by less than a decade: no distinct surface
            raise ValueError(
                "the scene has no distinct surface: the density is nearly uniform (a fog rather than an object). "
                "Train longer or add the opacity_sparsity regulariser, or pass an explicit threshold."
            )
        return float(level)

    @torch.no_grad()
    def isosurface(self, resolution: int = 128, threshold="auto"):
        """Marching cubes on the density: (vertices [V,3] float32 world units, faces [F,3] int, colours [V,3]).

        ``threshold="auto"`` uses ``auto_threshold`` (stored in ``self.last_threshold``).
        """
        import mcubes  # PyMCubes

        dens = self.density_grid(resolution)
        if threshold == "auto":
            thr = self.auto_threshold(dens)
            log.info("isosurface: automatic density threshold %.4g", thr)
        else:
            thr = float(threshold)
            if not bool((dens > thr).any()):
                raise ValueError(
                    f"the scene is empty at threshold {thr:.4g}: the largest density on the {resolution}^3 grid is "
                    f"{float(dens.max()):.4g}. Lower the threshold, use threshold='auto', or train longer."
                )
        self.last_threshold = thr
        # pad with empty space so every surface closes at the box boundary (watertight mesh)
        vol = np.pad(dens.numpy().astype(np.float64), 1, constant_values=0.0)
        verts, faces = mcubes.marching_cubes(vol, thr)
        if len(faces) == 0:
            raise ValueError(f"marching cubes found no surface at threshold {thr:.4g}; try a lower threshold")
        verts = ((verts - 1.0) * (2.0 * self.radius / (resolution - 1)) - self.radius).astype(np.float32)
        faces = faces.astype(np.int64)
        if _signed_volume(verts, faces) < 0:  # outward-facing winding
            faces = faces[:, ::-1].copy()
        colours = self.albedo_at(torch.from_numpy(verts)).numpy()
        return verts, faces, colours

    @torch.no_grad()
    def albedo_at(self, points: torch.Tensor) -> torch.Tensor:
        """Albedo [N,3] in [0,1] (CPU float32) at world points [N,3]: the colour field that texture baking samples.

        A view-dependent NeRF is queried as seen from outside along the ray towards the centre.
        """
        dev = self.grid.params.device
        cols = []
        for c in points.to(dev, torch.float32).split(self.cfg.isosurface_chunk):
            _, geo = self._trunk(c)
            dirs = -F.normalize(c, dim=-1) if self.cfg.view_dependent else None
            cols.append(self._albedo(geo, dirs))
        return torch.cat(cols).float().cpu() if cols else torch.zeros(0, 3)


def _otsu(values: torch.Tensor, bins: int = 256) -> tuple[float, float]:
    """Otsu threshold of a 1-D sample and the distance between the two class means."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-9:
        return hi, 0.0
    hist = torch.histc(values, bins=bins, min=lo, max=hi)
    centers = torch.linspace(lo, hi, bins + 1, dtype=values.dtype)
    centers = 0.5 * (centers[1:] + centers[:-1])
    w0 = torch.cumsum(hist, 0)
    w1 = w0[-1] - w0
    m0 = torch.cumsum(hist * centers, 0)
    mu0 = m0 / w0.clamp_min(1)
    mu1 = (m0[-1] - m0) / w1.clamp_min(1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    k = int(torch.argmax(between[:-1]))
    return float(centers[k] + 0.5 * (hi - lo) / bins), float(mu1[k] - mu0[k])


def _signed_volume(v: np.ndarray, f: np.ndarray) -> float:
    a, b, c = v[f[:, 0]].astype(np.float64), v[f[:, 1]].astype(np.float64), v[f[:, 2]].astype(np.float64)
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)
