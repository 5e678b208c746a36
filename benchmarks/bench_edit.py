"""Scene-edit step cost: DI-SDS against plain SDS on the same scene, the same renders, one process.

A step = render the toy scene with the object (batch 4, 32x32, torch rasterizer on a CPU) ->
guidance -> backward -> Adam. DI-SDS adds the masked-image encode, the ControlNet and a wider
UNet input; SDS runs the toy text-to-image prior on the same renders. Steps alternate between the
two so drift on a shared machine hits both alike. Prints ms/step and the ratio.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_edit.py [--inpaint assets/toy-inpaint] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inpaint", default="assets/toy-inpaint")
    ap.add_argument("--prior", default="assets/toy-prior")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("THREEDGEN_CACHE", tempfile.mkdtemp())

    from threedgen import registry
    from threedgen.config import from_dict
    from threedgen.data.cameras import make_cameras
    from threedgen.edit.scene import SceneWithObject
    from threedgen.edit.views import box_mask, dilate
    from threedgen.guidance.base import GuidanceInput
    from threedgen.prompts.processor import PromptProcessor
    from threedgen.renderers.background import SolidBackground
    from threedgen.renderers.gaussian import GaussianRenderer
    from threedgen.toy.scene_builder import insert_box

    torch.manual_seed(0)
    rep = SceneWithObject(from_dict(SceneWithObject.Config, {"scene": "toy:pair", "box": insert_box(),
                                                             "object": {"init": "box", "num_points": 1500, "init_opacity": 0.3}}))
    ren, bg = GaussianRenderer(GaussianRenderer.Config()), SolidBackground(SolidBackground.Config(color=(1, 1, 1)))
    guidances = {}
    for name, model in (("disds", args.inpaint), ("sds", args.prior)):
        cls = registry.get("guidance", name)
        g = cls(from_dict(cls.Config, {"prior": {"model": model}, "guidance_scale": 7.5}))
        guidances[name] = (g, PromptProcessor(PromptProcessor.Config(prompt="a yellow cone", view_dependent=False)).bundle(g.prior))
    opt = torch.optim.Adam([p for pg in rep.param_groups() for p in pg["params"]], lr=1e-3)
    times = {k: [] for k in guidances}
    for step in range(args.steps + 1):
        for name, (g, bundle) in guidances.items():
            cams = make_cameras(torch.rand(4) * 40, torch.rand(4) * 360 - 180, 0.7, 52.5, 32, 32, center=rep.box.center)
            t = time.perf_counter()
            out = ren(rep, cams, bg)
            mask = dilate(box_mask(cams, rep.box), 1)
            inp = GuidanceInput(rgb=out.rgb, cameras=cams, alpha=out.alpha, depth=out.depth, mask=mask)
            loss = g(inp, bundle, step)[f"loss_{name}"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step:  # step 0 warms up both
                times[name].append(time.perf_counter() - t)
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    print(f"scene edit step, batch 4 at 32x32, {rep.num_gaussians} Gaussians ({rep.num_background} frozen), "
          f"{args.steps} steps each, {args.threads} thread(s):")
    for k, v in ms.items():
        print(f"  {k:6s} {v:7.1f} ms/step (median)")
    print(f"  ratio disds / sds = {ms['disds'] / ms['sds']:.2f}")


if __name__ == "__main__":
    main()
