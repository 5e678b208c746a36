"""Scene-edit bench: run the toy edit recipe and measure what issue 19 asks of an edit.

    python -m threedgen.toy.edit_bench --prompts "a yellow cone" "a green cylinder" --seeds 0 1 --out edit-bench

Per (prompt, seed), after ``launch.py`` trains ``configs/toy/edit-disds.yaml`` in its own process:

- ``iou`` / ``colour_err``: the inserted object's own Gaussians, centred (the middle of its opaque
  splats' bounding box) on the analytic objects' centre and scaled to unit size, rendered over
  ToyBench's orbit and scored against the analytic object as ToyBench scores a run (``bench.score``);
  ``best_shape``: the shape of the five with the highest IoU once each is compared at the object size
  that fits it best (``FIT_SCALES``): SDS picks the object's size freely inside the box, and a round
  object a little smaller than the analytic sphere otherwise scores as well against the smaller cube;
  ``fit_iou`` / ``fit_scale`` record that best fit for the prompt's shape;
- ``judge_shape`` / ``judge_share``: the shape ToyBench's classifier names most often on those renders,
  and in what share of the 8 views (IoU alone confuses a slightly large sphere with a cube);
- ``ground_gap``: height of the object's lowest opaque splat above the ground (the box's floor);
- ``inside_box``: share of the object's Gaussian centres inside the edit box;
- ``bg_identical``: the background Gaussians equal the scene file's, bit for bit;
- ``bg_psnr_db``: renders of the scene before and after the edit from 8 views around the box, on
  the pixels outside the box's silhouette dilated by 2 pixels (64x64);
- ``wall_s``: the whole run (both stages).
Rows go to ``<out>/rows/<job>.json`` (reruns skip them); ``<out>/edit_bench.md`` is the table.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from . import world as W
from .bench import REPO, score
from .run_measure import centred_orbit, opaque_bounds, run_jobs

RECIPE = REPO / "configs" / "toy" / "edit-disds.yaml"


FIT_SCALES = (0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2, 1.25)


def centred_render(system, scale: float = 1.0):
    """Orbit renders of the object alone, centred on the origin (the analytic objects' centre), at the
    toy objects' unit scale times ``scale``: the IoU scores its shape, not where in the box SDS put it
    (a flat torus sits mid-box unless something asks it onto the ground); ``ground_gap`` reports that
    placement separately."""
    from .edit_dataset import SCALE

    return centred_orbit(system.renderer, system.object_alone(), scale / SCALE)


def measure(system, scene: W.ToyScene) -> dict:
    from ..data.cameras import orbit_cameras
    from ..edit.scene_ply import read_splat_ply
    from ..edit.views import box_mask, dilate

    rep = system.representation
    rgb, alpha = centred_render(system)
    per_shape = {shape: score(rgb, alpha, W.ToyScene(shape, scene.colour)) for shape in W.SHAPES}
    from .classifier import classify, load_classifier

    fits = {}  # shape -> (IoU, scale) of the best-fitting size
    for s in FIT_SCALES:
        srgb, salpha = (rgb, alpha) if s == 1.0 else centred_render(system, s)
        for shape in W.SHAPES:
            iou = score(srgb, salpha, W.ToyScene(shape, scene.colour))["iou"]
            if iou > fits.get(shape, (-1.0, 0.0))[0]:
                fits[shape] = (iou, s)
    judged = classify(load_classifier(REPO / "assets" / "toy-prior" / "classifier"), rgb)  # the ToyBench judge
    votes = torch.bincount(judged["shape"], minlength=len(W.SHAPES))
    _, low = opaque_bounds(rep.object)
    means = rep.object.params["means"].detach()
    ref = read_splat_ply(Path(rep.cfg.scene) if not rep.cfg.scene.startswith("toy:") else _toy_path(rep.cfg.scene), rep.cfg.axes)
    identical = all(torch.equal(getattr(rep, f"bg_{k}").cpu(), torch.from_numpy(ref[k])) for k in ("means", "log_scales", "quats"))
    cams = orbit_cameras(system.camera_cfg, 8, 64)
    before, after = system.before_after(cams)
    keep = (1 - dilate(box_mask(cams, system.box), 2)).expand_as(before)
    mse = float(((before - after) ** 2 * keep).sum() / keep.sum().clamp_min(1))
    return {
        "iou": per_shape[scene.shape]["iou"], "colour_err": per_shape[scene.shape]["colour_err"],
        "best_shape": max(fits, key=lambda s: fits[s][0]),
        "fit_iou": fits[scene.shape][0], "fit_scale": fits[scene.shape][1],
        "fit_iou_by_shape": {s: round(v[0], 4) for s, v in fits.items()},
        "judge_shape": W.SHAPES[int(votes.argmax())], "judge_share": float(votes.max()) / len(judged["shape"]),
        "iou_by_shape": {s: round(v["iou"], 4) for s, v in per_shape.items()},
        "inside_box": float(rep.box.contains(means, margin=1e-6).float().mean()), "bg_identical": bool(identical),
        "ground_gap": float(low[1]) - float(rep.box.lo[1]),
        "bg_psnr_db": float("inf") if mse == 0 else -10 * math.log10(mse), "n_object": rep.object.num_gaussians,
    }


def _toy_path(spec: str) -> Path:
    from .scene_builder import toy_scene_path

    return toy_scene_path(spec)


def table(rows: list[dict]) -> str:
    lines = ["| prompt | seed | IoU | best shape (fitted IoU) | judge | colour err | ground gap | inside box | background identical | background PSNR dB | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        judge = f"{r['judge_shape']} {r['judge_share']:.2f}" if "judge_shape" in r else "–"
        fit = f" {r['fit_iou']:.3f} (x{r['fit_scale']:.2f})" if "fit_iou" in r else ""
        lines.append(f"| {r['prompt']} | {r['seed']} | {r['iou']:.3f} | {r['best_shape']}{fit} | {judge} | {r['colour_err']:.3f} | "
                     f"{r.get('ground_gap', float('nan')):.3f} | {r['inside_box']:.2f} | {r['bg_identical']} | {r['bg_psnr_db']:.1f} | {r['wall_s']:.0f} |")
    if rows:
        n = len(rows)
        right = sum(r["best_shape"] == W.parse_prompt(r["prompt"]).shape and r["iou"] >= 0.6 for r in rows)
        judged = sum(r.get("judge_shape") == W.parse_prompt(r["prompt"]).shape for r in rows)
        lines.append(f"| **all** | {n} runs | {sum(r['iou'] for r in rows) / n:.3f} | {right}/{n} right and IoU >= 0.6 | {judged}/{n} | "
                     f"{sum(r['colour_err'] for r in rows) / n:.3f} | – | {min(r['inside_box'] for r in rows):.2f} | "
                     f"{all(r['bg_identical'] for r in rows)} | {min(r['bg_psnr_db'] for r in rows):.1f} (min) | "
                     f"{sum(r['wall_s'] for r in rows) / n:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", nargs="+", default=["a yellow cone", "a green cylinder", "a purple torus", "an orange cube", "a red sphere"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--recipe", default=str(RECIPE))
    ap.add_argument("--out", default="edit-bench")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the recipe")
    args = ap.parse_args(argv)
    try:
        scenes = {p: W.parse_prompt(p) for p in args.prompts}
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out, recipe = Path(args.out), Path(args.recipe)
    jobs = [{"prompt": p, "seed": s} for p in args.prompts for s in args.seeds]
    rows = run_jobs("edit", jobs, recipe, out, args.overrides, lambda system, job: measure(system, scenes[job["prompt"]]),
                    hide=("iou_by_shape",))
    (out / "edit_bench.md").write_text(table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
