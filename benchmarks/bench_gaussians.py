"""Gaussian rasterizer throughput: forward + backward of the pure-torch rasterizer (and gsplat's CUDA one
when a GPU is present) for N Gaussians at R x R, batch B, through the registered renderer.

    python benchmarks/bench_gaussians.py [--n 10000] [--res 128] [--batch 4] [--tile 4 8 16] [--repeat 3] [--threads N]
    python benchmarks/bench_gaussians.py --checkpoint RUN/ckpts/last.ckpt --res 32 --tile 2   # a trained scene

Prints seconds per forward + backward (and each alone) and the number of (pixel, Gaussian) pairs the
torch path composited (its work measure). ``--checkpoint`` renders the Gaussians of a run's checkpoint
(with the run's ``config.yaml`` beside ``ckpts/``) instead of a random ball.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from threedgen.config import from_dict
from threedgen.data.cameras import make_cameras
from threedgen.renderers.background import SolidBackground
from threedgen.renderers.gaussian import GaussianRenderer
from threedgen.representations.gaussians import Gaussians
from threedgen.utils.allocator import keep_freed_memory


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def trained_gaussians(ckpt: Path) -> Gaussians:
    """The representation of a Gaussian run's checkpoint, loaded as the project loads a run (its config.yaml)."""
    from threedgen.config import load_config
    from threedgen.systems.runner import load_system, plan_stages

    run = ckpt.parent.parent
    cfg, raw = load_config(run / "config.yaml")
    threads = torch.get_num_threads()  # building the system applies the run's ``threads``; the bench keeps its own
    rep = load_system(plan_stages(cfg, raw, run)[-1].cfg, ckpt).representation
    torch.set_num_threads(threads)
    return rep


def bench(n, res, batch, tile, repeat, device, backend, chunk=1 << 22, ckpt=None):
    torch.manual_seed(0)
    if ckpt is not None:
        rep = trained_gaussians(ckpt).to(device)
    else:  # a 10k-point ball of small Gaussians, as an SDS run has after a few densification rounds
        rep = Gaussians(from_dict(Gaussians.Config, {"num_points": n, "init_radius": 0.5, "init_opacity": 0.5})).to(device)
    ren = GaussianRenderer(GaussianRenderer.Config(tile_size=tile, backend=backend, chunk_pairs=chunk))
    bg = SolidBackground(SolidBackground.Config()).to(device)
    cams = make_cameras(torch.linspace(-10, 40, batch), torch.linspace(0, 300, batch), 1.8, 50, res, res).to(device)
    times, pairs = [], None
    for i in range(repeat + 1):
        _sync(device)
        t0 = time.perf_counter()
        out = ren(rep, cams, bg)
        _sync(device)
        t1 = time.perf_counter()
        (out.rgb.mean() + out.alpha.mean() + out.depth.mean()).backward()
        _sync(device)
        if i:  # the first call warms up (and JIT-builds gsplat on a GPU)
            times.append((t1 - t0, time.perf_counter() - t1))
        pairs = out.meta.get("n_pairs")
        rep.zero_grad(set_to_none=True)
    fwd, bwd = (sum(t[k] for t in times) / len(times) for k in (0, 1))
    return fwd + bwd, pairs, fwd, bwd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--res", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tile", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunk", type=int, nargs="+", default=[1 << 22],
                    help="torch path chunk_pairs; more than one chunk means activation checkpointing")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--checkpoint", type=Path, help="render the Gaussians of this run checkpoint (RUN/ckpts/last.ckpt)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    keep_freed_memory()  # as launch.py does
    what = f"the Gaussians of {a.checkpoint}" if a.checkpoint else f"{a.n} Gaussians"
    print(f"{what}, {a.res}x{a.res}, batch {a.batch}, torch threads {torch.get_num_threads()}")
    for chunk in a.chunk:
        for tile in a.tile:
            s, pairs, fwd, bwd = bench(a.n, a.res, a.batch, tile, a.repeat, torch.device("cpu"), "torch", chunk, a.checkpoint)
            print(f"cpu torch  tile {tile:2d} chunk_pairs {chunk:>9,}: {s:.4f} s forward+backward ({fwd:.4f} + {bwd:.4f}), "
                  f"{pairs:,} pixel-Gaussian pairs ({pairs / s / 1e6:.2f} M pairs/s)")
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        s_t, pairs, _, _ = bench(a.n, a.res, a.batch, 16, a.repeat, dev, "torch", ckpt=a.checkpoint)
        s_c, _, _, _ = bench(a.n, a.res, a.batch, 16, a.repeat, dev, "cuda", ckpt=a.checkpoint)
        print(f"cuda torch path: {s_t:.4f} s; gsplat: {s_c:.4f} s; gsplat is {s_t / s_c:.1f}x faster")


if __name__ == "__main__":
    main()
