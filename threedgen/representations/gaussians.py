"""3D Gaussians (Kerbl et al. 2023) for score distillation, densified by gsplat's ``DefaultStrategy``.

Parameters live in one ``nn.ParameterDict`` under gsplat's names, pre-activation, so gsplat's
strategy ops edit them in place: ``means [N,3]`` (world, +Y up), ``scales [N,3]`` (log),
``quats [N,4]`` (wxyz, unnormalised), ``opacities [N]`` (logit), ``sh0 [N,1,3]`` (DC) and, when
``sh_degree > 0``, ``shN [N,K-1,3]``. Colour follows the 3DGS convention ``rgb = max(0, 0.5 + Σ_l
c_l·Y_l(d))`` with ``d`` the unit direction from the camera to the Gaussian (``C0 = 0.28209…``),
the same as gsplat's ``rasterization(sh_degree=...)`` and the INRIA PLY layout.

Densification (DreamGaussian / GaussianDreamer use the 3DGS heuristics with a much larger
screen-space gradient threshold, because SDS gradients are large and noisy) runs in
``after_step``: the system's single optimizer is shown to the strategy as one small optimizer per
parameter name (``OptimizerGroupView``, ``densification.py``), which is all gsplat's ``_update_param_with_optimizer`` touches
(``param_groups[0]["params"]`` and ``state[param]``). gsplat 1.5.3 never fires its own periodic
opacity reset (``step % every == 0 & step > 0`` parses as a chained comparison that is always
false), so the reset is done here with ``gsplat.strategy.ops.reset_opa``; a cap on the count
removes the least opaque Gaussians.

Variable N survives checkpoints: ``_load_from_state_dict`` resizes every parameter to the saved
shape before the values are copied, and the strategy's running statistics travel as the
module's extra state. Lightning loads the model before it builds the optimizer, so the optimizer
state in a checkpoint then matches the resized parameters on ``--resume``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..schedule import Schedule
from .base import Representation
from .densification import DensifyConfig, OptimizerGroupView
from .spherical_harmonics import SH_C0, rgb_to_sh0, sh_basis

log = logging.getLogger(__name__)

PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")


class Gaussians(Representation):
    @dataclass
    class Config:
        RANGES = {"num_points": (1, 1 << 24), "init_radius": (1e-6, None), "init_scale": (1e-8, None), "init_opacity": (1e-6, 0.999999),
                  "init_color": (0, 1), "sh_degree": (0, 3), "min_scale": (0, None), "convert_resolution": (8, 512)}
        init: Literal["random_sphere", "sphere", "box"] = "random_sphere"
        """random_sphere: uniform in a ball with random colours (DreamGaussian); sphere / box: samples
        of that shape (surface or volume, ``init_surface``) in ``init_color``."""
        num_points: int = 4096
        init_radius: float = 0.5
        """Ball / sphere radius or box half-size (world units)."""
        init_surface: bool = False
        init_scale: Optional[float] = None
        """Initial isotropic std; None: the mean spacing of the initial points."""
        init_opacity: float = 0.1
        init_color: tuple[float, float, float] = (0.5, 0.5, 0.5)
        sh_degree: int = 0
        """Largest SH degree stored (0..3)."""
        sh_degree_schedule: Optional[Schedule] = None
        """Active SH degree vs step (e.g. {type: step, values: [0, 1, 2, 3], steps: [500, 1000, 1500]});
        None: sh_degree from the start."""
        min_scale: float = 0.0
        """Mip-Splatting's 3D smoothing filter (world units): each Gaussian is convolved with an isotropic
        Gaussian of this std, scales sqrt(s^2 + m^2), and its opacity multiplied by prod(s)/prod(s') so its
        mass is kept. Why: SDS at 32x32 grows sub-pixel Gaussians that the prior cannot see; rendered
        larger (orbit videos, exports) they show as speckles. Mip-Splatting uses ~0.45 of the training pixel
        footprint (distance * 2 tan(fovy/2) / height; 0.055 m for the toy cameras, so ~0.025); 0 disables it. Renders and
        ``splat_data()`` both use the filtered values, so exports look like the renders."""
        lr_means: Schedule = Schedule([0, 1e-3, 2e-5, 500])
        lr_scales: Schedule = Schedule(5e-3)
        lr_quats: Schedule = Schedule(5e-3)
        lr_opacities: Schedule = Schedule(5e-2)
        lr_sh0: Schedule = Schedule(1e-2)
        lr_shN: Schedule = Schedule(5e-4)
        densify: DensifyConfig = field(default_factory=DensifyConfig)
        convert_resolution: int = 64
        """convert_from(NeRF): density grid resolution."""
        convert_threshold: Optional[float] = None
        """convert_from(NeRF): density level of the occupied cells; None: the NeRF's auto_threshold."""

    def __init__(self, cfg: "Gaussians.Config"):
        super().__init__()
        if not 0 <= cfg.sh_degree <= 3:
            raise ValueError(f"sh_degree must be 0..3, got {cfg.sh_degree}")
        if cfg.num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {cfg.num_points}")
        if not cfg.min_scale >= 0.0:
            raise ValueError(f"min_scale must be >= 0 (world units; 0 disables the 3D filter), got {cfg.min_scale}")
        if not 0.0 < cfg.init_opacity < 1.0:
            raise ValueError(f"init_opacity must be strictly between 0 and 1 (it is stored as a logit), got {cfg.init_opacity}")
        self.cfg = cfg
        self.active_sh_degree = cfg.sh_degree if cfg.sh_degree_schedule is None else 0
        self.params = nn.ParameterDict()
        self._set_points(*self._initial_points())
        self._optimizer: Optional[torch.optim.Optimizer] = None
        self._strategy = None
        self.strategy_state: dict = {}

    # ---- initialisation -------------------------------------------------------------------------

    def _initial_points(self) -> tuple[torch.Tensor, torch.Tensor]:
        c, n, r = self.cfg, self.cfg.num_points, self.cfg.init_radius
        if c.init == "random_sphere":
            d = F.normalize(torch.randn(n, 3), dim=-1)
            return d * r * torch.rand(n, 1) ** (1 / 3), torch.rand(n, 3)
        if c.init == "sphere":
            d = F.normalize(torch.randn(n, 3), dim=-1)
            pts = d * r if c.init_surface else d * r * torch.rand(n, 1) ** (1 / 3)
        else:  # box
            pts = (torch.rand(n, 3) * 2 - 1) * r
            if c.init_surface:  # push one coordinate of each point onto a face
                axis = torch.randint(0, 3, (n,))
                pts[torch.arange(n), axis] = torch.sign(pts[torch.arange(n), axis]) * r
        return pts, torch.tensor(c.init_color, dtype=torch.float32).expand(n, 3).clone()

    def _set_points(self, xyz: torch.Tensor, rgb: torch.Tensor, scale: Optional[float] = None,
                    opacity: Optional[float] = None) -> None:
        """(Re)create every parameter from points [N,3] and colours [N,3]."""
        n = xyz.shape[0]
        c = self.cfg
        if scale is None:
            scale = c.init_scale
        if scale is None:  # mean spacing of n points spread over the initial shape
            ext = (xyz.max(0).values - xyz.min(0).values).clamp_min(1e-3)
            vol = float(ext.prod()) if not c.init_surface else float((ext[0] * ext[1] + ext[1] * ext[2] + ext[0] * ext[2]) * 2)
            dim = 3 if not c.init_surface else 2
            scale = (vol / n) ** (1 / dim) * 0.5
        K = (c.sh_degree + 1) ** 2
        o = float(c.init_opacity if opacity is None else opacity)
        new = {
            "means": xyz.float(),
            "scales": torch.full((n, 3), math.log(scale)),
            "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1),
            "opacities": torch.full((n,), math.log(o / (1 - o))),
            "sh0": rgb_to_sh0(rgb.float().clamp(0.0, 1.0))[:, None, :],
        }
        if K > 1:
            new["shN"] = torch.zeros(n, K - 1, 3)
        dev = next(iter(self.params.values())).device if len(self.params) else torch.device("cpu")
        for k, v in new.items():
            self.params[k] = nn.Parameter(v.to(dev))
        self.strategy_state = {}

    @torch.no_grad()
    def convert_from(self, src, render=None) -> None:
        """Start from another representation: a copy of Gaussians, or points where a NeRF is dense
        (``render``, the source's renderer, is not needed here).

        NeRF: the density on a ``convert_resolution``^3 grid is thresholded (the NeRF's
        ``auto_threshold`` unless ``convert_threshold`` is set); ``num_points`` points are drawn
        uniformly from the occupied cells, coloured by the NeRF's colour field, with a std of half
        a cell and ``init_opacity``. With the 3D filter on (``min_scale``), the std is at least
        ``min_scale`` and the stored opacity is raised so the filtered (rendered) opacity is
        ``init_opacity``: otherwise the mass-preserving filter thins sub-filter points (a 0.017 std
        under a 0.025 filter renders at 18 % of its opacity) and the converted scene starts faint.
        """
        if isinstance(src, Gaussians):
            self.load_state_dict(src.state_dict())
            return
        if not (hasattr(src, "density_grid") and hasattr(src, "auto_threshold")):
            raise TypeError(f"cannot initialise Gaussians from a {type(src).__name__}: it has no density_grid()")
        c = self.cfg
        R = c.convert_resolution
        dens = src.density_grid(R)
        thr = src.auto_threshold(dens) if c.convert_threshold is None else float(c.convert_threshold)
        occ = torch.nonzero(dens.flatten() > thr).squeeze(1)
        if occ.numel() == 0:
            raise ValueError(f"the NeRF has no cell denser than {thr:.4g} on a {R}^3 grid: nothing to convert")
        cell = 2.0 * src.radius / (R - 1)
        pick = occ[torch.randint(0, occ.numel(), (c.num_points,))]
        ijk = torch.stack([pick // (R * R), (pick // R) % R, pick % R], -1).float()
        xyz = ijk * cell - src.radius + (torch.rand(c.num_points, 3) - 0.5) * cell
        dev = next(src.parameters()).device
        x = xyz.to(dev)
        dirs = -F.normalize(x, dim=-1) if getattr(src, "view_dependent", False) else None
        rgb = torch.cat([src(p, d, normals=False)["albedo"] for p, d in
                         zip(x.split(65536), dirs.split(65536) if dirs is not None else [None] * len(x.split(65536)))])
        scale = max(0.5 * cell, c.min_scale)
        kept = (scale / math.sqrt(scale * scale + c.min_scale * c.min_scale)) ** 3  # the filter's opacity factor
        self._set_points(xyz, rgb.float().cpu(), scale=scale, opacity=min(c.init_opacity / kept, 0.99))
        log.info("gaussians: %d points from %d occupied NeRF cells (density > %.4g)", c.num_points, occ.numel(), thr)

    # ---- activated values -------------------------------------------------------------------------

    @property
    def num_gaussians(self) -> int:
        return self.params["means"].shape[0]

    @property
    def sh(self) -> torch.Tensor:
        """All stored SH coefficients [N,K,3], DC first."""
        if "shN" in self.params:
            return torch.cat([self.params["sh0"], self.params["shN"]], 1)
        return self.params["sh0"]

    def activated(self) -> dict:
        """What a rasterizer takes: means, unit quats, scales, opacities (post-activation, 3D-filtered)."""
        p = self.params
        scales, opacities = self._filtered(torch.exp(p["scales"]), torch.sigmoid(p["opacities"]))
        return {"means": p["means"], "quats": F.normalize(p["quats"], dim=-1), "scales": scales, "opacities": opacities}

    def _filtered(self, scales: torch.Tensor, opacities: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The 3D smoothing filter (``min_scale``): widened scales, mass-preserving opacities."""
        m = self.cfg.min_scale
        if m <= 0:
            return scales, opacities
        wide = (scales.square() + m * m).sqrt()
        return wide, opacities * (scales / wide).prod(-1)

    def colors(self, cam_positions: torch.Tensor) -> torch.Tensor:
        """RGB [C,N,3] seen from camera centres [C,3], at the active SH degree (3DGS convention)."""
        deg = self.active_sh_degree
        K = (deg + 1) ** 2
        coeffs = self.sh[:, :K]  # [N,K,3]
        if deg == 0:
            rgb = (SH_C0 * coeffs[:, 0])[None].expand(cam_positions.shape[0], -1, -1)
        else:
            dirs = F.normalize(self.params["means"][None] - cam_positions[:, None], dim=-1)
            rgb = torch.einsum("cnk,nkd->cnd", sh_basis(deg, dirs), coeffs)
        return (rgb + 0.5).clamp_min(0.0)

    def normals(self, cam_positions: torch.Tensor) -> torch.Tensor:
        """Unit normals [C,N,3]: each Gaussian's shortest axis, flipped to face the camera."""
        from ..renderers.gaussian_torch import quat_to_rotmat

        R = quat_to_rotmat(self.params["quats"])  # [N,3,3]; columns are the axes
        k = self.params["scales"].argmin(-1)
        n = torch.gather(R, 2, k[:, None, None].expand(-1, 3, 1)).squeeze(-1)  # [N,3]
        to_cam = cam_positions[:, None] - self.params["means"][None]
        sign = torch.where((n[None] * to_cam).sum(-1, keepdim=True) < 0, -1.0, 1.0)
        return n[None] * sign

    @torch.no_grad()
    def splat_data(self) -> dict:
        """Pre-activation tensors for exporters (CPU float32): means [N,3], log_scales [N,3],
        quats [N,4] (wxyz), logit_opacities [N], sh [N,K,3] with K = (sh_degree+1)^2, DC first,
        colour = 0.5 + C0*dc + ...; sh_degree is the active degree (what renders show)."""
        deg = self.active_sh_degree
        p = {k: v.detach().float().cpu() for k, v in self.params.items()}
        log_scales, logit_opacities = p["scales"].clone(), p["opacities"].clone()
        if self.cfg.min_scale > 0:  # bake the 3D filter in, so every viewer shows what the renders show
            scales, opacities = self._filtered(log_scales.exp(), torch.sigmoid(logit_opacities))
            log_scales, logit_opacities = scales.log(), torch.logit(opacities.clamp(1e-6, 1 - 1e-6))
        return {
            "means": p["means"].clone(),
            "log_scales": log_scales,
            "quats": p["quats"].clone(),
            "logit_opacities": logit_opacities,
            "sh": self.sh.detach().float().cpu()[:, : (deg + 1) ** 2].clone(),
            "sh_degree": int(deg),
        }

    # ---- training hooks -----------------------------------------------------------------------

    def param_groups(self) -> list[dict]:
        c = self.cfg
        lrs = {"means": c.lr_means, "scales": c.lr_scales, "quats": c.lr_quats, "opacities": c.lr_opacities,
               "sh0": c.lr_sh0, "shN": c.lr_shN}
        return [{"params": [p], "lr": lrs[k], "name": k, "eps": 1e-15} for k, p in self.params.items()]

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Give densification the optimizer built from ``param_groups()`` (groups found by parameter)."""
        self._optimizer = optimizer

    def update_step(self, epoch: int, step: int) -> None:
        if self.cfg.sh_degree_schedule is not None:
            self.active_sh_degree = int(min(self.cfg.sh_degree, max(0, self.cfg.sh_degree_schedule(step))))

    @property
    def strategy(self):
        if self._strategy is None:
            from gsplat.strategy import DefaultStrategy

            d = self.cfg.densify
            self._strategy = DefaultStrategy(
                prune_opa=d.prune_opa, grow_grad2d=d.grow_grad2d, grow_scale3d=d.grow_scale3d,
                grow_scale2d=d.grow_scale2d, prune_scale3d=d.prune_scale3d, prune_scale2d=d.prune_scale2d,
                refine_scale2d_stop_iter=d.refine_scale2d_stop_iter, refine_start_iter=d.refine_start_iter,
                refine_stop_iter=d.refine_stop_iter, reset_every=d.reset_every if d.reset_every > 0 else 1 << 62,
                refine_every=d.refine_every, pause_refine_after_reset=d.pause_refine_after_reset,
                revised_opacity=d.revised_opacity,
            )
        return self._strategy

    def _optimizers(self) -> dict:
        if self._optimizer is None:
            raise RuntimeError(
                "densification needs the optimizer: call Gaussians.bind_optimizer(opt) with an optimizer built "
                "from param_groups() (the generation system does this in configure_optimizers)"
            )
        return {k: OptimizerGroupView(self._optimizer, p, k) for k, p in self.params.items()}

    @torch.no_grad()
    def after_step(self, step: int, render_out) -> None:
        """Densify / prune / reset opacity from the last training render's screen-space gradients."""
        d = self.cfg.densify
        meta = getattr(render_out, "meta", None) or {}
        means2d = meta.get("means2d")
        if not d.enabled or step >= d.refine_stop_iter or means2d is None or means2d.grad is None:
            return
        if means2d.shape[-2] != self.num_gaussians and meta.get("gaussian_ids") is None:
            return  # the render predates a change of N (not the last training render)
        params, opts = self.params, self._optimizers()
        if not self.strategy_state:
            self.strategy_state = self.strategy.initialize_state(scene_scale=d.scene_scale)
        n0 = self.num_gaussians
        self.strategy.step_post_backward(params, opts, self.strategy_state, step, meta,
                                         packed=meta.get("gaussian_ids") is not None)
        if self.num_gaussians != n0:
            log.debug("gaussians: step %d: %d -> %d", step, n0, self.num_gaussians)
        if d.reset_every > 0 and step > 0 and step % d.reset_every == 0:
            self.reset_opacity()
        self.enforce_cap()

    @torch.no_grad()
    def reset_opacity(self) -> None:
        """Clamp every opacity to at most 2x prune_opa and zero its optimizer moments (3DGS Sec. 5.2)."""
        from gsplat.strategy.ops import reset_opa

        reset_opa(self.params, self._optimizers(), self.strategy_state, value=self.cfg.densify.prune_opa * 2.0)
        log.debug("gaussians: opacity reset (%d Gaussians)", self.num_gaussians)

    @torch.no_grad()
    def enforce_cap(self) -> int:
        """Remove the least opaque Gaussians beyond ``max_gaussians``; returns how many."""
        from gsplat.strategy.ops import remove

        extra = self.num_gaussians - self.cfg.densify.max_gaussians
        if extra <= 0:
            return 0
        mask = torch.zeros(self.num_gaussians, dtype=torch.bool, device=self.params["means"].device)
        mask[torch.argsort(self.params["opacities"])[:extra]] = True
        remove(self.params, self._optimizers(), self.strategy_state, mask)
        return extra

    # ---- checkpoints -----------------------------------------------------------------------------

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # N changes during training: take the checkpoint's shapes before the values are copied in
        for name in list(self.params.keys()):
            key = f"{prefix}params.{name}"
            if key in state_dict and state_dict[key].shape != self.params[name].shape:
                old = self.params[name]
                self.params[name] = nn.Parameter(torch.empty_like(state_dict[key], device=old.device, dtype=old.dtype),
                                                 requires_grad=old.requires_grad)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def get_extra_state(self) -> dict:
        return {"strategy_state": dict(self.strategy_state), "active_sh_degree": self.active_sh_degree}

    def set_extra_state(self, state: dict) -> None:
        dev = self.params["means"].device
        self.strategy_state = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in state.get("strategy_state", {}).items()}
        self.active_sh_degree = int(state.get("active_sh_degree", self.active_sh_degree))
