"""SDI: score distillation via inversion (Lukoianov et al. NeurIPS 2024, "Score Distillation via
Reparametrized DDIM"; as in threestudio's SDI guidance and its sdi recipe).

SDS's random noise is replaced by the noise that DDIM inversion of the current render implies::

    t    = linear anneal 0.98 -> 0.25 over the run (min = max schedule), raised by up to t_jitter
           (0.1 of the range: the code's 100 of 1000)
    x_t  = DDIM-invert(z, clean -> t) over an n-step grid below t (``prior.levels.grid_below``), then one stride to t;
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
from .inversion import invert_along
from .score import ScoreGuidance


class SDIGuidance(ScoreGuidance):
    """Fields beyond ``ScoreGuidance.Config``: ``inversion_steps`` (10), ``inversion_guidance_scale``
    (-6.5), ``inversion_eta`` (0.3), ``t_jitter`` (0.1), ``reduction`` (``mean``); defaults changed:
    ``guidance_scale`` = 8.5, ``min/max_step_percent`` = ``[0, 0.98, 0.25, 10000]`` (deterministic)."""

    fraction_fields = ScoreGuidance.fraction_fields + ("t_jitter",)

    @dataclass
    class Config(ScoreGuidance.Config):
        guidance_scale: Schedule = field(default_factory=lambda: Schedule(8.5))
        min_step_percent: Schedule = field(default_factory=lambda: Schedule([0, 0.98, 0.25, 10000]))
        max_step_percent: Schedule = field(default_factory=lambda: Schedule([0, 0.98, 0.25, 10000]))
        inversion_steps: int = 10
        """The inversion grid: the points k/n of the range below t, then one stride to t."""
        inversion_guidance_scale: Schedule = field(default_factory=lambda: Schedule(-6.5))
        inversion_eta: float = 0.3
        t_jitter: float = 0.1
        """t is raised by up to this fraction of the range (clamped to the top level) after the anneal."""
        reduction: Literal["mean", "sum"] = "mean"

    def forward(self, inp: GuidanceInput, prompts, step: int) -> dict:
        self._sync(step)
        z = self.model_input(inp.rgb)
        B = z.shape[0]
        t = self.sampler.sample(B)
        t = self.prior.levels.jitter(t, self.cfg.t_jitter)
        with torch.no_grad():
            cond, uncond = prompts.select(inp.cameras, self.cfg.view_dependent)
            s_inv = float(self.cfg.inversion_guidance_scale(step))
            inv = invert_along(self.prior, z.detach(), self.prior.levels.grid_below(t, self.cfg.inversion_steps), cond, uncond, s_inv,
                               eta=self.cfg.inversion_eta, cameras=inp.cameras)
            pred = self._predict(inv.x, t, prompts, inp.cameras)
            N = z.numel() if self.cfg.reduction == "mean" else 1
            g = (z.detach() - pred.x0) / N
        loss, stats = surrogate(z, g, self.grad_clip)
        n_cfg = (4 if self._use_perp_neg(prompts) else 2) * B
        return {"loss_sdi": loss, **stats, **self.stats(t, unet_evals=inv.n_evals + n_cfg)}
