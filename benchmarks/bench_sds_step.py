"""One full text-to-3D training step (render + SDS with a prior + backward + Adam), timed.

    python benchmarks/bench_sds_step.py [--config configs/toy/sds-nerf.yaml] [--res 64 128] [--batch 4] [--threads N]

Uses the recipe's system (by default the toy prior, so it runs offline on a CPU); prints the
median seconds per step and the share spent in the prior's UNet, per resolution.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/toy/sds-nerf.yaml")
    ap.add_argument("--res", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from threedgen.config import load_config
    from threedgen.systems.runner import build_system

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device={device} threads={torch.get_num_threads()} config={args.config} batch={args.batch}")
    for res in args.res:
        cfg, _ = load_config(args.config, [f"data.width={res}", f"data.height={res}", f"data.batch_size={args.batch}"])
        system = build_system(cfg).to(device)
        system.prepare_prompts()
        opt = system.configure_optimizers()
        unet = system.guidances[0].prior.unet
        unet_time = [0.0]

        def pre(*_):
            unet_time.append(time.perf_counter())

        def post(*_):
            unet_time[0] += time.perf_counter() - unet_time.pop()

        h1, h2 = unet.register_forward_pre_hook(pre), unet.register_forward_hook(post)
        times, unet_share = [], []
        for i in range(args.steps + 1):
            unet_time[:] = [0.0]
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = system.training_step(None, i)
            loss.backward()
            opt.step()
            if device == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            if i:  # the first step builds the occupancy grid and warms caches
                times.append(dt)
                unet_share.append(unet_time[0] / dt)
        h1.remove(), h2.remove()
        print(f"res={res:4d}  step={statistics.median(times):.3f} s  (unet share {statistics.median(unet_share):.0%})")


if __name__ == "__main__":
    main()
