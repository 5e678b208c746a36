"""Classifier-free guidance algebra, written one way for every objective and prior.

``eps_u + s * (eps_c - eps_u)`` is diffusers' form. A scale taken from a paper or codebase that
wrote ``eps_c + s * (eps_c - eps_u)`` (DreamFusion, threestudio's SDS and IF guidance) ports as
``s + 1``: threestudio's ``guidance_scale: 100`` is 101 here. Pure tensor functions: they combine
any two predictions of the same kind (epsilon here; the priors convert first).
"""

from __future__ import annotations

from typing import Union

import torch

ScaleLike = Union[float, torch.Tensor]


def _per_sample(s: ScaleLike, like: torch.Tensor) -> ScaleLike:
    if torch.is_tensor(s) and s.dim() > 0:
        return s.to(like).view(-1, *([1] * (like.dim() - 1)))
    return float(s)


def cfg_combine(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, scale: ScaleLike) -> torch.Tensor:
    """``eps_u + s * (eps_c - eps_u)`` (the one CFG convention; a paper's ``eps_c + s(eps_c - eps_u)``
    scale ports as ``s + 1``). ``scale`` is a float or a per-sample tensor [B]."""
    return eps_uncond + _per_sample(scale, eps_cond) * (eps_cond - eps_uncond)


def perpendicular_component(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per sample, the part of ``x`` orthogonal to ``y``: ``x - <x,y>/<y,y> * y``."""
    dims = tuple(range(1, x.dim()))
    coef = (x * y).sum(dims, keepdim=True) / (y * y).sum(dims, keepdim=True).clamp_min(eps)
    return x - coef * y


def perp_neg_combine(
    eps_pos: torch.Tensor,
    eps_uncond: torch.Tensor,
    eps_negs: list[torch.Tensor],
    neg_weights: torch.Tensor,
    scale: ScaleLike,
) -> torch.Tensor:
    """Perp-Neg guidance (Armandpour et al. 2023, as in threestudio):
    ``eps_u + s * (e_pos + sum_i w_i * perp(eps_neg_i - eps_u, e_pos))`` with ``e_pos = eps_pos - eps_u``.

    ``neg_weights`` is [B, K] (negative numbers push away from the negative view prompt)."""
    e_pos = eps_pos - eps_uncond
    acc = torch.zeros_like(e_pos)
    for i, eps_neg in enumerate(eps_negs):
        w = neg_weights[:, i].to(e_pos).view(-1, *([1] * (e_pos.dim() - 1)))
        acc = acc + w * perpendicular_component(eps_neg - eps_uncond, e_pos)
    return eps_uncond + _per_sample(scale, e_pos) * (e_pos + acc)


def rescale_to_conditional(x0: torch.Tensor, x0_cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Lin et al. 2023's guidance rescale on clean estimates, as Consistent3D's ``recon_std_rescale``:
    per sample, ``phi * x0 * std(x0_cond) / std(x0) + (1 - phi) * x0`` (std over all but the batch
    dim), which pulls an over-saturated guided estimate back to the conditional one's contrast."""
    if phi <= 0:
        return x0
    dims = tuple(range(1, x0.dim()))
    factor = (x0_cond.std(dims, keepdim=True) + 1e-8) / (x0.std(dims, keepdim=True) + 1e-8)
    return phi * x0 * factor + (1 - phi) * x0
