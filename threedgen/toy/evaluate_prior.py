"""Quality gates of the shipped toy prior, judged by the toy classifier on DDIM samples.

    python -m threedgen.toy.evaluate_prior [--prior assets/toy-prior] [--samples-per-prompt 4]

Gates (why: SDS needs a prior that knows the object and where its front is):

- ``shape_colour``: samples of every "a {colour} {shape}" classified with the right shape *and* colour >= 90%;
- ``marker_front``: "... with a white dot, front view" samples show the marker >= 80%;
- ``marker_back``: "... with a white dot, back view" samples show the marker <= 10%.

Also measured, not gated: ``outline_iou`` per shape, the silhouette of each plain sample (pixels that
are not background white) against the best-matching true silhouette among 512 analytic renders of that
shape from the prior's own camera range. The classifier calls a star-outlined cube a cube; this number
does not, and SDS can only distil the outlines its prior draws.

Writes ``<prior>/samples.png`` (rows: shapes; columns: colours, then marker front / back samples) and
``<prior>/evaluation.json``; prints the numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

from . import world as W
from .classifier import classify, load_classifier
from .render import render_scene
from .sample import load_prior, sample, save_grid

GATES = {"shape_colour": (">=", 0.90), "marker_front": (">=", 0.80), "marker_back": ("<=", 0.10)}


def evaluate(
    prior_path, classifier_path, n: int = 4, guidance_scale: float = 5.0, steps: int = 50, seed: int = 0,
    cache_dir=".cache",
):
    prior = load_prior(prior_path)
    clf = load_classifier(classifier_path)
    plain = [W.ToyScene(s, c) for s in W.SHAPES for c in W.COLOUR_NAMES]
    prompts_plain = [W.caption(sc) for sc in plain for _ in range(n)]
    marked = [W.ToyScene(s, c, True) for s in W.SHAPES for c in W.COLOUR_NAMES]
    prompts_front = [W.caption(sc, "front") for sc in marked for _ in range(n)]
    prompts_back = [W.caption(sc, "back") for sc in marked for _ in range(n)]
    # samples are cached (keyed by the UNet file and the sampling settings) so that re-judging them with a
    # retrained classifier costs nothing
    unet_file = Path(prior_path) / "unet" / "diffusion_pytorch_model.safetensors"
    key = hashlib.sha1(f"prior-sampler-{unet_file.stat().st_mtime_ns}-{n}-{guidance_scale}-{steps}-{seed}".encode()).hexdigest()[:12]
    cache = Path(cache_dir) / f"toy-prior-eval-samples-{key}.pt"
    t0 = time.time()
    if cache.exists():
        imgs, secs = torch.load(cache)["images"], torch.load(cache)["seconds"]
    else:
        imgs = sample(prior, prompts_plain + prompts_front + prompts_back, guidance_scale, steps, seed, progress=True)
        secs = time.time() - t0
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"images": imgs, "seconds": secs}, cache)
    P = len(prompts_plain)
    x_plain, x_front, x_back = imgs[:P], imgs[P : 2 * P], imgs[2 * P :]

    pred = classify(clf, x_plain)
    shape_t = torch.tensor([W.SHAPES.index(sc.shape) for sc in plain]).repeat_interleave(n)
    colour_t = torch.tensor([W.COLOUR_NAMES.index(sc.colour) for sc in plain]).repeat_interleave(n)
    ok_shape, ok_colour = pred["shape"] == shape_t, pred["colour"] == colour_t
    pf, pb = classify(clf, x_front), classify(clf, x_back)
    res = {
        "shape_colour": (ok_shape & ok_colour).float().mean().item(),
        "shape": ok_shape.float().mean().item(),
        "colour": ok_colour.float().mean().item(),
        "per_shape": {s: (ok_shape & ok_colour)[shape_t == i].float().mean().item() for i, s in enumerate(W.SHAPES)},
        "per_colour": {
            c: (ok_shape & ok_colour)[colour_t == i].float().mean().item() for i, c in enumerate(W.COLOUR_NAMES)
        },
        "marker_front": (pf["marker"] == 1).float().mean().item(),
        "marker_back": (pb["marker"] == 1).float().mean().item(),
        "view_front_classified_front": (pf["view"] == 1).float().mean().item(),
        "view_back_classified_back": (pb["view"] == 2).float().mean().item(),
        "marker_prompts_shape_colour": ((pf["shape"] == shape_t) & (pf["colour"] == colour_t)).float().mean().item(),
        "samples": int(imgs.shape[0]),
        "samples_per_prompt": n,
        "guidance_scale": guidance_scale,
        "ddim_steps": steps,
        "sampling_seconds": round(secs, 1),
    }
    res["gates"] = {
        k: bool(res[k] >= thr if op == ">=" else res[k] <= thr) for k, (op, thr) in GATES.items()
    }
    res["outline_iou"] = outline_iou(x_plain, shape_t)
    # grid: one row per shape: its 7 colours, then 7 marker front-view samples, then 7 back-view samples
    nc = len(W.COLOUR_NAMES)
    rows = []
    for i in range(len(W.SHAPES)):
        sl = slice(i * nc * n, (i + 1) * nc * n, n)  # first sample of each prompt
        rows += [x_plain[sl], x_front[sl], x_back[sl]]
    grid = torch.cat(rows)
    return res, grid, 3 * nc


def outline_iou(images: torch.Tensor, shape_idx: torch.Tensor, bank: int = 512, white: float = 0.12) -> dict:
    """Per shape, the mean over samples of the best silhouette IoU against ``bank`` true renders."""
    from ..data.cameras import RandomCameraSampler

    H = images.shape[-1]
    cams = RandomCameraSampler(W.TOY_CAMERAS, seed=123).sample(0, batch_size=bank).with_resolution(H, H)
    fg = ((1.0 - images).abs().amax(1) > white).flatten(1).float()  # [N, H*W]
    out = {}
    for i, s in enumerate(W.SHAPES):
        sel = shape_idx == i
        if not sel.any():
            continue
        true = (render_scene(W.ToyScene(s, "red"), cams, ssaa=2)["mask"] > 0.5).flatten(1).float()  # [bank, H*W]
        inter = fg[sel] @ true.T
        union = fg[sel].sum(1, keepdim=True) + true.sum(1)[None] - inter
        out[s] = (inter / union.clamp_min(1)).amax(1).mean().item()
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="quality gates of the toy prior")
    ap.add_argument("--prior", default="assets/toy-prior")
    ap.add_argument("--classifier", default=None, help="default <prior>/classifier")
    ap.add_argument("--samples-per-prompt", type=int, default=4)
    ap.add_argument("--guidance-scale", type=float, default=5.0)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="1 is faster than 2 on a shared 2-core machine")
    ap.add_argument("--out", default=None, help="directory for samples.png / evaluation.json (default: the prior)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out or args.prior)
    res, grid, ncol = evaluate(
        args.prior, args.classifier or Path(args.prior) / "classifier", args.samples_per_prompt,
        args.guidance_scale, args.steps, args.seed,
    )
    save_grid(grid, out / "samples.png", ncol=ncol)
    (out / "evaluation.json").write_text(json.dumps(res, indent=2) + "\n")
    for k, (op, thr) in GATES.items():
        print(f"{k:14s} {res[k]:.3f}  (gate {op} {thr})  {'PASS' if res['gates'][k] else 'FAIL'}")
    print(f"shape {res['shape']:.3f} colour {res['colour']:.3f}; per shape "
          + " ".join(f"{s} {v:.2f}" for s, v in res["per_shape"].items()))
    print("outline IoU (best true view) " + " ".join(f"{s} {v:.3f}" for s, v in res["outline_iou"].items()))
    print(f"view classified as prompted: front {res['view_front_classified_front']:.3f} "
          f"back {res['view_back_classified_back']:.3f}; {res['samples']} samples in {res['sampling_seconds']}s")
    print(f"wrote {out / 'samples.png'} and {out / 'evaluation.json'}")


if __name__ == "__main__":
    main()
