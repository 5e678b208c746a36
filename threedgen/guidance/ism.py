"""ISM: interval score matching (LucidDreamer, Liang et al. CVPR 2024; official code
EnVision-Research/LucidDreamer ``guidance/sd_utils.py: train_step``)::

    t ~ U{min..max} (one per batch);  s = max(t - delta, 0)
    x_s = DDIM-invert(z, clean -> s, <= 5 strides of 200, null prompt)     # deterministic, eta = 0
    x_t = one DDIM-inversion step s -> t (null prompt); its UNet call gives eps(x_s, s; null)
    g   = w(t) (eps_cfg(x_t, t; y) - eps(x_s, s; null)),   w = b_t / a_t = sqrt((1 - abar_t) / abar_t)
    loss_ism = surrogate(z, g)

SDS's random target ``eps`` is replaced by the model's own noise prediction one interval below t on
the same deterministic (DDIM) trajectory. CFG is diffusers' ``eps_u + s (eps_c - eps_u)`` (LucidDreamer's
7.5 ports as 7.5). LucidDreamer starts the inversion from the latent noised at the first grid index
with random noise; here it starts from the clean latent (level -1), which keeps it deterministic.
Its ``lambda_guidance = 0.1`` is the recipe's guidance ``weight``. UNet evaluations:
``(k + 1) B + 2B`` with ``k <= 5`` strides (``4B`` for the CFG term with Perp-Neg).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..schedule import Schedule
from .base import GuidanceInput, surrogate
from .inversion import interval_invert
from .score import ScoreGuidance, Weighting


class ISMGuidance(ScoreGuidance):
    """Fields beyond ``ScoreGuidance.Config``: ``interval`` (``[0, 100, 50, 1500]``),
    ``inversion_strides`` (5), ``inversion_stride`` (200); defaults changed: ``weighting`` = ``ism``,
    ``max_step_percent`` = ``[0, 0.98, 0.5, 1500]`` (LucidDreamer's warm-up), ``per_sample_t`` = False."""

    @dataclass
    class Config(ScoreGuidance.Config):
        weighting: Weighting = "ism"
        max_step_percent: Schedule = field(default_factory=lambda: Schedule([0, 0.98, 0.5, 1500]))
        per_sample_t: bool = False
        interval: Schedule = field(default_factory=lambda: Schedule([0, 100, 50, 1500]))
        """delta_T = t - s (LucidDreamer: delta_t_start 100 -> delta_t 50 over the warm-up)."""
        inversion_strides: int = 5
        """xs_inv_steps: at most this many DDIM-inversion strides from the clean latent to s."""
        inversion_stride: int = 200
        """xs_delta_t."""

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
            null = prompts.null.expand(B, -1, -1)
            to_s, to_t = interval_invert(self.prior, z.detach(), t, self.interval, null, c.inversion_strides, c.inversion_stride)
            pred = self._predict(to_t.x, t, prompts, inp.cameras)
            g = self.weight(t, z.dim()) * (pred.eps - to_t.pred.eps)
        loss, stats = surrogate(z, g, self.grad_clip)
        n_cfg = (4 if self._use_perp_neg(prompts) else 2) * B
        return {"loss_ism": loss, **stats, **self.stats(t, unet_evals=to_s.n_evals + to_t.n_evals + n_cfg, interval=self.interval)}
