"""A Gaussian scene seen as a density field, so the mesh pipeline can mesh and texture it.

Density: ρ(x) = Σ_i σ(o_i) · exp(-½ (x-μ_i)ᵀ Σ_i⁻¹ (x-μ_i)), Σ_i = R_i S_i² R_iᵀ (Kerbl et al. 2023,
eq. 4-6), splatted onto a voxel grid over each Gaussian's 3σ box. ``threshold="auto"`` meshes the
level 0.5: where a single Gaussian would make a ray through its centre half opaque.
Colour at a surface point: the DC colour (0.5 + C0·dc) of the k nearest Gaussians weighted by
their opacity-scaled Gaussian falloff at that point.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..representations.nerf import _signed_volume
from .splats import C0, check_splat_data

log = logging.getLogger("threedgen")

AUTO_LEVEL = 0.5


def quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """[N,4] (w,x,y,z), any length -> rotation matrices [N,3,3]."""
    w, x, y, z = torch.nn.functional.normalize(q, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).view(-1, 3, 3)


class SplatField:
    """Adapter giving Gaussians the ``isosurface`` / ``albedo_at`` interface of NeRF and DMTet."""

    def __init__(self, splat_data: dict, max_radius_voxels: int = 8, knn: int = 8):
        d = check_splat_data(splat_data)
        self.means = torch.from_numpy(d["means"]).double()
        scales = torch.from_numpy(d["log_scales"]).double().exp()
        R = quat_to_matrix(torch.from_numpy(d["quats"]).double())
        self.precision = R @ torch.diag_embed(scales.pow(-2)) @ R.transpose(1, 2)  # Σ⁻¹
        self.max_scale = scales.amax(1)
        self.opacity = torch.sigmoid(torch.from_numpy(d["logit_opacities"]).double())
        self.colour = (0.5 + C0 * torch.from_numpy(d["sh"][:, 0]).double()).clamp(0, 1)
        self.max_radius_voxels, self.knn = max_radius_voxels, knn
        self.last_threshold = None
        self._tree = None

    def _box(self, resolution: int):
        lo = (self.means - 3 * self.max_scale[:, None]).quantile(0.001, dim=0) if len(self.means) > 1 else self.means[0] - 1
        hi = (self.means + 3 * self.max_scale[:, None]).quantile(0.999, dim=0) if len(self.means) > 1 else self.means[0] + 1
        cell = float((hi - lo).max()) / (resolution - 5)
        centre = (lo + hi) / 2
        return centre - cell * (resolution - 1) / 2, cell  # cubic voxels, 2 empty voxels of margin

    def _eval(self, points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """σ(o_i) G_i(p) for pairs (point row, Gaussian idx): points [M,3], idx [M] or [M,k]."""
        d = points[:, None, :] - self.means[idx] if idx.dim() == 2 else points - self.means[idx]
        m = torch.einsum("...i,...ij,...j->...", d, self.precision[idx], d)
        return self.opacity[idx] * torch.exp(-0.5 * m)

    @torch.no_grad()
    def density_grid(self, resolution: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(density [R,R,R] indexed [x,y,z], grid origin [3], voxel size).

        Each Gaussian is evaluated on the voxels of its 3σ bounding box (half-size 3·sqrt(Σ_kk) per
        axis, capped at ``max_radius_voxels``); Gaussians are bucketed by box radius so every batch is
        one dense [Gaussians, offsets] evaluation in float32.
        """
        origin, cell = self._box(resolution)
        grid = torch.zeros(resolution**3, dtype=torch.float32)
        cov_diag = torch.linalg.inv(self.precision).diagonal(dim1=1, dim2=2).clamp_min(0)
        radius = (3 * cov_diag.sqrt().amax(1) / cell).ceil().clamp(1, self.max_radius_voxels).long()
        centre_idx = ((self.means - origin) / cell).round().long()
        prec, means, opacity = self.precision.float(), self.means.float(), self.opacity.float()
        for r in radius.unique().tolist():
            ids = (radius == r).nonzero().squeeze(1)
            ax = torch.arange(-r, r + 1)
            offs = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).view(-1, 3)
            for chunk in ids.split(max(1, (1 << 21) // len(offs))):
                vox = centre_idx[chunk, None, :] + offs  # [C,O,3]
                d = origin.float() + vox.float() * cell - means[chunk, None, :]
                m = torch.einsum("coi,cij,coj->co", d, prec[chunk], d)
                ok = ((vox >= 0) & (vox < resolution)).all(-1) & (m < 9.0)  # inside the grid and the 3σ ellipsoid
                val = opacity[chunk, None] * torch.exp(-0.5 * m)
                flat = (vox[..., 0] * resolution + vox[..., 1]) * resolution + vox[..., 2]
                grid.index_add_(0, flat[ok], val[ok])
        return grid.double().view(resolution, resolution, resolution), origin, cell

    @torch.no_grad()
    def isosurface(self, resolution: int = 128, threshold="auto"):
        """Marching cubes of the splat density: (vertices [V,3] float32, faces [F,3] int64, DC colours [V,3])."""
        import mcubes  # PyMCubes

        dens, origin, cell = self.density_grid(resolution)
        level = AUTO_LEVEL if threshold == "auto" else float(threshold)
        lo, hi = float(dens.min()), float(dens.max())
        if not hi > level:
            raise ValueError(
                f"no surface at threshold {level:g}: the Gaussian density on the {resolution}^3 grid ranges over "
                f"[{lo:.3g}, {hi:.3g}]; try export.threshold={hi / 2:.3g} (or train longer: the scene is too transparent)"
            )
        self.last_threshold = level
        verts, faces = mcubes.marching_cubes(dens.numpy(), level)
        verts = (origin.numpy() + verts * cell).astype(np.float32)
        faces = faces.astype(np.int64)
        if len(faces) and _signed_volume(verts, faces) < 0:
            faces = faces[:, ::-1].copy()
        return verts, faces, self.albedo_at(torch.from_numpy(verts)).numpy()

    @torch.no_grad()
    def albedo_at(self, points: torch.Tensor) -> torch.Tensor:
        """Falloff-weighted DC colour of the ``knn`` nearest Gaussians (by centre) at world points [N,3]."""
        from scipy.spatial import cKDTree

        if self._tree is None:
            self._tree = cKDTree(self.means.numpy())
        k = min(self.knn, len(self.means))
        p = torch.as_tensor(points).double().view(-1, 3)
        dist, idx = self._tree.query(p.numpy(), k=k, workers=-1)
        idx = torch.from_numpy(np.asarray(idx).reshape(len(p), k))
        dist = torch.from_numpy(np.asarray(dist).reshape(len(p), k))
        w = self._eval(p, idx) + 1e-12 / (dist + 1e-9)  # the tiny inverse-distance term only breaks ties far from every Gaussian
        return ((w[..., None] * self.colour[idx]).sum(1) / w.sum(1, keepdim=True)).float()

