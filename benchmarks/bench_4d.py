"""4D step cost: a dynamic step (moving Gaussians, video SDS on 8-frame clips) against a static SDS step on
the same Gaussians and the same number of renders, in one process.

Static: render 8 views of the Gaussians, image SDS with the toy prior. Dynamic: render one 8-frame clip
through the deformation field (one rasterisation per time), video SDS with a video prior, the motion
smoothness regulariser. Steps alternate so drift hits both alike. Prints ms/step (median), the ratio,
and on CUDA the peak memory each allocates (``max_memory_allocated``); on a CPU only the process's peak
RSS (one process holds both variants, so a per-variant figure would mean nothing).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_4d.py --video assets/toy-video [--steps 10]
    python benchmarks/bench_4d.py --full-size       # a GPU: a zeroscope-size UNet3D with random weights
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch


def zeroscope_size_folder(folder: Path) -> Path:
    """A text-to-video folder with diffusers' default UNet3DConditionModel (ModelScope / zeroscope's size,
    random weights), SD's VAE size and a small random CLIP text encoder: the compute is the real UNet's."""
    import json

    from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    UNet3DConditionModel(cross_attention_dim=1024).save_pretrained(folder / "unet")
    AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4).save_pretrained(folder / "vae")
    chars = [chr(c) for c in range(33, 127)]
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    tok.save_pretrained(folder / "tokenizer")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=1024, intermediate_size=1024, num_hidden_layers=1,
                                 num_attention_heads=8)).save_pretrained(folder / "text_encoder")
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "TextToVideoSDPipeline", "unet": ["diffusers", "UNet3DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"]}))
    return folder


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", default="assets/toy-video", help="a text-to-video prior folder")
    ap.add_argument("--image", default="assets/toy-prior", help="the image prior of the static step")
    ap.add_argument("--full-size", action="store_true", help="a zeroscope-size UNet3D with random weights (GPU)")
    ap.add_argument("--resolution", type=int, default=32, help="render size")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    from threedgen.config import build_module
    from threedgen.data.cameras import make_cameras
    from threedgen.guidance.base import GuidanceInput
    from threedgen.prompts.processor import PromptProcessor
    from threedgen.renderers.background import SolidBackground

    video = str(zeroscope_size_folder(Path(tempfile.mkdtemp()) / "zeroscope-size")) if args.full_size else args.video
    if not Path(video).is_dir():
        raise SystemExit(f"--video {video}: no such folder (train the toy video prior: python -m threedgen.toy.train_video)")
    torch.manual_seed(0)
    static = build_module("representation", {"name": "gaussians", "num_points": 2000, "init_radius": 0.4, "init_opacity": 0.3}).to(dev)
    dyn = build_module("representation", {"name": "dynamic_gaussians", "num_points": 2000,
                                          "deformation": {"resolutions": [8, 16], "time_resolution": 8, "features": 8, "mlp_width": 32}}).to(dev)
    dyn.convert_from(static)
    ren = build_module("renderer", {"name": "gaussian"})
    bg = SolidBackground(SolidBackground.Config(color=(1.0, 1.0, 1.0)))
    sds = build_module("guidance", {"name": "sds", "prior": {"model": args.image}})
    vsds = build_module("guidance", {"name": "video_sds", "frames": args.frames, "grad_frames": 2 if args.full_size else 0,
                                     "prior": {"model": video}, "view_dependent": False})
    smooth = build_module("regulariser", "motion_smoothness")
    prompt = "a red cube moving left"
    b_img = PromptProcessor(PromptProcessor.Config(prompt="a red cube")).bundle(sds.prior)
    b_vid = PromptProcessor(PromptProcessor.Config(prompt=prompt, view_dependent=False)).bundle(vsds.prior)
    opt_s = torch.optim.Adam([p for g in static.param_groups() for p in g["params"]], lr=1e-3)
    opt_d = torch.optim.Adam([p for g in dyn.param_groups() for p in g["params"]], lr=1e-3)
    F_, R = args.frames, args.resolution
    times: dict[str, list[float]] = {"static": [], "dynamic": []}
    peaks: dict[str, float] = {}
    for step in range(args.steps + 1):
        for name in ("static", "dynamic"):
            g = torch.Generator().manual_seed(step)
            az = torch.rand(1, generator=g) * 70 - 35
            if name == "static":
                cams = make_cameras(torch.full((F_,), 15.0), torch.rand(F_, generator=g) * 360 - 180, 2.0, 52.5, R, R)
            else:
                cams = make_cameras(torch.full((F_,), 15.0), az.expand(F_), 2.0, 52.5, R, R, time=torch.linspace(0, 1, F_))
            if dev.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(dev)
            t = time.perf_counter()
            if name == "static":
                out = ren(static, cams, bg)
                loss = sds(GuidanceInput(rgb=out.rgb, cameras=cams), b_img, step)["loss_sds"]
                opt = opt_s
            else:
                out = ren(dyn, cams, bg)
                loss = vsds(GuidanceInput(rgb=out.rgb, cameras=cams), b_vid, step)["loss_video_sds"] + smooth(out, dyn, cams)
                opt = opt_d
            opt.zero_grad()
            loss.backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if step:
                times[name].append(time.perf_counter() - t)
                if dev.type == "cuda":
                    peaks[name] = max(peaks.get(name, 0.0), torch.cuda.max_memory_allocated(dev) / 2**20)
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    print(f"4D step on {dev.type}: {F_} renders at {R}² per step (dynamic: one {F_}-frame clip), {args.steps} steps each, "
          f"video prior {'zeroscope-size (random)' if args.full_size else video}:")
    for k in ms:
        mem = f"   peak allocated {peaks[k]:8.1f} MB" if k in peaks else ""
        print(f"  {k:8s} {ms[k]:8.1f} ms/step (median){mem}")
    if dev.type != "cuda":
        print(f"  peak RSS of the process (both variants) {rss_mb():.0f} MB")
    print(f"  ratio dynamic / static = {ms['dynamic'] / ms['static']:.2f}")


if __name__ == "__main__":
    main()
