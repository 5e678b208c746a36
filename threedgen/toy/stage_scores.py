"""ToyBench scores of every stage of one finished run: where a multi-stage recipe gains or loses the object.

    python -m threedgen.toy.stage_scores RUN_FOLDER --recipe configs/toy/nerf-to-gaussian.yaml --prompt "a red cube"

Each stage's final checkpoint (``ckpts/<stage>.ckpt``) is rendered over ToyBench's orbit and scored
against the analytic object as ``bench.py`` scores a run (IoU, colour error), with the mean alpha of the
renders (a small or soft object shows as a low one). docs/objectives.md ("Toy recipe fixes") used it
to find which stage of magic3d and nerf-to-gaussian lost the shape.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from . import world as W
from .bench import orbit, score


def stage_scores(run: Path, recipe: Path, prompt: str) -> list[dict]:
    from ..config import load_config
    from ..systems.runner import load_system, plan_stages

    cfg, raw = load_config(recipe, [f"system.prompt={prompt}"])
    rows = []
    for stage in plan_stages(cfg, raw, run):
        if not stage.final.is_file():
            rows.append({"stage": stage.name, "missing": str(stage.final)})
            continue
        outs = load_system(stage.cfg, stage.final).render_views(orbit())
        rgb, alpha = torch.cat([o.rgb for o in outs]).cpu(), torch.cat([o.alpha for o in outs]).cpu()
        rows.append({"stage": stage.name, **score(rgb, alpha, W.parse_prompt(prompt)), "mean_alpha": float(alpha.mean())})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--recipe", type=Path, required=True)
    ap.add_argument("--prompt", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    for row in stage_scores(args.run, args.recipe, args.prompt):
        print("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
