"""DDIM inversion from a clean latent, and the one-step DDIM move between two noise levels.

Written with the prior's ``(a_t, b_t)`` and its ``(x0_hat, eps_hat)`` prediction only
(``Prior.ddim_step``), so epsilon-, v-prediction and flow priors go through the same code:

    x0_hat = (x_cur - b_cur eps_hat) / a_cur
    x_next = a_next x0_hat + sqrt(b_next^2 - sigma^2) eps_hat + sigma xi,   sigma = eta b_next

With ``eta = 0`` this is deterministic DDIM (Song et al. 2021, eq. 12) run towards more noise,
the inversion used by ISM (LucidDreamer ``add_noise_with_cfg``), CSM and SDI. The clean latent
sits at the prior's clean level (``a = 1, b = 0``); the network is evaluated at the least noisy level there. ``eta > 0``
adds fresh noise at each stride (SDI's eta = 0.3; the exact form of that noise in threestudio's
SDI code was not read, this variance-preserving form is [inferred]).

Levels are per sample (``[B]`` tensors handed out by ``prior.levels``), so one batched network call
serves renders at different levels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .cfg import ScaleLike
from .prior_api import Prediction


@dataclass
class Inversion:
    """Result of ``ddim_invert`` / ``ddim_move``.

    ``x`` is the state at the final level; ``pred`` the prediction evaluated at the last *source*
    level (for ``ddim_move(x_s, s, t)`` that is ``eps(x_s, s)``, ISM's target); ``levels`` the
    visited levels ``[n+1, B]``; ``n_evals`` the UNet evaluations spent (samples, CFG counted twice).
    """

    x: torch.Tensor
    pred: Optional[Prediction]
    levels: torch.Tensor
    n_evals: int
    trajectory: Optional[list] = None
    """Every visited state, ``x`` at ``levels[0]`` first (with ``keep_trajectory``)."""


def _step(prior, x, cur, nxt, eps, eta: float, generator) -> torch.Tensor:
    if eta <= 0:
        return prior.ddim_step(x, cur, nxt, eps)
    a, b = prior.alpha_sigma(cur, x.dim())
    a_n, b_n = prior.alpha_sigma(nxt, x.dim())
    x0 = (x - b * eps) / a
    sigma = eta * b_n
    xi = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return a_n * x0 + (b_n**2 - sigma**2).clamp_min(0).sqrt() * eps + sigma * xi


@torch.no_grad()
def invert_along(
    prior,
    x: torch.Tensor,
    levels: torch.Tensor,
    cond: torch.Tensor,
    uncond: Optional[torch.Tensor] = None,
    guidance_scale: ScaleLike = 1.0,
    eta: float = 0.0,
    generator: Optional[torch.Generator] = None,
    keep_trajectory: bool = False,
    cameras=None,
) -> Inversion:
    """Walk ``x`` (at ``levels[0]``) through ``levels [n+1, B]``, one UNet call per stride.

    ``cond`` (a ``Conditioning`` of B or 1 rows) alone (or with ``guidance_scale == 1``): a plain conditional
    prediction (pass the null embedding for unconditional inversion); with ``uncond`` and a scale
    != 1: CFG ``eps_u + s (eps_c - eps_u)`` (2B per stride). ``cameras`` (a ``CameraBatch`` of B) reach a
    camera-conditioned prior at every stride, as they reach the guided prediction the inversion is
    paired with; without them such a prior would invert under "camera unknown"."""
    x = x.float()
    levels = levels.to(prior.device)
    pred, n_evals = None, 0
    traj = [x] if keep_trajectory else None
    for cur, nxt in zip(levels[:-1], levels[1:]):
        # from the clean level the network is evaluated at the least noisy one
        pred, branches = prior.predict_maybe_guided(x, cur.clamp_min(0), cond, uncond, guidance_scale, cameras)
        n_evals += branches * x.shape[0]
        x = _step(prior, x, cur, nxt, pred.eps, eta, generator)
        if traj is not None:
            traj.append(x)
    return Inversion(x=x, pred=pred, levels=levels, n_evals=n_evals, trajectory=traj)


def ddim_invert(
    prior,
    z0: torch.Tensor,
    s,
    cond: torch.Tensor,
    uncond: Optional[torch.Tensor] = None,
    guidance_scale: ScaleLike = 1.0,
    max_strides: int = 5,
    stride: float = 0.2,
    eta: float = 0.0,
    generator: Optional[torch.Generator] = None,
    cameras=None,
    start_noise: Optional[torch.Tensor] = None,
) -> Inversion:
    """Invert the clean model-space latent ``z0 [B,C,h,w]`` to level ``s`` (``[B]`` or one level) in
    at most ``max_strides`` strides of ``stride`` (a fraction of the noise range; ISM: 5 x 0.2,
    ``prior.levels.ladder``), unconditionally when ``cond`` is the null conditioning and no
    ``uncond`` is given. Deterministic for ``eta = 0``.

    ``start_noise`` (LucidDreamer's start, ``add_noise_with_cfg``): ``z0`` is first noised with it at the
    least noisy level and the strides start there. From a clean latent with no detail the network reads
    as noise, it predicts eps ~ 0 and every stride only scales the image down (docs/objectives.md: on the
    toy world's renders the inverted x_t has standard deviation 0.40 at t = 500 against 0.90 for a noised
    render); from a slightly noised one it predicts that noise, of unit size, and carries it upwards."""
    s = prior.levels(s, z0.shape[0])
    levels = prior.levels.ladder(s, max_strides, stride)
    if start_noise is not None:
        levels = levels.clamp_min(0)
        z0 = prior.add_noise(z0, start_noise, levels[0])
    return invert_along(prior, z0, levels, cond, uncond, guidance_scale, eta, generator, cameras=cameras)


def ddim_move(
    prior,
    x: torch.Tensor,
    t_from,
    t_to,
    cond: torch.Tensor,
    uncond: Optional[torch.Tensor] = None,
    guidance_scale: ScaleLike = 1.0,
    eta: float = 0.0,
    generator: Optional[torch.Generator] = None,
    cameras=None,
) -> Inversion:
    """One DDIM step of ``x`` from level ``t_from`` to ``t_to`` (either direction; ``[B]`` or one level).
    ``pred`` of the result is the prediction at ``(x, t_from)``."""
    B = x.shape[0]
    levels = torch.stack([prior.levels(t_from, B), prior.levels(t_to, B)])
    return invert_along(prior, x, levels, cond, uncond, guidance_scale, eta, generator, cameras=cameras)


def interval_invert(
    prior,
    z0: torch.Tensor,
    t: torch.Tensor,
    delta: float,
    null,
    max_strides: int = 5,
    stride: float = 0.2,
    cameras=None,
    start_noise: Optional[torch.Tensor] = None,
) -> tuple[Inversion, Inversion]:
    """ISM's deterministic noising (LucidDreamer ``train_step``): unconditional DDIM inversion of
    ``z0`` to ``s``, ``delta`` (a fraction of the range) below ``t`` and not below the least noisy
    level, in at most ``max_strides`` strides, then one DDIM step ``s -> t``. Returns
    ``(to_s, to_t)``; ``to_t.x`` is ``x_t`` and ``to_t.pred`` is ``eps(x_s, s; null)``. Costs
    ``(k + 1) B`` network evaluations. ``start_noise``: see ``ddim_invert``."""
    t = prior.levels(t, z0.shape[0])
    s = prior.levels.below(t, delta)
    to_s = ddim_invert(prior, z0, s, null, max_strides=max_strides, stride=stride, cameras=cameras, start_noise=start_noise)
    to_t = ddim_move(prior, to_s.x, s, t, null, cameras=cameras)
    return to_s, to_t
