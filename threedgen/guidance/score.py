"""What every score-distillation objective shares: config fields, the model-space input, the CFG /
Perp-Neg prediction, the weighting w(t), a fixed-noise buffer and the logged statistics.

SDS, CSD, CSM, CDS, ISM and SDI subclass ``ScoreGuidance``; each adds only its own gradient.
All of them go through the one prior interface (``prior_api.Prior``, DDPM or flow), the one
``TimestepSampler`` and ``surrogate``, and never ask what kind of prior they hold.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from ..schedule import Schedule, as_schedule
from .base import Guidance
from .model_folder import PriorConfig
from .prior_api import Prediction
from .priors import get_prior
from .timesteps import TimestepSampler

Weighting = Literal["sds", "uniform", "fantasia3d", "ism"]


def sds_weight(kind: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """w(t) from ``(a_t, b_t)``: ``sds`` = 1 - abar = b^2 (DreamFusion), ``uniform`` = 1,
    ``fantasia3d`` = sqrt(abar) (1 - abar) = a b^2, ``ism`` = sqrt((1 - abar) / abar) = b / a
    (LucidDreamer; also the weight that turns SDS into an x0-target loss)."""
    if kind == "sds":
        return b**2
    if kind == "uniform":
        return torch.ones_like(a)
    if kind == "fantasia3d":
        return a * b**2
    if kind == "ism":
        return b / a
    raise ValueError(f"unknown weighting {kind!r}; valid: sds, uniform, fantasia3d, ism")


def check_fractions(cfg, names) -> None:
    """Every value of each named field (a number or a ``Schedule``) must lie in [0, 1]; the error says
    how a paper's integer DDPM step maps (t of 1000 is t / 1000)."""
    for name in names:
        value = getattr(cfg, name)
        if value is None:
            continue
        bad = [v for v in as_schedule(value).knot_values if not 0.0 <= v <= 1.0]
        if bad:
            raise ValueError(
                f"{name} is a fraction of the noise range in [0, 1], got {bad[0]:g}; noise levels are given as "
                f"fractions so they mean the same on every prior (a paper's DDPM step t of 1000 is t / 1000, "
                f"e.g. {bad[0]:g} -> {bad[0] / 1000:g})"
            )


class ScoreGuidance(Guidance):
    """Base of the score-distillation objectives (not registered itself)."""

    @dataclass
    class Config:
        RANGES = {"guidance_scale": (0, None), "min_step_percent": (0, 1), "max_step_percent": (0, 1), "views_per_level": (0, 4096),
                  "grad_clip": (0, None)}
        prior: PriorConfig = field(default_factory=PriorConfig)
        guidance_scale: Schedule = field(default_factory=lambda: Schedule(7.5))
        """CFG scale, diffusers convention ``eps_u + s (eps_c - eps_u)`` (a paper's 100 is 101 here)."""
        min_step_percent: Schedule = field(default_factory=lambda: Schedule(0.02))
        max_step_percent: Schedule = field(default_factory=lambda: Schedule(0.98))
        views_per_level: int = 1
        """Renders that share one noise level: 1 one per render (threestudio SD/IF), 0 one for the
        whole batch, k one per group of k consecutive views (multi-view priors)."""
        per_sample_t: Optional[bool] = None
        """Deprecated spelling of ``views_per_level`` (true: 1, false: 0), read from older run folders."""
        weighting: Weighting = "sds"
        rgb_as_latents: bool = False
        """The render already is the model input (latent-NeRF style, ``latent_channels`` channels):
        resized to the latent resolution, no VAE."""
        grad_clip: Optional[Schedule] = None
        """Elementwise clip of the gradient on ``z`` (e.g. ``[0, 2.0, 8.0, 1000]``); None: off."""
        view_dependent: bool = True
        """Use the bundle's view-dependent prompts (front/side/back/overhead by camera)."""
        perp_neg: bool = False
        """Perp-Neg guidance (also switched on by ``prompt_processor.perp_neg``)."""

        def __post_init__(self):
            if min(as_schedule(self.guidance_scale).knot_values) < 0:
                raise ValueError(f"guidance_scale must be >= 0 (1: no guidance, 7.5 typical; diffusers' convention), "
                                 f"got {as_schedule(self.guidance_scale).raw}")

    fraction_fields: tuple[str, ...] = ("min_step_percent", "max_step_percent")
    """Config fields that are fractions of the noise range (checked to lie in [0, 1])."""

    def __init__(self, cfg, prior=None):
        super().__init__()
        check_fractions(cfg, self.fraction_fields)
        if cfg.per_sample_t is not None:
            warnings.warn("per_sample_t is deprecated: use views_per_level (1 for true, 0 for false)", DeprecationWarning, stacklevel=2)
            cfg.views_per_level, cfg.per_sample_t = (1 if cfg.per_sample_t else 0), None
        self.cfg = cfg
        # A plain attribute: a Prior is not an nn.Module, so it stays out of state_dict(),
        # parameters() and Lightning's device/dtype moves.
        self.prior = prior if prior is not None else get_prior(cfg.prior)
        self.sampler = TimestepSampler(self.prior, cfg.min_step_percent, cfg.max_step_percent, cfg.views_per_level)
        self._evaluated_at: Optional[int] = None
        self.guidance_scale = float(cfg.guidance_scale(0))
        self.grad_clip: Optional[float] = None
        self.update_step(0, 0)

    def update_step(self, epoch: int, step: int) -> None:
        self.sampler.update(step)
        self.guidance_scale = float(self.cfg.guidance_scale(step))
        self.grad_clip = None if self.cfg.grad_clip is None else float(self.cfg.grad_clip(step))
        self._evaluated_at = step

    def _sync(self, step: int) -> None:
        if self._evaluated_at != step:
            self.update_step(0, step)

    # ---- shared pieces ----------------------------------------------------------------------

    def model_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of the model-space input ``z`` this guidance produces."""
        p = self.prior
        if self.cfg.rgb_as_latents:
            return p.latent_channels, p.latent_resolution, p.latent_resolution
        h = int(self.cfg.prior.resolution or p.resolution) // p.vae_scale_factor
        return p.latent_channels, h, h

    def model_input(self, rgb: torch.Tensor) -> torch.Tensor:
        """The render in the prior's model space, differentiable (``z``)."""
        prior = self.prior
        if self.cfg.rgb_as_latents:
            if rgb.shape[1] != prior.latent_channels:
                raise ValueError(
                    f"rgb_as_latents needs renders with {prior.latent_channels} channels (the prior's "
                    f"latent channels), got {rgb.shape[1]}"
                )
            R = prior.latent_resolution
            return F.interpolate(rgb, (R, R), mode="bilinear", align_corners=False).float()
        return prior.encode(rgb, mode=self.cfg.prior.encode_mode, resolution=self.cfg.prior.resolution)

    def _use_perp_neg(self, prompts) -> bool:
        return bool(self.cfg.perp_neg or getattr(prompts, "perp_neg", False))

    @torch.no_grad()
    def _predict(self, x_t: torch.Tensor, t: torch.Tensor, prompts, cameras) -> Prediction:
        """The guided prediction at ``x_t``: CFG (2B) or Perp-Neg (4B), one batched network call;
        the batch's cameras go to the prior."""
        if self._use_perp_neg(prompts):
            sel = prompts.select_perp_neg(cameras)
            return self.prior.predict_perp_neg(
                x_t, t, sel.pos, sel.uncond, sel.negs, sel.weights, self.guidance_scale, cameras=cameras
            )
        cond, uncond = prompts.select(cameras, self.cfg.view_dependent)
        return self.prior.predict_guided(x_t, t, cond, uncond, self.guidance_scale, cameras=cameras)

    def weight(self, t: torch.Tensor, ndim: int = 4) -> torch.Tensor:
        """``w(t)`` of ``cfg.weighting``, shaped ``[B,1,...]``."""
        a, b = self.prior.alpha_sigma(t, ndim)
        return sds_weight(self.cfg.weighting, a, b)

    def register_fixed_noise(self, seed: int) -> None:
        """A noise tensor ``[1,C,h,w]`` drawn once from its own ``torch.Generator(seed)`` and kept as
        the buffer ``fixed_noise``: it is saved in checkpoints, so a resumed run uses the same noise
        (threestudio re-draws it at start-up). Shared by every view of every step."""
        gen = torch.Generator().manual_seed(int(seed))
        self.register_buffer("fixed_noise", torch.randn((1, *self.model_shape()), generator=gen))

    def noise_like(self, z: torch.Tensor) -> torch.Tensor:
        """The fixed noise broadcast to ``z``; a clear error if the model-space size changed."""
        eps = self.fixed_noise
        if eps.shape[1:] != z.shape[1:]:
            raise ValueError(
                f"fixed noise has shape {tuple(eps.shape[1:])} but the model input is {tuple(z.shape[1:])}; "
                "the fixed noise is tied to the latent size (prior.resolution), which must not change during a run"
            )
        return eps.to(z).expand_as(z)

    def stats(self, t: torch.Tensor, **extra) -> dict:
        out = {
            "t": t.float().mean(),
            "min_step": torch.tensor(float(self.sampler.min_step)),
            "max_step": torch.tensor(float(self.sampler.max_step)),
            "guidance_scale": torch.tensor(self.guidance_scale),
        }
        out.update({k: torch.as_tensor(v, dtype=torch.float32).float().mean().detach() for k, v in extra.items()})
        return out
