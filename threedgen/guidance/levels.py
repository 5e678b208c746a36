"""``NoiseLevels``: the noise levels a prior hands out, named by fractions of its noise range.

Objectives never do arithmetic on a level: they ask for one (``at``), a batch drawn in a range with
an optional group size (``draw``), one some fraction below another (``below``), a ladder from clean
(``ladder``, ``grid_below``), CDS's adjacent pair (``pair``) or the clean level (``clean``), and pass
them back to the prior. A level is an index into the prior's training grid of ``n`` levels (0 least
noisy) or ``CLEAN``; what it means in ``(a, b)`` is the prior's business (``prior_api.Prior``).
"""

from __future__ import annotations

from typing import Optional

import torch

CLEAN = -1
"""The level of a clean sample (``a = 1, b = 0``); hand it out with ``NoiseLevels.clean``."""


class NoiseLevels:
    """The levels of one prior: ``n`` noisy levels (0 least noisy) and ``CLEAN``.

    Fractions are of the noise range: level ``floor(n f)`` for a point, ``round(n f)`` levels for a
    distance. Level tensors are ``long`` on the prior's device.
    """

    def __init__(self, n: int, device: torch.device):
        self.n = int(n)
        self.device = device

    def __call__(self, level, batch: Optional[int] = None) -> torch.Tensor:
        """Levels as a ``[B]`` tensor (ints, floats rounded, tensors); one level broadcast to ``batch``."""
        t = torch.as_tensor(level, device=self.device)
        if t.is_floating_point():
            t = t.round()
        t = t.long().reshape(-1)
        if batch is not None and t.numel() == 1 and batch != 1:
            t = t.expand(batch)
        return t

    def at(self, fraction: float) -> int:
        """The level at ``fraction`` of the range: ``floor(n f)`` clamped to ``[0, n - 1]``."""
        return int(min(max(int(self.n * float(fraction)), 0), self.n - 1))

    def span(self, fraction: float) -> int:
        """How many levels ``fraction`` of the range is: ``round(n f)``."""
        return int(round(self.n * float(fraction)))

    def clean(self, batch: int) -> torch.Tensor:
        return torch.full((batch,), CLEAN, dtype=torch.long, device=self.device)

    def fraction(self, level) -> torch.Tensor:
        """Where ``level`` lies in the range, as a float (``level / n``; clean is ``-1 / n``)."""
        return self(level).float() / self.n

    def draw(self, batch: int, lo: int, hi: int, group: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``[batch]`` levels uniform on ``lo..hi`` (inclusive), one per consecutive group of
        ``group`` samples (``0``: one for the whole batch)."""
        k = batch if group <= 0 else int(group)
        n = -(-batch // k)
        t = torch.randint(int(lo), int(hi) + 1, (n,), generator=generator)
        return t.repeat_interleave(k)[:batch].contiguous().to(self.device)

    def below(self, level: torch.Tensor, fraction: float) -> torch.Tensor:
        """``fraction`` of the range below ``level``, not below the least noisy level (ISM's ``s``)."""
        return (self(level) - self.span(fraction)).clamp_min(0)

    def ladder(self, s: torch.Tensor, max_strides: int = 5, stride: float = 0.2) -> torch.Tensor:
        """Levels ``[k+1, B]`` from clean up to ``s [B]`` in strides of ``stride`` (a fraction), at most
        ``max_strides`` of them: the stride grows where ``s`` is further than ``max_strides`` strides,
        the last one is shorter where it would overshoot, and samples that arrive early repeat ``s``."""
        step = self.span(stride)
        if max_strides < 1 or step < 1:
            raise ValueError(f"inversion needs max_strides >= 1 and a stride of at least one level, got {max_strides}, {stride}")
        s = self(s)
        if (s < 0).any():
            raise ValueError(f"inversion target levels must not be clean, got {s.tolist()}")
        dist = s + 1  # distance from the clean level
        st = torch.maximum(torch.full_like(s, step), (dist + max_strides - 1) // max_strides)
        k = int(((dist + st - 1) // st).max())
        i = torch.arange(k + 1, device=s.device).view(-1, 1)
        return torch.minimum(CLEAN + i * st.view(1, -1), s.view(1, -1))

    def grid_below(self, t: torch.Tensor, n: int) -> torch.Tensor:
        """Levels ``[m, B]``: clean, the points ``k n_levels / n`` (``k = 1..n-1``) below each ``t``,
        then ``t``; strides that are no-ops for every sample are dropped (SDI's inversion grid)."""
        t = self(t)
        pts = torch.arange(1, n, device=t.device) * (self.n // n)
        below = torch.minimum(pts.view(-1, 1), t.view(1, -1))
        levels = torch.cat([self.clean(len(t)).view(1, -1), below, t.view(1, -1)])
        keep = torch.ones(levels.shape[0], dtype=torch.bool, device=t.device)
        keep[1:] = (levels[1:] != levels[:-1]).any(dim=1)
        return levels[keep]

    def jitter(self, t: torch.Tensor, fraction: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``t`` raised by a uniform ``0 .. span(fraction) - 1`` levels per sample, clamped to the top."""
        k = self.span(fraction)
        if k <= 1:
            return t
        return (t + torch.randint(0, k, t.shape, generator=generator).to(t)).clamp_max(self.n - 1)

    def pair(self, batch: int, lo: int, hi: int, upper: float, gap: float, spread: float,
             generator: Optional[torch.Generator] = None):
        """Two adjacent levels ``(t [B], t' [B])`` (CDS): ``t'`` at ``upper`` (a fraction; ``n upper``
        truncated, as Consistent3D's ``int()``) clamped to ``[lo, hi - span(gap)]``, one for the batch;
        ``t = t' + U{span(gap) .. span(gap) + span(spread) - 1}`` per sample, clamped to ``[lo, hi]``."""
        g, p = self.span(gap), self.span(spread)
        if g < 1 or p < 1:
            raise ValueError(f"CDS needs end_gap and perturb of at least one level each (t > t'), got {gap}, {spread}")
        tn = int(min(max(int(self.n * float(upper) + 1e-9), lo), max(hi - g, lo)))
        t = (tn + torch.randint(g, g + p, (batch,), generator=generator)).clamp(lo, hi)
        return t.to(self.device), torch.full((batch,), tn, dtype=torch.long, device=self.device)


