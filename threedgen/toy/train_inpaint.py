"""Train the toy inpainting prior and its depth ControlNet (issue 19), fine-tuned from the toy prior.

    python -m threedgen.toy.train_inpaint --base assets/toy-prior --out assets/toy-inpaint --steps 2000 --threads 1 [--resume]

What it learns: given a toy scene view (``edit_dataset.py``) with a hole (the centre object's
dilated visible alpha, or the insert box's silhouette, half of the time each — the edit system's
two mask modes), the caption of the centre object and the scene's disparity image, predict the
noise of the whole view. Why fine-tuned: the inpainting UNet starts as the toy prior's UNet with
its first convolution widened from 3 to 7 input channels (noisy image, mask, masked image; the new
weights zero, so step 0 is the toy prior), and the ControlNet is ``ControlNetModel.from_unet`` of
the toy prior (its zero convolutions make it a no-op at step 0) — the diffusers recipe for both.
The text encoder and tokenizer are the toy prior's, frozen, so prompts embed the same.

Saved as ``StableDiffusionControlNetInpaintPipeline``'s layout (``unet/`` of 7 input channels,
``controlnet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``), which ``DDPMPrior`` loads as an
inpainting prior with a ControlNet. Deterministic per (seed, step) and resumable like
``train_prior.py``, whose schedule, EMA and loss weighting it reuses.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import world as W
from .train_prior import _atomic_save, _ema_update, build_scheduler, checkpoint_path, loss_weights, lr_at, require_toy_prior

MASK_LOSS_BOOST = 2.0
"""Extra loss weight inside the hole: outside it the answer is in the input, inside it must be drawn."""


def inpaint_unet_from(base_unet):
    """The base UNet with ``conv_in`` widened to ``2C + 1`` input channels (new weights zero)."""
    from diffusers import UNet2DConditionModel

    c = base_unet.config.in_channels
    cfg = dict(base_unet.config)
    cfg["in_channels"] = 2 * c + 1
    unet = UNet2DConditionModel.from_config(cfg)
    sd = base_unet.state_dict()
    w = sd["conv_in.weight"]
    sd["conv_in.weight"] = torch.cat([w, torch.zeros(w.shape[0], c + 1, *w.shape[2:])], 1)
    unet.load_state_dict(sd)
    return unet


def captions() -> list[str]:
    """``[""] + one caption per world scene`` (index ``1 + i`` is ``world.all_scenes()[i]``)."""
    return [""] + [W.caption(sc) for sc in W.all_scenes()]


def draw_masks(ds: dict, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Per example the box silhouette or the object's visible alpha dilated by 1-3 pixels, as 0/1 floats."""
    box = ds["box_mask"][idx].float() / 255
    obj = (ds["object_alpha"][idx].float() / 255 > 0.05).float()
    k = torch.randint(1, 4, (len(idx),), generator=g)
    dil = torch.stack([F.max_pool2d(o[None], 2 * int(r) + 1, stride=1, padding=int(r))[0] for o, r in zip(obj, k)])
    use_box = torch.rand(len(idx), generator=g) < 0.5
    return torch.where(use_box.view(-1, 1, 1, 1), box, dil)


def save_inpaint_prior(out: Path, base: Path, unet, controlnet, extra: dict) -> None:
    import diffusers

    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    controlnet.save_pretrained(out / "controlnet", safe_serialization=True)
    for sub in ("text_encoder", "tokenizer"):
        shutil.copytree(base / sub, out / sub, dirs_exist_ok=True)
    if (base / "vocabulary.txt").is_file():  # the prompts it knows are the base's
        shutil.copy2(base / "vocabulary.txt", out / "vocabulary.txt")
    build_scheduler().save_pretrained(out / "scheduler")
    index = {
        "_class_name": "StableDiffusionControlNetInpaintPipeline", "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"], "controlnet": ["diffusers", "ControlNetModel"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"], "vae": [None, None],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "training.json").write_text(json.dumps(extra, indent=2) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="assets/toy-prior", help="the toy prior to fine-tune from")
    ap.add_argument("--out", default="assets/toy-inpaint")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--min-snr-gamma", type=float, default=5.0)
    ap.add_argument("--layouts", type=int, default=6, help="random layouts per (shape, colour) centre object")
    ap.add_argument("--views", type=int, default=12, help="views per layout")
    ap.add_argument("--cache-dir", default=".cache")
    ap.add_argument("--ckpt-minutes", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    from diffusers import ControlNetModel, UNet2DConditionModel
    from tqdm import tqdm
    from transformers import CLIPTextModel, CLIPTokenizer

    from .edit_dataset import load_edit_dataset
    from .tokenizer import tokenize

    torch.set_num_threads(args.threads)
    base, out = Path(args.base), Path(args.out)
    require_toy_prior(base)
    ckpt_path = checkpoint_path(args.cache_dir, "train_inpaint", out)

    t0 = time.time()
    ds = load_edit_dataset(args.cache_dir, layouts_per_object=args.layouts, views_per_layout=args.views, seed=args.seed)
    print(f"toy edit dataset: {len(ds['scene'])} views ({time.time() - t0:.0f} s incl. rendering if not cached)", flush=True)
    images = ds["images"].float().div_(127.5).sub_(1.0)
    control = (ds["disparity"].float() / 255).expand(-1, 3, -1, -1)
    tok = CLIPTokenizer.from_pretrained(base / "tokenizer")
    te = CLIPTextModel.from_pretrained(base / "text_encoder").eval().requires_grad_(False)
    with torch.no_grad():
        enc_table = te(tokenize(tok, captions())).last_hidden_state  # [1 + S, 77, D], frozen
    base_unet = UNet2DConditionModel.from_pretrained(base / "unet")
    unet = inpaint_unet_from(base_unet)
    controlnet = ControlNetModel.from_unet(base_unet, conditioning_embedding_out_channels=(16,))
    sched = build_scheduler()
    acp = sched.alphas_cumprod.float()
    params = list(unet.parameters()) + list(controlnet.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    ema = [p.detach().clone() for p in params]
    step, elapsed, losses = 0, 0.0, []
    if args.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        unet.load_state_dict(ck["unet"])
        controlnet.load_state_dict(ck["controlnet"])
        opt.load_state_dict(ck["opt"])
        for e, v in zip(ema, ck["ema"]):
            e.copy_(v)
        step, elapsed, losses = ck["step"], ck["elapsed"], ck["losses"]
        print(f"resumed from {ckpt_path} at step {step} ({elapsed / 60:.1f} min trained)", flush=True)
    n_u, n_c = (sum(p.numel() for p in m.parameters()) for m in (unet, controlnet))
    print(f"toy inpaint: UNet {n_u / 1e6:.2f} M + ControlNet {n_c / 1e6:.2f} M params, batch {args.batch_size}, "
          f"{args.steps} steps, seed {args.seed}", flush=True)

    def export():
        e_unet, e_cn = inpaint_unet_from(base_unet), ControlNetModel.from_unet(base_unet, conditioning_embedding_out_channels=(16,))
        with torch.no_grad():
            for p, e in zip(list(e_unet.parameters()) + list(e_cn.parameters()), ema):
                p.copy_(e)
        recent = losses[-200:]
        save_inpaint_prior(out, base, e_unet, e_cn, dict(
            steps=step, train_minutes=round(elapsed / 60, 2), final_loss_avg200=(sum(recent) / len(recent)) if recent else None,
            args=vars(args), views=int(len(ds["scene"])), unet_params=n_u, controlnet_params=n_c))

    def checkpoint():
        _atomic_save(dict(unet=unet.state_dict(), controlnet=controlnet.state_dict(), opt=opt.state_dict(), ema=ema,
                          step=step, elapsed=elapsed, losses=losses, args=vars(args)), ckpt_path)
        export()

    unet.train()
    controlnet.train()
    last = time.time()
    bar = tqdm(total=args.steps, initial=step, desc="toy inpaint", mininterval=5.0, smoothing=0.05)
    t_start = time.time() - elapsed
    n_img = images.shape[0]
    while step < args.steps:
        if args.max_minutes is not None and elapsed >= args.max_minutes * 60:
            print(f"\nstopping at step {step}: reached --max-minutes {args.max_minutes}", flush=True)
            break
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        idx = torch.randint(0, n_img, (args.batch_size,), generator=g)
        x0 = images[idx]
        m = draw_masks(ds, idx, g)
        masked = x0 * (1 - m)  # the hole is 0 in [-1, 1]: SD inpainting's convention
        cap = torch.where(torch.rand(len(idx), generator=g) < 0.1, torch.zeros_like(idx), 1 + ds["scene"][idx])
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=g)
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.lr, args.steps)
        enc = enc_table[cap]
        down, mid = controlnet(xt, t, encoder_hidden_states=enc, controlnet_cond=control[idx], return_dict=False)
        pred = unet(torch.cat([xt, m, masked], 1), t, enc, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample
        err = (pred - noise).pow(2)
        w = loss_weights(t, acp, torch.zeros_like(m), args.min_snr_gamma, 0.0) * (1 + MASK_LOSS_BOOST * m)
        opt.zero_grad(set_to_none=True)
        (w * err).mean().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        _ema_update(ema, [p.detach() for p in params], min(args.ema, (1 + step) / (10 + step)))
        step += 1
        losses.append(float((err.detach() * m).sum() / m.sum().clamp_min(1) / 3))  # logged: the hole's epsilon MSE
        elapsed = time.time() - t_start
        bar.update(1)
        if step % 20 == 0:
            recent = losses[-100:]
            bar.set_postfix(hole_mse=f"{sum(recent) / len(recent):.4f}", lr=f"{lr_at(step, args.lr, args.steps):.1e}")
        if time.time() - last > args.ckpt_minutes * 60:
            checkpoint()
            last = time.time()
    bar.close()
    checkpoint()
    recent = losses[-200:]
    print(f"done: {step} steps in {elapsed / 60:.1f} min ({elapsed / max(1, step):.2f} s/step incl. resumes), "
          f"hole epsilon MSE (mean of last {len(recent)}) {sum(recent) / max(1, len(recent)):.4f}; saved {out}", flush=True)


if __name__ == "__main__":
    main()
