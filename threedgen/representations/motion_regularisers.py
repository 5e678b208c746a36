"""Regularisers of a moving scene (``dynamic_gaussians.py``): small motion and smooth motion.

Video SDS alone lets a scene move wherever the video prior is unsure; 4D-fy and Dream-in-4D weight a
deformation penalty strongly (``λ_deformation`` 100-1000, ``docs/4d.md``). ``motion_magnitude`` is
the mean squared displacement of the canonical centres at the batch's times; ``motion_smoothness``
the field's own time smoothness (``HexPlaneField.smoothness``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def _field(representation, name: str):
    field = getattr(representation, "deformation", None)
    if field is None:
        raise ValueError(f"the {name} regulariser needs a moving representation (dynamic_gaussians), "
                         f"got {type(representation).__name__}")
    return field


class MotionMagnitude(nn.Module):
    @dataclass
    class Config:
        max_gaussians: int = 4096
        """Displacements are averaged over at most this many canonical centres (a fixed random subset per step)."""

    def __init__(self, cfg: "MotionMagnitude.Config"):
        super().__init__()
        self.cfg = cfg

    def forward(self, render_out, representation=None, cameras=None) -> torch.Tensor:
        _field(representation, "motion_magnitude")
        times = cameras.time if cameras is not None and cameras.time is not None else torch.zeros(1)
        means = representation.params["means"]
        if len(means) > self.cfg.max_gaussians:
            means = means[torch.randperm(len(means), device=means.device)[: self.cfg.max_gaussians]]
        d = [representation.deformation(means, float(t))["dx"] for t in torch.unique(times.detach().cpu())]
        return torch.stack(d).square().sum(-1).mean()


class MotionSmoothness(nn.Module):
    @dataclass
    class Config:
        pass

    def __init__(self, cfg: "MotionSmoothness.Config"):
        super().__init__()
        self.cfg = cfg

    def forward(self, render_out, representation=None, cameras=None) -> torch.Tensor:
        return _field(representation, "motion_smoothness").smoothness()
