"""Does a toy video prior follow its caption's direction? The direction gap per noise band.

    python -m threedgen.toy.video_gap /path/to/toy-video [--cache-dir DIR] [--clips 64]

For held clips of the toy clip dataset that sweep one way (not the bouncing ones), the clean-clip error of
the prior's (EMA-exported) prediction under the clip's own caption and under the opposite direction ("moving left" vs "moving right";
``train_video.direction_gap``), in bands of noise levels. A prior that reads the direction has a clearly
lower error under its caption, above all at the top levels, where the noisy clip shows nothing and the
caption alone can say where the object is in each frame; docs/4d.md reads these numbers. Per-frame
captions are used when the prior was trained with them (its ``training.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

BANDS = ((500, 700), (700, 900), (900, 950), (950, 1000))


def band_gaps(prior: Path, cache_dir: Path, clips: int = 64, draws: int = 2, bands=BANDS) -> list[dict]:
    from diffusers import UNetMotionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from .train_video import build_scheduler, caption_ids, direction_gap, swap_direction, sweep_clips
    from .video_dataset import load_clip_dataset

    info = json.loads((prior / "training.json").read_text()) if (prior / "training.json").is_file() else {}
    frame_words = bool(info.get("args", {}).get("frame_words", False))
    unet = UNetMotionModel.from_pretrained(prior / "unet").eval()
    te = CLIPTextModel.from_pretrained(prior / "text_encoder").eval()
    tok = CLIPTokenizer.from_pretrained(prior / "tokenizer")
    ds = load_clip_dataset(cache_dir, int(info.get("args", {}).get("clips_per_pair", 8)), seed=0)
    x0 = ds["clips"].float().div_(127.5).sub_(1.0)
    idx = sweep_clips(ds["captions"], torch.Generator().manual_seed(999))[:clips]
    caps = [ds["captions"][int(i)] for i in idx]
    ids = caption_ids(tok, caps, frame_words)
    opposite = caption_ids(tok, [swap_direction(c) for c in caps], frame_words)
    acp = build_scheduler().alphas_cumprod.float()
    rows = []
    for lo, hi in bands:
        gaps = [direction_gap(unet, te, x0[idx], ids, opposite, acp, t_min=lo, t_max=hi, seed=s) for s in range(draws)]
        c, o = (sum(g[k] for g in gaps) / draws for k in ("caption", "opposite"))
        rows.append({"band": (lo, hi), "caption": c, "opposite": o, "gap": (o - c) / o if o > 0 else 0.0})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("prior", type=Path)
    ap.add_argument("--cache-dir", type=Path, default=Path(".cache"), help="the clip cache train_video used (its --cache-dir)")
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--draws", type=int, default=2)
    args = ap.parse_args(argv)
    if not (args.prior / "unet").is_dir():
        ap.exit(2, f"error: {args.prior} is not an exported toy video prior (no unet/ folder); pass train_video's --out\n")
    if args.clips < 1 or args.draws < 1:
        ap.exit(2, f"error: --clips and --draws must be >= 1, got {args.clips} and {args.draws}\n")
    torch.set_num_threads(1)
    for r in band_gaps(args.prior, args.cache_dir, args.clips, args.draws):
        lo, hi = r["band"]
        print(f"t in [{lo}, {hi}): caption {r['caption']:.4f}  opposite {r['opposite']:.4f}  gap {100 * r['gap']:+.1f} %", flush=True)


if __name__ == "__main__":
    main()
