"""Numerical health of a training run: NaN/Inf in the trained parameters stop it cleanly.

Guidance gradients are sanitised where they are made (``threedgen/guidance/base.py``'s ``surrogate``
zeroes and counts NaN/Inf entries; the system sums the count into ``metrics.csv`` as
``train/nonfinite_total``). A NaN that still reaches a parameter (a regulariser, the renderer, a
learning rate too high) would spread to everything within a step or two and, saved, would overwrite
the last good checkpoint; so after every optimiser step the parameters are checked and the run stops
with ``NonFiniteError`` before any checkpoint of the bad state is written.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch


class NonFiniteError(RuntimeError):
    """Parameters became NaN/Inf; ``str()`` is one line naming the step and the module."""


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor]]) -> Optional[tuple[str, int]]:
    """(name, count of NaN/Inf values) of the first non-finite tensor, or None. One device sync
    for the common all-finite case."""
    named = [(n, p) for n, p in named if p.is_floating_point()]
    if not named:
        return None
    ok = torch.stack([torch.isfinite(p.detach()).all() for _, p in named])
    if bool(ok.all()):
        return None
    name, p = named[int((~ok).nonzero()[0])]
    return name, int((~torch.isfinite(p.detach())).sum())


def nonfinite_message(step: int, name: str, count: int) -> str:
    module = name.split(".")[0]
    return f"step {step}: {count} NaN/Inf values in {name} (the {module}); training stopped before saving them"
