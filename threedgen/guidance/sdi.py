"""SDI: score distillation via inversion (Lukoianov et al. NeurIPS 2024, "Score Distillation via
Reparametrized DDIM"; as in threestudio ``stable_diffusion_sdi_guidance.py`` / ``configs/sdi.yaml``).

SDS's random noise is replaced by the noise that DDIM inversion of the current render implies::

    t    = linear anneal 0.98 -> 0.25 over the run (min = max schedule), + U{0..t_jitter-1}
    x_t  = DDIM-invert(z, clean -> t) over an n-step grid below t, then one stride to t;
           CFG at every stride with scale s_inv (code: -7.5 in eps_c + s(eps_c - eps_u) = -6.5 here),
           eta = 0.3 fresh noise per stride
    x0   = x0_hat(x_t, t) with CFG s (code 7.5 -> 8.5 here)
    g    = (z - x0) / N      (``reduction: mean``: N = numel(z), threestudio's 0.5 mse(mean) / B;
                              ``sum``: N = 1)
    loss_sdi = surrogate(z, g)

Equivalently ``g = (b_t / a_t)(eps_cfg - eps_inv) / N`` with ``eps_inv = (x_t - a_t z) / b_t``, i.e.
SDS with ISM's weight and the inverted noise. UNet evaluations: ``2B`` per inversion stride (at most
``inversion_steps``) plus ``2B``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from ..schedule import Schedule
from .base import GuidanceInput, surrogate
from .inversion import CLEAN, invert_along
from .score import ScoreGuidance


class SDIGuidance(ScoreGuidance):
    """Fields beyond ``ScoreGuidance.Config``: ``inversion_steps`` (10), ``inversion_guidance_scale``
    (-6.5), ``inversion_eta`` (0.3), ``t_jitter`` (100), ``reduction`` (``mean``); defaults changed:
    ``guidance_scale`` = 8.5, ``min/max_step_percent`` = ``[0, 0.98, 0.25, 10000]`` (deterministic)."""

    @dataclass
    class Config(ScoreGuidance.Config):
        guidance_scale: Schedule = field(default_factory=lambda: Schedule(8.5))
        min_step_percent: Schedule = field(default_factory=lambda: Schedule([0, 0.98, 0.25, 10000]))
        max_step_percent: Schedule = field(default_factory=lambda: Schedule([0, 0.98, 0.25, 10000]))
        inversion_steps: int = 10
        """The inversion grid: levels k T / n below t, then one stride to t."""
        inversion_guidance_scale: Schedule = field(default_factory=lambda: Schedule(-6.5))
        inversion_eta: float = 0.3
        t_jitter: int = 100
        """t is raised by U{0..t_jitter-1} (clamped to the schedule's end) after the anneal."""
        reduction: Literal["mean", "sum"] = "mean"

    def grid(self, t: torch.Tensor) -> torch.Tensor:
        """Inversion levels ``[n+2, B]``: clean, the grid points below each t, then t (repeats are no-ops)."""
        T, n = self.prior.num_train_timesteps, self.cfg.inversion_steps
        pts = torch.arange(1, n, device=t.device) * (T // n)
        below = torch.minimum(pts.view(-1, 1), t.view(1, -1))
        clean = torch.full_like(t, CLEAN).view(1, -1)
        levels = torch.cat([clean, below, t.view(1, -1)])
        keep = torch.ones(levels.shape[0], dtype=torch.bool, device=t.device)
        keep[1:] = (levels[1:] != levels[:-1]).any(dim=1)  # drop strides that are no-ops for every sample
        return levels[keep]

    def forward(self, inp: GuidanceInput, prompts, step: int) -> dict:
        self._sync(step)
        z = self.model_input(inp.rgb)
        B = z.shape[0]
        t = self.sampler.sample(B)
        if self.cfg.t_jitter > 1:
            t = (t + torch.randint(0, self.cfg.t_jitter, t.shape).to(t)).clamp_max(self.prior.num_train_timesteps - 1)
        with torch.no_grad():
            cond, uncond = prompts.select(inp.cameras, self.cfg.view_dependent)
            s_inv = float(self.cfg.inversion_guidance_scale(step))
            inv = invert_along(self.prior, z.detach(), self.grid(t), cond, uncond, s_inv, eta=self.cfg.inversion_eta)
            pred = self._predict(inv.x, t, prompts, inp.cameras)
            N = z.numel() if self.cfg.reduction == "mean" else 1
            g = (z.detach() - pred.x0) / N
        loss, stats = surrogate(z, g, self.grad_clip)
        n_cfg = (4 if self._use_perp_neg(prompts) else 2) * B
        return {"loss_sdi": loss, **stats, **self.stats(t, unet_evals=inv.n_evals + n_cfg)}
