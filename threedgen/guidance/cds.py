"""CDS: consistency distillation sampling (Consistent3D, Wu et al. CVPR 2024; derived from the
official code sail-sg/Consistent3D ``stable_diffusion_guidance.py: compute_grad_consistency``;
docs/objectives.md).

SDS is one step of a stochastic sampler; CDS instead takes two adjacent points of the
deterministic probability-flow ODE started from ONE fixed noise, and uses the less noisy point's
noise prediction as the target of the noisier one::

    eps*  : drawn once per run from its own seeded generator; a buffer, so checkpoints keep it
    t'    = t_next(step)  (sqrt anneal 0.7 -> 0.1 of the range over the stage; truncated to a level as
            the code's int()), clamped to [min, max - end_gap]
    t     = t' + U{end_gap, ..., end_gap + perturb - 1}  (per sample; 0.1 and 0.2 of the range), clamped to [min, max]
    x_t   = a_t z + b_t eps*
    eps_t = eps_cfg(x_t, t)                                      # 2B
    x_t'  = a_t' x0_hat(x_t, eps_t) + b_t' eps_t                 # one Euler step of the PF-ODE
    eps_t'= eps_cfg(x_t', t')                                    # 2B, after the first call
    g     = w(t) (eps_t - eps_t')                                # w: uniform (coarse) or b_t^2
    loss_cds = surrogate(z, g)

The Euler step is written in the VE coordinates of the code (``x~ = x/a``, ``sigma~ = b/a``:
``x~_t' = x~_t + (sigma~_t' - sigma~_t) eps_t``); rescaled by ``a_t'`` it is exactly the DDIM step
``prior.ddim_step``, so it works unchanged for v-prediction priors. Sign (from the code, where
``target = z + w (eps_t' - eps_t)``): gradient descent moves ``z`` along ``eps_t' - eps_t``. Since
``x0_hat(x_t') - x0_hat(x_t) = sigma~_t' (eps_t - eps_t')``, that is the direction from the less
noisy point's clean estimate towards the noisier point's; for Gaussian data it pulls the render
towards the data mean (``g = s^2 (sigma~_t - sigma~_t') / (A_t A_t') (x~_t - mu)``,
``A = s^2 + sigma~^2``; tests/test_score_objectives.py checks this closed form).

``min/max_step_percent`` are the clamp range (Consistent3D's ``min/max_sigma_percent``: 0.1 / 0.98);
the timestep is not drawn uniformly from them. CFG in diffusers' form: the code's 100 is 101 here.
Consistent3D's ``recon_std_rescale`` phi (0, the shipped default, is off): the guided clean estimate
at ``t`` is rescaled towards the conditional one's std (``cfg.rescale_to_conditional``), giving
``eps_r``; the ODE step uses ``eps_r`` and the gradient becomes, as in the code,
``g = w(t) ((sigma~_t / sigma~_t') (eps_t - eps_r) + (eps_r - eps_t'))`` (``sigma~ = b / a``), which
is the plain form when phi = 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..schedule import Schedule
from .base import GuidanceInput, surrogate
from .cfg import rescale_to_conditional
from .score import ScoreGuidance, Weighting


class CDSGuidance(ScoreGuidance):
    """Fields beyond ``ScoreGuidance.Config``: ``t_next`` (sqrt 0.7 -> 0.1 over 3000 steps),
    ``end_gap`` (0.1), ``perturb`` (0.2), ``recon_std_rescale`` (0), ``seed`` (0); defaults changed: ``guidance_scale`` =
    ``[0, 101, 51, 3000]``, ``weighting`` = ``uniform``, ``min_step_percent`` = 0.1."""

    fraction_fields = ScoreGuidance.fraction_fields + ("t_next", "end_gap", "perturb")

    @dataclass
    class Config(ScoreGuidance.Config):
        guidance_scale: Schedule = field(default_factory=lambda: Schedule([0, 101.0, 51.0, 3000]))
        weighting: Weighting = "uniform"
        min_step_percent: Schedule = field(default_factory=lambda: Schedule(0.1))
        t_next: Schedule = field(
            default_factory=lambda: Schedule({"type": "sqrt", "start_value": 0.7, "end_value": 0.1, "end_step": 3000})
        )
        """t' (the less noisy level) as a fraction of the range, one per batch; Consistent3D's
        ``cur_steps`` (700 -> 100 of 1000) with ``perturb_indices: sqrt``."""
        end_gap: float = 0.1
        """Smallest t - t' (a fraction of the range; the code's 100 of 1000)."""
        perturb: float = 0.2
        """t - t' is drawn from end_gap up to end_gap + perturb (Consistent3D's ``perturb_factor`` 200 of 1000)."""
        recon_std_rescale: float = 0.0
        """phi of Consistent3D's std rescale of the guided clean estimate (0: off, the shipped default)."""
        seed: int = 0
        """Seed of the fixed noise eps* (its own generator; independent of the run's seed)."""
        fixed_noise: bool = True
        """Consistent3D's one noise for every view and step; false draws a fresh one per step (shared by
        the step's views and both points), for ablations."""

    def __init__(self, cfg: "CDSGuidance.Config", prior=None):
        if not 0.0 <= cfg.recon_std_rescale <= 1.0:
            raise ValueError(f"recon_std_rescale is a blend weight in [0, 1] (Consistent3D uses 0; MVDream 0.5), got {cfg.recon_std_rescale}")
        super().__init__(cfg, prior)
        self.register_fixed_noise(cfg.seed)

    def update_step(self, epoch: int, step: int) -> None:
        super().update_step(epoch, step)
        self.t_next = float(self.cfg.t_next(step))

    @torch.no_grad()
    def ode_pair(self, z: torch.Tensor, prompts, cameras) -> dict:
        """The two adjacent PF-ODE points and their guided predictions (for the gradient and tests)."""
        B = z.shape[0]
        t, tn = self.sampler.consistency_pair(B, self.t_next, self.cfg.end_gap, self.cfg.perturb)
        eps = self.noise_like(z) if self.cfg.fixed_noise else torch.randn_like(z[:1]).expand_as(z)
        x_t = self.prior.add_noise(z, eps, t)
        pred_t = self._predict(x_t, t, prompts, cameras)
        eps_r = self.rescaled_eps(x_t, pred_t)
        x_tn = self.prior.ddim_step(x_t, t, tn, eps_r)
        pred_tn = self._predict(x_tn, tn, prompts, cameras)
        return {"t": t, "t_next": tn, "x_t": x_t, "x_t_next": x_tn, "pred_t": pred_t, "pred_t_next": pred_tn, "eps_r": eps_r}

    def rescaled_eps(self, x_t: torch.Tensor, pred) -> torch.Tensor:
        """``eps`` of the guided clean estimate after ``recon_std_rescale`` (the prediction's own when 0)."""
        phi = self.cfg.recon_std_rescale
        if phi <= 0:
            return pred.eps
        x0_cond = (x_t - pred.b * pred.eps_cond) / pred.a
        x0 = rescale_to_conditional(pred.x0, x0_cond, phi)
        return (x_t - pred.a * x0) / pred.b

    def forward(self, inp: GuidanceInput, prompts, step: int) -> dict:
        self._sync(step)
        z = self.model_input(inp.rgb)
        p = self.ode_pair(z.detach(), prompts, inp.cameras)
        with torch.no_grad():
            eps_t, eps_r, eps_tn = p["pred_t"].eps, p["eps_r"], p["pred_t_next"].eps
            # Consistent3D's form; with recon_std_rescale off eps_r is eps_t and it is eps_t - eps_t'
            ratio = (p["pred_t"].b / p["pred_t"].a) / (p["pred_t_next"].b / p["pred_t_next"].a + 1e-9)
            g = self.weight(p["t"], z.dim()) * (ratio * (eps_t - eps_r) + (eps_r - eps_tn))
        loss, stats = surrogate(z, g, self.grad_clip)
        n = (4 if self._use_perp_neg(prompts) else 2) * z.shape[0] * 2
        return {"loss_cds": loss, **stats, **self.stats(p["t"], t_next=p["t_next"], unet_evals=n)}
