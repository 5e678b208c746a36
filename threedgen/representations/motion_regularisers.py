"""Regularisers of a moving scene (``dynamic_gaussians.py``, ``dynamic_nerf.py``): small, smooth and locally rigid motion.

Video SDS alone lets a scene move wherever the video prior is unsure; 4D-fy and Dream-in-4D weight a
deformation penalty strongly (``λ_deformation`` 100-1000, ``docs/4d.md``). ``motion_magnitude`` is
the mean squared displacement of points of the scene (Gaussian centres; a NeRF's densest points) at the
batch's times; ``motion_smoothness``
the field's own time smoothness (``HexPlaneField.smoothness``); ``motion_rigidity`` keeps the distances
between neighbouring points (relative strain) as they are in the canonical scene (the isometry term of Luiten et al.'s
dynamic Gaussians): an object may translate and turn, but not stretch or squash, which a single-view
clip cannot rule out on its own (``threedgen/guidance/clip_anchor.py``). A representation reads them
through ``motion_samples`` (points to measure at) and ``rest_and_moved`` (where those points are in the
canonical scene and at a time).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def _field(representation, name: str):
    field = getattr(representation, "deformation", None)
    if field is None:
        raise ValueError(f"the {name} regulariser needs a moving representation (dynamic_gaussians or dynamic_nerf), "
                         f"got {type(representation).__name__}")
    return field


def _batch_times(cameras) -> list[float]:
    """The distinct times of the batch's views (time 0 for views without one)."""
    if cameras is None or cameras.time is None:
        return [0.0]
    return torch.unique(cameras.time.detach().cpu()).tolist()


class MotionMagnitude(nn.Module):
    @dataclass
    class Config:
        max_gaussians: int = 4096
        """Displacements are averaged over at most this many points of the scene (a random subset per step)."""

    def __init__(self, cfg: "MotionMagnitude.Config"):
        super().__init__()
        self.cfg = cfg

    def forward(self, render_out, representation=None, cameras=None) -> torch.Tensor:
        _field(representation, "motion_magnitude")
        times = _batch_times(cameras)
        x = representation.motion_samples(self.cfg.max_gaussians, times[len(times) // 2])
        d = []
        for t in times:
            rest, moved = representation.rest_and_moved(x, t)
            d.append(moved - rest)
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


class MotionRigidity(nn.Module):
    @dataclass
    class Config:
        k: int = 8
        """Neighbours per point."""
        max_gaussians: int = 2048
        """Points sampled per step (Gaussian centres, the opaque ones preferred: they are what is seen; a NeRF's densest points)."""
        min_opacity: float = 0.1
        """Gaussian centres below this opacity are not sampled while enough others are."""

    def __init__(self, cfg: "MotionRigidity.Config"):
        super().__init__()
        if cfg.k < 1 or cfg.max_gaussians < 2:
            raise ValueError(f"motion_rigidity: k must be >= 1 and max_gaussians >= 2, got {cfg.k} and {cfg.max_gaussians}")
        self.cfg = cfg

    def forward(self, render_out, representation=None, cameras=None) -> torch.Tensor:
        """Mean over sampled points i, their k nearest neighbours j and the batch's times t of the squared
        strain ``((|p_i(t) - p_j(t)| - |c_i - c_j|) / |c_i - c_j|)^2`` (c: canonical, p: moved): relative, so its weight does not depend
        on how densely the scene is sampled (a 10% squash costs ~0.01/3 however close the neighbours are)."""
        _field(representation, "motion_rigidity")
        times = _batch_times(cameras)
        x = representation.motion_samples(self.cfg.max_gaussians, times[len(times) // 2], self.cfg.min_opacity)
        k = min(self.cfg.k, len(x) - 1)
        with torch.no_grad():
            nn_idx = torch.cdist(x, x).topk(k + 1, largest=False).indices[:, 1:]  # [n,k], self excluded
        losses = []
        for t in times:
            rest, moved = representation.rest_and_moved(x, t)
            d_rest = (rest[:, None] - rest[nn_idx]).norm(dim=-1)
            d_moved = (moved[:, None] - moved[nn_idx]).norm(dim=-1)
            losses.append(((d_moved - d_rest) / d_rest.detach().clamp_min(1e-4)).square().mean())
        return torch.stack(losses).mean()
