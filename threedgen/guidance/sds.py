"""SDS: DreamFusion's score distillation sampling (Poole et al. 2022) on any prior (``prior_api.Prior``).

Per step, for renders ``x`` ``[B,3,H,W]``::

    z   = prior.encode(x)                      # with grad (VAE encoder for SD; resize + 2x-1 for pixel priors)
    t   ~ U{floor(T min%), ..., floor(T max%)}  # per sample (default) or per batch
    eps ~ N(0, I);  x_t = a_t z + b_t eps      # no grad from here
    eps_hat = eps_u + s (eps_c - eps_u)        # one batched UNet call of 2B (4B with Perp-Neg)
    g   = w(t) (eps_hat - eps)                 # w: sds = b_t^2, uniform = 1, fantasia3d = a_t b_t^2, ism = b_t/a_t
    loss_sds = surrogate(z, g)                 # d loss / d z = g / B exactly; no UNet backward

``guidance_scale`` is in diffusers' convention: threestudio's / DreamFusion's scale 100 is 101 here.
"""

from __future__ import annotations

import torch

from .base import GuidanceInput, surrogate
from .score import ScoreGuidance, sds_weight

__all__ = ["SDSGuidance", "sds_weight"]


class SDSGuidance(ScoreGuidance):
    """Fields (``ScoreGuidance.Config``): ``prior``, ``guidance_scale`` (7.5), ``min/max_step_percent``
    (0.02 / 0.98), ``per_sample_t`` (True), ``weighting`` (``sds``), ``rgb_as_latents``, ``grad_clip``
    (off), ``view_dependent`` (True), ``perp_neg`` (False; 4B UNet evaluations)."""

    Config = ScoreGuidance.Config

    def forward(self, inp: GuidanceInput, prompts, step: int) -> dict:
        self._sync(step)
        z = self.model_input(inp.rgb)
        B = z.shape[0]
        t = self.sampler.sample(B)
        with torch.no_grad():
            eps = torch.randn_like(z)
            x_t = self.prior.add_noise(z.detach(), eps, t)
            pred = self._predict(x_t, t, prompts, inp.cameras)
            g = self.weight(t, z.dim()) * (pred.eps - eps)
        loss, stats = surrogate(z, g, self.grad_clip)
        return {"loss_sds": loss, **stats, **self.stats(t)}

    @torch.no_grad()
    def evaluate(self, inp: GuidanceInput, prompts, step: int) -> dict[str, torch.Tensor]:
        """Debug images at the model resolution, [B,3,h,w] in [0,1]: what the prior sees
        (``input``), the noised input (``noisy``) and the one-step denoised estimate ``x0_hat``
        (``denoised``) at a timestep drawn as in training."""
        self._sync(step)
        z = self.model_input(inp.rgb)
        t = self.sampler.sample(z.shape[0])
        eps = torch.randn_like(z)
        x_t = self.prior.add_noise(z, eps, t)
        pred = self._predict(x_t, t, prompts, inp.cameras)
        decode = self.prior.decode
        return {"input": decode(z), "noisy": decode(x_t), "denoised": decode(pred.x0)}
