"""Quality gates of the toy video prior: does a sampled clip move the way its caption says, and does it
keep the named object in every frame?

    python -m threedgen.toy.evaluate_video --prior assets/toy-video --per-caption 4 --steps 30

Motion: a centroid tracker (pixels darker than the white background) gives each frame's object centre;
the clip's motion is the dominant axis and sign of the centre's travel from the first to the last frame
("left", "right", "up", "down"), or "bouncing" when the centre rises in the middle of the clip and comes
back (``classify_motion``). That reads only the clip's ends and its highest point, so frames that are
sampled independently (a prior whose motion modules learnt nothing) can pass by chance; a clip also
counts only when its whole centre path follows the caption's (``follows_path``: correlation >= 0.8 with
the training clips' path along the motion's axis, ``video_dataset.offsets``). Gate: both agree with the
caption in >= 80% of clips. A prior trained on per-frame captions
(``--frame-words``) is sampled with them. Object: the toy classifier
(``assets/toy-prior/classifier``) names the caption's shape and colour in every frame (reported).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from . import world as W
from .video_dataset import FRAMES, MOTIONS, caption, frame_captions, offsets

MIN_TRAVEL_PX = 2.0
"""Centre travel (pixels at 32²) below which a clip counts as not moving."""
MIN_PATH_CORRELATION = 0.8
"""How closely a clip's centre path must follow its caption's (``follows_path``)."""


def centroids(clips: torch.Tensor, threshold: float = 0.9) -> torch.Tensor:
    """``[N,3,F,H,W]`` in [0,1] -> object centres ``[N,F,2]`` (x right, y down, pixels); NaN where empty."""
    fg = (clips.min(1).values < threshold).float()  # [N,F,H,W]
    H, Wd = fg.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(Wd, dtype=torch.float32), indexing="ij")
    mass = fg.sum((-1, -2))
    return torch.stack([(fg * xs).sum((-1, -2)) / mass, (fg * ys).sum((-1, -2)) / mass], -1)


def classify_motion(c: torch.Tensor) -> str:
    """A clip's motion from its centres ``[F,2]``: one of ``MOTIONS`` or "still"."""
    if torch.isnan(c).any():
        return "still"
    d = c[-1] - c[0]
    rise = float((c[0, 1] + c[-1, 1]) / 2 - c[:, 1].min())  # how far above its ends the centre gets
    if rise >= MIN_TRAVEL_PX and rise > 1.5 * float(d.abs().max()):
        return "bouncing"
    if float(d.abs().max()) < MIN_TRAVEL_PX:
        return "still"
    if abs(float(d[0])) >= abs(float(d[1])):
        return "right" if d[0] > 0 else "left"
    return "down" if d[1] > 0 else "up"


def follows_path(c: torch.Tensor, motion: str) -> bool:
    """Whether centres ``[F,2]`` (x right, y down) move frame by frame as the caption's training clips do:
    the Pearson correlation of the centre's coordinate along the motion's axis with the clips' offsets
    (``video_dataset.offsets``; image y points down, world y up) is at least ``MIN_PATH_CORRELATION``."""
    if torch.isnan(c).any():
        return False
    want = offsets(motion, len(c))
    axis = 0 if motion in ("left", "right") else 1
    target = want[:, axis] if axis == 0 else -want[:, 1]
    got = c[:, axis] - c[:, axis].mean()
    target = target - target.mean()
    denom = float(got.norm() * target.norm())
    return denom > 0 and float((got * target).sum()) / denom >= MIN_PATH_CORRELATION


def frame_templates(prior_path) -> list[str]:
    """The per-frame caption templates a toy video prior was trained with (``train_video.py --frame-words``,
    recorded in its ``training.json``), else none."""
    meta = Path(prior_path) / "training.json"
    args = json.loads(meta.read_text()).get("args", {}) if meta.is_file() else {}
    return frame_captions("{prompt}") if args.get("frame_words") else []


def evaluate(prior_path: str, per_caption: int = 4, steps: int = 30, guidance_scale: float = 7.5, seed: int = 0,
             scenes: list[W.ToyScene] | None = None, frame_noise_share: float = 0.0) -> dict:
    from ..guidance.frame_prompts import frame_conditioning, per_frame
    from ..guidance.model_folder import PriorConfig
    from ..guidance.priors import get_prior
    from ..prompts.processor import PromptProcessor
    from .classifier import classify, load_classifier

    prior = get_prior(PriorConfig(model=prior_path, device="cpu"))
    if not prior.video:
        raise ValueError(f"{prior_path} is not a video prior")
    judge = load_classifier(Path(__file__).resolve().parents[2] / "assets" / "toy-prior" / "classifier")
    scenes = scenes or [W.ToyScene(s, c) for s, c in zip(W.SHAPES, ("red", "green", "blue", "yellow", "purple"))]
    templates = frame_templates(prior_path)
    rows = []
    g = torch.Generator().manual_seed(seed)
    for scene in scenes:
        for motion in MOTIONS:
            text = caption(scene, motion)
            bundle = PromptProcessor(PromptProcessor.Config(prompt=text, view_dependent=False)).bundle(prior)
            cond, uncond = bundle.cond, bundle.uncond
            if templates:  # a prior trained on per-frame captions is sampled with them
                cond, uncond = frame_conditioning(prior, [text], templates), per_frame(uncond, FRAMES)
            cond, uncond = cond.expand(per_caption), uncond.expand(per_caption)
            clips = prior.sample(cond, uncond, guidance_scale, n_steps=steps, generator=g, frames=FRAMES,
                                 frame_noise_share=frame_noise_share)
            cs = centroids(clips)
            got = [classify_motion(c) for c in cs]
            path = [follows_path(c, motion) for c in cs]
            frames = clips.transpose(1, 2).reshape(-1, 3, *clips.shape[-2:])
            lab = classify(judge, frames)
            obj = ((lab["shape"] == W.SHAPES.index(scene.shape)) & (lab["colour"] == W.COLOUR_NAMES.index(scene.colour)))
            rows.append({"caption": text, "motion": motion, "predicted": got, "follows_path": path,
                         "motion_ok": sum(m == motion and p for m, p in zip(got, path)) / len(got),
                         "endpoints_ok": sum(m == motion for m in got) / len(got),
                         "object_ok_frames": float(obj.float().mean())})
    n = len(rows)
    return {"motion_accuracy": sum(r["motion_ok"] for r in rows) / n,
            "endpoint_accuracy": sum(r["endpoints_ok"] for r in rows) / n,
            "by_motion": {m: sum(r["motion_ok"] for r in rows if r["motion"] == m) / len(scenes) for m in MOTIONS},
            "object_frames": sum(r["object_ok_frames"] for r in rows) / n, "rows": rows,
            "settings": {"per_caption": per_caption, "steps": steps, "guidance_scale": guidance_scale, "seed": seed,
                         "frame_noise_share": frame_noise_share}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prior", default="assets/toy-video")
    ap.add_argument("--per-caption", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--guidance-scale", type=float, default=7.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frame-noise-share", type=float, default=0.0,
                    help="share of the starting noise's variance common to a clip's frames (guidance/clip_noise.py; 0: independent)")
    ap.add_argument("--out", default=None, help="write the report here (JSON)")
    args = ap.parse_args(argv)
    if not 0.0 <= args.frame_noise_share <= 1.0:
        ap.error(f"--frame-noise-share is a share of the noise's variance in [0, 1], got {args.frame_noise_share}")
    torch.set_num_threads(1)
    try:
        rep = evaluate(args.prior, args.per_caption, args.steps, args.guidance_scale, args.seed,
                       frame_noise_share=args.frame_noise_share)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ok = rep["motion_accuracy"] >= 0.8
    print(f"motion accuracy {rep['motion_accuracy']:.3f} ({'pass' if ok else 'FAIL'}, gate 0.8; the ends alone "
          f"{rep['endpoint_accuracy']:.3f}); by motion "
          + " ".join(f"{m} {v:.2f}" for m, v in rep["by_motion"].items()) + f"; object named in {rep['object_frames']:.3f} of frames")
    if args.out:
        Path(args.out).write_text(json.dumps(rep, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
