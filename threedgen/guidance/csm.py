"""CSM: classifier score matching (TV-3DG, Yang et al., arXiv 2410.21299 v2).

**[inferred]** TV-3DG has no public code and only its abstract was read: CSM "removes the
difference term in SDS and uses a deterministic noise addition process". This implements the
specification in docs/objectives.md (CSM), which is itself inferred (TV-3DG v1 was
built on LucidDreamer's ISM): CSD's classifier term evaluated at a deterministically noised x_t::

    t ~ U{min..max};  s = t - delta, not below the least noisy level (fractions of the noise range)
    x_t = DDIM-invert(z, clean -> s, <= k strides, null prompt) then one DDIM step s -> t   (ddim_inversion;
          z first noised at the least noisy level as LucidDreamer's ISM does, unless inversion_start: clean)
        | a_t z + b_t eps*,  eps* fixed for the run (a checkpointed buffer)                 (fixed)
        | a_t z + b_t eps,   eps fresh each step                                            (random)
    g = w(t) s_cfg (eps(x_t; y) - eps(x_t; null))          # w default: ISM's b_t / a_t
    loss_csm = surrogate(z, g)

The exact inversion schedule, scale, w(t) and whether the classifier term is normalised are not
known. UNet evaluations: ``(k + 1) B + 2B`` with inversion (k <= 5), ``2B``
otherwise; Perp-Neg replaces the conditional branch as in SDS (``4B``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from ..schedule import Schedule
from .base import GuidanceInput, surrogate
from .inversion import interval_invert
from .score import ScoreGuidance, Weighting


class CSMGuidance(ScoreGuidance):
    """Fields beyond ``ScoreGuidance.Config``: ``noise_mode`` (``ddim_inversion``), ``interval``
    (delta = 0.05), ``inversion_strides`` (5), ``inversion_stride`` (0.2), ``seed`` (0); defaults
    changed: ``weighting`` = ``ism``, ``max_step_percent`` = ``[0, 0.98, 0.5, 1500]``,
    ``views_per_level`` = 0 (ISM's)."""

    fraction_fields = ScoreGuidance.fraction_fields + ("interval", "inversion_stride")

    @dataclass
    class Config(ScoreGuidance.Config):
        noise_mode: Literal["ddim_inversion", "fixed", "random"] = "ddim_inversion"
        """How x_t is made from the render: deterministic DDIM inversion (ISM-style), a fixed noise
        tensor for the run, or fresh noise (which makes CSM CSD with a_c = s, a_0 = -s)."""
        weighting: Weighting = "ism"
        max_step_percent: Schedule = field(default_factory=lambda: Schedule([0, 0.98, 0.5, 1500]))
        views_per_level: int = 0
        interval: Schedule = field(default_factory=lambda: Schedule(0.05))
        """delta = t - s, the last inversion step, as a fraction of the range (ISM: 0.1 -> 0.05 over its warm-up)."""
        inversion_strides: int = 5
        """At most this many DDIM-inversion strides from the clean latent to s."""
        inversion_stride: float = 0.2
        inversion_start: Literal["noised", "clean"] = "noised"
        """As ISM's: the render noised at the least noisy level first (LucidDreamer), or ``clean``."""
        seed: int = 0
        """Seed of the fixed noise (``noise_mode: fixed``)."""

    def __init__(self, cfg: "CSMGuidance.Config", prior=None):
        super().__init__(cfg, prior)
        if cfg.noise_mode == "fixed":
            self.register_fixed_noise(cfg.seed)

    def update_step(self, epoch: int, step: int) -> None:
        super().update_step(epoch, step)
        self.interval = float(self.cfg.interval(step))

    @torch.no_grad()
    def noised(self, z: torch.Tensor, t: torch.Tensor, null: torch.Tensor, cameras=None) -> tuple[torch.Tensor, int]:
        """``x_t`` for ``noise_mode`` and the UNet evaluations it cost."""
        mode = self.cfg.noise_mode
        if mode == "ddim_inversion":
            c = self.cfg
            start = torch.randn_like(z) if c.inversion_start == "noised" else None
            to_s, to_t = interval_invert(self.prior, z, t, self.interval, null, c.inversion_strides, c.inversion_stride,
                                         cameras=cameras, start_noise=start)
            return to_t.x, to_s.n_evals + to_t.n_evals
        eps = self.noise_like(z) if mode == "fixed" else torch.randn_like(z)
        return self.prior.add_noise(z, eps, t), 0

    def forward(self, inp: GuidanceInput, prompts, step: int) -> dict:
        self._sync(step)
        z = self.model_input(inp.rgb)
        B = z.shape[0]
        t = self.sampler.sample(B)
        with torch.no_grad():
            x_t, n_inv = self.noised(z.detach(), t, prompts.null.expand(B), inp.cameras)
            pred = self._predict_vs_null(x_t, t, prompts, inp.cameras)
            # eps_cfg - eps_null = s (eps_c - eps_null) (plus the Perp-Neg term when it is on)
            g = self.weight(t, z.dim()) * (pred.eps - pred.eps_uncond)
        loss, stats = surrogate(z, g, self.grad_clip)
        n_cls = (4 if self._use_perp_neg(prompts) else 2) * B
        return {"loss_csm": loss, **stats, **self.stats(t, unet_evals=n_inv + n_cls)}

    def _predict_vs_null(self, x_t, t, prompts, cameras):
        """The classifier term's two branches: the (view-dependent or Perp-Neg) prompt vs the null prompt."""
        return self._predict(x_t, t, _with_null_as_uncond(prompts), cameras)


def _with_null_as_uncond(prompts):
    return prompts if prompts.uncond is prompts.null else replace(prompts, uncond=prompts.null)
