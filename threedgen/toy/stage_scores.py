"""ToyBench scores of every stage (and every particle) of one finished run: where a multi-stage recipe
gains or loses the object, and how far apart a multi-particle run's scenes are.

    python -m threedgen.toy.stage_scores RUN_FOLDER --recipe configs/toy/nerf-to-gaussian.yaml --prompt "a red cube"
    python -m threedgen.toy.stage_scores RUN_FOLDER --recipe configs/toy/vsd-nerf.yaml --prompt "a red cube" system.particles=2

Each stage's final checkpoint (``ckpts/<stage>.ckpt``) is rendered over ToyBench's orbit and scored
against the analytic object as ``bench.py`` scores a run (IoU, colour error), with the mean alpha of the
renders (a small or soft object shows as a low one). docs/objectives.md ("Toy recipe fixes") used it
to find which stage of magic3d and nerf-to-gaussian lost the shape. A run with ``system.particles`` > 1
(ProlificDreamer's particles) gets one row per particle and, per stage, ``particle_diversity``: the mean
absolute RGB difference between every two particles' orbit renders (white background), 0 when the
particles are the same object — the number ProlificDreamer's "VSD particles are diverse, SDS's collapse"
claim is about.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from . import world as W
from .bench import orbit, particle_diversity, score


def stage_scores(run: Path, recipe: Path, prompt: str, overrides: tuple = ()) -> list[dict]:
    from ..config import load_config
    from ..systems.runner import load_system, plan_stages

    cfg, raw = load_config(recipe, [*overrides, f"system.prompt={prompt}"])
    scene = W.parse_prompt(prompt)
    rows = []
    for stage in plan_stages(cfg, raw, run):
        if not stage.final.is_file():
            rows.append({"stage": stage.name, "missing": str(stage.final)})
            continue
        system = load_system(stage.cfg, stage.final)
        n = int(getattr(system.cfg, "particles", 1))
        orbits = []
        for i in range(n):
            outs = system.render_views(orbit(), particle=i)
            rgb, alpha = torch.cat([o.rgb for o in outs]).cpu(), torch.cat([o.alpha for o in outs]).cpu()
            row = {"stage": stage.name, **({"particle": i} if n > 1 else {})}
            rows.append({**row, **score(rgb, alpha, scene), "mean_alpha": float(alpha.mean())})
            orbits.append((rgb, alpha))
        if n > 1:
            rows.append({"stage": stage.name, "particle_diversity": particle_diversity(orbits)})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--recipe", type=Path, required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("overrides", nargs="*", help="key=value overrides the run was launched with (system.particles=2)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    for row in stage_scores(args.run, args.recipe, args.prompt, tuple(args.overrides)):
        print("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
