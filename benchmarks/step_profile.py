"""Where a training step's time goes when nothing waits: ``bench_floor.py --profile``.

``bench_floor``'s split synchronises around every timed part, so it cannot tell a device that is busy
from a host that cannot feed it. This runs a few more steps of the same system under
``torch.profiler`` with no synchronisation inside a step and reports, per step:

- **host ms per phase** (render, prior forward, VAE encode, backward, optimiser, the rest): the time
  the host spends issuing each part (``record_function`` ranges opened by module hooks);
- **launches** per part: kernels the host queued (on the CPU: the top-level aten operators it ran), the
  figure CUDA graphs or fewer, larger operations reduce;
- **device busy**: the summed time of the device's kernels over the step's wall time. Near 100% the
  step is bound by the device's arithmetic (bigger kernels, lower precision, ``torch.compile``);
  well below it, by the host (Python, launches, synchronisations);
- the kernels that took the most device time (on the CPU: the operators that took the most time).

``--trace DIR`` also writes the Chrome trace (``chrome://tracing``, Perfetto) per recipe, gzipped.
"""

from __future__ import annotations

import gzip
import shutil
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

PHASES = ("render", "prior", "vae", "backward", "optimiser")
LAUNCH_PREFIXES = ("cudaLaunch", "cuLaunch", "cudaGraphLaunch")  # the runtime calls that queue a kernel (or a graph)


class PhaseRanges:
    """Opens a ``record_function`` range named ``phase:<name>`` around each hooked module's forward."""

    def __init__(self, modules_by_phase: dict[str, list]):
        self._open: list = []
        self.handles = []
        for name, modules in modules_by_phase.items():
            for m in modules:
                if m is None:
                    continue
                self.handles.append(m.register_forward_pre_hook(lambda *_, n=name: self._enter(n)))
                self.handles.append(m.register_forward_hook(lambda *_: self._exit()))

    def _enter(self, name: str) -> None:
        r = record_function(f"phase:{name}")
        r.__enter__()
        self._open.append(r)

    def _exit(self) -> None:
        self._open.pop().__exit__(None, None, None)

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _context(e) -> tuple[bool, str]:
    """(inside another aten operator?, the innermost phase around ``e``). A step's own work outside the
    hooked parts is ``rest``; work with no phase around it ran on another thread (on a GPU, the backward's)."""
    inside, phase = False, None
    parent = e.cpu_parent
    while parent is not None:
        inside = inside or parent.name.startswith("aten::")
        if phase is None and parent.name.startswith("phase:"):
            phase = parent.name[6:]
        parent = parent.cpu_parent
    return inside, {"step": "rest", None: "other threads"}.get(phase, phase)


def profile_steps(step, modules_by_phase: dict[str, list], steps: int, device: torch.device, trace: Path | None = None) -> dict:
    """Profiles ``steps`` calls of ``step()`` (one training step each: forward, backward, optimiser).

    ``step`` opens the ``phase:backward`` and ``phase:optimiser`` ranges itself (``record_function``);
    the forward phases come from module hooks. Returns per-step averages (see the module docstring)."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    ranges = PhaseRanges(modules_by_phase)
    try:
        if cuda:
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                with record_function("phase:step"):
                    step()
            if cuda:
                torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) / steps
    finally:
        ranges.close()
    events = prof.events()
    host = {p: 0.0 for p in (*PHASES, "step")}
    launches: dict[str, int] = {}  # per phase: kernel launches on a GPU, top-level aten operators on the CPU
    kernels_us = 0.0
    kernel_time: dict[str, float] = {}
    for e in events:
        if e.name.startswith("phase:"):
            host[e.name[6:]] = host.get(e.name[6:], 0.0) + e.cpu_time_total / 1e3
        elif e.name.startswith(LAUNCH_PREFIXES if cuda else "aten::"):
            inside, phase = _context(e)
            if cuda or not inside:
                launches[phase] = launches.get(phase, 0) + 1
        if e.device_type == DeviceType.CUDA:  # a kernel, copy or memset
            kernels_us += e.self_device_time_total
            kernel_time[e.name] = kernel_time.get(e.name, 0.0) + e.self_device_time_total
        elif not cuda and e.name.startswith("aten::"):  # on the CPU the operators are the kernels
            kernel_time[e.name] = kernel_time.get(e.name, 0.0) + e.self_cpu_time_total
    if trace is not None:
        trace.parent.mkdir(parents=True, exist_ok=True)
        raw = trace.with_suffix("")
        prof.export_chrome_trace(str(raw))
        with open(raw, "rb") as src, gzip.open(trace, "wb") as dst:
            shutil.copyfileobj(src, dst)
        raw.unlink()
    per = {k: v / steps for k, v in host.items()}
    per["rest"] = max(per["step"] - sum(per[p] for p in PHASES), 0.0)
    top = sorted(kernel_time.items(), key=lambda kv: -kv[1])[:12]
    return {"wall_ms": 1e3 * wall, "host_ms": per, "launches": {k: v / steps for k, v in launches.items()},
            "device_ms": kernels_us / 1e3 / steps if cuda else None,
            "top": [(name, us / 1e3 / steps) for name, us in top]}


def format_profile(name: str, p: dict) -> str:
    """A few lines a person can read: the step's wall time, host time per phase, launches, device busy, top kernels."""
    h = p["host_ms"]
    phases = ", ".join(f"{k} {h[k]:.1f}" for k in (*PHASES, "rest"))
    busy = "" if p["device_ms"] is None else f"; device busy {p['device_ms']:.1f} ms = {100 * p['device_ms'] / p['wall_ms']:.0f}% of the wall"
    what = "kernel launches" if p["device_ms"] is not None else "top-level aten ops"
    per_phase = ", ".join(f"{k} {v:.0f}" for k, v in sorted(p["launches"].items(), key=lambda kv: -kv[1]))
    lines = [f"{name}: {p['wall_ms']:.1f} ms/step unsynchronised{busy}",
             f"    host ms: {phases}",
             f"    {sum(p['launches'].values()):.0f} {what}/step: {per_phase}"]
    for kname, ms in p["top"]:
        lines.append(f"    {ms:7.2f} ms  {kname[:110]}")
    return "\n".join(lines)
