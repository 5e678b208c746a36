"""Train the toy prior: a pixel-space text-to-image diffusion model on toy-world renders (CPU-sized).

    python -m threedgen.toy.train_prior --out assets/toy-prior --steps 4500 --max-minutes 88 --seed 0 --threads 2 [--resume]

Why this shape: the prior is saved in the diffusers folder layout (``unet/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``, ``model_index.json``) so ``DDPMPrior`` loads it through the same
``from_pretrained`` calls as Stable Diffusion. Noise schedule = SD's (scaled-linear beta 0.00085-0.012,
1000 steps, epsilon prediction); ``clip_sample=False`` because pixel-space sampling with clipping collapses
at useful guidance scales. The text encoder is trained jointly with the UNet;
an EMA of both is what gets saved.

Determinism: every step's batch, captions, noise and timesteps come from a generator seeded by
(seed, step), so a resumed run draws exactly what an uninterrupted one would. A checkpoint (weights, EMA,
optimiser, step, elapsed time) is written atomically every ``--ckpt-minutes`` and at the end, together with
the exported folder, so an interrupted run always leaves a usable prior behind.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import world as W
from ..utils.atomic import save_torch

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)

UNET_CONFIG = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    cross_attention_dim=64,
    attention_head_dim=2,
    norm_num_groups=8,
)
"""1.7 M parameters; text cross-attention at 16x16 and 8x8 (2 heads of 32 channels).

Why 16x16: the white dot is ~2 pixels across at 16x16 and sub-pixel at 8x8; with cross-attention only at
8x8 (the first prior) the model never learned to draw it. 2 wide heads instead of 8 narrow ones keep a
step at ~0.86 s (batch 32, 2 CPU cores) against 0.64 s for the 8x8-only model; 8 heads of 8 cost 1.4 s."""


def build_unet(seed: int = 0, camera: bool = False):
    """The toy UNet; ``camera``: also conditioned on each image's camera (threedgen/guidance/camera_condition.py)."""
    from diffusers import UNet2DConditionModel

    from ..guidance.camera_condition import CAMERA_DIM

    torch.manual_seed(seed)
    extra = dict(class_embed_type="projection", projection_class_embeddings_input_dim=CAMERA_DIM) if camera else {}
    return UNet2DConditionModel(**UNET_CONFIG, **extra)


def build_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG)


def save_prior(out: Path, unet, text_encoder, tokenizer, extra: dict | None = None) -> None:
    """Write the diffusers folder layout (each component via ``save_pretrained``) plus ``model_index.json``."""
    import diffusers
    from .tokenizer import write_tokenizer_files
    from .world import VOCABULARY

    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(out / "tokenizer")
    write_tokenizer_files(out, VOCABULARY)
    build_scheduler().save_pretrained(out / "scheduler")
    index = {
        "_class_name": "ToyPriorPipeline",
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "vae": [None, None],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    if extra is not None:
        (out / "training.json").write_text(json.dumps(extra, indent=2) + "\n")


def checkpoint_path(cache_dir: str, kind: str, out: Path) -> Path:
    """Where a toy training script keeps its resumable checkpoint for the folder ``out``: under the cache,
    named after ``out``'s absolute path, never inside the shipped folder (the folder is made)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(Path(out).resolve()).strip("/"))
    path = Path(cache_dir) / kind / slug / "checkpoint.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def require_toy_prior(base: Path) -> None:
    """Exit with one line unless ``base`` is a toy prior folder to fine-tune from."""
    if not (Path(base) / "unet").is_dir():
        raise SystemExit(f"--base {base}: not a toy prior folder (no unet/)")


def _atomic_save(obj, path: Path) -> None:
    save_torch(obj, path)


@torch.no_grad()
def _ema_update(ema: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    torch._foreach_mul_(ema, decay)
    torch._foreach_add_(ema, params, alpha=1.0 - decay)


def loss_weights(t: torch.Tensor, alphas_cumprod: torch.Tensor, marker: torch.Tensor, min_snr_gamma: float,
                 marker_weight: float) -> torch.Tensor:
    """Per-pixel weights [B,1,H,W] of the epsilon MSE: Min-SNR-gamma per timestep times a marker boost.

    Min-SNR (Hang et al. 2023): for epsilon prediction the weight is min(SNR, gamma) / SNR, which stops the
    nearly-clean timesteps (huge SNR, trivial denoising) from dominating the gradient; it converges several
    times faster for the same steps. The marker boost multiplies the loss on pixels the white dot covers
    (dilated by one pixel) by ``1 + marker_weight``: the dot is ~2 % of a front-view image, too small a
    share of the loss for a CPU-budget run to learn it otherwise. It tilts the posterior for captions
    without a view word slightly towards views that show the dot (documented in the prior's README).
    """
    snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
    w_t = (snr.clamp(max=min_snr_gamma) / snr) if min_snr_gamma > 0 else torch.ones_like(snr)
    boost = 1.0 + marker_weight * F.max_pool2d(marker, 3, stride=1, padding=1)
    return w_t.view(-1, 1, 1, 1) * boost


def _load_weights(folder: Path, unet, text_encoder) -> None:
    """Copy a saved prior's (EMA) weights into the fresh modules; the architectures must match."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    if not (folder / "unet").is_dir() or not (folder / "text_encoder").is_dir():
        raise SystemExit(f"--init-from {folder}: not a prior folder (needs unet/ and text_encoder/)")
    missing, unexpected = unet.load_state_dict(UNet2DConditionModel.from_pretrained(folder / "unet").state_dict(), strict=False)
    if unexpected or any(not k.startswith("class_embedding.") for k in missing):
        raise SystemExit(f"--init-from {folder}: its UNet is not this one's architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if missing:  # a camera embedding added to a text-only prior: its output starts at 0, so the prior starts unchanged
        torch.nn.init.zeros_(unet.class_embedding.linear_2.weight)
        torch.nn.init.zeros_(unet.class_embedding.linear_2.bias)
    text_encoder.load_state_dict(CLIPTextModel.from_pretrained(folder / "text_encoder").state_dict())
    print(f"initialised from {folder}", flush=True)


def _camera_table(ds: dict) -> torch.Tensor:
    """``[N,16]`` camera vectors of the dataset's images (from their elevation, azimuth and distance)."""
    from ..data.cameras import make_cameras
    from ..guidance.camera_condition import camera_vectors

    n = len(ds["elevation"])
    cams = make_cameras(ds["elevation"], ds["azimuth"], ds["distance"], ds["fovy"], 32, 32)
    return camera_vectors(cams.c2w, n)


def image_weights(shapes: torch.Tensor, specs: list[str]) -> torch.Tensor | None:
    """Per-image draw weights from ``SHAPE=W`` strings (None: uniform); a bad spec exits with one line."""
    if not specs:
        return None
    w = torch.ones(shapes.shape[0])
    for spec in specs:
        name, _, val = spec.partition("=")
        try:
            factor = float(val)
        except ValueError:
            factor = -1.0
        if name not in W.SHAPES or not factor > 0:
            raise SystemExit(f"--shape-weight {spec!r}: expected SHAPE=W with SHAPE in {', '.join(W.SHAPES)} and W > 0")
        w[shapes == W.SHAPES.index(name)] = factor
    return w


def lr_at(step: int, base: float, total: int, warmup: int = 100, floor: float = 0.1) -> float:
    """Linear warm-up, then cosine decay to ``floor * base`` at ``total`` steps."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


def high_noise_weights(t: torch.Tensor, alphas_cumprod: torch.Tensor, cap: float) -> torch.Tensor:
    """``clamp(1 / SNR, 1, cap)`` per sample: the epsilon loss weighted as the clean-image (x0) error where
    the noise dominates. An epsilon error there is ``SNR`` times the x0 error it stands for (0.04 at t = 800
    of 1000), so an unweighted loss hardly sees what only those levels decide (a clip's direction, a cube's yaw). 1 (the default ``cap``) leaves the loss as it was."""
    snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
    return (1.0 / snr).clamp(min=1.0, max=max(cap, 1.0))


def draw_timesteps(n: int, num_train: int, high_share: float, generator: torch.Generator) -> torch.Tensor:
    """Uniform levels, except that a ``high_share`` of the batch is drawn from the upper half, where the
    noisy clip no longer shows which way the object moves and only the caption can tell."""
    t = torch.randint(0, num_train, (n,), generator=generator)
    high = torch.rand(n, generator=generator) < high_share
    return torch.where(high, torch.randint(num_train // 2, num_train, (n,), generator=generator), t)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="assets/toy-prior")
    ap.add_argument("--steps", type=int, default=4500)
    ap.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this much training time")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt if present")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--min-snr-gamma", type=float, default=5.0, help="Min-SNR loss weighting (0 = plain MSE)")
    ap.add_argument("--marker-weight", type=float, default=3.0,
                    help="extra loss weight on the white dot's pixels (0 = none)")
    ap.add_argument("--views-per-scene", type=int, default=160)
    ap.add_argument("--cache-dir", default=".cache")
    ap.add_argument("--ckpt-minutes", type=float, default=4.0)
    ap.add_argument("--ckpt", default=None, help="training checkpoint (default <cache-dir>/train_prior/<out>/checkpoint.pt, "
                    "kept out of the shipped folder)")
    ap.add_argument("--threads", type=int, default=1, help="1 beats 2 on a shared 2-core machine (no thread barriers)")
    ap.add_argument("--init-from", default=None,
                    help="start from the weights of a saved prior folder (fine-tuning a shipped prior longer)")
    ap.add_argument("--shape-weight", action="append", default=[], metavar="SHAPE=W",
                    help="draw this shape's images W times as often (e.g. cube=2 for the hardest shape)")
    ap.add_argument("--high-noise-share", type=float, default=0.0, help="share of each batch drawn from the upper half of the noise levels")
    ap.add_argument("--x0-weight-cap", type=float, default=1.0, help="weight noisy levels as their clean-image error, up to this factor (1: off)")
    ap.add_argument("--camera-lr-scale", type=float, default=1.0, help="learning-rate factor of the camera embedding")
    ap.add_argument("--camera", action="store_true", help="condition on each image's camera (a multi-view prior; "
                    "10%% of images train with the camera unknown)")
    ap.add_argument("--no-interim-export", action="store_true",
                    help="export the folder only at the end (not at each checkpoint), e.g. while others use it")
    args = ap.parse_args(argv)

    from tqdm import tqdm

    from .dataset import all_captions, load_dataset, sample_captions
    from .tokenizer import build_text_encoder, build_tokenizer, tokenize

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = Path(args.ckpt) if args.ckpt else checkpoint_path(args.cache_dir, "train_prior", out)
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)

    ds = load_dataset(args.cache_dir, views_per_scene=args.views_per_scene, seed=args.seed)
    images = ds["images"].float().div_(127.5).sub_(1.0)  # [-1, 1]
    marker_masks = ds["marker_mask"].float().div_(255.0)
    tokenizer = build_tokenizer()
    caption_ids = tokenize(tokenizer, [""] + all_captions())  # [1 + C, 77]
    text_encoder = build_text_encoder(tokenizer, seed=args.seed)
    unet = build_unet(seed=args.seed, camera=args.camera)
    cams = _camera_table(ds) if args.camera else None
    sched = build_scheduler()
    alphas_cumprod = sched.alphas_cumprod.float()
    if args.init_from:
        _load_weights(Path(args.init_from), unet, text_encoder)
    draw_weights = image_weights(ds["shape"], args.shape_weight)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    cam_ids = {id(q) for n, q in unet.named_parameters() if n.startswith("class_embedding.")}
    opt = torch.optim.AdamW([{"params": [q for q in params if id(q) not in cam_ids]},
                             {"params": [q for q in params if id(q) in cam_ids], "lr_scale": args.camera_lr_scale}],
                            lr=args.lr, weight_decay=0.01)
    ema = [p.detach().clone() for p in params]
    step, elapsed, losses = 0, 0.0, []

    if args.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        unet.load_state_dict(ck["unet"])
        text_encoder.load_state_dict(ck["text_encoder"])
        opt.load_state_dict(ck["opt"])
        for e, v in zip(ema, ck["ema"]):
            e.copy_(v)
        step, elapsed, losses = ck["step"], ck["elapsed"], ck["losses"]
        print(f"resumed from {ckpt_path} at step {step} ({elapsed / 60:.1f} min trained)", flush=True)

    n_unet = sum(p.numel() for p in unet.parameters())
    n_te = sum(p.numel() for p in text_encoder.parameters())
    print(
        f"toy prior: {images.shape[0]} images, UNet {n_unet / 1e6:.2f} M params, text encoder {n_te / 1e6:.2f} M, "
        f"batch {args.batch_size}, {args.steps} steps, seed {args.seed}",
        flush=True,
    )

    def checkpoint():
        _atomic_save(
            dict(
                unet=unet.state_dict(),
                text_encoder=text_encoder.state_dict(),
                opt=opt.state_dict(),
                ema=ema,
                step=step,
                elapsed=elapsed,
                losses=losses,
                args=vars(args),
            ),
            ckpt_path,
        )
        if not args.no_interim_export:
            export()

    def export():
        # copy EMA weights into fresh modules and save them in the diffusers layout
        e_unet, e_te = build_unet(camera=args.camera), build_text_encoder(tokenizer)
        e_params = list(e_unet.parameters()) + list(e_te.parameters())
        with torch.no_grad():
            for p, e in zip(e_params, ema):
                p.copy_(e)
        recent = losses[-200:]
        info = dict(
            steps=step,
            train_minutes=round(elapsed / 60, 2),
            final_loss_avg200=(sum(recent) / len(recent)) if recent else None,
            args=vars(args),
            images=int(images.shape[0]),
            unet_params=n_unet,
            text_encoder_params=n_te,
        )
        save_prior(out, e_unet, e_te, tokenizer, extra=info)

    unet.train()
    text_encoder.train()
    last_ckpt = time.time()
    bar = tqdm(total=args.steps, initial=step, desc="toy prior", mininterval=5.0, smoothing=0.05)
    t_start = time.time() - elapsed
    while step < args.steps:
        if args.max_minutes is not None and elapsed >= args.max_minutes * 60:
            print(f"\nstopping at step {step}: reached --max-minutes {args.max_minutes}", flush=True)
            break
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        if draw_weights is None:
            idx = torch.randint(0, images.shape[0], (args.batch_size,), generator=g)
        else:
            idx = torch.multinomial(draw_weights, args.batch_size, replacement=True, generator=g)
        x0 = images[idx]
        cap = sample_captions(ds, idx, generator=g)
        noise = torch.randn(x0.shape, generator=g)
        t = draw_timesteps(args.batch_size, sched.config.num_train_timesteps, args.high_noise_share, g)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.lr, args.steps) * group.get("lr_scale", 1.0)
        enc = text_encoder(caption_ids[cap]).last_hidden_state
        kw = {}
        if cams is not None:  # 10% with the camera unknown (zeros), as sampling without cameras passes
            kw["class_labels"] = cams[idx] * (torch.rand(len(idx), 1, generator=g) >= 0.1)
        pred = unet(xt, t, enc, **kw).sample
        err = (pred - noise).pow(2)
        w = loss_weights(t, alphas_cumprod, marker_masks[idx], args.min_snr_gamma, args.marker_weight)
        w = w * high_noise_weights(t, alphas_cumprod, args.x0_weight_cap).view(-1, 1, 1, 1)
        opt.zero_grad(set_to_none=True)
        (w * err).mean().backward()
        loss = err.mean().detach()  # logged: the plain epsilon MSE, comparable across weightings
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        _ema_update(ema, [p.detach() for p in params], decay)
        step += 1
        losses.append(float(loss))
        elapsed = time.time() - t_start
        bar.update(1)
        if step % 20 == 0:
            recent = losses[-100:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", lr=f"{lr_at(step, args.lr, args.steps):.1e}")
        if time.time() - last_ckpt > args.ckpt_minutes * 60:
            checkpoint()
            last_ckpt = time.time()
    bar.close()
    checkpoint()
    if args.no_interim_export:
        export()
    recent = losses[-200:]
    print(
        f"done: {step} steps in {elapsed / 60:.1f} min ({elapsed / max(1, step):.2f} s/step incl. resumes), "
        f"loss (mean of last {len(recent)}) {sum(recent) / max(1, len(recent)):.4f}; saved {out}",
        flush=True,
    )


if __name__ == "__main__":
    main()
