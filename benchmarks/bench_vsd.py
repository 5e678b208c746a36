"""SDS vs VSD vs ESD: UNet evaluations and wall time per guidance step, measured in one run.

    python benchmarks/bench_vsd.py [--model PATH] [--batch 2] [--steps 20] [--threads 1]

One step = guidance forward on a free image + backward + Adam step (the LoRA's group included
for VSD/ESD), i.e. the objective's own cost without a renderer. By default the prior is a tiny
random Stable-Diffusion-layout model built in a temporary folder (tests/tiny_models.py); pass
``--model assets/toy-prior`` for the embedded toy prior. UNet evaluations are counted with
forward hooks on the frozen UNet and on the LoRA copy: calls and images (batch entries).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="diffusers folder (default: a tiny random SD built on the fly)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from threedgen.config import from_dict
    from threedgen.data.cameras import make_cameras
    from threedgen.guidance.base import GuidanceInput
    from threedgen.guidance.ddpm_prior import DDPMPrior
    from threedgen.guidance.model_folder import PriorConfig
    from threedgen.prompts.processor import PromptProcessor
    from threedgen import registry

    model = args.model
    if model is None:
        sys.path.insert(0, str(ROOT / "tests"))
        import tiny_models

        model = str(tiny_models.build_sd(Path(tempfile.mkdtemp(prefix="bench-vsd-")) / "tiny-sd"))
    prior = DDPMPrior(PriorConfig(model=model, device="cpu"))
    prompts = PromptProcessor(PromptProcessor.Config(prompt="a red cube")).bundle(prior)
    B, R = args.batch, prior.resolution
    cams = make_cameras(15.0, torch.linspace(-150, 150, B), 2.0, 50.0, R, R)
    print(f"model={model} ({'latent' if prior.is_latent else 'pixel'}, {R}px) batch={B} threads={torch.get_num_threads()} steps={args.steps}")

    rows = {}
    for name in ("sds", "vsd", "esd"):
        cls = registry.get("guidance", name)
        g = cls(from_dict(cls.Config, {"prior": {"model": model, "device": "cpu"}}), prior=prior)
        image = torch.nn.Parameter(torch.rand(B, 3, R, R))
        groups = [{"params": [image], "lr": 0.01}] + [{k: (v(0) if k == "lr" else v) for k, v in pg.items()} for pg in g.param_groups()]
        opt = torch.optim.Adam(groups)
        calls = {"frozen": [], "lora": []}
        unets = {"frozen": prior.unet, **({"lora": g.lora.unet} if hasattr(g, "lora") else {})}
        hooks = [u.register_forward_hook(lambda m, i, o, k=k: calls[k].append(i[0].shape[0])) for k, u in unets.items()]
        times = []
        for step in range(args.steps + 2):
            for v in calls.values():
                v.clear()
            t0 = time.perf_counter()
            opt.zero_grad()
            out = g(GuidanceInput(rgb=image, cameras=cams), prompts, step)
            sum(v for k, v in out.items() if k.startswith("loss_")).backward()
            opt.step()
            if step >= 2:  # warm-up
                times.append(time.perf_counter() - t0)
        for h in hooks:
            h.remove()
        n_calls = sum(len(v) for v in calls.values())
        n_imgs = sum(sum(v) for v in calls.values())
        rows[name] = (statistics.median(times), n_calls, n_imgs, dict(calls))
    base_t, _, base_imgs, _ = rows["sds"]
    print(f"{'guidance':8s} {'s/step':>8s} {'x SDS':>6s} {'UNet calls':>10s} {'UNet images':>11s} {'x SDS':>6s}  per call (frozen | lora)")
    for name, (t, n_calls, n_imgs, calls) in rows.items():
        print(f"{name:8s} {t:8.4f} {t / base_t:6.2f} {n_calls:10d} {n_imgs:11d} {n_imgs / base_imgs:6.2f}  {calls['frozen']} | {calls['lora']}")
    print("(VSD/ESD's last LoRA call is the training pass, which also runs a backward through the UNet)")


if __name__ == "__main__":
    main()
