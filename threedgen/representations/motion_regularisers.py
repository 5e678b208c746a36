"""Regularisers of a moving scene (``dynamic_gaussians.py``): small, smooth and locally rigid motion.

Video SDS alone lets a scene move wherever the video prior is unsure; 4D-fy and Dream-in-4D weight a
deformation penalty strongly (``λ_deformation`` 100-1000, ``docs/4d.md``). ``motion_magnitude`` is
the mean squared displacement of the canonical centres at the batch's times; ``motion_smoothness``
the field's own time smoothness (``HexPlaneField.smoothness``); ``motion_rigidity`` keeps the distances
between neighbouring centres (relative strain) as they are in the canonical scene (the isometry term of Luiten et al.'s
dynamic Gaussians): an object may translate and turn, but not stretch or squash, which a single-view
clip cannot rule out on its own (``threedgen/guidance/clip_anchor.py``).
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


def _batch_times(cameras) -> list[float]:
    """The distinct times of the batch's views (time 0 for views without one)."""
    if cameras is None or cameras.time is None:
        return [0.0]
    return torch.unique(cameras.time.detach().cpu()).tolist()


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
        means = representation.params["means"]
        if len(means) > self.cfg.max_gaussians:
            means = means[torch.randperm(len(means), device=means.device)[: self.cfg.max_gaussians]]
        d = [representation.deformation(means, t)["dx"] for t in _batch_times(cameras)]
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
        """Neighbours per centre (in the canonical scene)."""
        max_gaussians: int = 2048
        """Centres sampled per step (the most opaque are preferred: they are what is seen)."""
        min_opacity: float = 0.1
        """Centres below this opacity are not sampled while enough others are."""

    def __init__(self, cfg: "MotionRigidity.Config"):
        super().__init__()
        if cfg.k < 1 or cfg.max_gaussians < 2:
            raise ValueError(f"motion_rigidity: k must be >= 1 and max_gaussians >= 2, got {cfg.k} and {cfg.max_gaussians}")
        self.cfg = cfg

    def forward(self, render_out, representation=None, cameras=None) -> torch.Tensor:
        """Mean over sampled centres i, their k canonical neighbours j and the batch's times t of the squared
        strain ``((|p_i(t) - p_j(t)| - |x_i - x_j|) / |x_i - x_j|)^2``: relative, so its weight does not depend
        on how densely the scene is sampled (a 10% squash costs ~0.01/3 however close the neighbours are)."""
        field = _field(representation, "motion_rigidity")
        means = representation.params["means"]
        opaque = torch.sigmoid(representation.params["opacities"].detach()).reshape(-1) >= self.cfg.min_opacity
        idx = torch.nonzero(opaque).squeeze(1) if int(opaque.sum()) > self.cfg.k else torch.arange(len(means), device=means.device)
        if len(idx) > self.cfg.max_gaussians:
            idx = idx[torch.randperm(len(idx), device=idx.device)[: self.cfg.max_gaussians]]
        x = means[idx]
        k = min(self.cfg.k, len(x) - 1)
        with torch.no_grad():
            nn_idx = torch.cdist(x, x).topk(k + 1, largest=False).indices[:, 1:]  # [n,k], self excluded
        rest = (x[:, None] - x[nn_idx]).norm(dim=-1)
        scale = rest.detach().clamp_min(1e-4)
        losses = []
        for t in _batch_times(cameras):
            p = x + field(x, t)["dx"]
            losses.append((((p[:, None] - p[nn_idx]).norm(dim=-1) - rest) / scale).square().mean())
        return torch.stack(losses).mean()
