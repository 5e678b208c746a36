"""Starting noise for a clip whose frames share part of it (PYoCo's mixed noise prior).

A video prior's sampler (``prior_api.Prior.sample``) draws the clip's starting noise here. A prior whose frames
are denoised on their own (a toy video prior with its motion modules at zero reads a caption per frame) keeps
one object across the frames only if the frames start alike; a prior with working temporal layers needs none.
"""

from __future__ import annotations

from typing import Optional

import torch


def clip_noise(shape, share: float = 0.0, generator: Optional[torch.Generator] = None, device=None, dtype=None) -> torch.Tensor:
    """Gaussian noise ``[B,C,F,H,W]`` whose frames share ``share`` of their (unit) variance:
    ``sqrt(share)·ε_clip + sqrt(1 − share)·ε_frame`` (PYoCo's mixed noise prior). Each frame is still
    standard normal, so any sampler takes it; at 0 the frames are independent, at 1 they start
    alike, which keeps one object across the frames of a prior whose frames are denoised on their own.
    Drawn on ``device`` (a training step's noise stays where its clip is)."""
    if not 0.0 <= float(share) <= 1.0:
        raise ValueError(f"frame_noise_share is a share of the noise's variance in [0, 1], got {share}")
    eps = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if share == 0.0:
        return eps
    common = torch.randn((*shape[:2], 1, *shape[3:]), generator=generator, device=device, dtype=dtype)
    return float(share) ** 0.5 * common + (1.0 - float(share)) ** 0.5 * eps
