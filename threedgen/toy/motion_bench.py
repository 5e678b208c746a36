"""Motion bench: run the toy 4D recipe and check that the object moves the way its prompt says.

    python -m threedgen.toy.motion_bench --directions left right up down --seeds 0 1 --out motion-bench

Per (direction, seed), after ``launch.py`` trains a toy 4D recipe (``--recipe``; by default ``RECIPE``,
the clip-anchored one, ``configs/toy/4d-anchored.yaml``) in its own process on "<object> moving
<direction>":

- ``motion``: the object's centroid, from its alpha in renders of one fixed front view at the clip's 8
  times, classified as the toy video prior's gates classify sampled clips (dominant axis and sign of
  the travel from the first to the last frame; ``threedgen/toy/evaluate_video.py``); ``travel_px`` is
  that travel at 32²;
- ``iou_min`` / ``iou_mean``: per frame, the object frozen at that time, centred and rendered over
  ToyBench's orbit, scored against the analytic object (``bench.score``): the shape kept while moving;
- ``wall_s``: the whole run (both stages).
Rows go to ``<out>/rows/<job>.json`` (reruns skip them); ``<out>/motion_bench.md`` is the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from . import world as W
from .bench import REPO, score
from .evaluate_video import classify_motion
from .run_measure import White, centred_orbit, run_jobs

RECIPE = REPO / "configs" / "toy" / "4d-anchored.yaml"
FRAMES = 8
DIRECTIONS = ("left", "right", "up", "down")


def alpha_centroids(alpha: torch.Tensor) -> torch.Tensor:
    """``[F,1,H,W]`` -> object centres ``[F,2]`` (x right, y down, pixels), NaN where empty."""
    fg = (alpha[:, 0] > 0.5).float()
    H, Wd = fg.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(Wd, dtype=torch.float32), indexing="ij")
    mass = fg.sum((-1, -2))
    return torch.stack([(fg * xs).sum((-1, -2)) / mass, (fg * ys).sum((-1, -2)) / mass], -1)


@torch.no_grad()
def measure(system, scene: W.ToyScene, frames: int = FRAMES) -> dict:
    from ..data.cameras import clip_times, still_cameras

    rep = system.representation
    times = clip_times(frames)
    out = system.renderer(rep, still_cameras(system.camera_cfg, times, 32), White())
    c = alpha_centroids(out.alpha.detach().cpu())
    travel = c[-1] - c[0]
    ious = []
    for t in times.tolist():
        rgb, alpha = centred_orbit(system.renderer, rep.frozen_at(t))
        ious.append(score(rgb, alpha, scene)["iou"])
    return {"motion": classify_motion(c), "travel_px": [round(float(v), 2) for v in travel],
            "centroids": [[round(float(v), 2) for v in p] for p in c], "iou_min": min(ious), "iou_mean": sum(ious) / len(ious),
            "iou_per_frame": [round(v, 4) for v in ious]}


def table(rows: list[dict]) -> str:
    lines = ["| prompt | seed | motion | travel px (x, y) | IoU min / mean over frames | wall s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['prompt']} | {r['seed']} | {r['motion']} | {r['travel_px'][0]:+.1f}, {r['travel_px'][1]:+.1f} | "
                     f"{r['iou_min']:.3f} / {r['iou_mean']:.3f} | {r['wall_s']:.0f} |")
    if rows:
        n = len(rows)
        right = sum(r["motion"] == r["direction"] for r in rows)
        kept = sum(r["iou_min"] >= 0.6 for r in rows)
        lines.append(f"| **all** | {n} runs | {right}/{n} right ({right / n:.0%}) | – | {kept}/{n} with every frame >= 0.6 | "
                     f"{sum(r['wall_s'] for r in rows) / n:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--object", default="a red cube", help="a toy object prompt without motion")
    ap.add_argument("--directions", nargs="+", default=list(DIRECTIONS), choices=DIRECTIONS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--recipe", default=str(RECIPE))
    ap.add_argument("--out", default="motion-bench")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the recipe")
    args = ap.parse_args(argv)
    try:
        scene = W.parse_prompt(args.object)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out, recipe = Path(args.out), Path(args.recipe)
    jobs = [{"prompt": f"{args.object} moving {d}", "direction": d, "seed": s} for s in args.seeds for d in args.directions]
    rows = run_jobs("motion", jobs, recipe, out, args.overrides, lambda system, job: measure(system, scene),
                    hide=("centroids", "iou_per_frame"))
    (out / "motion_bench.md").write_text(table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
