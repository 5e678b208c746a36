"""Network evaluations and CPU step time of every score objective relative to SDS, on the tiny models
of every kind of prior.

    python benchmarks/bench_objectives.py [--batch 4] [--steps 5] [--threads 1] [--t 0.5]

One run, same free image, same tiny random priors (tests/tiny_models.py: a 16x16 pixel epsilon prior,
a Stable-Diffusion-layout latent prior with a VAE, and an SD3-layout flow-matching prior), a fixed
noise level around ``--t`` so the inversion objectives do a representative number of strides. Per
objective: network forward calls per step (the frozen prior's and, for VSD/ESD, the LoRA copy's) per
step as implemented (the branches of one level batched into one call of k*B), the calls a
one-branch-per-call implementation would make (sequential; = UNet evaluations per view), and the
median time of guidance forward + backward (encode, UNet, surrogate; no renderer), relative to SDS.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

OBJECTIVES = [
    ("sds", "sds", {}),
    ("csd", "csd", {}),
    ("csd +neg +perp-neg", "csd", {"coef_negative": -0.5, "coef_null": -0.5, "perp_neg": True}),
    ("csm (ddim_inversion)", "csm", {}),
    ("csm (fixed)", "csm", {"noise_mode": "fixed"}),
    ("cds", "cds", {"guidance_scale": 7.5}),
    ("ism", "ism", {"interval": 0.05}),
    ("sdi", "sdi", {"t_jitter": 0}),
    ("vsd", "vsd", {}),
    ("esd", "esd", {}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--t", type=float, default=0.5, help="noise level (fraction of T) of every objective")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import tiny_models
    from threedgen import registry
    from threedgen.config import from_dict
    from threedgen.data.cameras import make_cameras
    from threedgen.guidance.base import GuidanceInput
    from threedgen.guidance.model_folder import PriorConfig
    from threedgen.guidance.priors import load_prior
    from threedgen.prompts.processor import PromptProcessor

    tmp = Path(tempfile.mkdtemp(prefix="bench-objectives-"))
    os.environ["THREEDGEN_EMBEDDING_CACHE"] = str(tmp / "emb")
    priors = {
        "pixel 16x16": (tiny_models.build_pixel(tmp / "pixel"), 16),
        "latent SD (VAE, 32x32)": (tiny_models.build_sd(tmp / "sd"), 32),
        "flow SD3 (VAE, 32x32)": (tiny_models.build_sd3(tmp / "sd3"), 32),
    }
    B = args.batch
    cams = make_cameras(15.0, torch.linspace(-180, 135, B), 2.0, 50.0, 16, 16)
    t_pct = {"min_step_percent": args.t, "max_step_percent": args.t}
    print(f"threads={torch.get_num_threads()} batch={B} t={args.t} steps={args.steps} (median)")
    for pname, (path, res) in priors.items():
        prior = load_prior(PriorConfig(model=str(path), device="cpu"))
        prompts = PromptProcessor(PromptProcessor.Config(prompt="a red cube", negative_prompt="ugly")).bundle(prior)
        calls: list[int] = []
        count = lambda m, i, o: calls.append(len(o.sample))  # noqa: E731
        hooks = [prior.denoiser.register_forward_hook(count)]
        print(f"\n{pname}")
        print(f"{'objective':24s} {'net calls: batched':>18s} {'sequential':>10s} {'step ms':>8s} {'vs SDS':>7s}")
        built = []
        for label, name, kw in OBJECTIVES:
            cls = registry.get("guidance", name)
            extra = t_pct
            if name == "cds":  # t' so that t = t' + 0.1..0.3 of the range sits around --t
                extra = {"t_next": args.t - 0.15, "min_step_percent": 0.02}
            g = cls(from_dict(cls.Config, {"prior": {"model": str(path), "device": "cpu"}, **extra, **kw}), prior=prior)
            if hasattr(g, "lora"):
                hooks.append(g.lora.unet.register_forward_hook(count))
            built.append((label, g, torch.nn.Parameter(torch.rand(B, 3, res, res)), [], []))
        # round robin, so drift in a shared machine's speed hits every objective alike
        for r in range(args.steps + 2):
            for label, g, image, times, ncalls in built:
                calls.clear()
                t0 = time.perf_counter()
                out = g(GuidanceInput(rgb=image, cameras=cams), prompts, 0)
                sum(v for k, v in out.items() if k.startswith("loss_")).backward()
                if r >= 2:  # two warm-up rounds (allocator, first-call caches)
                    times.append(time.perf_counter() - t0)
                ncalls[:] = list(calls)
        base = None
        for label, g, image, times, ncalls in built:
            ms = 1000 * statistics.median(times)
            base = base or ms
            print(f"{label:24s} {len(ncalls):18d} {sum(ncalls) // B:10d} {ms:8.1f} {ms / base:6.2f}x")
        for h in hooks:
            h.remove()


if __name__ == "__main__":
    main()
