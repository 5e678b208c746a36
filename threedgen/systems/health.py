"""Numerical health of a training run: NaN/Inf in the trained parameters stop it cleanly.

Guidance gradients are sanitised where they are made (``threedgen/guidance/base.py``'s ``surrogate``
zeroes and counts NaN/Inf entries; the system sums the count into ``metrics.csv`` as
``train/nonfinite_total``). A NaN that still reaches a parameter (a regulariser, the renderer, a
learning rate too high) would spread to everything within a step or two and, saved, would overwrite
the last good checkpoint; so after every optimiser step the parameters are checked and the run stops
with ``NonFiniteError`` before any checkpoint of the bad state is written.

On a GPU that check must not make the host wait for the device every step (the host could not queue
the next step's work while the device runs this one): ``FiniteWatch`` reads each step's verdict one
step later, and every checkpoint save reads the outstanding one first (``settle``).
"""

from __future__ import annotations

from typing import Iterable

import torch


class NonFiniteError(RuntimeError):
    """Parameters became NaN/Inf; ``str()`` is one line naming the step and the module."""


class FiniteWatch:
    """The per-step NaN/Inf check of the trained parameters, without a host-device sync per step.

    ``submit`` reduces each parameter to one device boolean and starts copying them to pinned host
    memory; the verdict is read at the next ``submit`` (by then the copy is long done, so the host
    does not wait) or by ``settle``, which waits for it. On the CPU there is nothing to wait for and
    each verdict is read at once. A bad verdict raises ``NonFiniteError`` naming the step it was taken at.
    """

    defer_on_cpu = False
    """Read a step late on the CPU too, as on a GPU (the tests run the GPU path's order this way)."""

    def __init__(self):
        self._pending = None  # (step, host bool tensor, CUDA event or None)

    def submit(self, step: int, named: Iterable[tuple[str, torch.Tensor]]) -> None:
        named = [(n, p) for n, p in named if p.is_floating_point() and p.numel() > 0]
        if not named:
            return
        # one fused reduction over all the parameters (a few kernels, not two per parameter): the largest
        # magnitude of each is finite exactly when all its values are (NaN propagates through the max)
        ok = torch.isfinite(torch.stack(torch._foreach_norm([p.detach() for _, p in named], float("inf"))))
        event = None
        if ok.is_cuda:
            host = torch.empty(ok.shape, dtype=torch.bool, pin_memory=True)
            host.copy_(ok, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            ok = host
        earlier, self._pending = self._pending, (step, ok, event, named)
        if earlier is not None:
            self._read(earlier)
        if event is None and not self.defer_on_cpu:
            self.settle()

    def settle(self) -> None:
        """Read the outstanding verdict now (waiting for the device if need be); raise if it was bad."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._read(pending)

    @staticmethod
    def _read(pending) -> None:
        step, ok, event, named = pending
        if event is not None:
            event.synchronize()
        if not bool(ok.all()):
            name, p = named[int((~ok).nonzero()[0])]
            raise NonFiniteError(nonfinite_message(step, name, int((~torch.isfinite(p.detach())).sum())))


def nonfinite_message(step: int, name: str, count: int) -> str:
    module = name.split(".")[0]
    return f"step {step}: {count} NaN/Inf values in {name} (the {module}); training stopped before saving them"
