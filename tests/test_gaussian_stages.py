"""3D Gaussians across stages and runs: conversion from a NeRF (points inside its density, opacity under the
3D filter), the real ``launch.py`` resume mid-densification, a NeRF stage handing over to a Gaussian stage,
and particles that densify with their own optimizer groups."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from threedgen.config import from_dict
from threedgen.representations.gaussians import Gaussians
from threedgen.representations.spherical_harmonics import SH_C0

ROOT = Path(__file__).resolve().parents[1]


def gaussians(**kw) -> Gaussians:
    return Gaussians(from_dict(Gaussians.Config, kw))


def test_convert_from_nerf_puts_points_inside_the_blob():
    from threedgen.representations.nerf import NeRF

    torch.manual_seed(0)
    nerf = NeRF(from_dict(NeRF.Config, {"grid": {"n_levels": 4, "log2_hashmap_size": 12, "base_resolution": 8,
                                                 "max_resolution": 32}, "mlp_width": 16, "normals": "none",
                                        "density_blob_std": 0.5}))
    rep = gaussians(num_points=400, convert_resolution=32)
    rep.convert_from(nerf)
    r = rep.params["means"].norm(dim=-1)
    assert rep.num_gaussians == 400 and r.max() < 0.6  # the magic3d blob's surface is near |x| = 0.5
    with torch.no_grad():
        expect = nerf(rep.params["means"][:20], normals=False)["albedo"]
    got = 0.5 + SH_C0 * rep.params["sh0"][:20, 0]
    assert (got - expect).abs().mean() < 0.1  # colour from the NeRF near each point (jittered within a cell)


TINY = """
name: tinyg
seed: 0
deterministic: true
trainer: {max_steps: 6, val_every: 0, log_every: 1, ckpt_every: 3, test_views: 2, test_resolution: 16, export_at_end: false}
data: {batch_size: 2, width: 16, height: 16}
system:
  prompt: a red cube
  representation:
    name: gaussians
    num_points: 150
    init_radius: 0.4
    init_opacity: 0.3
    densify: {refine_start_iter: 0, refine_every: 2, grow_grad2d: 1.0e-7, grow_scale3d: 10.0, reset_every: 0, refine_stop_iter: 100}
  renderer: {name: gaussian}
  background: {name: solid}
  guidance:
    - {name: photometric, target: a red cube}
  val_views: 2
  val_resolution: 16
"""


def _launch(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=cwd, capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]


def test_resume_mid_densification_continues_like_an_uninterrupted_run(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    common = ["--config", "tiny.yaml", "--train", "-q"]
    _launch(*common, "output_dir=a", cwd=tmp_path)
    _launch(*common, "output_dir=b", "trainer.max_steps=3", cwd=tmp_path)
    (run_b,) = (tmp_path / "b" / "tinyg").iterdir()
    ck3 = torch.load(run_b / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
    n3 = ck3["state_dict"]["representation.params.means"].shape[0]
    assert n3 > 150  # densified before the interruption
    _launch(*common, "output_dir=b", "--resume", str(run_b / "ckpts" / "last.ckpt"), cwd=tmp_path)
    (run_a,) = (tmp_path / "a" / "tinyg").iterdir()
    a = torch.load(run_a / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(run_b / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] == 6
    assert a["state_dict"]["representation.params.means"].shape[0] > n3  # grew again after the resume
    for k, v in a["state_dict"].items():
        if torch.is_tensor(v):
            assert torch.equal(v, b["state_dict"][k]), k
    # the optimizer state (Adam moments of the resized parameters) matches too
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])
    # metrics: the resumed run logged the same losses for steps 4-6
    la = [r.split(",") for r in (run_a / "metrics.csv").read_text().splitlines()]
    lb = [r.split(",") for r in (run_b / "metrics.csv").read_text().splitlines()]
    col = la[0].index("train/loss")
    assert [r[col] for r in la[1:]][-3:] == [r[col] for r in lb[1:] if len(r) > col][-3:]


TWO_STAGES = """
name: two
seed: 0
data: {batch_size: 2, width: 16, height: 16}
system:
  prompt: a red cube
  representation:
    name: nerf
    grid: {n_levels: 4, log2_hashmap_size: 12, base_resolution: 8, max_resolution: 32}
    mlp_width: 16
    normals: none
  renderer: {name: volume, num_samples_per_ray: 16}
  background: {name: solid}
  guidance:
    - {name: photometric, target: a red cube}
stages:
  - {name: nerf, steps: 2}
  - name: gaussians
    steps: 2
    system:
      representation: {name: gaussians, num_points: 256, convert_resolution: 24}
      renderer: {name: gaussian}
"""


def test_nerf_stage_hands_over_to_a_gaussian_stage(tmp_path):
    """The runner's stage chaining (``_init_from_previous``) converts the NeRF stage's result."""
    from threedgen.config import load_config
    from threedgen.systems.runner import _init_from_previous, build_system, plan_stages

    (tmp_path / "two.yaml").write_text(TWO_STAGES)
    cfg, raw = load_config(tmp_path / "two.yaml")
    stages = plan_stages(cfg, raw, tmp_path / "run")
    nerf_system = build_system(stages[0].cfg)
    stages[0].final.parent.mkdir(parents=True)
    torch.save({"state_dict": nerf_system.state_dict(), "global_step": 2}, stages[0].final)
    g_system = build_system(stages[1].cfg)
    _init_from_previous(g_system, stages[0])
    rep = g_system.representation
    assert isinstance(rep, Gaussians) and rep.num_gaussians == 256
    assert rep.params["means"].norm(dim=-1).max() < 0.6  # inside the NeRF's initial density blob


def test_every_particle_densifies_with_its_own_renamed_optimizer_groups():
    """system.particles=2 renames particle 1's groups ``means.p1`` ...; densification must still find them."""
    from threedgen.config import validate
    from threedgen.systems.runner import build_system

    raw = {
        "trainer": {"max_steps": 2},
        "data": {"batch_size": 2, "width": 32, "height": 32},
        "system": {
            "prompt": "a red cube",
            "particles": 2,
            "representation": {"name": "gaussians", "num_points": 300, "init_radius": 0.4, "init_opacity": 0.5,
                               "densify": {"grow_grad2d": 0.0, "grow_scale3d": 0.01, "refine_start_iter": 0,
                                           "refine_every": 1, "reset_every": 0}},
            "renderer": {"name": "gaussian"},
            "guidance": [{"name": "sds", "prior": {"model": str(ROOT / "assets" / "toy-prior"), "device": "cpu"}}],
        },
    }
    torch.manual_seed(0)
    s = build_system(validate(raw))
    opt = s.configure_optimizers()
    s.prepare_prompts()
    opt.zero_grad()
    s.training_step(None, 0).backward()
    opt.step()
    for i, _, render in s._particle_renders:
        with torch.no_grad():  # 20 transparent ones, so this step both grows and prunes (two tensor swaps)
            s.particle(i)[0].params["opacities"][:20] = -10.0
        s.particle(i)[0].after_step(1, render)
    groups = {pg["name"]: pg["params"][0] for pg in opt.param_groups}
    for i, suffix in ((0, ""), (1, ".p1")):
        rep = s.particle(i)[0]
        assert rep.num_gaussians > 300, f"particle {i} did not densify"
        assert (rep.params["opacities"] > -10.0).all(), f"particle {i} did not prune"
        for name, p in rep.params.items():
            assert groups[name + suffix] is p  # the optimizer now holds the resized tensor
            assert opt.state[p]["exp_avg"].shape == p.shape


def test_convert_from_nerf_starts_at_init_opacity_under_the_3d_filter():
    """Converted points render (after the min_scale filter) at init_opacity and at least the filter's size."""
    from threedgen.representations.nerf import NeRF

    torch.manual_seed(0)
    nerf = NeRF(from_dict(NeRF.Config, {"grid": {"n_levels": 4, "log2_hashmap_size": 12, "base_resolution": 8,
                                                 "max_resolution": 32}, "mlp_width": 16, "normals": "none",
                                        "density_blob_std": 0.5}))
    for min_scale in (0.0, 0.025):
        rep = gaussians(num_points=200, convert_resolution=48, init_opacity=0.3, min_scale=min_scale)
        rep.convert_from(nerf)
        act = rep.activated()
        assert torch.allclose(act["opacities"], torch.full((200,), 0.3), atol=1e-4)
        cell = 2.0 * nerf.radius / 47
        assert float(act["scales"].min()) >= max(0.5 * cell, min_scale) - 1e-6
