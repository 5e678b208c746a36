"""Moving NeRFs (issue 21): a canonical hash-grid NeRF plus the HexPlane field by backward warping. It starts
as the static NeRF it was converted from at every time, a field's motion moves the render and its normals,
the regularisers read it, the exporter's forward motion inverts the warp, and a two-stage launch writes
per-frame GLBs and an animated GLB that the Khronos validator accepts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from threedgen.config import build_module
from threedgen.data.cameras import make_cameras
from threedgen.renderers.background import SolidBackground

ROOT = Path(__file__).resolve().parents[1]
NERF = {"radius": 1.0, "grid": {"n_levels": 4, "log2_hashmap_size": 12, "base_resolution": 8, "max_resolution": 32},
        "mlp_width": 16, "density_blob_scale": 10.0, "density_blob_std": 0.4}
WHITE = SolidBackground(SolidBackground.Config(color=(1.0, 1.0, 1.0)))


def _pair(normals="none", **deform):
    torch.manual_seed(0)
    static = build_module("representation", {"name": "nerf", **NERF, "normals": normals})
    dyn = build_module("representation", {"name": "dynamic_nerf", **NERF, "normals": normals,
                                          "deformation": {"global_motion": True, **deform}})
    dyn.convert_from(static)
    return static, dyn


def _translate(dyn, end=(0.3, 0.0, 0.0)):
    """Set the field's whole-scene path to a straight move from 0 at t=0 to ``end`` at t=1."""
    T = dyn.cfg.deformation.time_resolution
    m = dyn.cfg.deformation.max_displacement
    with torch.no_grad():
        path = torch.linspace(0, 1, T)[:, None] * torch.tensor(end)
        dyn.deformation.trajectory.copy_(torch.atanh(path / m))


def _front(times, res=24):
    n = len(times)
    return make_cameras(torch.zeros(n), torch.zeros(n), 2.5, 50.0, res, res, time=torch.tensor(times, dtype=torch.float32))


def _cx(alpha):
    cols = torch.arange(alpha.shape[-1], dtype=torch.float32)
    return [float((a[0].sum(0) * cols).sum() / a[0].sum()) for a in alpha.detach()]


def test_moving_nerf_starts_as_the_static_one_at_every_time():
    static, dyn = _pair()
    ren = build_module("renderer", {"name": "volume", "num_samples_per_ray": 32, "occupancy_grid": False})  # its refresh draws random points
    ren.eval()
    az = torch.linspace(-90, 90, 4)
    ref = ren(static, make_cameras(torch.full((4,), 15.0), az, 2.5, 50.0, 20, 20), WHITE)
    out = ren(dyn, make_cameras(torch.full((4,), 15.0), az, 2.5, 50.0, 20, 20, time=torch.tensor([0.0, 0.3, 0.6, 1.0])), WHITE)
    torch.testing.assert_close(out.rgb, ref.rgb, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.alpha, ref.alpha, atol=1e-5, rtol=0)
    assert len(out.meta["by_time"]) == 4 and out.meta["z_variance"].shape == (4, 1, 20, 20)


def test_a_translation_moves_the_render_normals_and_exported_points():
    _, dyn = _pair(normals="analytic")
    _translate(dyn, (0.3, 0.0, 0.0))
    ren = build_module("renderer", {"name": "volume", "num_samples_per_ray": 48, "return_normal": True})
    ren.eval()
    out = ren(dyn, _front([1.0, 0.0, 0.5]), WHITE)
    alone = [ren(dyn, _front([t]), WHITE).alpha for t in (1.0, 0.0, 0.5)]
    torch.testing.assert_close(out.alpha, torch.cat(alone), atol=1e-5, rtol=0)
    cx = _cx(out.alpha)
    assert cx[0] > cx[2] > cx[1]  # from the front (+z), +x is to the right: later times further right
    px = 0.3 / (2.5 * torch.tan(torch.deg2rad(torch.tensor(25.0)))) * 12  # 0.3 m in pixels at the object's distance
    assert cx[0] - cx[1] == pytest.approx(float(px), rel=0.15)
    # normals at time 1 are the canonical normals of the point 0.3 m to the left (a translation turns nothing)
    x = torch.tensor([[0.35, 0.1, 0.05], [0.1, -0.3, 0.2]])
    n1 = dyn.at_time(1.0)(x + torch.tensor([0.3, 0.0, 0.0]), normals=True)["normal"]
    n0 = dyn.at_time(0.0)(x, normals=True)["normal"]
    torch.testing.assert_close(n1, n0, atol=1e-4, rtol=0)
    # the exporter's forward motion inverts the backward warp: every point moves by the translation
    (d,) = dyn.forward_motion(torch.rand(50, 3) - 0.5, [1.0])
    torch.testing.assert_close(d, torch.tensor([[0.3, 0.0, 0.0]]).expand(50, 3), atol=1e-4, rtol=0)


def test_field_gets_gradients_and_regularisers_read_a_moving_nerf():
    _, dyn = _pair()
    cams = _front([0.0, 1.0])
    ren = build_module("renderer", {"name": "volume", "num_samples_per_ray": 32})
    out = ren(dyn, cams, WHITE)
    out.rgb.mean().backward()
    assert dyn.deformation.trajectory.grad.abs().sum() > 0  # the render depends on the field
    mag, rigid = build_module("regulariser", "motion_magnitude"), build_module("regulariser", "motion_rigidity")
    assert float(mag(None, dyn, cams).detach()) == 0.0 and float(rigid(None, dyn, cams).detach()) == pytest.approx(0.0, abs=1e-8)
    _translate(dyn, (0.2, 0.0, 0.0))
    assert float(mag(None, dyn, cams).detach()) == pytest.approx(0.5 * 0.2**2, rel=1e-3)  # times 0 and 1
    assert float(rigid(None, dyn, cams).detach()) == pytest.approx(0.0, abs=1e-8)  # a translation does not stretch
    with torch.no_grad():  # a field that stretches along x at t=1
        dyn.deformation.trajectory.zero_()
        dyn.deformation.heads["dx"].weight.normal_(std=0.5)
    assert float(rigid(None, dyn, cams).detach()) > 1e-4
    names = [g["name"] for g in dyn.param_groups()]
    assert names == ["grid", "mlp", "deformation"]
    assert sum(len(g["params"]) for g in dyn.param_groups()) == len(list(dyn.parameters()))


def test_motion_samples_are_drawn_once_per_step():
    """Both regularisers of a step read the same drawn points (a smaller request is a subset of them);
    the next step draws again."""
    _, dyn = _pair()
    dyn.update_step(0, 0)
    a = dyn.motion_samples(256, 0.5)
    b = dyn.motion_samples(128, 0.5)
    assert a.shape == (256, 3) and b.shape == (128, 3)
    assert (b[:, None] == a[None]).all(-1).any(1).all()  # every point of b is one of a's
    assert torch.equal(dyn.motion_samples(256, 0.5), a)
    dyn.update_step(0, 1)
    assert not torch.equal(dyn.motion_samples(256, 0.5), a)


def test_bad_canonical_scene_and_gaussian_only_offsets_are_refused():
    _, dyn = _pair()
    gauss = build_module("representation", {"name": "gaussians", "num_points": 10})
    with pytest.raises(TypeError, match="must come from a NeRF"):
        dyn.convert_from(gauss)
    with pytest.raises(ValueError, match="no rotations or scales"):
        build_module("representation", {"name": "dynamic_nerf", "deformation": {"rotation": True}})


def test_moving_nerf_launch_exports_frame_meshes_and_an_animated_glb(tmp_path):
    from export_fixtures import read_glb, validate_glb

    args = ["--config", str(ROOT / "configs" / "toy" / "4d-anchored-nerf.yaml"), "--train", "-q", f"output_dir={tmp_path}/out",
            "system.prompt=a red cube moving left", "stages.0.steps=4", "stages.1.steps=4", "trainer.val_every=0",
            "trainer.ckpt_every=4", "trainer.test_views=4", "trainer.test_resolution=32", "export.frames=4", "export.fps=4",
            "export.views=12", "export.view_resolution=48", "export.resolution=32", "export.refine_steps=5",
            "export.texture_fit_steps=5", "export.texture_size=64"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = (tmp_path / "out" / "toy-4d-anchored-nerf").iterdir()
    assert (run / "renders" / "test" / "orbit_time.mp4").stat().st_size > 0
    manifest = json.loads((run / "export" / "frames" / "manifest.json").read_text())
    assert manifest["frames"] == 4 and manifest["meshes"] == [f"frame_{k:03d}.glb" for k in range(4)]
    assert manifest["glb"]["morph_targets"] == 3 and "splats" not in manifest
    gltf, _ = read_glb(run / "export" / "model.glb")
    assert len(gltf["meshes"][0]["primitives"][0]["targets"]) == 3
    for f in ("model.glb", "frames/frame_000.glb", "frames/frame_003.glb"):
        issues = validate_glb(run / "export" / f)
        assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, (f, issues["messages"][:5])


def test_a_dynamic_stage_with_other_field_settings_is_refused_before_training(tmp_path):
    args = ["--config", str(ROOT / "configs" / "toy" / "4d-anchored-nerf.yaml"), "--train", f"output_dir={tmp_path}/out",
            "stages.1.system.representation.mlp_width=16"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "stages.1 (dynamic)" in r.stderr and "mlp_width (32 there, 16 here)" in r.stderr
    assert not (tmp_path / "out").exists()


def test_centred_orbit_scores_a_moving_nerf_where_it_is():
    """ToyBench's per-frame shape score (``run_measure.centred_orbit``) centres a NeRF by moving the cameras: a
    translated scene renders the same centred orbit at every time."""
    from threedgen.toy.run_measure import centred_orbit

    _, dyn = _pair()
    _translate(dyn, (0.35, 0.1, 0.0))
    ren = build_module("renderer", {"name": "volume", "num_samples_per_ray": 32})
    ren.eval()
    _, a0 = centred_orbit(ren, dyn.frozen_at(0.0))
    _, a1 = centred_orbit(ren, dyn.frozen_at(1.0))
    m0, m1 = a0 > 0.5, a1 > 0.5
    assert m0.sum() > 100 and float((m0 & m1).sum() / (m0 | m1).sum()) > 0.9
    with pytest.raises(ValueError, match="scale 1"):
        centred_orbit(ren, dyn.frozen_at(0.0), scale=0.5)
