"""Moving Gaussians (issue 21): the HexPlane deformation field starts at exactly zero motion, the dynamic
scene starts as the static one it was converted from, per-view times render in the cameras' order, and
the field's gradients and regulariser behave."""

import pytest
import torch

from threedgen.config import build_module
from threedgen.data.cameras import make_cameras
from threedgen.representations.deformation import DeformationConfig, HexPlaneField
from threedgen.renderers.background import SolidBackground


def _cams(n=4, times=None, res=24):
    az = torch.linspace(-90, 90, n)
    return make_cameras(torch.full((n,), 15.0), az, 2.0, 50.0, res, res,
                        time=None if times is None else torch.tensor(times, dtype=torch.float32))


def _static_and_dynamic(**deform):
    torch.manual_seed(0)
    static = build_module("representation", {"name": "gaussians", "num_points": 300, "init_radius": 0.4, "init_opacity": 0.5})
    dyn = build_module("representation", {"name": "dynamic_gaussians", "num_points": 300, "init_radius": 0.4,
                                          "init_opacity": 0.5, "deformation": deform})
    dyn.convert_from(static)
    return static, dyn


def test_field_starts_at_zero_motion_and_learns():
    field = HexPlaneField(DeformationConfig(rotation=True, scale=True))
    x = torch.rand(100, 3) * 2 - 1
    for t in (0.0, 0.3, 1.0):
        out = field(x, t)
        assert set(out) == {"dx", "dq", "ds"} and all(torch.equal(v, torch.zeros_like(v)) for v in out.values())
    assert float(field.smoothness().detach()) == 0.0
    loss = (field(x, 0.7)["dx"] - 0.1).square().mean()
    loss.backward()
    assert field.heads["dx"].weight.grad.abs().sum() > 0
    opt = torch.optim.Adam(field.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        loss = (field(x, torch.full((100,), 0.7))["dx"] - torch.tensor([0.1, 0, 0])).square().mean()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 1e-3
    assert float(field.smoothness().detach()) > 0  # the time planes moved


def test_dynamic_scene_starts_as_the_static_one():
    static, dyn = _static_and_dynamic()
    ren = build_module("renderer", {"name": "gaussian"})
    bg = SolidBackground(SolidBackground.Config(color=(1.0, 1.0, 1.0)))
    ref = ren(static, _cams(), bg)
    for t in ([0.0] * 4, [0.25, 0.5, 0.75, 1.0]):
        out = ren(dyn, _cams(times=t), bg)
        torch.testing.assert_close(out.rgb, ref.rgb, atol=1e-6, rtol=0)
        torch.testing.assert_close(out.alpha, ref.alpha, atol=1e-6, rtol=0)


def test_times_render_in_the_cameras_order_and_motion_moves_the_object():
    _, dyn = _static_and_dynamic()
    with torch.no_grad():  # a field that moves everything along +x in proportion to time
        dyn.deformation.temporal[0][0].copy_(torch.linspace(0, 2, dyn.cfg.deformation.time_resolution)[None, :, None])
        dyn.deformation.heads["dx"].bias.zero_()
        w = torch.zeros_like(dyn.deformation.heads["dx"].weight)
        dyn.deformation.trunk[0].weight.fill_(0.05)
        dyn.deformation.trunk[0].bias.zero_()
        w[0] = 0.5
        dyn.deformation.heads["dx"].weight.copy_(w)
    dx0, dx1 = (dyn.deformation(dyn.params["means"], t)["dx"][:, 0].mean() for t in (0.0, 1.0))
    assert float(dx1.detach()) > float(dx0.detach()) + 0.05
    ren = build_module("renderer", {"name": "gaussian"})
    bg = SolidBackground(SolidBackground.Config(color=(1.0, 1.0, 1.0)))
    front = make_cameras(torch.zeros(3), torch.zeros(3), 2.0, 50.0, 24, 24, time=torch.tensor([1.0, 0.0, 0.5]))
    out = ren(dyn, front, bg)
    alone = [ren(dyn, front[i : i + 1], bg).alpha for i in range(3)]
    torch.testing.assert_close(out.alpha, torch.cat(alone))
    cols = torch.arange(24, dtype=torch.float32)
    cx = [float((a[0].sum(0) * cols).sum() / a[0].sum()) for a in out.alpha.detach()]
    assert cx[0] > cx[2] > cx[1]  # seen from the front (+z), +x is to the right: later frames further right
    motion = dyn.motion(torch.tensor([0.0, 1.0]))
    assert motion.shape == (2, 300, 3)


def test_dynamic_gaussians_param_groups_checkpoint_and_bad_canonical():
    _, dyn = _static_and_dynamic(rotation=True)
    names = [g["name"] for g in dyn.param_groups()]
    assert names[-1] == "deformation" and "means" in names
    dyn.after_step(100, None)  # no densification in the dynamic stage
    copy = build_module("representation", {"name": "dynamic_gaussians", "num_points": 10, "deformation": {"rotation": True}})
    copy.load_state_dict(dyn.state_dict())
    assert copy.num_gaussians == 300
    nerf = build_module("representation", {"name": "nerf"})
    with pytest.raises(TypeError, match="must come from Gaussians"):
        copy.convert_from(nerf)
    with pytest.raises(Exception, match="resolutions must be >= 2"):
        HexPlaneField(DeformationConfig(resolutions=(1,)))


def test_clip_cameras_share_one_camera_and_span_time():
    from threedgen.data.cameras import CameraConfig, RandomCameraSampler
    from threedgen.schedule import Schedule

    cfg = CameraConfig(batch_size=Schedule(8), frames=4, clip_orbit=20.0)
    cams = RandomCameraSampler(cfg, seed=3).sample(5)
    assert cams.time.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1] * 2)
    el, az = cams.elevation_deg.view(2, 4), cams.azimuth_deg.view(2, 4)
    assert (el == el[:, :1]).all() and torch.allclose(az[:, -1] - az[:, 0], torch.full((2,), 20.0), atol=1e-4)
    static = RandomCameraSampler(CameraConfig(batch_size=Schedule(8)), seed=3).sample(5)
    assert static.time is None
    with pytest.raises(ValueError, match="not a whole number of 4-frame clips"):
        RandomCameraSampler(CameraConfig(batch_size=Schedule(6), frames=4)).sample(0)


def test_motion_regularisers():
    _, dyn = _static_and_dynamic()
    cams = _cams(times=[0.0, 0.5, 1.0, 1.0])
    mag = build_module("regulariser", "motion_magnitude")
    smooth = build_module("regulariser", "motion_smoothness")
    assert float(mag(None, dyn, cams).detach()) == 0.0 and float(smooth(None, dyn, cams).detach()) == 0.0
    with torch.no_grad():
        dyn.deformation.heads["dx"].bias.fill_(0.1)
    v = mag(None, dyn, cams)
    assert float(v.detach()) == pytest.approx(3 * (0.5 * float(torch.tanh(torch.tensor(0.1)))) ** 2, rel=1e-4)
    v.backward()
    assert dyn.deformation.heads["dx"].bias.grad.abs().sum() > 0
    static, _ = _static_and_dynamic()
    with pytest.raises(ValueError, match="needs a moving representation"):
        mag(None, static, cams)


def test_guidance_probability_is_a_seeded_share_of_steps():
    from threedgen.config import ConfigError
    from threedgen.typed_config import _module_spec

    spec = _module_spec({"name": "photometric", "probability": 0.25}, "guidance", True, "system.guidance.0")
    assert spec.probability == 0.25
    with pytest.raises(ConfigError, match="must be in \\(0, 1\\]"):
        _module_spec({"name": "photometric", "probability": 0}, "guidance", True, "system.guidance.0")
    from threedgen.systems.generation import GenerationSystem

    class Probe:
        guidance_probabilities = [0.25, 1.0]
        _seed = 7

    runs = [GenerationSystem.guidance_runs(Probe, 0, s) for s in range(2000)]
    assert 0.2 < sum(runs) / 2000 < 0.3
    assert runs == [GenerationSystem.guidance_runs(Probe, 0, s) for s in range(2000)]  # the same choices on resume
    assert all(GenerationSystem.guidance_runs(Probe, 1, s) for s in range(50))


def test_a_dynamic_stage_after_a_nerf_stage_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    from threedgen.cli import main

    monkeypatch.chdir(tmp_path)
    base = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "4dfy-zeroscope.yaml"
    recipe = tmp_path / "nerf-then-4d.yaml"
    recipe.write_text(f"base: {base}\nsystem:\n  representation: {{name: nerf}}\n")
    code = main(["--config", str(recipe), "--train", f"output_dir={tmp_path}/out"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "starts from gaussians or dynamic_gaussians" in err[0], err
    assert not (tmp_path / "out").exists()


def test_motion_rigidity_allows_moving_and_turning_but_not_stretching():
    _, dyn = _static_and_dynamic()
    cams = _cams(times=[0.0, 1.0, 1.0, 1.0])
    rigid = build_module("regulariser", {"name": "motion_rigidity", "k": 6})
    assert float(rigid(None, dyn, cams).detach()) == 0.0  # no motion yet
    with torch.no_grad():
        dyn.deformation.heads["dx"].bias.fill_(0.3)  # a translation of every centre
    assert float(rigid(None, dyn, cams).detach()) < 1e-10
    x = dyn.params["means"].detach()
    turn = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])

    class Field(torch.nn.Module):  # a stand-in field: turn by 90 degrees about y, or stretch x twofold, at t = 1
        def __init__(self, stretch):
            super().__init__()
            self.stretch = stretch

        def forward(self, p, t):
            if t == 0:
                return {"dx": torch.zeros_like(p)}
            return {"dx": p * torch.tensor([1.0, 0.0, 0.0]) if self.stretch else p @ turn.T - p}

    dyn.deformation = Field(stretch=False)
    assert float(rigid(None, dyn, cams).detach()) < 1e-10
    dyn.deformation = Field(stretch=True)
    v = rigid(None, dyn, cams)
    assert float(v.detach()) > 0.05  # relative strain of a 2x stretch along x: ~0.2-0.3 per neighbour pair
    assert torch.allclose(dyn.params["means"].detach(), x)


def test_global_motion_moves_the_scene_as_one_piece():
    field = HexPlaneField(DeformationConfig(global_motion=True, time_resolution=5, max_displacement=0.5))
    x = torch.rand(50, 3) * 2 - 1
    assert field(x, 0.7)["dx"].abs().max() == 0  # still zero at the start
    with torch.no_grad():
        field.trajectory[:, 0] = torch.linspace(0, 1, 5) ** 2  # along +x, faster later
    d = field(x, 0.625)["dx"]  # halfway between samples 2 (0.25) and 3 (0.5625)
    want = 0.5 * torch.tanh(torch.tensor(0.40625))
    assert torch.allclose(d[:, 0], want.expand(50), atol=1e-6) and d[:, 1:].abs().max() == 0
    field(x, 0.3)["dx"].sum().backward()
    assert field.trajectory.grad[1:3].abs().sum() > 0 and field.trajectory.grad[[0, 3, 4]].abs().sum() == 0
    assert float(field.smoothness().detach()) > 0  # the path's second difference


def test_mesh_vertices_move_with_the_gaussians_that_draw_them():
    from threedgen.export.animation import vertex_motion

    _, dyn = _static_and_dynamic(global_motion=True, time_resolution=4)
    with torch.no_grad():
        dyn.deformation.trajectory[:, 1] = torch.tensor([0.0, 0.2, 0.4, 0.6])  # the whole scene rises
    verts = torch.rand(100, 3) * 0.8 - 0.4
    up = vertex_motion(dyn, verts, [1.0])[0]
    want = 0.5 * torch.tanh(torch.tensor(0.6))
    assert torch.allclose(up, torch.tensor([0.0, 1.0, 0.0]) * want, atol=1e-5)

    class Half(torch.nn.Module):  # a stand-in field: only the Gaussians with x > 0 move, by +0.3 in z at t = 1
        def forward(self, p, t):
            return {"dx": torch.stack([torch.zeros(len(p)), torch.zeros(len(p)), 0.3 * t * (p[:, 0] > 0)], -1)}

    dyn.deformation = Half()
    means = dyn.params["means"].detach()
    right, left = means[means[:, 0] > 0.1][:5], means[means[:, 0] < -0.1][:5]  # vertices on Gaussians of each side
    d = vertex_motion(dyn, torch.cat([right, left]), [0.5, 1.0])
    assert torch.allclose(d[1][:5, 2], torch.full((5,), 0.3), atol=0.02) and d[1][5:, 2].abs().max() < 0.02
    assert torch.allclose(d[0], d[1] / 2, atol=1e-6)
