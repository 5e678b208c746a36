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
        rgb_gt = gt["rgb"].to(inp.rgb)
        out = {"loss_rgb": F.mse_loss(inp.rgb, rgb_gt)}
        if inp.alpha is not None and self.cfg.mask_weight > 0:
            out["loss_mask"] = self.cfg.mask_weight * F.mse_loss(inp.alpha, gt["mask"].to(inp.alpha))
        with torch.no_grad():
            out["psnr"] = -10 * torch.log10(F.mse_loss(inp.rgb, rgb_gt).clamp_min(1e-10))
        return out
