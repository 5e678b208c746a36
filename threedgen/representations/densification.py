"""Densification settings of 3D Gaussians and the optimizer view gsplat's strategy edits (``gaussians.py``).

gsplat's ``DefaultStrategy`` ops (``_update_param_with_optimizer``) expect one small optimizer per
parameter name and touch only ``param_groups[0]["params"]`` and ``state[param]``; the system trains
every parameter with one shared optimizer, so ``OptimizerGroupView`` shows each parameter's group of it
in that shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DensifyConfig:
    """gsplat ``DefaultStrategy`` settings (3DGS heuristics); steps are global optimisation steps."""

    enabled: bool = True
    grow_grad2d: float = 0.01
    """Mean screen-space gradient (gsplat's normalisation) above which a Gaussian is cloned or split.
    3DGS reconstruction uses 0.0002; SDS gradients are far larger (DreamGaussian: 0.01)."""
    grow_scale3d: float = 0.01
    """Largest scale / scene_scale below which a Gaussian is duplicated, above which it is split."""
    grow_scale2d: float = 0.05
    prune_opa: float = 0.01
    """Opacity below which a Gaussian is removed; opacity resets go to twice this."""
    prune_scale3d: float = 0.1
    """Largest scale / scene_scale above which a Gaussian is removed (after the first reset)."""
    prune_scale2d: float = 0.15
    refine_scale2d_stop_iter: int = 0
    refine_start_iter: int = 100
    refine_stop_iter: int = 3000
    refine_every: int = 100
    reset_every: int = 700
    """Opacity reset period (0: never). Done here: gsplat 1.5.3's own reset never fires."""
    pause_refine_after_reset: int = 0
    revised_opacity: bool = False
    scene_scale: float = 1.0
    """Scale the 3D thresholds are relative to (the object's radius)."""
    max_gaussians: int = 1_000_000
    """Hard cap: after refinement the least opaque Gaussians beyond this count are removed."""


class OptimizerGroupView:
    """The parameter group of a shared optimizer that holds ``param``, shaped like the one-group
    optimizer gsplat's strategy ops expect: ``param_groups[0]["params"]`` and ``state[param]`` are the
    real ones. The group is found by parameter identity once, when the view is made (the system may
    rename groups: particles get ``.p1`` suffixes), and kept: the ops swap the tensor inside that same
    group dict, so a grow followed by a prune in one step still reaches it."""

    def __init__(self, optimizer: torch.optim.Optimizer, param: torch.Tensor, name: str):
        groups = [g for g in optimizer.param_groups if any(p is param for p in g["params"])]
        if len(groups) != 1:
            raise RuntimeError(f"expected one optimizer group holding Gaussian parameter {name!r}, found {len(groups)}")
        self._opt, self._group, self.name = optimizer, groups[0], name

    @property
    def param_groups(self) -> list[dict]:
        return [self._group]

    @property
    def state(self):
        return self._opt.state
