"""A small CNN that names what a 32x32 toy image shows: shape, colour, visible front marker, view bin.

Why: ToyBench and the prior's quality gates need to judge images that have no analytic ground truth
(diffusion samples, renders of an optimised scene seen by the prior's eyes). The classifier is trained
on analytic renders, with mild noise/shift augmentation so it tolerates the prior's imperfections.

The marker label is *visibility* (at least one pixel of the white dot is in view), not the scene
attribute: that is what "is the front marker where the front should be" (the Janus score) needs.

    python -m threedgen.toy.classifier --out assets/toy-prior/classifier [--minutes 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..prompts.views import VIEWS
from . import world as W

HEADS = {"shape": W.SHAPES, "colour": W.COLOUR_NAMES, "marker": ("absent", "present"), "view": VIEWS}
"""Label names per head; ``classify`` returns indices into these tuples."""
LOSS_WEIGHTS = {"shape": 1.0, "colour": 1.0, "marker": 2.0, "view": 1.0}
"""The small white dot is the slowest head to learn; weighting it up makes it converge in a few minutes."""


class ToyClassifier(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        c = width

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.SiLU(),
                                 nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.SiLU())

        self.features = nn.Sequential(
            block(3, c), nn.MaxPool2d(2), block(c, 2 * c), nn.MaxPool2d(2), block(2 * c, 4 * c), nn.MaxPool2d(2)
        )  # 4x4 spatial
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(4 * c * 16, 256), nn.SiLU())
        self.heads = nn.ModuleDict({k: nn.Linear(256, len(v)) for k, v in HEADS.items()})
        self.width = width

    def forward(self, rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        """``rgb`` [B,3,32,32] in [0,1] -> logits per head."""
        h = self.fc(self.features(rgb * 2 - 1))
        return {k: head(h) for k, head in self.heads.items()}


def render_labelled(views_per_scene: int, seed: int, ssaa: int = 2, res: int = 32) -> dict:
    """Renders of every scene from ``TOY_CAMERAS`` views with (shape, colour, marker-visible, view) labels."""
    from ..data.cameras import RandomCameraSampler
    from ..prompts.views import view_index
    from .render import render_scene

    scenes = W.all_scenes()
    n = len(scenes) * views_per_scene
    cams = RandomCameraSampler(W.TOY_CAMERAS, seed=seed).sample(0, batch_size=n).with_resolution(res, res)
    sidx = torch.arange(len(scenes)).repeat_interleave(views_per_scene).tolist()
    out = render_scene([scenes[i] for i in sidx], cams, ssaa=ssaa)
    return dict(
        rgb=out["rgb"],
        shape=torch.tensor([W.SHAPES.index(scenes[i].shape) for i in sidx]),
        colour=torch.tensor([W.COLOUR_NAMES.index(scenes[i].colour) for i in sidx]),
        marker=(out["marker"].sum(dim=(1, 2, 3)) >= 1.0).long(),
        view=view_index(cams.elevation_deg, cams.azimuth_deg),
    )


def _cached(cache_dir, views_per_scene: int, seed: int) -> dict:
    """``render_labelled`` cached under ``cache_dir`` (keyed by the render version and arguments)."""
    from .dataset import RENDER_VERSION

    path = Path(cache_dir) / f"toy-classifier-data-v{RENDER_VERSION}-{views_per_scene}-{seed}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    data = render_labelled(views_per_scene, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
    return data


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mimic what diffusion samples get wrong: tinted background, pixel noise, coloured speckles, soft or
    wobbly edges, colour drift. Without this the classifier calls most imperfect samples "cube"."""
    B, C, H, Wd = x.shape
    # tinted, blotchy background instead of pure white (samples' backgrounds drift to ~0.85-0.95)
    bg = (x.min(dim=1, keepdim=True).values > 0.99).float()
    tint = 1 - 0.2 * torch.rand(B, 1, 1, 1, generator=g) * torch.rand(B, 3, 1, 1, generator=g)
    blotch = F.interpolate(torch.randn(B, 3, 4, 4, generator=g), size=(H, Wd), mode="bilinear", align_corners=False)
    x = bg * (tint + 0.05 * torch.rand(B, 1, 1, 1, generator=g) * blotch) + (1 - bg) * x
    shift = torch.randint(-2, 3, (2,), generator=g).tolist()
    x = torch.roll(x, shifts=shift, dims=(2, 3))
    # low-frequency warp of up to ~1.5 px: blobby, irregular silhouettes
    flow = F.interpolate(torch.randn(B, 2, 4, 4, generator=g), size=(H, Wd), mode="bilinear", align_corners=False)
    flow = flow * (torch.rand(B, 1, 1, 1, generator=g) * 1.5 * 2 / H)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, Wd), indexing="ij")
    grid = torch.stack([xs, ys], -1).expand(B, H, Wd, 2) + flow.permute(0, 2, 3, 1)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
    # blur some images a little
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    a = torch.rand(B, 1, 1, 1, generator=g) * (torch.rand(B, 1, 1, 1, generator=g) < 0.4)
    x = (1 - a) * x + a * blur
    # sparse coloured speckles (1-2 px) and Gaussian pixel noise
    p = 0.05 * torch.rand(B, 1, 1, 1, generator=g)
    spots = (torch.rand(B, 1, H, Wd, generator=g) < p).float()
    grow = F.max_pool2d(spots, 2, stride=1, padding=1)[..., :H, :Wd]
    spots = torch.maximum(spots, grow * (torch.rand(B, 1, 1, 1, generator=g) < 0.5))
    colour = torch.rand(B, 3, H, Wd, generator=g)
    alpha = 0.2 + 0.6 * torch.rand(B, 1, 1, 1, generator=g)
    x = x + spots * alpha * (colour - x)
    x = x + 0.1 * torch.rand(B, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
    x = x * (1 + 0.05 * torch.randn(B, 3, 1, 1, generator=g)) + 0.05 * torch.randn(B, 1, 1, 1, generator=g)
    return x.clamp(0, 1)


def accuracy(model: ToyClassifier, data: dict, batch: int = 512) -> dict[str, float]:
    model.eval()
    correct = {k: 0 for k in HEADS}
    with torch.no_grad():
        for s in range(0, data["rgb"].shape[0], batch):
            logits = model(data["rgb"][s : s + batch])
            for k in HEADS:
                correct[k] += (logits[k].argmax(-1) == data[k][s : s + batch]).sum().item()
    return {k: v / data["rgb"].shape[0] for k, v in correct.items()}


def save_classifier(model: ToyClassifier, out: Path, info: dict) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "model.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, out / "model.safetensors")
    cfg = {"width": model.width, "resolution": 32, "heads": {k: list(v) for k, v in HEADS.items()}, **info}
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def load_classifier(path: str | os.PathLike, device="cpu") -> ToyClassifier:
    """Load ``config.json`` + ``model.safetensors`` written by ``save_classifier``."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())
    model = ToyClassifier(width=cfg["width"])
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    return model.to(device).eval()


@torch.no_grad()
def classify(model: ToyClassifier, rgb: torch.Tensor) -> dict[str, torch.Tensor]:
    """Predicted label indices per head (``HEADS`` names them) and softmax probabilities (``<head>_prob``)."""
    if rgb.shape[-2:] != (32, 32):
        rgb = F.interpolate(rgb, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    logits = model(rgb.clamp(0, 1).to(next(model.parameters()).device))
    out = {k: v.argmax(-1).cpu() for k, v in logits.items()}
    out.update({f"{k}_prob": v.softmax(-1).cpu() for k, v in logits.items()})
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="train the toy-world classifier")
    ap.add_argument("--out", default="assets/toy-prior/classifier")
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--views-per-scene", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--cache-dir", default=".cache")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    train = _cached(args.cache_dir, args.views_per_scene, seed=args.seed + 101)
    test = _cached(args.cache_dir, 20, seed=args.seed + 202)
    print(f"rendered {train['rgb'].shape[0]} train / {test['rgb'].shape[0]} held-out images in {time.time() - t0:.1f}s")
    model = ToyClassifier(width=args.width)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(args.seed)
    n, bs = train["rgb"].shape[0], 128
    steps_per_epoch = n // bs
    total = args.epochs * steps_per_epoch
    # cosine learning rate over progress = max(step fraction, time fraction), so a --minutes cap still anneals
    t1, step, epoch, progress = time.time(), 0, 0, 0.0
    while progress < 1.0:
        model.train()
        perm = torch.randperm(n, generator=g)
        for s in range(steps_per_epoch):
            progress = max(step / total, (time.time() - t1) / (args.minutes * 60))
            if progress >= 1.0:
                break
            for group in opt.param_groups:
                group["lr"] = 3e-3 * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * progress))
            idx = perm[s * bs : (s + 1) * bs]
            logits = model(_augment(train["rgb"][idx], g))
            loss = sum(LOSS_WEIGHTS[k] * F.cross_entropy(logits[k], train[k][idx]) for k in HEADS)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        epoch += 1
        acc = accuracy(model, test)
        print(f"epoch {epoch} (step {step}, {time.time() - t1:.0f}s): loss {loss.item():.3f} held-out "
              + " ".join(f"{k} {v:.3f}" for k, v in acc.items()), flush=True)
    acc = accuracy(model, test)
    info = {"held_out_accuracy": acc, "train_images": n, "held_out_images": int(test["rgb"].shape[0]),
            "epochs": epoch, "steps": step, "train_seconds": round(time.time() - t1, 1)}
    save_classifier(model, Path(args.out), info)
    print(f"saved {args.out}: held-out accuracy {json.dumps(acc)}")


if __name__ == "__main__":
    main()
