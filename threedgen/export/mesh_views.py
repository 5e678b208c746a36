"""A UV-mapped mesh rasterised over a set of cameras once, then shaded with any texture.

Used by the texture fit (the geometry is fixed while the texture is optimised, so the per-pixel
texture coordinates are computed once) and by the asset report (the reloaded GLB rendered next to
the representation). Rasterisation goes through ``MeshRenderer``'s backend: nvdiffrast for CUDA
tensors, ``renderers/raster_torch.py`` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.cameras import CameraBatch
from ..renderers.mesh import MeshRenderer, projection, vertex_normals


@dataclass
class MeshViews:
    covered: torch.Tensor  # [N,H,W] bool: a triangle covers the pixel centre
    uv: torch.Tensor  # [N,H,W,2] texture coordinate (v down) at covered pixels
    depth: torch.Tensor  # [N,H,W] distance from the camera centre, 0 where not covered
    facing: torch.Tensor  # [N,H,W] cos of the angle between the surface normal and the direction to the camera
    raster: list = None  # per chunk (backend, rast, clip positions, faces): what antialiasing needs

    def composite(self, texture: torch.Tensor, antialias: bool = True) -> torch.Tensor:
        """The textured mesh over white [N,H,W,3], silhouettes antialiased (as the representation's renders are)."""
        rgb = self.sample(texture)
        img = rgb + (~self.covered[..., None]).float()
        if not antialias or not self.raster:
            return img
        out, i = [], 0
        for be, rast, pos, tri in self.raster:
            n = rast.shape[0]
            out.append(be.antialias(img[i : i + n].to(rast.device).contiguous(), rast, pos, tri).cpu())
            i += n
        return torch.cat(out)

    def sample(self, texture: torch.Tensor) -> torch.Tensor:
        """Bilinear texture lookup [N,H,W,3] (zeros where not covered); ``texture`` [T,T,3], differentiable."""
        return lookup(texture, self.uv) * self.covered[..., None]


def lookup(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookups [...,3] of ``texture`` [T,T,3] at texture coordinates ``uv`` [...,2] (v down); differentiable."""
    grid = (uv * 2 - 1).reshape(1, -1, 1, 2)  # v down = grid y down
    out = F.grid_sample(texture.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, :, 0].T.reshape(*uv.shape[:-1], 3)


@torch.no_grad()
def rasterize_mesh(positions: np.ndarray, faces: np.ndarray, uv: np.ndarray, cameras: CameraBatch, chunk: int = 8) -> MeshViews:
    """Rasterise a mesh with per-vertex UVs over ``cameras`` (on CUDA when available; CPU tensors out)."""
    if torch.cuda.is_available():
        cameras = cameras.to("cuda")
    be = MeshRenderer(MeshRenderer.Config(backend="auto"))._backend(cameras.device)
    v = torch.from_numpy(np.ascontiguousarray(positions)).float().to(cameras.device)
    f = torch.from_numpy(np.ascontiguousarray(faces)).long().to(cameras.device)
    fi = f.int() if be.name == "cuda" else f
    attr = torch.cat([v, vertex_normals(v, f), torch.from_numpy(np.ascontiguousarray(uv)).float().to(v.device)], -1)
    parts, raster = [], []
    for i in range(0, len(cameras), chunk):
        cams = cameras[i : i + chunk]
        mvp = projection(cams.fovy, cams.width / cams.height, 0.01, 100.0) @ cams.w2c()
        pos = torch.einsum("bij,vj->bvi", mvp.float(), F.pad(v, (0, 1), value=1.0))
        rast = be.rasterize(pos, fi, (cams.height, cams.width))
        feat = be.interpolate(attr, rast, fi)
        covered = rast[..., 3] > 0
        to_cam = cams.camera_position().float()[:, None, None] - feat[..., :3]
        dist = to_cam.norm(dim=-1)
        facing = (F.normalize(feat[..., 3:6], dim=-1) * to_cam / dist[..., None].clamp_min(1e-9)).sum(-1)
        parts.append((covered.cpu(), feat[..., 6:8].cpu(), (dist * covered).cpu(), (facing * covered).cpu()))
        raster.append((be, rast, pos, fi))
    covered, uvs, depth, facing = (torch.cat(x) for x in zip(*parts))
    return MeshViews(covered, uvs, depth, facing, raster)
