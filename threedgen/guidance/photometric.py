"""Photometric guidance: match renders to the toy world's analytic ground truth for the same cameras.

Not score distillation: a reconstruction objective with known answers. It checks the renderer,
representation and optimiser independently of any prior, and gives ToyBench an upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Guidance, GuidanceInput


class PhotometricGuidance(Guidance):
    @dataclass
    class Config:
        RANGES = {"mask_weight": (0, None)}
        target: str = "a red sphere"
        """A toy-world prompt naming the object to reconstruct."""
        mask_weight: float = 1.0
        """Weight of the silhouette term (render alpha vs ground-truth mask)."""

    def __init__(self, cfg: "PhotometricGuidance.Config"):
        super().__init__()
        from ..toy.world import parse_prompt

        self.cfg = cfg
        self.scene = parse_prompt(cfg.target)

    def forward(self, inp: GuidanceInput, prompts, step: int) -> dict:
        from ..toy.render import render_scene

        with torch.no_grad():
            gt = render_scene(self.scene, inp.cameras.to("cpu"))
        return match_images(inp, gt["rgb"].to(inp.rgb), gt["mask"].to(inp.rgb), self.cfg.mask_weight)


def match_images(inp: GuidanceInput, rgb: torch.Tensor, mask: torch.Tensor, mask_weight: float, name: str = "") -> dict:
    """Squared error of the renders against target images and (``mask_weight`` > 0, renders with alpha) of
    their alpha against target masks: ``loss_<name>rgb``/``loss_<name>mask`` (``loss_rgb``/``loss_mask`` for
    ``name=""``), and the renders' PSNR."""
    rgb_loss = F.mse_loss(inp.rgb, rgb)
    out = {f"loss_{name or 'rgb'}": rgb_loss}
    if inp.alpha is not None and mask_weight > 0:
        out[f"loss_{name}_mask" if name else "loss_mask"] = mask_weight * F.mse_loss(inp.alpha, mask)
    out[f"{name}_psnr" if name else "psnr"] = -10 * torch.log10(rgb_loss.detach().clamp_min(1e-10))
    return out
