"""Volume renderer for density fields (the hash-grid NeRF): pure torch everywhere, nerfacc on CUDA.

The representation must provide ``radius`` (AABB half-size), ``density(x) -> [N]`` and
``forward(x, dirs=None, normals=bool) -> {'density', 'albedo', 'normal'?}``, plus ``has_normals``
and ``view_dependent`` attributes.

torch path: rays are clipped to the AABB, ``num_samples_per_ray`` (stratified while training)
samples per ray, and an occupancy grid (Instant-NGP: EMA of max density per cell, refreshed every
``occ_update_every`` training renders) drops samples in empty cells before they reach the MLP:
on a CPU that is the main speed lever. Compositing is batched: ``T = exp(-cumsum(sigma*delta))``.

CUDA path (tensors on CUDA and nerfacc importable): nerfacc's ``OccGridEstimator.sampling``
marches the same occupancy grid with early termination and an alpha threshold, and
``nerfacc.rendering`` composites the packed samples. Both paths return the same RenderOutput.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from ..data.cameras import CameraBatch
from .base import Renderer, RenderOutput, render_by_time, shading_modes
from .occupancy_grid import OccupancyGrid

log = logging.getLogger(__name__)

SHADING_MODES = ("albedo", "lambertian", "textureless")


class VolumeRenderer(Renderer):
    @dataclass
    class Config:
        RANGES = {"num_samples_per_ray": (1, 4096), "eval_samples_per_ray": (0, 16384), "chunk_rays": (0, 1 << 24),
                  "occ_resolution": (1, 512), "occ_update_every": (1, None), "occ_threshold": (0, None), "occ_ema_decay": (0, 1),
                  "alpha_threshold": (0, 1), "early_termination": (0, 1), "random_shading_probs": (0, None),
                  "ambient": (0, 10), "diffuse": (0, 10)}
        num_samples_per_ray: int = 64
        """Samples per ray inside the AABB while training (torch); the CUDA path marches at step
        2*sqrt(3)*radius / this."""
        eval_samples_per_ray: int = 0
        """Samples per ray when not training (orbit videos, validation, export views, ToyBench); 0: four
        times ``num_samples_per_ray``. Training jitters its samples, so the field is right on average
        between them; evaluated at fixed bin centres with the training count, the bins show on the
        object as concentric rings (each ray's bins start where it enters the box)."""
        stratified: bool = True
        """Jitter samples within their bins while training."""
        chunk_rays: int = 16384
        """Rays per chunk when rendering without gradients (bounded memory for big test images); 0: off."""
        backend: Literal["auto", "cuda", "torch"] = "auto"
        occupancy_grid: bool = True
        occ_resolution: int = 32
        occ_update_every: int = 16
        """Refresh the grid every this many training renders (and at the first render)."""
        occ_threshold: float = 0.01
        """A cell is empty when density * step stays below min(this, mean occupancy)."""
        occ_ema_decay: float = 0.95
        alpha_threshold: float = 0.0
        """CUDA path: skip samples with alpha below this (nerfacc alpha_thre)."""
        early_termination: float = 1e-4
        """CUDA path: stop marching when transmittance falls below this (nerfacc early_stop_eps)."""
        shading: Literal["albedo", "lambertian", "textureless", "random"] = "albedo"
        random_shading_probs: tuple[float, float, float] = (0.2, 0.4, 0.4)
        """'random' (DreamFusion): per-image probabilities of albedo, lambertian, textureless while training;
        evaluation renders use albedo."""
        ambient: float = 0.35
        diffuse: float = 0.65
        """Lambertian: colour = albedo * (ambient + diffuse * max(0, n.l)); textureless uses albedo = 1."""
        return_normal: bool = False
        """Also composite normals (and the orientation statistic) when shading does not need them."""

    def __init__(self, cfg: "VolumeRenderer.Config"):
        super().__init__()
        self.cfg = cfg
        self.occ = OccupancyGrid(cfg.occ_resolution)
        self._estimator = None  # nerfacc OccGridEstimator, built lazily on CUDA (not a submodule)
        self._cuda_failed = False
        self._logged_backend = None

    # ---- public -------------------------------------------------------------------------------

    def forward(self, representation, cameras: CameraBatch, background, shading: Optional[str] = None) -> RenderOutput:
        if hasattr(representation, "at_time"):  # a moving NeRF: one grid refresh for all times, one pass per time
            if self.cfg.occupancy_grid:
                self._maybe_update_grid(representation, float(representation.radius))
            return render_by_time(lambda rep, cams: self._render(rep, cams, background, shading, update_grid=False),
                                  representation, cameras, per_view_meta=("shading_modes", "z_variance", "orientation"))
        return self._render(representation, cameras, background, shading)

    def _render(self, representation, cameras: CameraBatch, background, shading: Optional[str] = None,
                update_grid: bool = True) -> RenderOutput:
        cfg = self.cfg
        B, H, W = len(cameras), cameras.height, cameras.width
        radius = float(representation.radius)
        origins, dirs = cameras.rays()  # [B,H,W,3]
        modes = self._shading_modes(shading or cfg.shading, B, "cpu")  # decided on the host: no wait for the device
        shaded = bool((modes > 0).any())
        modes = modes.to(cameras.device)
        need_normals = shaded or cfg.return_normal
        if need_normals and not getattr(representation, "has_normals", False):
            raise ValueError(
                f"shading {shading or cfg.shading!r} / return_normal needs normals but the representation has none: "
                "set its normals to 'analytic' or 'finite_difference'"
            )
        light = cameras.light_dir
        if light is None:
            light = F.normalize(cameras.camera_position(), dim=-1)
        n_px = H * W
        ray_img = torch.arange(B, device=cameras.device).repeat_interleave(n_px)
        rays = dict(o=origins.reshape(-1, 3), d=dirs.reshape(-1, 3), light=light[ray_img], mode=modes[ray_img])

        use_cuda = self._use_cuda(cameras.device)
        if cfg.occupancy_grid and update_grid:
            self._maybe_update_grid(representation, radius)
        R = B * n_px
        chunk = cfg.chunk_rays if (cfg.chunk_rays > 0 and not torch.is_grad_enabled()) else R
        outs = []
        for s in range(0, R, chunk):
            part = {k: v[s : s + chunk] for k, v in rays.items()}
            if use_cuda:
                try:
                    outs.append(self._render_nerfacc(representation, part, radius, need_normals, shaded))
                    continue
                except Exception as e:
                    if cfg.backend == "cuda":
                        raise
                    self._cuda_failed, use_cuda = True, False
                    log.warning("volume renderer: nerfacc failed (%s); falling back to the torch path", e)
            outs.append(self._render_torch(representation, part, radius, need_normals, shaded))
        out = {k: (torch.cat([o[k] for o in outs]) if outs[0][k] is not None else None) for k in outs[0] if k != "n"}
        n_eval = sum(o["n"] for o in outs)

        bg = background(dirs)  # [B,H,W,3]
        alpha = out["alpha"].view(B, H, W, 1)
        rgb = out["rgb"].view(B, H, W, 3) + (1.0 - alpha) * bg

        def img(t, c):
            return t.view(B, H, W, c).permute(0, 3, 1, 2).contiguous()

        meta = {
            "backend": "cuda" if use_cuda else "torch",
            "num_samples": n_eval,
            "num_samples_dense": R * self.samples_per_ray(),
            "occupied_fraction": self.occ.occupied_fraction if cfg.occupancy_grid else 1.0,
            "shading_modes": modes,
            "z_variance": img(out["zvar"], 1),
        }
        if need_normals:
            meta["orientation"] = img(out["orient"], 1)
        return RenderOutput(
            rgb=img(rgb, 3),
            alpha=img(out["alpha"], 1),
            depth=img(out["depth"], 1),
            normal=img(out["normal"], 3) if need_normals and out["normal"] is not None else None,
            meta=meta,
        )

    # ---- helpers ------------------------------------------------------------------------------

    def _shading_modes(self, shading: str, B: int, device) -> torch.Tensor:
        return shading_modes(shading, SHADING_MODES, self.cfg.random_shading_probs, B, device, self.training)

    def samples_per_ray(self) -> int:
        """The training count while training, the evaluation count otherwise."""
        if self.training:
            return self.cfg.num_samples_per_ray
        return self.cfg.eval_samples_per_ray or 4 * self.cfg.num_samples_per_ray

    def _step_size(self, radius: float, samples: int | None = None) -> float:
        return 2.0 * math.sqrt(3.0) * radius / (samples or self.samples_per_ray())

    def _maybe_update_grid(self, rep, radius: float) -> None:
        occ = self.occ
        updates, calls = occ.counts()
        first = updates == 0
        if self.training:
            due = calls % max(1, self.cfg.occ_update_every) == 0
            occ.count_call()
        else:
            due = False
        if first or due:
            step = self._step_size(radius, self.cfg.num_samples_per_ray)  # the grid is a training structure
            density = getattr(rep, "occupancy_density", rep.density)  # a moving scene: where it is at any time
            occ.update(density, radius, step, self.cfg.occ_threshold, self.cfg.occ_ema_decay)

    def _use_cuda(self, device) -> bool:
        want = self.cfg.backend
        if want == "torch" or device.type != "cuda" or self._cuda_failed:
            if want == "cuda" and device.type != "cuda":
                raise ValueError("renderer backend 'cuda' needs the scene on a CUDA device")
            self._log_backend("torch")
            return False
        try:
            import nerfacc  # noqa: F401  (CUDA only; optional)
        except ImportError:
            if want == "cuda":
                raise ImportError("renderer backend 'cuda' needs nerfacc: pip install nerfacc==0.5.3") from None
            self._cuda_failed = True
            self._log_backend("torch")
            return False
        self._log_backend("cuda")
        return True

    def _log_backend(self, name: str) -> None:
        if self._logged_backend != name:
            log.info("volume renderer: %s backend", "nerfacc (CUDA)" if name == "cuda" else "pure torch")
            self._logged_backend = name

    @staticmethod
    def _shade(field: dict, light: torch.Tensor, mode: torch.Tensor, ambient: float, diffuse: float, shaded: bool) -> torch.Tensor:
        """``shaded``: some image of the batch is lit (mode > 0); otherwise the albedo as it is."""
        albedo = field["albedo"]
        if not shaded:
            return albedo
        lam = ambient + diffuse * (field["normal"] * light).sum(-1, keepdim=True).clamp_min(0.0)
        m = mode[:, None]
        return torch.where(m == 0, albedo, torch.where(m == 1, albedo * lam, lam.expand_as(albedo)))

    def _render_torch(self, rep, rays: dict, radius: float, need_normals: bool, shaded: bool) -> dict:
        o, d = rays["o"], rays["d"]
        R, S = o.shape[0], self.samples_per_ray()
        near, far = ray_aabb(o, d, radius)
        hit = far > near
        span = torch.where(hit, far - near, torch.zeros_like(far))
        if self.training and self.cfg.stratified:
            u = torch.rand(R, S, device=o.device, dtype=o.dtype)
        else:
            u = torch.full((R, S), 0.5, device=o.device, dtype=o.dtype)
        u = (torch.arange(S, device=o.device, dtype=o.dtype) + u) / S
        t = near[:, None] + span[:, None] * u  # [R,S] sample positions
        delta = (span / S)[:, None].expand(R, S)
        pts = o[:, None] + t[..., None] * d[:, None]
        keep = hit[:, None].expand(R, S)
        if self.cfg.occupancy_grid:
            keep = keep & self.occ.query(pts, radius)
        idx = keep.reshape(-1).nonzero().squeeze(1)
        ray_of = idx // S
        x = pts.reshape(-1, 3)[idx]
        field = rep(x, d[ray_of] if getattr(rep, "view_dependent", False) else None, normals=need_normals)
        col = self._shade(field, rays["light"][ray_of], rays["mode"][ray_of], self.cfg.ambient, self.cfg.diffuse, shaded)

        def dense(v, c):
            z = v.new_zeros(R * S, c) if c else v.new_zeros(R * S)
            return z.index_copy(0, idx, v).view(R, S, c) if c else z.index_copy(0, idx, v).view(R, S)

        sigma = dense(field["density"], 0)
        tau = sigma * delta
        trans = torch.exp(-(torch.cumsum(tau, 1) - tau))  # exclusive: light reaching each sample
        w = trans * (1.0 - torch.exp(-tau))  # [R,S]
        out = {
            "rgb": (w[..., None] * dense(col, 3)).sum(1),
            "alpha": w.sum(1),
            "depth": (w * t).sum(1),
            "normal": None,
            "orient": None,
            "n": int(idx.numel()),
        }
        mean_t = out["depth"] / out["alpha"].clamp_min(1e-6)
        out["zvar"] = (w * (t - mean_t[:, None]) ** 2).sum(1)
        if need_normals:
            n = dense(field["normal"], 3)
            out["normal"] = (w[..., None] * n).sum(1)
            facing = (n * d[:, None]).sum(-1).clamp_min(0.0) ** 2
            out["orient"] = (w.detach() * facing).sum(1)
        return out

    def _render_nerfacc(self, rep, rays: dict, radius: float, need_normals: bool, shaded: bool) -> dict:
        import nerfacc  # CUDA path only

        o, d = rays["o"].contiguous(), rays["d"].contiguous()
        R = o.shape[0]
        est = self._get_estimator(radius, o.device)
        if self.cfg.occupancy_grid:  # share the torch grid's state (same cell layout)
            est.binaries = self.occ.binary[None]
            est.occs = self.occ.occs.reshape(-1)
        step = self._step_size(radius)

        def sigma_fn(t0, t1, ri):
            return rep.density(o[ri] + d[ri] * ((t0 + t1) * 0.5)[:, None])

        with torch.no_grad():
            ray_i, t0, t1 = est.sampling(
                o,
                d,
                sigma_fn=sigma_fn,
                render_step_size=step,
                stratified=self.training and self.cfg.stratified,
                early_stop_eps=self.cfg.early_termination,
                alpha_thre=self.cfg.alpha_threshold,
            )
        ray_i = ray_i.long()
        stash = {}

        def rgb_sigma_fn(t0_, t1_, ri):
            x = o[ri] + d[ri] * ((t0_ + t1_) * 0.5)[:, None]
            field = rep(x, d[ri] if getattr(rep, "view_dependent", False) else None, normals=need_normals)
            stash["normal"] = field.get("normal")
            col = self._shade(field, rays["light"][ri], rays["mode"][ri], self.cfg.ambient, self.cfg.diffuse, shaded)
            return col, field["density"]

        rgb, alpha, depth, extras = nerfacc.rendering(t0, t1, ray_i, n_rays=R, rgb_sigma_fn=rgb_sigma_fn)
        w = extras["weights"]
        alpha, depth = alpha.squeeze(-1), (depth * alpha).squeeze(-1)  # nerfacc normalises depth; we do not
        tm = (t0 + t1) * 0.5
        mean_t = depth / alpha.clamp_min(1e-6)
        zvar = nerfacc.accumulate_along_rays(w, ((tm - mean_t[ray_i]) ** 2)[:, None], ray_i, R).squeeze(-1)
        out = {"rgb": rgb, "alpha": alpha, "depth": depth, "zvar": zvar, "normal": None, "orient": None}
        out["n"] = int(t0.numel())
        if need_normals:
            n = stash.get("normal")
            if n is None:  # no samples at all
                n = torch.zeros(0, 3, device=o.device)
            out["normal"] = nerfacc.accumulate_along_rays(w, n, ray_i, R)
            facing = ((n * d[ray_i]).sum(-1).clamp_min(0.0) ** 2)[:, None]
            out["orient"] = nerfacc.accumulate_along_rays(w.detach(), facing, ray_i, R).squeeze(-1)
        return out

    def _get_estimator(self, radius: float, device):
        if self._estimator is None or self._estimator[1] != radius:
            from nerfacc import OccGridEstimator

            aabb = torch.tensor([-radius] * 3 + [radius] * 3, dtype=torch.float32)
            est = OccGridEstimator(roi_aabb=aabb, resolution=self.cfg.occ_resolution, levels=1)
            self._estimator = (est, radius)  # a tuple keeps it out of state_dict
        est = self._estimator[0].to(device)
        if not self.cfg.occupancy_grid:
            est.binaries = torch.ones_like(est.binaries)
        return est


def ray_aabb(o: torch.Tensor, d: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Slab test against [-radius, radius]^3: (near, far) per ray, near >= 0; a miss has far <= near."""
    inv = 1.0 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t0 = (-radius - o) * inv
    t1 = (radius - o) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far
