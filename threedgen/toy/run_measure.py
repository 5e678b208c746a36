"""Measuring finished toy runs in this process: run a bench's jobs (skipping those recorded), load a run's
final system, render Gaussians centred on the analytic objects' centre over ToyBench's orbit. Shared by
the edit bench and the motion bench."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable

import torch

from ..utils.atomic import write_bytes
from .bench import job_key, orbit, run_one


def run_jobs(kind: str, jobs: list[dict], recipe: Path, out: Path, overrides: list[str],
             measure: Callable[[object, dict], dict], hide: tuple[str, ...] = ()) -> list[dict]:
    """Train each job (``{"prompt", "seed", ...}``) not yet in ``<out>/rows`` in its own process, measure
    its final system with ``measure(system, job)``, record the row at once (a rerun skips it; a bench
    killed half-way keeps what it finished); returns every recorded row. ``hide``: row keys left out of
    the progress line."""
    rows_dir = out / "rows"
    rows_dir.mkdir(parents=True, exist_ok=True)
    for job in jobs:
        f = rows_dir / f"{job_key(kind, job['prompt'], job['seed'])}.json"
        if f.is_file():
            continue
        run, wall, rss = run_one(recipe, job["prompt"], job["seed"], out / "runs", overrides)
        row = {**job, "run": str(run), "wall_s": wall, "peak_rss_mb": rss, **measure(load_run(run, recipe, overrides), job)}
        write_bytes(f, json.dumps(row, indent=2).encode())
        print(json.dumps({k: v for k, v in row.items() if k not in hide}), flush=True)
    return [json.loads(p.read_text()) for p in sorted(rows_dir.glob("*.json"))]


def load_run(run: Path, recipe: Path, overrides: list[str]):
    """The system of a run's last stage, from its final checkpoint."""
    from ..config import load_config
    from ..systems.runner import load_system, plan_stages

    cfg, raw = load_config(recipe, overrides)
    stage = plan_stages(cfg, raw, run)[-1]
    return load_system(stage.cfg, stage.final)


class White:
    """A white background for measuring renders (the analytic objects are scored on white)."""

    def __call__(self, dirs):
        return torch.ones_like(dirs)


def opaque_bounds(gaussians, min_opacity: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """(centre, lowest point) of the bounding box of the Gaussians at least ``min_opacity`` opaque."""
    g = gaussians.activated()
    keep = g["opacities"] >= min_opacity
    m = g["means"][keep] if keep.any() else g["means"]
    lo, hi = m.amin(0), m.amax(0)
    return ((lo + hi) / 2).detach(), lo.detach()


@torch.no_grad()
def centred_orbit(renderer, gaussians, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Orbit renders (rgb ``[8,3,H,W]``, alpha ``[8,1,H,W]``) of ``gaussians`` (modified in place) moved so
    the middle of their opaque splats is the origin and scaled by ``scale``: the IoU then scores the
    shape, not where the run put it. A density field (a NeRF, or a moving one at one time) is not moved:
    the orbit's cameras move to the middle of its isosurface's box instead (``scale`` 1 only)."""
    if not hasattr(gaussians, "activated"):
        return _centred_field_orbit(renderer, gaussians, scale)
    centre, _ = opaque_bounds(gaussians)
    gaussians.params["means"].sub_(centre).mul_(scale)
    gaussians.params["scales"].add_(math.log(scale))
    gaussians.cfg = dataclasses.replace(gaussians.cfg, min_scale=gaussians.cfg.min_scale * scale)  # its own copy
    outs = [renderer(gaussians, c, White()) for c in (orbit()[i : i + 4] for i in (0, 4))]
    return torch.cat([o.rgb for o in outs]).detach(), torch.cat([o.alpha for o in outs]).detach()


def _centred_field_orbit(renderer, field, scale: float, resolution: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    from .video_dataset import moved_cameras

    if scale != 1.0:
        raise ValueError(f"a density field is scored at its own size (scale 1), got scale {scale}")
    dens = field.density_grid(resolution)
    idx = torch.nonzero(dens > field.auto_threshold(dens)).float()
    lin = 2 * field.radius / (resolution - 1)
    centre = (idx.amin(0) + idx.amax(0)) / 2 * lin - field.radius
    cams = orbit()
    cams = moved_cameras(cams, -centre.expand(len(cams), 3))
    outs = [renderer(field, cams[i : i + 4], White()) for i in (0, 4)]
    return torch.cat([o.rgb for o in outs]).detach(), torch.cat([o.alpha for o in outs]).detach()
