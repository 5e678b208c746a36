"""DDIM inversion from a clean latent, and the one-step DDIM move between two noise levels.

Written with the prior's ``(a_t, b_t)`` and its ``(x0_hat, eps_hat)`` prediction only
(``DiffusionPrior.ddim_step``), so epsilon- and v-prediction priors go through the same code:

    x0_hat = (x_cur - b_cur eps_hat) / a_cur
    x_next = a_next x0_hat + sqrt(b_next^2 - sigma^2) eps_hat + sigma xi,   sigma = eta b_next

With ``eta = 0`` this is deterministic DDIM (Song et al. 2021, eq. 12) run towards more noise,
the inversion used by ISM (LucidDreamer ``add_noise_with_cfg``), CSM and SDI. The clean latent
sits at level ``-1`` (``a = 1, b = 0``); the UNet is evaluated at ``max(level, 0)``. ``eta > 0``
adds fresh noise at each stride (SDI's eta = 0.3; the exact form of that noise in threestudio's
SDI code was not read, this variance-preserving form is [inferred]).

Levels are per sample (``[B]`` tensors), so one batched UNet call serves renders at different t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .prior import Prediction, ScaleLike

CLEAN = -1
"""The noise level of a clean latent (``a = 1, b = 0``)."""


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


def inversion_levels(s: torch.Tensor, max_strides: int = 5, stride: int = 200) -> torch.Tensor:
    """Levels ``[n+1, B]`` from clean (-1) up to ``s [B]`` in strides of ``stride``, at most
    ``max_strides`` of them (the stride grows to ``ceil((s+1)/max_strides)`` where needed; the last
    stride is shorter when it would overshoot). Samples that arrive early repeat ``s`` (a no-op)."""
    if max_strides < 1 or stride < 1:
        raise ValueError(f"inversion needs max_strides >= 1 and stride >= 1, got {max_strides}, {stride}")
    s = s.long().reshape(-1)
    if (s < 0).any():
        raise ValueError(f"inversion target levels must be >= 0, got {s.tolist()}")
    span = s + 1  # distance from the clean level -1
    st = torch.maximum(torch.full_like(s, stride), (span + max_strides - 1) // max_strides)
    n = int(((span + st - 1) // st).max())
    k = torch.arange(n + 1, device=s.device).view(-1, 1)
    return torch.minimum(CLEAN + k * st.view(1, -1), s.view(1, -1))


def _predict(prior, x, t, cond, uncond, guidance_scale) -> tuple[Prediction, int]:
    t = t.clamp_min(0)
    if uncond is None or (not torch.is_tensor(guidance_scale) and float(guidance_scale) == 1.0):
        return prior.predict(x, t, cond), x.shape[0]
    return prior.predict_eps(x, t, cond, uncond, guidance_scale), 2 * x.shape[0]


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
) -> Inversion:
    """Walk ``x`` (at ``levels[0]``) through ``levels [n+1, B]``, one UNet call per stride.

    ``cond`` ``[B or 1,L,D]`` alone (or with ``guidance_scale == 1``): a plain conditional
    prediction (pass the null embedding for unconditional inversion); with ``uncond`` and a scale
    != 1: CFG ``eps_u + s (eps_c - eps_u)`` (2B per stride)."""
    x = x.float()
    levels = levels.to(prior.device)
    pred, n_evals = None, 0
    traj = [x] if keep_trajectory else None
    for cur, nxt in zip(levels[:-1], levels[1:]):
        pred, n = _predict(prior, x, cur, cond, uncond, guidance_scale)
        n_evals += n
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
    stride: int = 200,
    eta: float = 0.0,
    generator: Optional[torch.Generator] = None,
) -> Inversion:
    """Invert the clean model-space latent ``z0 [B,C,h,w]`` to noise level ``s`` (int or ``[B]``) in
    at most ``max_strides`` strides of ``stride`` (ISM: 5 x 200), unconditionally when ``cond`` is
    the null embedding and no ``uncond`` is given. Deterministic for ``eta = 0``."""
    s = prior._t(s, z0.shape[0])
    return invert_along(prior, z0, inversion_levels(s, max_strides, stride), cond, uncond, guidance_scale, eta, generator)


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
) -> Inversion:
    """One DDIM step of ``x`` from level ``t_from`` to ``t_to`` (either direction; ints or ``[B]``).
    ``pred`` of the result is the prediction at ``(x, t_from)``."""
    B = x.shape[0]
    levels = torch.stack([prior._t(t_from, B), prior._t(t_to, B)])
    return invert_along(prior, x, levels, cond, uncond, guidance_scale, eta, generator)


def n_strides(s: int, max_strides: int = 5, stride: int = 200) -> int:
    """How many strides ``inversion_levels`` takes to reach level ``s`` (for cost tables)."""
    return min(max_strides, math.ceil((s + 1) / stride)) if s >= 0 else 0


def interval_invert(
    prior,
    z0: torch.Tensor,
    t: torch.Tensor,
    delta,
    null: torch.Tensor,
    max_strides: int = 5,
    stride: int = 200,
) -> tuple[Inversion, Inversion]:
    """ISM's deterministic noising (LucidDreamer ``train_step``): unconditional DDIM inversion of
    ``z0`` to ``s = max(t - delta, 0)`` in at most ``max_strides`` strides, then one DDIM step
    ``s -> t``. Returns ``(to_s, to_t)``; ``to_t.x`` is ``x_t`` and ``to_t.pred`` is
    ``eps(x_s, s; null)``. Costs ``(k + 1) B`` UNet evaluations."""
    t = prior._t(t, z0.shape[0])
    s = (t - int(round(float(delta)))).clamp_min(0)
    to_s = ddim_invert(prior, z0, s, null, max_strides=max_strides, stride=stride)
    to_t = ddim_move(prior, to_s.x, s, t, null)
    return to_s, to_t
