"""The interface a scene representation implements for the generic system."""

from __future__ import annotations

from torch import nn


class Representation(nn.Module):
    """A differentiable scene. Subclasses define a ``Config`` dataclass and take it as first argument."""

    def param_groups(self) -> list[dict]:
        """Optimizer parameter groups ({'params', 'lr', 'name', ...}); lrs may be Schedules."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "name": "representation"}]

    def update_step(self, epoch: int, step: int) -> None:
        """Re-evaluate scheduled settings before the step's render."""

    def after_step(self, step: int, render_out) -> None:
        """Bookkeeping after the optimizer step (densification, occupancy updates)."""

    def isosurface(self, resolution: int = 128, threshold="auto"):
        """(vertices [V,3], faces [F,3], vertex colours [V,3]) numpy arrays; raises on an empty scene."""
        raise NotImplementedError(f"{type(self).__name__} cannot produce a mesh")

    def albedo_at(self, points):
        """Lighting-free colour [N,3] in [0,1] at world points [N,3] (torch); texture baking samples it."""
        raise NotImplementedError(f"{type(self).__name__} has no colour field to bake a texture from")
