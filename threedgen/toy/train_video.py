"""Train the toy video prior: the toy image prior inflated with motion modules (AnimateDiff's
``UNetMotionModel``) and taught the toy motions (``video_dataset.py``).

    python -m threedgen.toy.train_video --base assets/toy-prior --out assets/toy-video --steps 1500 --threads 1

Why inflate rather than train a video model from scratch: the image prior already knows every toy object
at 32²; a ``UNetMotionModel`` built from it with its motion modules' output projections at zero starts
as exactly the image prior applied per frame (``tests/test_toy_video.py``), so a CPU budget is spent
only on motion. Trained: the motion modules, the cross-attention layers (so the new words reach the
frames) and the token embeddings of the motion words, which the tokenizer adds to the toy vocabulary
(every old word keeps its embedding). Resumable (``--resume``), checkpointed every few minutes, with
the EMA weights exported at each checkpoint; an export alone continues too (``--init-from``), which is how
a training longer than a session outlives its machine. Progress shows the rate and the ETA.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .train_prior import (_atomic_save, _ema_update, build_scheduler, checkpoint_path, draw_timesteps, high_noise_weights,  # noqa: F401
                          loss_weights, lr_at, require_toy_prior)
from .video_dataset import FRAME_WORDS, FRAMES, frame_captions, load_clip_dataset
from .video_prior_model import extend_text_side, motion_unet_from, read_export, save_video_prior


OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up", "bouncing": "down"}


def swap_direction(text: str) -> str:
    """The caption with its motion replaced by the opposite one ("bouncing" by "moving down")."""
    from .video_dataset import caption as motion_caption, parse_motion

    scene, motion = parse_motion(text)
    return motion_caption(scene, OPPOSITE[motion])


def sweep_clips(captions: list[str], generator: torch.Generator) -> torch.Tensor:
    """Indices of the clips that sweep one way (left, right, up, down) in random order: the clips whose opposite
    direction is the same motion mirrored, so a gap between the two captions is the direction's sign alone
    (a bouncing clip's "opposite", moving down, also differs in its path: with it the gap grew while left and
    right were read alike; docs/4d.md)."""
    from .video_dataset import parse_motion

    order = torch.randperm(len(captions), generator=generator)
    return order[torch.tensor([parse_motion(captions[int(i)])[1] != "bouncing" for i in order])]


def direction_gap(unet, text_encoder, x0, ids, swapped_ids, acp, t_min: int = 700, seed: int = 0, t_max: int | None = None) -> dict:
    """Clean-clip error of held clips at high noise (t in [t_min, t_max)) with their caption and with the
    opposite direction: the prior follows the caption's direction only where the first is clearly below the second."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(t_min, t_max or len(acp), (len(x0),), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    a = acp[t].view(-1, 1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    out = {}
    was_training = unet.training
    unet.eval()
    with torch.no_grad():
        for key, tok_ids in (("caption", ids), ("opposite", swapped_ids)):
            enc = per_frame(text_encoder, tok_ids, x0.shape[2])
            eps = unet(xt, t, encoder_hidden_states=enc).sample
            x0_hat = (xt - (1 - a).sqrt() * eps) / a.sqrt()
            out[key] = float((x0_hat.clamp(-1, 1) - x0).pow(2).mean())
    unet.train(was_training)
    return out


def per_frame(text_encoder, ids: torch.Tensor, frames: int) -> torch.Tensor:
    """Text states of ``B`` clips as the UNet reads them, one row per frame ``[B*F, L, D]``, from token ids
    ``[B, R, 77]``: ``R = F`` per-frame captions (``--frame-words``) or ``R = 1``, each clip's caption repeated."""
    enc = text_encoder(ids.flatten(0, 1)).last_hidden_state
    return enc if ids.shape[1] == frames else enc.repeat_interleave(frames, 0)


def caption_ids(tokenizer, texts: list[str], frame_words: bool) -> torch.Tensor:
    """Token ids ``[N, R, 77]`` of ``texts``: ``R = FRAMES`` per-frame captions with ``frame_words``, else 1."""
    from .tokenizer import tokenize

    if not frame_words:
        return tokenize(tokenizer, texts)[:, None]
    return tokenize(tokenizer, [c for t in texts for c in frame_captions(t)]).view(len(texts), FRAMES, -1)


def training_caption_ids(tokenizer, captions: list[str], frame_words: bool) -> torch.Tensor:
    """Token ids ``[1 + N, R, 77]``: row 0 the dropped caption (classifier-free guidance's unconditional branch),
    then ``captions``. The dropped caption is the empty one in every frame, with no frame word, because that is what
    every sampler passes as the unconditional branch (``evaluate_video``, ``video_sds``, ``clip_anchor``); with
    ``--frame-words`` it used to be "frame zero" … "frame seven", so the prior was guided against a caption it
    had never been trained on."""
    ids = caption_ids(tokenizer, [""] + captions, frame_words)
    ids[0] = caption_ids(tokenizer, [""], False)[0]
    return ids


def direction_contrast(err_caption: torch.Tensor, err_opposite: torch.Tensor, margin: float) -> torch.Tensor:
    """Hinge on per-clip errors: a clip must be denoised at least ``1 + margin`` times better under its own
    caption than under the opposite direction. The plain loss hardly sees the direction once one word is
    shared by many scenes (docs/4d.md, fifth attempt); this term sees nothing else. Zero once the gap is open."""
    return torch.relu((1.0 + margin) * err_caption - err_opposite).mean()


def curriculum_clips(captions: list[str], scenes: int, seed: int = 0) -> torch.Tensor:
    """Indices of the clips of ``scenes`` toy scenes drawn at random (every motion of each). With one motion
    word shared by 35 scenes the loss hardly sees the direction, while on two clips the gap opens within 75
    steps (docs/4d.md): a run can first learn the direction on few scenes, then widen to all."""
    from .video_dataset import parse_motion

    names = [parse_motion(c)[0].prompt for c in captions]
    distinct = sorted(set(names))
    if not 1 <= scenes <= len(distinct):
        raise ValueError(f"--curriculum-scenes must be in [1, {len(distinct)}] (the toy scenes with clips), got {scenes}")
    g = torch.Generator().manual_seed(seed)
    chosen = {distinct[i] for i in torch.randperm(len(distinct), generator=g)[:scenes].tolist()}
    return torch.tensor([i for i, n in enumerate(names) if n in chosen])


def trainable(unet, text_encoder, everything: bool = False, text_layers: bool = False) -> list[torch.nn.Parameter]:
    """Motion modules, cross-attention layers (or every UNet weight), the text encoder's layers when
    asked, and the token table (its old rows are masked in training); the token table is last."""
    ps = [p for n, p in unet.named_parameters() if everything or "motion_modules" in n or ".attn2." in n]
    table = text_encoder.get_input_embeddings().weight
    if text_layers:
        ps += [p for p in text_encoder.parameters() if p is not table]
    return ps + [table]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="assets/toy-prior")
    ap.add_argument("--out", default="assets/toy-video")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=4, help="clips per step")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--embedding-lr-scale", type=float, default=10.0,
                    help="learning-rate factor of the motion words' embeddings (0: frozen, which keeps a separated encoder separated)")
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--min-snr-gamma", type=float, default=5.0)
    ap.add_argument("--clips-per-pair", type=int, default=8, help="clips per (toy scene, motion) pair")
    ap.add_argument("--train-all", action="store_true", help="train every UNet weight, not only the motion modules and cross-attention")
    ap.add_argument("--high-noise-share", type=float, default=0.0, help="share of each batch drawn from the upper half of the noise levels")
    ap.add_argument("--x0-weight-cap", type=float, default=1.0, help="weight noisy levels as their clean-clip error, up to this factor (1: off)")
    ap.add_argument("--train-text-encoder", action="store_true", help="also train the text encoder's layers (the frozen ones pass the new words only faintly)")
    ap.add_argument("--separate-motions", type=int, default=300,
                    help="steps of motion-word separation of the text encoder before training (0: off; motion_text.py); "
                         "with --frame-words on the per-frame captions")
    ap.add_argument("--reseparate", action="store_true",
                    help="also separate the text encoder of an --init-from export (its words may have drifted together)")
    ap.add_argument("--motion-margin", type=float, default=0.3, help="gap the separation opens between a scene's motion captions")
    ap.add_argument("--motion-init-std", type=float, default=0.0, help="start the motion modules' output projections at N(0, std) (0: exactly the image prior)")
    ap.add_argument("--direction-contrast", type=float, default=0.0,
                    help="weight of the direction hinge (a clip, or a single frame, under its caption vs the opposite "
                         "direction's; 0: off, doubles the step's cost)")
    ap.add_argument("--direction-margin", type=float, default=0.1, help="relative margin of the direction hinge")
    ap.add_argument("--curriculum-scenes", type=int, default=0,
                    help="first draw clips of only this many toy scenes (every motion of each; 0: off)")
    ap.add_argument("--curriculum-steps", type=int, default=0, help="steps drawn from the curriculum's scenes before all scenes")
    ap.add_argument("--frame-words", action="store_true",
                    help="per-frame captions: each frame's caption ends in its index ('... frame three'; video_dataset.frame_captions)")
    ap.add_argument("--frame-steps", type=int, default=0,
                    help="first train this many steps on single frames (batch-size x frames of them, each from its own clip "
                         "with its frame's caption; needs --frame-words), then on clips")
    ap.add_argument("--bf16", action="store_true",
                    help="run the UNet's training passes under bfloat16 autocast (weights, optimiser and loss stay float32; "
                         "1.4x faster per step on one CPU thread)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init-from", default=None,
                    help="continue an exported toy video prior (its training.json's step and minutes; its weights as the live "
                         "and the EMA weights, a fresh optimiser): how a training outlives the machine it ran on when only "
                         "the export was kept. A --resume checkpoint, where there is one, wins")
    ap.add_argument("--cache-dir", default=".cache")
    ap.add_argument("--ckpt-minutes", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if not 0.0 <= args.high_noise_share <= 1.0:
        ap.error(f"--high-noise-share is a share of the batch in [0, 1], got {args.high_noise_share}")
    if not 1.0 <= args.x0_weight_cap <= 1e4:
        ap.error(f"--x0-weight-cap is a factor in [1, 1e4] (1: off), got {args.x0_weight_cap}")
    if not (0.0 <= args.direction_contrast <= 1e3 and 0.0 <= args.direction_margin <= 10.0):
        ap.error(f"--direction-contrast is a weight in [0, 1000] and --direction-margin a ratio in [0, 10], got "
                 f"{args.direction_contrast} and {args.direction_margin}")
    if args.frame_steps < 0 or (args.frame_steps > 0 and not args.frame_words):
        ap.error(f"--frame-steps trains on single frames, each read with its own caption: it needs --frame-words "
                 f"and a count >= 0, got {args.frame_steps}{'' if args.frame_words else ' without --frame-words'}")
    if args.curriculum_scenes < 0 or args.curriculum_steps < 0 or (args.curriculum_steps > 0) != (args.curriculum_scenes > 0):
        ap.error(f"--curriculum-scenes and --curriculum-steps go together, both > 0 (or both 0: off), got "
                 f"{args.curriculum_scenes} and {args.curriculum_steps}")

    from diffusers import UNet2DConditionModel
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    base, out = Path(args.base), Path(args.out)
    require_toy_prior(base)
    ckpt_path = checkpoint_path(args.cache_dir, "train_video", out)
    words = FRAME_WORDS if args.frame_words else ()
    tok, te, new_ids = extend_text_side(base, words)
    text_report = None
    resuming = args.resume and ckpt_path.exists()
    init = None if resuming or args.init_from is None else read_export(Path(args.init_from), args.frame_words, len(tok), ap.error)
    if init is not None:
        te, text_report = init["text_encoder"], init["report"].get("motion_text")
    t0 = time.time()
    ds = load_clip_dataset(args.cache_dir, args.clips_per_pair, seed=args.seed)
    clips = ds["clips"].float().div_(127.5).sub_(1.0)
    print(f"toy clips: {len(clips)} of {FRAMES} frames ({time.time() - t0:.0f} s incl. rendering if not cached)", flush=True)
    if args.separate_motions > 0 and not resuming and (init is None or args.reseparate):  # a resumed run reloads it instead
        from .motion_text import separate_motions

        text_report = separate_motions(tok, te, steps=args.separate_motions, margin=args.motion_margin, seed=args.seed,
                                       log=lambda m: print(m, flush=True),
                                       templates=frame_captions("{prompt}") if args.frame_words else ("{prompt}",))
        print(f"motion words separated: gap {text_report['before']['motion']:.3f} -> {text_report['after']['motion']:.3f} "
              f"(colour {text_report['after']['colour']:.3f}; static captions drift {text_report['static_caption_drift']:.3f})", flush=True)
    captions = sorted(set(ds["captions"]))
    ids = training_caption_ids(tok, captions, args.frame_words)  # [1 + captions, R, 77]
    row = {c: 1 + i for i, c in enumerate(captions)}  # a caption's row in ids (row 0: the empty caption)
    opposite_index = torch.tensor([0] + [row.get(swap_direction(c), 0) for c in captions])
    cap_index = torch.tensor([row[c] for c in ds["captions"]])
    unet = init["unet"] if init is not None else motion_unet_from(UNet2DConditionModel.from_pretrained(base / "unet"),
                                                                   args.motion_init_std, args.seed)
    unet.requires_grad_(False)
    te.requires_grad_(False)
    params = trainable(unet, te, args.train_all, args.train_text_encoder)
    motion_params = [p for n, p in unet.named_parameters() if "motion_modules" in n]
    for p in params:
        p.requires_grad_(True)
    old_rows = torch.ones(len(tok), 1)
    old_rows[new_ids] = 0.0
    te.get_input_embeddings().weight.register_hook(lambda g: g * (1 - old_rows))  # only the motion words learn
    opt = torch.optim.AdamW([{"params": params[:-1]}, {"params": params[-1:], "lr_scale": args.embedding_lr_scale}],
                            lr=args.lr, weight_decay=0.0)
    ema = [p.detach().clone() for p in params]
    sched = build_scheduler()
    acp = sched.alphas_cumprod.float()
    step, elapsed, losses = 0, 0.0, []
    if resuming:
        ck = torch.load(ckpt_path, weights_only=False)
        with torch.no_grad():
            for p, v in zip(params, ck["params"]):
                p.copy_(v)
            for e, v in zip(ema, ck["ema"]):
                e.copy_(v)
        opt.load_state_dict(ck["opt"])
        if "text_encoder" in ck:
            te.load_state_dict(ck["text_encoder"])
            text_report = ck.get("text_report")
        step, elapsed, losses = ck["step"], ck["elapsed"], ck["losses"]
        print(f"resumed from {ckpt_path} at step {step} ({elapsed / 60:.1f} min trained)", flush=True)
    elif init is not None:
        step, elapsed = int(init["report"]["steps"]), 60.0 * float(init["report"]["train_minutes"])
        print(f"continuing the exported prior {args.init_from} from step {step} ({elapsed / 60:.1f} min trained; "
              f"fresh optimiser)", flush=True)
    print(f"toy video prior: {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M UNet params, "
          f"{sum(p.numel() for p in params) / 1e6:.2f} M trained, {len(new_ids)} new tokens, batch {args.batch_size} clips", flush=True)

    first = curriculum_clips(ds["captions"], args.curriculum_scenes, args.seed) if args.curriculum_scenes else None
    if first is not None:
        print(f"curriculum: the first {args.curriculum_steps} steps draw from {len(first)} clips of {args.curriculum_scenes} scenes", flush=True)
    held = torch.Generator().manual_seed(12345)
    held_idx = sweep_clips(ds["captions"], held)[:32]
    swapped = caption_ids(tok, [swap_direction(ds["captions"][i]) for i in held_idx], args.frame_words)
    gap = None

    def export():
        nonlocal gap
        live = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
        gap = direction_gap(unet, te, clips[held_idx], ids[cap_index[held_idx]], swapped, acp)
        print(f"\nheld-out clean-clip error at t >= 700: caption {gap['caption']:.4f}, opposite direction {gap['opposite']:.4f}", flush=True)
        recent = losses[-200:]
        save_video_prior(out, base, unet, te, tok, dict(
            steps=step, train_minutes=round(elapsed / 60, 2), final_loss_avg200=(sum(recent) / len(recent)) if recent else None,
            args=vars(args), clips=len(clips), frames=FRAMES, captions=len(captions), motion_text=text_report,
            direction_gap=gap), words)
        with torch.no_grad():
            for p, v in zip(params, live):
                p.copy_(v)

    def checkpoint():
        _atomic_save(dict(params=[p.detach() for p in params], ema=ema, opt=opt.state_dict(), step=step, elapsed=elapsed,
                          losses=losses, args=vars(args), text_encoder=te.state_dict(), text_report=text_report), ckpt_path)
        export()

    unet.train()
    last = time.time()
    t_start = time.time() - elapsed
    bar = tqdm(total=args.steps, initial=step, desc="toy video", mininterval=5.0, smoothing=0.05)
    while step < args.steps:
        if args.max_minutes is not None and elapsed >= args.max_minutes * 60:
            print(f"\nstopping at step {step}: reached --max-minutes {args.max_minutes}", flush=True)
            break
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        single = step < args.frame_steps  # single frames: batch-size x FRAMES of them, each from its own clip
        n = args.batch_size * (FRAMES if single else 1)
        if first is not None and step < args.curriculum_steps:
            idx = first[torch.randint(0, len(first), (n,), generator=g)]
        else:
            idx = torch.randint(0, len(clips), (n,), generator=g)
        cap = torch.where(torch.rand(len(idx), generator=g) < 0.1, torch.zeros_like(idx), cap_index[idx])
        x0, cap_ids, frames = clips[idx], ids[cap], FRAMES
        if single:  # one random frame of each clip, read with that frame's caption
            fi = torch.randint(0, FRAMES, (len(idx),), generator=g)
            x0, cap_ids, frames = clips[idx, :, fi][:, :, None], ids[cap, fi][:, None], 1
        noise = torch.randn(x0.shape, generator=g)
        t = draw_timesteps(len(idx), sched.config.num_train_timesteps, args.high_noise_share, g)
        a = acp[t].view(-1, 1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.lr, args.steps) * group.get("lr_scale", 1.0)
        enc = per_frame(te, cap_ids, frames)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            pred = unet(xt, t, encoder_hidden_states=enc).sample.float()
        w = loss_weights(t, acp, torch.zeros(len(idx), 1, 1, 1), args.min_snr_gamma, 0.0).view(-1, 1, 1, 1, 1)
        w = w * high_noise_weights(t, acp, args.x0_weight_cap).view(-1, 1, 1, 1, 1)
        err = (w * (pred - noise).pow(2)).flatten(1).mean(1)  # per clip
        loss = err.mean()
        opp = opposite_index[cap]
        if args.direction_contrast > 0 and bool((opp > 0).any()):  # captioned clips whose opposite is a known caption
            keep = opp > 0
            enc_opp = per_frame(te, ids[opp[keep], fi[keep]][:, None] if single else ids[opp[keep]], frames)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                pred_opp = unet(xt[keep], t[keep], encoder_hidden_states=enc_opp).sample.float()
            err_opp = (w[keep] * (pred_opp - noise[keep]).pow(2)).flatten(1).mean(1)
            loss = loss + args.direction_contrast * direction_contrast(err[keep], err_opp, args.direction_margin)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if frames == 1:  # a motion module over one frame is a plain linear map: leave it as the clips will need it
            for p in motion_params:
                p.grad = None
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], 1.0)
        opt.step()
        _ema_update(ema, [p.detach() for p in params], min(args.ema, (1 + step) / (10 + step)))
        step += 1
        losses.append(float(loss.detach()))
        elapsed = time.time() - t_start
        bar.update(1)
        if step % 10 == 0:
            recent = losses[-100:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", lr=f"{lr_at(step, args.lr, args.steps):.1e}")
        if time.time() - last > args.ckpt_minutes * 60:
            checkpoint()
            last = time.time()
    bar.close()
    checkpoint()
    recent = losses[-200:]
    print(f"done: {step} steps in {elapsed / 60:.1f} min ({elapsed / max(1, step):.2f} s/step incl. resumes), "
          f"loss (mean of last {len(recent)}) {sum(recent) / max(1, len(recent)):.4f}; saved {out}", flush=True)


if __name__ == "__main__":
    main()
