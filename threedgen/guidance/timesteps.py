"""The one noise-level sampler every objective uses.

Ranges are fractions of the prior's noise range (``min_step_percent``/``max_step_percent``, each
may be a ``Schedule``), turned into levels by the prior (``prior.levels.at``: ``floor(n p)``).
Levels are drawn uniformly from the inclusive range, one per group of ``views_per_level``
consecutive renders: 1 is one per render (threestudio SD/IF/VSD), 0 one for the whole batch, 4 one
per 4-view group (what a multi-view prior whose views share a noise level needs).
``consistency_pair`` draws CDS's two adjacent levels inside the same range.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..schedule import Schedule, as_schedule


class TimestepSampler:
    def __init__(self, prior, min_percent: Schedule | float = 0.02, max_percent: Schedule | float = 0.98, views_per_level: int = 1):
        if views_per_level < 0:
            raise ValueError(f"views_per_level must be >= 0 (0: one level for the whole batch), got {views_per_level}")
        self.prior = prior
        self.min_percent = as_schedule(min_percent)
        self.max_percent = as_schedule(max_percent)
        self.views_per_level = int(views_per_level)
        self.min_step, self.max_step = 0, 0
        self.update(0)

    def update(self, step: int) -> tuple[int, int]:
        """Evaluate the fraction schedules at ``step``; returns the ``(lowest, highest)`` level."""
        lo = self.prior.levels.at(self.min_percent(step))
        hi = self.prior.levels.at(self.max_percent(step))
        if hi < lo:
            raise ValueError(
                f"noise-level range is empty at step {step}: min_step_percent {self.min_percent(step)} "
                f"-> level {lo} is above max_step_percent {self.max_percent(step)} -> level {hi}"
            )
        self.min_step, self.max_step = lo, hi
        return lo, hi

    def sample(self, batch_size: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Levels ``[batch_size]`` for one batch of renders."""
        return self.prior.levels.draw(batch_size, self.min_step, self.max_step, self.views_per_level, generator)

    def consistency_pair(self, batch_size: int, t_next: float, end_gap: float, perturb: float,
                         generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """CDS (Consistent3D ``compute_grad_consistency``): ``(t [B], t' [B])`` with ``t'`` at the
        fraction ``t_next`` and ``t - t'`` ``end_gap`` plus up to ``perturb`` (fractions); see
        ``NoiseLevels.pair``."""
        return self.prior.levels.pair(batch_size, self.min_step, self.max_step, t_next, end_gap, perturb, generator)
