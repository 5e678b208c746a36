"""ISM: interval score matching (LucidDreamer, Liang et al. CVPR 2024; official code
EnVision-Research/LucidDreamer ``guidance/sd_utils.py: train_step``)::

    t ~ U{min..max} (one per batch);  s = t - delta, not below the least noisy level
    x_s = DDIM-invert(z, clean -> s, <= 5 strides of 0.2 of the range, null prompt)   # deterministic, eta = 0
    x_t = one DDIM-inversion step s -> t (null prompt); its UNet call gives eps(x_s, s; null)
    g   = w(t) (eps_cfg(x_t, t; y) - eps(x_s, s; null)),   w = b_t / a_t = sqrt((1 - abar_t) / abar_t)
    loss_ism = surrogate(z, g)

SDS's random target ``eps`` is replaced by the model's own noise prediction one interval below t on
the same deterministic (DDIM) trajectory. CFG is diffusers' ``eps_u + s (eps_c - eps_u)`` (LucidDreamer's
7.5 ports as 7.5). LucidDreamer starts the inversion from the latent noised at the first grid index
with random noise, and so does ``inversion_start: noised`` (the default; ``clean`` starts from the
render itself, deterministic, which on renders without fine detail stays far below the noise level).
Its ``lambda_guidance = 0.1`` is the recipe's guidance ``weight``. Noise levels are fractions of the
range: the paper's ``delta_t 100 -> 50`` and ``xs_delta_t 200`` out of 1000 DDPM steps are 0.1 -> 0.05 and 0.2. UNet evaluations:
``(k + 1) B + 2B`` with ``k <= 5`` strides (``4B`` for the CFG term with Perp-Neg).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from ..schedule import Schedule
from .base import GuidanceInput, surrogate
from .inversion import interval_invert
from .score import ScoreGuidance, Weighting


class ISMGuidance(ScoreGuidance):
    """Fields beyond ``ScoreGuidance.Config``: ``interval`` (``[0, 0.1, 0.05, 1500]``),
    ``inversion_strides`` (5), ``inversion_stride`` (0.2); defaults changed: ``weighting`` = ``ism``,
    ``max_step_percent`` = ``[0, 0.98, 0.5, 1500]`` (LucidDreamer's warm-up), ``views_per_level`` = 0."""

    fraction_fields = ScoreGuidance.fraction_fields + ("interval", "inversion_stride")

    @dataclass
    class Config(ScoreGuidance.Config):
        weighting: Weighting = "ism"
        max_step_percent: Schedule = field(default_factory=lambda: Schedule([0, 0.98, 0.5, 1500]))
        views_per_level: int = 0
        interval: Schedule = field(default_factory=lambda: Schedule([0, 0.1, 0.05, 1500]))
        """t - s as a fraction of the noise range (LucidDreamer: delta_t_start 100 -> delta_t 50 of 1000
        over the warm-up)."""
        inversion_strides: int = 5
        """xs_inv_steps: at most this many DDIM-inversion strides from the clean latent to s."""
        inversion_stride: float = 0.2
        """xs_delta_t (200 of 1000), a fraction of the noise range."""
        inversion_start: Literal["noised", "clean"] = "noised"
        """``noised``: LucidDreamer's start, the render noised with fresh noise at the least noisy level
        (``inversion.ddim_invert``); ``clean``: from the render itself, deterministic."""

    def update_step(self, epoch: int, step: int) -> None:
        super().update_step(epoch, step)
        self.interval = float(self.cfg.interval(step))

    def forward(self, inp: GuidanceInput, prompts, step: int) -> dict:
        self._sync(step)
        z = self.model_input(inp.rgb)
        B = z.shape[0]
        t = self.sampler.sample(B)
        c = self.cfg
        with torch.no_grad():
            null = prompts.null.expand(B)
            start = torch.randn_like(z) if c.inversion_start == "noised" else None
            to_s, to_t = interval_invert(self.prior, z.detach(), t, self.interval, null, c.inversion_strides, c.inversion_stride,
                                         cameras=inp.cameras, start_noise=start)
            pred = self._predict(to_t.x, t, prompts, inp.cameras)
            g = self.weight(t, z.dim()) * (pred.eps - to_t.pred.eps)
        loss, stats = surrogate(z, g, self.grad_clip)
        n_cfg = (4 if self._use_perp_neg(prompts) else 2) * B
        return {"loss_ism": loss, **stats, **self.stats(t, unet_evals=to_s.n_evals + to_t.n_evals + n_cfg, interval=self.interval)}
