"""SDS: DreamFusion's score distillation sampling (Poole et al. 2022) on any ``DiffusionPrior``.

Per step, for renders ``x`` ``[B,3,H,W]``::

    z   = prior.encode(x)                      # with grad (VAE encoder for SD; resize + 2x-1 for pixel priors)
    t   ~ U{floor(T min%), ..., floor(T max%)}  # per sample (default) or per batch
    eps ~ N(0, I);  x_t = a_t z + b_t eps      # no grad from here
    eps_hat = eps_u + s (eps_c - eps_u)        # one batched UNet call of 2B (4B with Perp-Neg)
    g   = w(t) (eps_hat - eps)                 # w: sds = b_t^2, uniform = 1, fantasia3d = a_t b_t^2
    loss_sds = surrogate(z, g)                 # d loss / d z = g / B exactly; no UNet backward

``guidance_scale`` is in diffusers' convention: threestudio's / DreamFusion's scale 100 is 101 here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from ..schedule import Schedule
from .base import Guidance, GuidanceInput, surrogate
from .prior import PriorConfig, get_prior
from .timesteps import TimestepSampler


def sds_weight(kind: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """w(t) from ``(a_t, b_t)``: ``sds`` = 1 - abar = b^2 (DreamFusion), ``uniform`` = 1,
    ``fantasia3d`` = sqrt(abar) (1 - abar) = a b^2."""
    if kind == "sds":
        return b**2
    if kind == "uniform":
        return torch.ones_like(a)
    if kind == "fantasia3d":
        return a * b**2
    raise ValueError(f"unknown SDS weighting {kind!r}; valid: sds, uniform, fantasia3d")


class SDSGuidance(Guidance):
    @dataclass
    class Config:
        prior: PriorConfig = field(default_factory=PriorConfig)
        guidance_scale: Schedule = field(default_factory=lambda: Schedule(7.5))
        """CFG scale, diffusers convention ``eps_u + s (eps_c - eps_u)`` (a paper's 100 is 101 here)."""
        min_step_percent: Schedule = field(default_factory=lambda: Schedule(0.02))
        max_step_percent: Schedule = field(default_factory=lambda: Schedule(0.98))
        per_sample_t: bool = True
        """One t per render (threestudio SD/IF) or one t shared by the batch."""
        weighting: Literal["sds", "uniform", "fantasia3d"] = "sds"
        rgb_as_latents: bool = False
        """The render already is the model input (latent-NeRF style, ``latent_channels`` channels):
        resized to the latent resolution, no VAE."""
        grad_clip: Optional[Schedule] = None
        """Elementwise clip of the gradient on ``z`` (e.g. ``[0, 2.0, 8.0, 1000]``); None: off."""
        view_dependent: bool = True
        """Use the bundle's view-dependent prompts (front/side/back/overhead by camera)."""
        perp_neg: bool = False
        """Perp-Neg guidance (also switched on by ``prompt_processor.perp_neg``); 4B UNet evaluations."""

    def __init__(self, cfg: "SDSGuidance.Config", prior=None):
        super().__init__()
        self.cfg = cfg
        # A plain attribute: DiffusionPrior is not an nn.Module, so it stays out of state_dict(),
        # parameters() and Lightning's device/dtype moves.
        self.prior = prior if prior is not None else get_prior(cfg.prior)
        self.sampler = TimestepSampler(self.prior, cfg.min_step_percent, cfg.max_step_percent, cfg.per_sample_t)
        self._evaluated_at: Optional[int] = None
        self.guidance_scale = float(cfg.guidance_scale(0))
        self.grad_clip: Optional[float] = None
        self.update_step(0, 0)

    def update_step(self, epoch: int, step: int) -> None:
        self.sampler.update(step)
        self.guidance_scale = float(self.cfg.guidance_scale(step))
        self.grad_clip = None if self.cfg.grad_clip is None else float(self.cfg.grad_clip(step))
        self._evaluated_at = step

    # ---- the objective ----------------------------------------------------------------------

    def model_input(self, rgb: torch.Tensor) -> torch.Tensor:
        """The render in the prior's model space, differentiable (``z`` of the module docstring)."""
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
    def _predict(self, x_t: torch.Tensor, t: torch.Tensor, prompts, cameras):
        if self._use_perp_neg(prompts):
            sel = prompts.select_perp_neg(cameras)
            return self.prior.predict_eps_perp_neg(
                x_t, t, sel.pos, sel.uncond, sel.negs, sel.weights, self.guidance_scale
            )
        cond, uncond = prompts.select(cameras, self.cfg.view_dependent)
        return self.prior.predict_eps(x_t, t, cond, uncond, self.guidance_scale)

    def forward(self, inp: GuidanceInput, prompts, step: int) -> dict:
        if self._evaluated_at != step:
            self.update_step(0, step)
        z = self.model_input(inp.rgb)
        B = z.shape[0]
        t = self.sampler.sample(B)
        with torch.no_grad():
            eps = torch.randn_like(z)
            x_t = self.prior.add_noise(z.detach(), eps, t)
            pred = self._predict(x_t, t, prompts, inp.cameras)
            a, b = self.prior.alpha_sigma(t, z.dim())
            g = sds_weight(self.cfg.weighting, a, b) * (pred.eps - eps)
        loss, stats = surrogate(z, g, self.grad_clip)
        return {
            "loss_sds": loss,
            **stats,
            "t": t.float().mean(),
            "min_step": torch.tensor(float(self.sampler.min_step)),
            "max_step": torch.tensor(float(self.sampler.max_step)),
            "guidance_scale": torch.tensor(self.guidance_scale),
        }

    @torch.no_grad()
    def evaluate(self, inp: GuidanceInput, prompts, step: int) -> dict[str, torch.Tensor]:
        """Debug images at the model resolution, [B,3,h,w] in [0,1]: what the prior sees
        (``input``), the noised input (``noisy``) and the one-step denoised estimate ``x0_hat``
        (``denoised``) at a timestep drawn as in training."""
        if self._evaluated_at != step:
            self.update_step(0, step)
        z = self.model_input(inp.rgb)
        t = self.sampler.sample(z.shape[0])
        eps = torch.randn_like(z)
        x_t = self.prior.add_noise(z, eps, t)
        pred = self._predict(x_t, t, prompts, inp.cameras)
        decode = self.prior.decode
        return {"input": decode(z), "noisy": decode(x_t), "denoised": decode(pred.x0)}
