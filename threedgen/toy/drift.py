"""Each objective's expected update on the toy world's own renders: where does it move a correct object?

    python -m threedgen.toy.drift --recipes configs/toy/sds-nerf.yaml configs/toy/cds-nerf.yaml --prompt "a yellow cone" [KEY=VALUE ...]

An objective whose optimum is the object the prompt names leaves that object's exact renders in place
on average; one that drifts them (brighter, more saturated, flatter) will train every scene towards
the drift. For each recipe, the guidances the recipe builds (its prior, CFG, weighting, schedules and
gradient clip, as in training) are applied to exact renders of the prompt's toy object at the
recipe's own training cameras, and the gradient of the weighted guidance loss with respect to those
renders is averaged over ``--draws`` steps at each of ``--steps`` (the schedules' points). Printed per
step: the mean descent direction on object pixels per RGB channel, its correlation with the render's
own deviation from its mean (positive: more contrast, negative: flatter shading), and its mean size.
docs/objectives.md ("CDS's colour") reads these numbers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from . import world as W


def drift(recipe: Path, prompt: str, steps: list[int], draws: int, seed: int = 0, overrides: tuple = ()) -> list[dict]:
    """Per step in ``steps``: the mean descent direction of the recipe's guidance loss on the world's renders."""
    from ..config import load_config
    from ..guidance.base import GuidanceInput
    from ..systems.runner import build_system, plan_stages
    from .render import render_scene

    cfg, raw = load_config(recipe, [*overrides, f"system.prompt={prompt}", f"seed={seed}"])
    cfg = plan_stages(cfg, raw, Path("/nonexistent-drift-run"))[0].cfg  # the first stage: what trains first
    system = build_system(cfg)
    system.prepare_prompts()
    scene = W.parse_prompt(prompt)
    torch.manual_seed(seed)
    rows = []
    for step in steps:
        cams = system.sampler.sample(step)  # the step's training cameras; the draws differ in noise and timestep
        world = render_scene([scene] * len(cams), cams, ssaa=2)
        d = torch.zeros_like(world["rgb"])
        for g in system.guidances:  # schedules at this step, once (as the system does before a training step)
            g.update_step(0, step)
        for _ in range(draws):
            rgb = world["rgb"].clone().requires_grad_(True)
            total = 0.0
            for g, w, bundle in zip(system.guidances, system.guidance_weights, system._bundles):
                res = g(GuidanceInput(rgb=rgb, cameras=cams, alpha=world["mask"]), bundle, step)
                total = total + w(step) * sum(v for key, v in res.items() if key.startswith("loss_"))
            d -= torch.autograd.grad(total, rgb)[0] / draws
        obj = (world["mask"] > 0.5).expand_as(d)
        x, y = world["rgb"][obj], d[obj]
        corr = float(((x - x.mean()) * (y - y.mean())).mean() / (x.std() * y.std() + 1e-12))
        rows.append({"step": step, "rgb": [float(d[:, c][obj[:, c]].mean()) for c in range(3)], "contrast_corr": corr,
                     "size": float(y.abs().mean())})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipes", nargs="+", required=True)
    ap.add_argument("--prompt", default="a yellow cone")
    ap.add_argument("--steps", nargs="+", type=int, default=[0, 300, 550])
    ap.add_argument("--draws", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every recipe (an ablation)")
    args = ap.parse_args(argv)
    try:
        W.parse_prompt(args.prompt)
        if args.draws < 1 or any(s < 0 for s in args.steps):
            raise ValueError(f"--draws must be >= 1 and --steps >= 0, got {args.draws} and {args.steps}")
    except ValueError as e:
        ap.exit(2, f"error: {e}\n")
    torch.set_num_threads(args.threads)
    print("| recipe | step | mean update on the object, R / G / B | corr(update, render - mean) | mean size |")
    print("|---|---|---|---|---|")
    for r in args.recipes:
        for row in drift(Path(r), args.prompt, args.steps, args.draws, overrides=tuple(args.overrides)):
            rgb = " / ".join(f"{v:+.4f}" for v in row["rgb"])
            print(f"| {Path(r).stem} | {row['step']} | {rgb} | {row['contrast_corr']:+.3f} | {row['size']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
