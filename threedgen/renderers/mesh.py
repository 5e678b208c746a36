"""Mesh renderer for DMTet: rasterize, interpolate positions and normals, shade, antialias.

The representation provides ``mesh() -> (vertices [M,3], faces [F,3])`` (differentiable) and
``albedo_at(points [N,3]) -> [N,3]``. Per camera, vertices go to clip space with an OpenGL
projection whose y axis is flipped, so rasterizer row 0 is the top image row and pixel centres
coincide with ``CameraBatch.rays()``. Then (nvdiffrast's flow, Laine et al. 2020)::

    rast      = rasterize(pos_clip, faces, (H, W))        # (u, v, z/w, triangle id + 1)
    x, n      = interpolate([world position, vertex normal], rast, faces)
    colour    = shade(albedo_at(x), n, light)             # only at covered pixels
    image     = antialias([colour over background, alpha, depth, normal], rast, pos_clip, faces)

Backends: ``cuda`` is nvdiffrast with ``RasterizeCudaContext`` (never the GL context);
``torch`` is ``raster_torch`` (same tensors, any device); ``auto`` picks nvdiffrast for CUDA
tensors when it imports and works, and logs which one ran. Depth is the distance from the camera
centre to the surface point (the volume renderer's convention), 0 off the mesh.

Shading modes: ``albedo``, ``lambertian`` (albedo x (ambient + diffuse max(0, n.l))), ``textureless``
(the same with a white albedo), ``normal`` (world normal mapped to [0,1]: Fantasia3D's geometry
stage) and ``random`` (per image, DreamFusion's mix of the first three while training). The light
is the CameraBatch's ``light_dir`` or the camera direction, as in the volume renderer.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from ..data.cameras import CameraBatch
from . import raster_torch
from .base import Renderer, RenderOutput, shading_modes

log = logging.getLogger(__name__)

SHADING_MODES = ("albedo", "lambertian", "textureless", "normal")


def projection(fovy: torch.Tensor, aspect: float, near: float, far: float) -> torch.Tensor:
    """OpenGL perspective [B,4,4] with y flipped (rasterizer row 0 = top of the image)."""
    f = 1.0 / torch.tan(0.5 * fovy)
    P = torch.zeros(fovy.shape[0], 4, 4, dtype=fovy.dtype, device=fovy.device)
    P[:, 0, 0] = f / aspect
    P[:, 1, 1] = -f
    P[:, 2, 2] = -(far + near) / (far - near)
    P[:, 2, 3] = -2.0 * far * near / (far - near)
    P[:, 3, 2] = -1.0
    return P


def vertex_normals(v: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Area-weighted vertex normals [M,3] (unit; outward for outward winding)."""
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    fn = torch.cross(b - a, c - a, dim=-1)
    n = torch.zeros_like(v).index_add(0, f.reshape(-1), fn.repeat_interleave(3, 0))
    return F.normalize(n, dim=-1, eps=1e-12)


class _TorchRaster:
    name = "torch"

    def __init__(self, max_candidates: int):
        self.max_candidates = max_candidates

    def rasterize(self, pos, tri, hw):
        return raster_torch.rasterize(pos, tri, hw, self.max_candidates)[0]

    def interpolate(self, attr, rast, tri):
        return raster_torch.interpolate(attr, rast, tri)[0]

    def antialias(self, col, rast, pos, tri):
        return raster_torch.antialias(col, rast, pos, tri)


@contextlib.contextmanager
def _built_plugins_importable():
    """nvdiffrast 0.3.3 JIT-builds its plugin with torch, then imports it by name. The GPU check on an H200
    (torch 2.11, CUDA 13) failed there with "No module named nvdiffrast_plugin_...": torch loads the built
    library from its file without putting it into ``sys.modules`` (a multi-phase-init extension is not
    registered by loading), so the import by name finds nothing. While nvdiffrast sets up, every module
    torch loads this way is registered under its name; each is loaded once (a pybind11 module loaded twice
    would register its types twice)."""
    import sys

    from torch.utils import cpp_extension

    load = cpp_extension._import_module_from_library

    def load_and_register(name, path, is_python_module):
        if is_python_module and name in sys.modules:
            return sys.modules[name]
        module = load(name, path, is_python_module)
        if is_python_module:
            sys.modules[name] = module
        return module

    cpp_extension._import_module_from_library = load_and_register
    try:
        yield
    finally:
        cpp_extension._import_module_from_library = load


class _NvdiffRaster:
    name = "cuda"

    def __init__(self, device):
        import nvdiffrast.torch as dr  # CUDA only; optional

        self.dr = dr
        with _built_plugins_importable():
            self.ctx = dr.RasterizeCudaContext(device=device)

    def rasterize(self, pos, tri, hw):
        rast, _ = self.dr.rasterize(self.ctx, pos.contiguous(), tri.int().contiguous(), resolution=list(hw))
        return rast

    def interpolate(self, attr, rast, tri):
        if attr.dim() == 2:
            attr = attr[None]  # broadcast over the minibatch
        return self.dr.interpolate(attr.contiguous(), rast, tri.int().contiguous())[0]

    def antialias(self, col, rast, pos, tri):
        return self.dr.antialias(col.contiguous(), rast, pos.contiguous(), tri.int().contiguous())


class MeshRenderer(Renderer):
    @dataclass
    class Config:
        RANGES = {"random_shading_probs": (0, None), "ambient": (0, 10), "diffuse": (0, 10), "near": (1e-6, None), "far": (1e-6, None),
                  "max_candidates": (1, None)}
        backend: Literal["auto", "cuda", "torch"] = "auto"
        shading: Literal["albedo", "lambertian", "textureless", "normal", "random"] = "albedo"
        random_shading_probs: tuple[float, float, float] = (0.2, 0.4, 0.4)
        """'random': per-image probabilities of albedo, lambertian, textureless while training."""
        ambient: float = 0.35
        diffuse: float = 0.65
        antialias: bool = True
        """Blend silhouette pixels (gives gradients to the outline of the mesh)."""
        near: float = 0.05
        far: float = 100.0
        max_candidates: int = 1 << 22
        """torch backend: (pixel, triangle) pairs tested per chunk (bounds memory)."""

    def __init__(self, cfg: "MeshRenderer.Config"):
        super().__init__()
        self.cfg = cfg
        self._cuda = None  # (device, _NvdiffRaster) built lazily; not a submodule
        self._cuda_failed = False
        self._logged = None

    def _backend(self, device: torch.device):
        want = self.cfg.backend
        if want == "cuda" and device.type != "cuda":
            raise ValueError("mesh renderer backend 'cuda' needs the scene on a CUDA device; use backend: torch or auto")
        if device.type == "cuda" and want != "torch" and not self._cuda_failed:
            try:
                if self._cuda is None or self._cuda[0] != device:
                    self._cuda = (device, _NvdiffRaster(device))
                return self._log(self._cuda[1])
            except Exception as e:  # ImportError or a failed JIT build
                if want == "cuda":
                    raise RuntimeError(f"mesh renderer backend 'cuda' needs a working nvdiffrast: {e}") from e
                self._cuda_failed = True
                log.warning("mesh renderer: nvdiffrast unavailable (%s); using the torch rasterizer", e)
        return self._log(_TorchRaster(self.cfg.max_candidates))

    def _log(self, be):
        if self._logged != be.name:
            log.info("mesh renderer: %s backend", "nvdiffrast (CUDA)" if be.name == "cuda" else "pure torch")
            self._logged = be.name
        return be

    def _shading_modes(self, shading: str, B: int, device) -> torch.Tensor:
        return shading_modes(shading, SHADING_MODES, self.cfg.random_shading_probs, B, device, self.training)

    def forward(self, representation, cameras: CameraBatch, background, shading: Optional[str] = None) -> RenderOutput:
        cfg = self.cfg
        B, H, W = len(cameras), cameras.height, cameras.width
        dev = cameras.device
        v, f = representation.mesh()
        modes = self._shading_modes(shading or cfg.shading, B, "cpu")  # decided on the host: no wait for the device
        need_albedo = bool(((modes == 0) | (modes == 1)).any())
        modes = modes.to(dev)
        _, dirs = cameras.rays()
        bg = background(dirs)  # [B,H,W,3]
        if f.shape[0] == 0:
            return self._empty(representation, bg, modes, v, f)
        be = self._backend(v.device)
        mvp = projection(cameras.fovy, W / H, cfg.near, cfg.far) @ cameras.w2c()
        pos = torch.einsum("bij,vj->bvi", mvp.to(v.dtype), F.pad(v, (0, 1), value=1.0))
        fi = f.int() if be.name == "cuda" else f
        rast = be.rasterize(pos, fi, (H, W))
        vn = vertex_normals(v, f)
        feat = be.interpolate(torch.cat([v, vn], -1), rast, fi)  # [B,H,W,6]
        mask = rast[..., 3] > 0
        pts, nrm = feat[..., :3], F.normalize(feat[..., 3:], dim=-1, eps=1e-12)
        light = cameras.light_dir
        if light is None:
            light = F.normalize(cameras.camera_position(), dim=-1)
        idx = mask.nonzero(as_tuple=True)
        col = self._shade(representation, pts[idx], nrm[idx], light[idx[0]], modes[idx[0]], need_albedo)
        fg = torch.zeros(B, H, W, 3, device=dev, dtype=col.dtype).index_put(idx, col)
        m = mask[..., None].to(fg.dtype)
        depth = (pts - cameras.camera_position()[:, None, None]).norm(dim=-1, keepdim=True) * m
        image = torch.cat([fg + (1 - m) * bg, m, depth, nrm * m], -1)  # [B,H,W,8]
        if cfg.antialias:
            image = be.antialias(image, rast, pos, fi)

        def img(t):
            return t.permute(0, 3, 1, 2).contiguous()

        meta = {"backend": be.name, "mesh": (v, f), "rast": rast, "shading_modes": modes}
        return RenderOutput(rgb=img(image[..., :3]), alpha=img(image[..., 3:4]), depth=img(image[..., 4:5]),
                            normal=img(image[..., 5:8]), meta=meta)

    def _shade(self, rep, pts, nrm, light, mode, need_albedo: bool) -> torch.Tensor:
        """``need_albedo``: some image of the batch shows the albedo (modes 0 and 1)."""
        m = mode[:, None]
        albedo = rep.albedo_at(pts) if need_albedo else torch.ones_like(pts)
        lam = self.cfg.ambient + self.cfg.diffuse * (nrm * light).sum(-1, keepdim=True).clamp_min(0.0)
        out = torch.where(m == 0, albedo, albedo * lam)
        out = torch.where(m == 2, lam.expand_as(out), out)
        return torch.where(m == 3, nrm * 0.5 + 0.5, out)

    def _empty(self, rep, bg, modes, v, f) -> RenderOutput:
        """No surface: the background alone, still attached to the trainable parameters (zero gradient)."""
        zero = sum((p.sum() * 0.0 for p in rep.parameters() if p.requires_grad), torch.zeros((), device=bg.device))
        B, H, W, _ = bg.shape
        z1 = bg.new_zeros(B, 1, H, W) + zero
        return RenderOutput(rgb=bg.permute(0, 3, 1, 2) + zero, alpha=z1, depth=z1.clone(), normal=bg.new_zeros(B, 3, H, W),
                            meta={"backend": "none", "mesh": (v, f), "shading_modes": modes})
