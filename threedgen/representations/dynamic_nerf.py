"""A hash-grid NeRF that moves: a canonical NeRF plus a deformation field over time, by backward warping.

A volume renderer asks for the density and colour at points along rays, so a moving NeRF answers "what
is at point x at time τ" by looking the point up where it came from: the canonical field at
``x - D(x, τ)`` (D-NeRF's backward warp), with ``D`` the same HexPlane field that moves Gaussians
(``deformation.HexPlaneField``; zero everywhere at the start, so the static stage's NeRF is the scene
at every time when the dynamic stage begins). ``D(x, τ)`` is the displacement of whatever is seen at
``x`` at time τ, the same sense as for Gaussians, so the motion regularisers
(``motion_regularisers.py``) read both through ``rest_and_moved``. Normals (analytic or central
differences) are taken in the moved space, through the warp.

``at_time(τ)`` is the scene at one time: the NeRF's own field, density-grid, isosurface and albedo code
on warped points, which the volume renderer draws (one pass per distinct time, ``renderers/base.py``)
and the exporter meshes (``frozen_at``). The occupancy grid must hold every time's object, so it is
refreshed from the largest density over ``occupancy_times`` evenly spaced times (``occupancy_density``).
The animated GLB's morph targets move each frame-0 vertex forward in time by inverting the backward
warp (``forward_motion``: a fixed-point iteration, exact for a rigid translation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data.cameras import clip_times
from ..schedule import Schedule
from .deformation import DeformationConfig, HexPlaneField, adopt_canonical
from .nerf import NeRF


class DynamicNeRF(NeRF):
    converts_from = ("nerf", "dynamic_nerf")
    """Representations a previous stage may hand over as the canonical scene (checked at start-up)."""

    @dataclass
    class Config(NeRF.Config):
        RANGES = {**NeRF.Config.RANGES, "occupancy_times": (1, 64), "inverse_iterations": (1, 100)}
        deformation: DeformationConfig = field(default_factory=DeformationConfig)
        lr_deformation: Schedule = Schedule(1e-3)
        """Learning rate of the deformation field (planes and heads)."""
        occupancy_times: int = 5
        """Times (evenly spaced over [0, 1]) whose largest density refreshes the renderer's occupancy grid."""
        inverse_iterations: int = 8
        """Fixed-point iterations that move a point forward in time (exports' morph targets)."""

    SAME_AS_CANONICAL = ("radius", "grid", "mlp_width", "mlp_hidden_layers", "density_activation", "density_bias",
                         "density_blob_scale", "density_blob_std", "view_dependent", "n_dir_frequencies")
    """Settings that define the canonical field: a stage that hands over its NeRF must use the same ones."""

    @classmethod
    def check_canonical(cls, cfg: "DynamicNeRF.Config", src_cfg) -> None:
        """Raise ValueError at start-up when the static stage's NeRF could not be this scene's canonical one."""
        differ = [k for k in cls.SAME_AS_CANONICAL if getattr(cfg, k) != getattr(src_cfg, k, getattr(cfg, k))]
        if differ:
            raise ValueError("the moving NeRF must have the static stage's field settings to take it over; they differ in "
                             + ", ".join(f"{k} ({getattr(src_cfg, k)!r} there, {getattr(cfg, k)!r} here)" for k in differ)
                             + ": repeat them under the dynamic stage's representation")

    def __init__(self, cfg: "DynamicNeRF.Config"):
        if cfg.deformation.rotation or cfg.deformation.scale:
            raise ValueError("a moving NeRF warps points, it has no rotations or scales to offset: "
                             "set deformation.rotation and deformation.scale to false (they are for dynamic_gaussians)")
        super().__init__(cfg)
        self.deformation = HexPlaneField(cfg.deformation)
        self._samples: dict[float, torch.Tensor] = {}
        """This step's ``motion_samples`` by time."""
        self._samples_n = 0
        """The most points any caller has asked for: what a step draws, whichever regulariser asks first."""

    def displacement(self, x: torch.Tensor, t) -> torch.Tensor:
        """``D(x, t)`` [N,3]: how far what is seen at ``x`` at time ``t`` has moved from the canonical scene."""
        return self.deformation(x, t)["dx"]

    def at_time(self, t: float) -> "NeRFAtTime":
        return NeRFAtTime(self, float(t))

    frozen_at = at_time
    """The scene at one time, as the exporter and ``toy/motion_bench.py`` read it (a view, sharing weights)."""

    @torch.no_grad()
    def occupancy_density(self, x: torch.Tensor) -> torch.Tensor:
        """The largest density at ``x`` over ``occupancy_times`` times: what may be occupied at some time."""
        times = clip_times(self.cfg.occupancy_times).tolist()
        return torch.stack([self.at_time(t).density(x) for t in times]).amax(0)

    def rest_and_moved(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """``(canonical points, moved points)`` for points ``x`` seen at time ``t``: ``(x - D(x, t), x)``."""
        return x - self.displacement(x, t), x

    def update_step(self, epoch: int, step: int) -> None:
        super().update_step(epoch, step)
        self._samples = {}  # a new step: the scene has moved, draw its points again

    @torch.no_grad()
    def motion_samples(self, n: int, t=0.0, min_opacity: float = 0.0) -> torch.Tensor:
        """``n`` points where the scene is at time ``t``: the densest quarter of uniform draws in the box
        (``min_opacity`` is the Gaussians' filter; the densest points are already the opaque ones).

        Drawn once per step and time (``update_step`` forgets them): density evaluations at thousands of
        points cost about as much as the step's render, and the regularisers of one step ask for the same
        scene. Each draw is as large as the largest request seen so far, so whichever regulariser asks
        first, one draw serves both from the second step on; a smaller request is a random subset."""
        cache, key = self._samples, float(t)
        self._samples_n = max(self._samples_n, n)
        if key not in cache or len(cache[key]) < n:
            m = self._samples_n
            x = (torch.rand(4 * m, 3, device=self.grid.params.device) * 2 - 1) * self.radius
            d = self.at_time(key).density(x)
            cache[key] = x[d.topk(m).indices]
        x = cache[key]
        return x if len(x) == n else x[torch.randperm(len(x), device=x.device)[:n]]

    @torch.no_grad()
    def forward_motion(self, points: torch.Tensor, times: list[float], start: float = 0.0) -> list[torch.Tensor]:
        """Displacements ``[N,3]`` of points seen at time ``start`` to where they are at each of ``times``.

        The point ``p`` came from ``c = p - D(p, start)``; at time ``t`` it is at the ``y`` with
        ``y - D(y, t) = c``, found by ``y <- c + D(y, t)`` from ``y = p`` (a contraction while the field
        stretches space by less than 2x, which ``motion_rigidity`` keeps it far from)."""
        c = points - self.displacement(points, start)
        out = []
        for t in times:
            y = points.clone()
            for _ in range(self.cfg.inverse_iterations):
                y = c + self.displacement(y, t)
            out.append(y - points)
        return out

    def convert_from(self, src, render=None) -> None:
        """The canonical scene from a static stage's NeRF (the field stays at zero motion), or a copy of
        another moving NeRF."""
        adopt_canonical(self, src, NeRF, "a NeRF (representation.name: nerf)")

    def param_groups(self) -> list[dict]:
        groups = super().param_groups()
        field_params = {id(p) for p in self.deformation.parameters()}
        for g in groups:  # NeRF's "mlp" group takes every non-grid parameter: leave the field to its own group
            g["params"] = [p for p in g["params"] if id(p) not in field_params]
        return groups + [{"params": list(self.deformation.parameters()), "lr": self.cfg.lr_deformation, "name": "deformation"}]

    def isosurface(self, resolution: int = 128, threshold="auto"):
        """The surface at time 0 (the exporter meshes each time through ``frozen_at``)."""
        return self.at_time(0.0).isosurface(resolution, threshold)

    def albedo_at(self, points: torch.Tensor) -> torch.Tensor:
        return self.at_time(0.0).albedo_at(points)


class NeRFAtTime:
    """A moving NeRF at one time: ``NeRF``'s field, normals, density-grid, isosurface and albedo code on
    points warped back to the canonical scene (what the volume renderer and the exporter call)."""

    forward = __call__ = NeRF.forward
    density = NeRF.density
    has_normals = NeRF.has_normals
    _albedo = NeRF._albedo
    density_grid = NeRF.density_grid
    auto_threshold = NeRF.auto_threshold
    isosurface = NeRF.isosurface
    albedo_at = NeRF.albedo_at

    def __init__(self, rep: DynamicNeRF, t: float):
        self.rep, self.time = rep, t
        self.cfg, self.radius, self.grid, self.view_dependent = rep.cfg, rep.radius, rep.grid, rep.view_dependent
        self.color_head = getattr(rep, "color_head", None)
        self.last_threshold = None
        self.occupancy_density = rep.occupancy_density  # a grid first filled from one time must still hold the others

    def _trunk(self, x: torch.Tensor):
        return self.rep._trunk(x - self.rep.displacement(x, self.time))
