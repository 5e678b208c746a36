"""Reward cost per step: SDS alone against SDS + a critic's reward, on the same scene, one process.

The system is built from ``configs/toy/sds-reward-nerf.yaml`` (hash-grid NeRF, batch 4 at 32x32,
the toy prior's SDS and the toy critic). A step = render -> every guidance -> backward -> Adam;
the "sds" step skips the reward. ``--vlm FOLDER`` adds a third variant with a Qwen2-VL-class critic
from that folder (renders upsampled to ``--vlm-resolution``). Variants alternate step by step so
drift on a shared machine hits them alike. Prints ms/step (median) and the ratios to SDS.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_reward.py [--steps 20] [--vlm FOLDER]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default=str(ROOT / "configs" / "toy" / "sds-reward-nerf.yaml"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vlm", default=None, help="a Qwen2-VL-class model folder for a VLM-reward variant")
    ap.add_argument("--vlm-resolution", type=int, default=112)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from threedgen.config import build_module, load_config
    from threedgen.guidance.base import GuidanceInput
    from threedgen.systems.runner import build_system

    cfg, _ = load_config(args.recipe, [f"threads={args.threads}"])
    system = build_system(cfg)
    system.prepare_prompts()
    sds, toy = system.guidances[0], system.guidances[1]
    prompt = system.cfg.prompt
    variants = {"sds": [], "sds+toy": [toy]}
    if args.vlm:
        variants["sds+vlm"] = [build_module("guidance", {"name": "vlm_reward", "resolution": args.vlm_resolution,
                                                         "critic": {"name": "qwen_vl", "model": args.vlm}})]
    groups = system.param_groups()
    opt = torch.optim.Adam([p for pg in groups for p in pg["params"]], lr=1e-3)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for step in range(args.steps + 1):
        for name, rewards in variants.items():
            cams = system.sampler.sample(step)
            t = time.perf_counter()
            out = system.renderer(system.representation, cams, system.background)
            inp = GuidanceInput(rgb=out.rgb, cameras=cams, alpha=out.alpha, depth=out.depth)
            loss = sds(inp, system._bundles[0], step)["loss_sds"]
            for r in rewards:
                loss = loss + r(inp, prompt, step)["loss_reward"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step:  # step 0 warms up every variant
                times[name].append(time.perf_counter() - t)
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    print(f"reward step on {Path(args.recipe).name}: batch {len(cams)} at {cams.width}x{cams.height}, "
          f"{args.steps} steps each, {args.threads} thread(s):")
    for k, v in ms.items():
        print(f"  {k:8s} {v:7.1f} ms/step (median)   ratio to sds {v / ms['sds']:.2f}")


if __name__ == "__main__":
    main()
