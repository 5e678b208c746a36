"""Quality gates of the toy inpainting prior + depth ControlNet, on held-out toy scene views.

    python -m threedgen.toy.evaluate_inpaint [--prior assets/toy-inpaint] [--views 105]

Each held-out view (``edit_dataset.py`` with another seed: new layouts, new cameras) gets the insert
box's silhouette as its hole, the centre object's caption and the scene's disparity image; the prior
fills the hole (DDIM, CFG 5, 50 steps, through the project's own prior interface). Judged against
the true view, on the pixels the true centre object covers:

- ``colour``: each pixel is named by the nearest palette colour under any shading level
  (``pixel_colours``; the ground's grey and the sky are "none"); the caption's colour names more
  than half of the true object's pixels and more than any other colour — gate >= 80 %;
- ``object_iou``: the hole's pixels named the caption colour against the true object's pixels —
  gate mean >= 0.5 (the shape and place the depth implies);
- ``depth_matters``: the same with the disparity image of another view (a wrong depth): its
  ``object_iou`` must be lower than with the true depth — what the ControlNet adds.

Writes ``<prior>/samples.png`` (rows: true view, hole, sample with true depth, sample with wrong
depth) and ``<prior>/evaluation.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from . import world as W
from .scene_builder import GROUND_ALBEDO

GATES = {"colour": (">=", 0.80), "object_iou": (">=", 0.5)}


def _fill(prior, cond, uncond, x_true, hole, control, steps: int, scale: float, g: torch.Generator) -> torch.Tensor:
    from dataclasses import replace

    from ..guidance.levels import CLEAN

    image = {"mask": hole, "masked": x_true * (1 - hole), "control": control}
    c, u = replace(cond, **image), replace(uncond, **image)
    x = torch.randn(x_true.shape, generator=g)
    ts = torch.linspace(prior.levels.n - 1, 0, steps).round().long().tolist() + [CLEAN]
    for cur, nxt in zip(ts[:-1], ts[1:]):
        pred = prior.predict_guided(x, cur, c, u, scale)
        x = prior.ddim_step(x, cur, nxt, pred.eps, x0=pred.x0)
    return ((x + 1) / 2).clamp(0, 1)


def pixel_colours(image: torch.Tensor) -> torch.Tensor:
    """Per pixel ``[B,H,W]`` the index of the nearest palette colour (``world.COLOUR_NAMES``) under any
    shading level, or ``len(COLOUR_NAMES)`` for the ground's grey and the white sky."""
    albedo = torch.tensor([W.COLOURS[c] for c in W.COLOUR_NAMES] + [GROUND_ALBEDO, (1.0, 1.0, 1.0)])
    levels = torch.linspace(W.AMBIENT, 1.0, 8)
    cand = (albedo[:, None] * levels[None, :, None]).reshape(-1, 3)  # [(K+2)*8, 3]
    d = (image.permute(0, 2, 3, 1)[..., None, :] - cand).norm(dim=-1)
    label = d.argmin(-1) // len(levels)
    return label.clamp(max=len(W.COLOUR_NAMES))


def _judge(sample, truth, obj, hole, colour_idx) -> tuple[torch.Tensor, torch.Tensor]:
    """Per view: colour right (the most common palette colour on the true object's pixels, naming more
    than half of them) and the
    IoU of the hole's pixels painted in the caption colour with the true object's pixels."""
    lab = pixel_colours(sample)
    K = len(W.COLOUR_NAMES)
    on_obj = torch.stack([torch.bincount(l[o[0] > 0], minlength=K + 1)[:K] for l, o in zip(lab, obj)])  # [B,K]
    right = (on_obj.argmax(1) == colour_idx) & (on_obj.max(1).values > 0.5 * obj.flatten(1).sum(1))
    paint = (lab == colour_idx.view(-1, 1, 1)) & (hole[:, 0] > 0)
    inter = (paint & (obj[:, 0] > 0)).flatten(1).sum(1).float()
    union = (paint | (obj[:, 0] > 0)).flatten(1).sum(1).float().clamp_min(1)
    return right, inter / union


def evaluate(prior_path, views: int = 105, steps: int = 50, scale: float = 5.0, seed: int = 1, cache_dir=".cache") -> dict:
    from ..guidance.model_folder import PriorConfig
    from ..guidance.priors import load_prior
    from ..utils.images import make_grid, save_png
    from .edit_dataset import load_edit_dataset

    prior = load_prior(PriorConfig(model=str(prior_path), device="cpu"))
    ds = load_edit_dataset(cache_dir, layouts_per_object=1, views_per_layout=3, seed=seed)
    n = min(views, len(ds["scene"]))
    pick = torch.linspace(0, len(ds["scene"]) - 1, n).round().long()
    truth = ds["images"][pick].float() / 255
    hole = ds["box_mask"][pick].float() / 255
    obj = (ds["object_alpha"][pick].float() / 255 > 0.5).float() * hole
    control = (ds["disparity"][pick].float() / 255).expand(-1, 3, -1, -1)
    wrong = control.roll(1, 0)  # another view's depth
    scenes = W.all_scenes()
    colour_idx = torch.tensor([W.COLOUR_NAMES.index(scenes[int(i)].colour) for i in ds["scene"][pick]])
    cond = prior.encode_text([W.caption(scenes[int(i)]) for i in ds["scene"][pick]])
    uncond = prior.encode_text([""]).expand(n)
    x_true = truth * 2 - 1
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    with torch.no_grad():
        good = _fill(prior, cond, uncond, x_true, hole, control, steps, scale, g)
        bad = _fill(prior, cond, uncond, x_true, hole, wrong, steps, scale, g)
    right, iou = _judge(good, truth, obj, hole, colour_idx)
    _, iou_wrong = _judge(bad, truth, obj, hole, colour_idx)
    res = {
        "views": n, "steps": steps, "guidance_scale": scale, "seconds": round(time.time() - t0, 1),
        "colour": float(right.float().mean()), "object_iou": float(iou.mean()), "object_iou_wrong_depth": float(iou_wrong.mean()),
        "outside_psnr_db": float(-10 * torch.log10(((good - truth) ** 2 * (1 - hole)).sum() / ((1 - hole).sum() * 3))),
    }
    res["depth_matters"] = res["object_iou"] > res["object_iou_wrong_depth"]
    res["gates"] = {k: (res[k] >= v if op == ">=" else res[k] <= v) for k, (op, v) in GATES.items()}
    res["gates"]["depth_matters"] = res["depth_matters"]
    k = min(n, 12)
    save_png(Path(prior_path) / "samples.png", make_grid([list(truth[:k]), list(truth[:k] * (1 - hole[:k]) + 0.5 * hole[:k]),
                                                          list(good[:k]), list(bad[:k])]))
    (Path(prior_path) / "evaluation.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prior", default="assets/toy-inpaint")
    ap.add_argument("--views", type=int, default=105)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance-scale", type=float, default=5.0)
    ap.add_argument("--cache-dir", default=".cache")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = evaluate(args.prior, args.views, args.steps, args.guidance_scale, cache_dir=args.cache_dir)
    print(json.dumps(res, indent=2))
    if not all(res["gates"].values()):
        raise SystemExit(f"gates failed: {[k for k, ok in res['gates'].items() if not ok]}")


if __name__ == "__main__":
    main()
