"""CSD: classifier score distillation (Yu et al. 2023, arXiv 2310.19415; official code
CVMI-Lab/Classifier-Score-Distillation, ``stable_diffusion_triple_guidance.py``).

SDS splits into a generative term ``eps(x_t; null) - eps`` and a classifier term
``s (eps(x_t; y) - eps(x_t; null))``; CSD keeps the classifier term. Written generally, with
scheduled coefficients over four predictions at the same randomly noised ``x_t = a_t z + b_t eps``::

    g = w(t) (a_c eps(x_t; y) + a_n eps(x_t; neg) + a_0 eps(x_t; null) + a_e eps)
        [+ w(t) a_pn sum_i w_i perp(eps(x_t; neg_i) - eps(x_t; null), eps(x_t; y) - eps(x_t; null))]
    g = g / ||g||          (optional, CSD's IF stage; after clipping)
    loss_csd = surrogate(z, g)

- CSD proper: ``a_c = 1, a_0 = -1`` (the defaults).
- The annealed negative variant (``csd-if.yaml``): ``a_n: [0, 0, -1, 5000]``, ``a_0: [0, -1, 0, 5000]``.
- Plain SDS is ``a_c = s, a_n = 1 - s, a_0 = 0, a_e = -1``.

UNet evaluations in one batched call: 2B (y, null), +B when ``a_n != 0`` at this step and the
negative prompt is not empty, +2B with Perp-Neg (the positive embedding is then the
azimuth-interpolated one and the two view negatives are taken against the null prediction).
``guidance_scale`` is unused (the coefficients are the scale).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..schedule import Schedule
from .base import GuidanceInput, surrogate
from .cfg import perpendicular_component
from .prior_api import Conditioning, repeat_cameras
from .score import ScoreGuidance


class CSDGuidance(ScoreGuidance):
    """Fields beyond ``ScoreGuidance.Config``: ``coef_cond`` (1), ``coef_negative`` (0),
    ``coef_null`` (-1), ``coef_noise`` (0), ``perp_neg_scale`` (1), ``grad_normalize`` (False)."""

    @dataclass
    class Config(ScoreGuidance.Config):
        coef_cond: Schedule = field(default_factory=lambda: Schedule(1.0))
        """a_c: weight of eps(x_t; prompt)."""
        coef_negative: Schedule = field(default_factory=lambda: Schedule(0.0))
        """a_n: weight of eps(x_t; negative prompt) (the prompt processor's ``negative_prompt``)."""
        coef_null: Schedule = field(default_factory=lambda: Schedule(-1.0))
        """a_0: weight of eps(x_t; empty prompt)."""
        coef_noise: Schedule = field(default_factory=lambda: Schedule(0.0))
        """a_e: weight of the injected noise eps (-1 with a_c = s, a_n = 1 - s gives SDS)."""
        perp_neg_scale: Schedule = field(default_factory=lambda: Schedule(1.0))
        """a_pn: weight of the Perp-Neg term (CSD's IF config: 3)."""
        grad_normalize: bool = False
        """Divide g by its global L2 norm (CSD's IF NeRF stage: True; SD refine stage: False)."""

    def update_step(self, epoch: int, step: int) -> None:
        super().update_step(epoch, step)
        c = self.cfg
        self.coefs = {k: float(getattr(c, f"coef_{k}")(step)) for k in ("cond", "negative", "null", "noise")}
        self.perp_neg_scale = float(c.perp_neg_scale(step))

    @torch.no_grad()
    def classifier_score(self, x_t, t, eps, prompts, cameras) -> tuple[torch.Tensor, int]:
        """``sum_k a_k eps_k`` (+ the Perp-Neg term) at ``x_t``, before w(t); and the UNet batch size."""
        B, k = x_t.shape[0], self.coefs
        perp = self._use_perp_neg(prompts)
        negs = []
        if perp:
            sel = prompts.select_perp_neg(cameras)
            cond, negs, weights = sel.pos, sel.negs, sel.weights
        else:
            cond, _ = prompts.select(cameras, self.cfg.view_dependent)
        conds = [cond, prompts.null.expand(B)]
        separate_negative = k["negative"] != 0 and prompts.uncond is not prompts.null
        if separate_negative:
            conds.append(prompts.uncond.expand(B))
        conds += negs
        n = len(conds)
        pred = self.prior.predict(torch.cat([x_t] * n), t.repeat(n), Conditioning.cat(conds), repeat_cameras(cameras, n))
        chunks = pred.eps.split(B)
        eps_c, eps_0 = chunks[0], chunks[1]
        eps_n = chunks[2] if separate_negative else eps_0
        score = k["cond"] * eps_c + k["negative"] * eps_n + k["null"] * eps_0 + k["noise"] * eps
        if perp:
            e_pos = eps_c - eps_0
            for i, eps_i in enumerate(chunks[n - len(negs):]):
                w_i = weights[:, i].to(e_pos).view(-1, 1, 1, 1)
                score = score + self.perp_neg_scale * w_i * perpendicular_component(eps_i - eps_0, e_pos)
        return score, n * B

    def forward(self, inp: GuidanceInput, prompts, step: int) -> dict:
        self._sync(step)
        z = self.model_input(inp.rgb)
        t = self.sampler.sample(z.shape[0])
        with torch.no_grad():
            eps = torch.randn_like(z)
            x_t = self.prior.add_noise(z.detach(), eps, t)
            score, n_evals = self.classifier_score(x_t, t, eps, prompts, inp.cameras)
            g = self.weight(t, z.dim()) * score
        loss, stats = surrogate(z, g, self.grad_clip, normalize=self.cfg.grad_normalize)
        return {"loss_csd": loss, **stats, **self.stats(t, unet_evals=n_evals, **{f"coef_{k}": v for k, v in self.coefs.items()})}
