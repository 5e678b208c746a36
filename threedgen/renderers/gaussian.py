"""Gaussian splatting renderer: ``gsplat.rasterization`` on CUDA, ``gaussian_torch`` everywhere else.

Both paths get the same inputs: activated Gaussians from the representation, per-camera colours
(its SH evaluated here in torch, so both paths share one colour model) optionally followed by
normal channels, world->camera ``viewmats`` in gsplat's OpenCV convention (our cameras are OpenGL,
so ``viewmat = diag(1,-1,-1,1) · c2w⁻¹``) and ``Ks`` from ``CameraBatch.intrinsics()``. Both return
gsplat's ``meta`` (``means2d`` with gradient, ``radii``, ``width``, ``height``, ``n_cameras``,
``gaussian_ids``), so ``DefaultStrategy`` densifies identically on either.

Output follows ``RenderOutput``: rgb with the background composited (``rgb + (1 - alpha)·bg(dirs)``),
alpha, depth as the alpha-weighted distance along each pixel's ray (gsplat's accumulated camera
z divided by the ray's cosine; 0 where empty, like the volume renderer) and, when asked for,
alpha-weighted normals from each Gaussian's shortest axis.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Optional

import torch

from ..data.cameras import CameraBatch
from . import gaussian_torch
from .base import Renderer, RenderOutput, render_by_time

log = logging.getLogger(__name__)

_GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def viewmats_and_Ks(cameras: CameraBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """gsplat cameras [C,4,4] (world -> OpenCV camera) and [C,3,3] from a CameraBatch."""
    w2c = torch.linalg.inv(cameras.c2w.float())
    return _GL_TO_CV.to(w2c.device) @ w2c, cameras.intrinsics().float()


class GaussianRenderer(Renderer):
    @dataclass
    class Config:
        RANGES = {"eps2d": (0, None), "near_plane": (1e-6, None), "far_plane": (1e-6, None), "radius_clip": (0, None),
                  "tile_size": (1, 64), "chunk_pairs": (1, None)}
        backend: Literal["auto", "cuda", "torch"] = "auto"
        """auto: gsplat when the Gaussians are on CUDA and gsplat works, else the torch rasterizer."""
        packed: bool = False
        """gsplat's packed mode (sparse [nnz] meta; less memory for big scenes)."""
        antialiased: bool = False
        """Mip-Splatting opacity compensation (gsplat rasterize_mode='antialiased')."""
        eps2d: float = 0.3
        near_plane: float = 0.01
        far_plane: float = 1e10
        radius_clip: float = 0.0
        tile_size: int = 2
        """torch path: tile edge in pixels (2 measured fastest on a CPU from 32 to 128 px; gsplat uses 16)."""
        chunk_pairs: int = 1 << 22
        """torch path: most (pixel, Gaussian) pairs composited at once (bounds memory)."""
        return_normal: bool = False
        shading: Literal["albedo"] = "albedo"

    def __init__(self, cfg: "GaussianRenderer.Config"):
        super().__init__()
        self.cfg = cfg
        self._cuda_failed = False
        self._logged = None

    def forward(self, representation, cameras: CameraBatch, background, shading: Optional[str] = None) -> RenderOutput:
        if shading not in (None, "albedo"):
            raise ValueError(f"the gaussian renderer renders albedo only; got shading {shading!r} (use 'albedo' or omit it)")
        if hasattr(representation, "at_time"):  # moving Gaussians: one rasterisation per distinct time
            return render_by_time(lambda rep, cams: self(rep, cams, background), representation, cameras)
        cfg = self.cfg
        g = representation.activated()
        dev = g["means"].device
        cameras = cameras.to(dev)
        H, W = cameras.height, cameras.width
        viewmats, Ks = viewmats_and_Ks(cameras)
        campos = cameras.c2w[:, :3, 3].float()
        feats = representation.colors(campos)  # [C,N,3]
        if cfg.return_normal:
            feats = torch.cat([feats, representation.normals(campos)], -1)
        extra_fn = getattr(representation, "extra_features", None)  # e.g. an edit scene's object indicator
        extra = extra_fn(campos) if extra_fn is not None else None
        if extra is not None:
            feats = torch.cat([feats, extra.to(feats)], -1)
        kw = dict(width=W, height=H, near_plane=cfg.near_plane, far_plane=cfg.far_plane, eps2d=cfg.eps2d,
                  radius_clip=cfg.radius_clip, packed=cfg.packed,
                  rasterize_mode="antialiased" if cfg.antialiased else "classic", render_mode="RGB+D")
        out = None
        if self._use_cuda(dev):
            try:
                out = self._gsplat(g, feats, viewmats, Ks, kw)
            except Exception as e:  # noqa: BLE001 - JIT build or kernel failure: fall back, say why
                if cfg.backend == "cuda":
                    raise
                self._cuda_failed = True
                log.warning("gaussian renderer: gsplat failed (%s); falling back to the torch rasterizer", e)
        if out is None:
            out = gaussian_torch.rasterization(g["means"], g["quats"], g["scales"], g["opacities"], feats, viewmats, Ks,
                                               tile_size=cfg.tile_size, chunk_pairs=cfg.chunk_pairs, **kw)
        renders, alphas, meta = out
        meta["packed"] = cfg.packed
        _, dirs = cameras.rays()  # [C,H,W,3]
        forward_axis = -cameras.c2w[:, None, None, :3, 2]
        cos = (dirs * forward_axis).sum(-1, keepdim=True).clamp_min(1e-6)  # ray length per unit camera z
        alpha = alphas
        rgb = renders[..., :3] + (1.0 - alpha) * background(dirs)
        depth = renders[..., -1:] / cos
        normal = renders[..., 3:6] if cfg.return_normal else None
        if extra is not None:
            first = 6 if cfg.return_normal else 3
            meta["extra"] = renders[..., first : first + extra.shape[-1]].permute(0, 3, 1, 2)  # [C,K,H,W], alpha-weighted

        def img(t):
            return t.permute(0, 3, 1, 2).contiguous()

        return RenderOutput(rgb=img(rgb), alpha=img(alpha), depth=img(depth),
                            normal=img(normal) if normal is not None else None, meta=meta)

    def _gsplat(self, g: dict, feats, viewmats, Ks, kw):
        import gsplat

        renders, alphas, meta = gsplat.rasterization(
            g["means"], g["quats"], g["scales"], g["opacities"], feats, viewmats, Ks, **kw
        )
        meta["backend"] = "cuda"
        if meta["means2d"].requires_grad:
            meta["means2d"].retain_grad()  # DefaultStrategy.step_pre_backward's job, done at render time
        return renders, alphas, meta

    def _use_cuda(self, device) -> bool:
        want = self.cfg.backend
        if want == "cuda" and device.type != "cuda":
            raise ValueError("gaussian renderer backend 'cuda' needs the Gaussians on a CUDA device")
        use = want != "torch" and device.type == "cuda" and not self._cuda_failed
        if use:
            try:
                import gsplat  # noqa: F401
            except ImportError:
                if want == "cuda":
                    raise ImportError("renderer backend 'cuda' needs gsplat: pip install gsplat==1.5.3") from None
                use, self._cuda_failed = False, True
        name = "gsplat (CUDA)" if use else "pure torch"
        if self._logged != name:
            log.info("gaussian renderer: %s backend", name)
            self._logged = name
        return use
