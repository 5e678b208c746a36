"""The one timestep sampler every objective uses.

Ranges are given as fractions of the prior's schedule (``min_step_percent``/``max_step_percent``,
each may be a ``Schedule``) and mapped to noise levels by the prior
(``prior.percent_to_timestep``: ``floor(T * p)`` for DDPM-type priors). ``t`` is drawn uniformly
from the inclusive integer range ``[floor(T * min), floor(T * max)]``, one per sample (threestudio
SD/IF/VSD) or one shared by the whole batch (multi-view and video priors). ``consistency_pair``
draws CDS's two adjacent levels inside the same range.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..schedule import Schedule, as_schedule


class TimestepSampler:
    def __init__(
        self,
        prior,
        min_percent: Schedule | float = 0.02,
        max_percent: Schedule | float = 0.98,
        per_sample: bool = True,
    ):
        self.prior = prior
        self.min_percent = as_schedule(min_percent)
        self.max_percent = as_schedule(max_percent)
        self.per_sample = per_sample
        self.min_step, self.max_step = 0, 0
        self.update(0)

    def update(self, step: int) -> tuple[int, int]:
        """Evaluate the percent schedules at ``step``; returns ``(min_step, max_step)``."""
        lo = self.prior.percent_to_timestep(self.min_percent(step))
        hi = self.prior.percent_to_timestep(self.max_percent(step))
        if hi < lo:
            raise ValueError(
                f"timestep range is empty at step {step}: min_step_percent {self.min_percent(step)} "
                f"-> t={lo} is above max_step_percent {self.max_percent(step)} -> t={hi}"
            )
        self.min_step, self.max_step = lo, hi
        return lo, hi

    def sample(self, batch_size: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Integer timesteps ``[batch_size]`` (long, on the prior's device)."""
        n = batch_size if self.per_sample else 1
        t = torch.randint(self.min_step, self.max_step + 1, (n,), generator=generator)
        return t.expand(batch_size).contiguous().to(self.prior.device)

    def consistency_pair(
        self, batch_size: int, t_next: float, end_gap: int, perturb: int, generator: Optional[torch.Generator] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CDS (Consistent3D ``compute_grad_consistency``): ``(t [B], t' [B])``.

        ``t' = clamp(round(t_next), min_step, max_step - end_gap)``, one for the batch (``t_next`` is
        the caller's annealed value); ``t = t' + U{end_gap, ..., end_gap + perturb - 1}`` per sample,
        clamped to ``[min_step, max_step]``."""
        if end_gap < 1 or perturb < 1:
            raise ValueError(f"CDS needs end_gap >= 1 and perturb >= 1 (t > t'), got end_gap={end_gap}, perturb={perturb}")
        lo, hi = self.min_step, self.max_step
        tn = int(min(max(round(float(t_next)), lo), max(hi - end_gap, lo)))
        gap = torch.randint(end_gap, end_gap + perturb, (batch_size,), generator=generator)
        t = (tn + gap).clamp(lo, hi)
        dev = self.prior.device
        return t.to(dev), torch.full((batch_size,), tn, dtype=torch.long, device=dev)
