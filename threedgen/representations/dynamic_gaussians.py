"""3D Gaussians that move: a canonical set of Gaussians plus a deformation field over time.

The canonical Gaussians are this project's ``Gaussians`` (the static stage's scene, handed over by
``convert_from``); ``deformation.HexPlaneField`` maps each canonical centre and a time τ in [0, 1] to
an offset of its position (and optionally of its rotation and log-scale). ``at_time(τ)`` is the scene
at one time, which the Gaussian renderer rasterises for the cameras of that time (``CameraBatch.time``);
it reuses the Gaussians' own activation, colour and normal code on the deformed parameters.

The number of Gaussians is fixed in the dynamic stage: densification belongs to the static stage
(the per-time renders of one step do not share the screen-space statistics it needs). The canonical
parameters keep their learning rates (``lr_means`` and the others; 0 freezes them, as 4D-fy's
deformation variant does); the field has its own (``lr_deformation``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..schedule import Schedule
from .deformation import DeformationConfig, HexPlaneField, adopt_canonical
from .gaussians import Gaussians


class DynamicGaussians(Gaussians):
    converts_from = ("gaussians", "dynamic_gaussians")
    """Representations a previous stage may hand over as the canonical scene (checked at start-up)."""

    @dataclass
    class Config(Gaussians.Config):
        deformation: DeformationConfig = field(default_factory=DeformationConfig)
        lr_deformation: Schedule = Schedule(1e-3)
        """Learning rate of the deformation field (planes and heads)."""

    def __init__(self, cfg: "DynamicGaussians.Config"):
        super().__init__(cfg)
        self.deformation = HexPlaneField(cfg.deformation)

    def deformed(self, t: float) -> dict[str, torch.Tensor]:
        """Raw (pre-activation) parameters at time ``t``: means, quats and log-scales moved by the field."""
        p = self.params
        d = self.deformation(p["means"], float(t))
        out = dict(p.items())
        out["means"] = p["means"] + d["dx"]
        if "dq" in d:
            out["quats"] = p["quats"] + d["dq"]
        if "ds" in d:
            out["scales"] = p["scales"] + d["ds"]
        return out

    def at_time(self, t: float) -> "_AtTime":
        return _AtTime(self, self.deformed(t))

    @torch.no_grad()
    def frozen_at(self, t: float) -> Gaussians:
        """A plain ``Gaussians`` holding the scene at time ``t`` (exports, per-frame meshes)."""
        g = Gaussians(self.cfg)
        g.params = torch.nn.ParameterDict({k: torch.nn.Parameter(v.detach().clone(), requires_grad=False)
                                           for k, v in self.deformed(t).items()})
        g.active_sh_degree = self.active_sh_degree
        return g.to(self.params["means"].device)

    def motion(self, t: torch.Tensor) -> torch.Tensor:
        """Displacements ``[T,N,3]`` of every canonical centre at times ``t`` [T] (regularisers, exports)."""
        return torch.stack([self.deformation(self.params["means"], float(x))["dx"] for x in t])

    def rest_and_moved(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """``(canonical points, moved points)`` for canonical points ``x`` at time ``t`` (the motion regularisers)."""
        return x, x + self.deformation(x, t)["dx"]

    def motion_samples(self, n: int, t=0.0, min_opacity: float = 0.0) -> torch.Tensor:
        """At most ``n`` canonical centres (a random subset), those of opacity ``>= min_opacity`` while more than
        a handful are; differentiable, so the regularisers also reach the canonical means where they train."""
        means = self.params["means"]
        opaque = torch.sigmoid(self.params["opacities"].detach()).reshape(-1) >= min_opacity
        idx = torch.nonzero(opaque).squeeze(1) if int(opaque.sum()) > 8 else torch.arange(len(means), device=means.device)
        if len(idx) > n:
            idx = idx[torch.randperm(len(idx), device=idx.device)[:n]]
        return means[idx]

    def convert_from(self, src, render=None) -> None:
        """The canonical scene from a static stage's Gaussians (the field stays at zero motion), or a copy
        of another dynamic scene."""
        adopt_canonical(self, src, Gaussians, "Gaussians (representation.name: gaussians)")

    def param_groups(self) -> list[dict]:
        return super().param_groups() + [{"params": list(self.deformation.parameters()), "lr": self.cfg.lr_deformation,
                                          "name": "deformation"}]

    def after_step(self, step: int, render_out) -> None:
        """No densification in the dynamic stage (see the module docstring)."""


class _AtTime:
    """The Gaussians at one time: ``Gaussians``' own activation, colour and normal code on deformed
    parameters (what the renderer calls on a representation)."""

    activated = Gaussians.activated
    colors = Gaussians.colors
    normals = Gaussians.normals
    _filtered = Gaussians._filtered
    sh = Gaussians.sh

    def __init__(self, rep: DynamicGaussians, params: dict):
        self.cfg, self.active_sh_degree, self.params = rep.cfg, rep.active_sh_degree, params
