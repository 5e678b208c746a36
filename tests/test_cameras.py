import math

import torch

from threedgen.data.cameras import CameraConfig, RandomCameraSampler, make_cameras, orbit_cameras
from threedgen.schedule import Schedule


def test_azimuth_zero_is_plus_z_looking_at_origin():
    c = make_cameras(0.0, 0.0, 2.0, 60.0, 32, 32)
    assert torch.allclose(c.c2w[0, :3, 3], torch.tensor([0.0, 0.0, 2.0]), atol=1e-6)
    # camera looks down its -z axis: forward = -c2w[:, 2] must point at the origin
    assert torch.allclose(-c.c2w[0, :3, 2], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)


def test_azimuth_90_is_plus_x_and_elevation_up_is_plus_y():
    c = make_cameras([0.0, 90.0], [90.0, 0.0], 2.0, 60.0, 32, 32)
    assert torch.allclose(c.c2w[0, :3, 3], torch.tensor([2.0, 0.0, 0.0]), atol=1e-5)
    assert c.c2w[1, 1, 3] > 1.99  # elevation 90 deg: above the object


def test_c2w_is_right_handed_rotation():
    c = make_cameras(torch.tensor([10.0, -5.0, 40.0]), torch.tensor([30.0, -120.0, 170.0]), 1.7, 50.0, 16, 16)
    R = c.c2w[:, :3, :3]
    assert torch.allclose(R.transpose(1, 2) @ R, torch.eye(3).expand(3, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(3), atol=1e-5)
    # camera x axis is horizontal (no roll): world up (+Y) component of x is zero
    assert torch.allclose(R[:, 1, 0], torch.zeros(3), atol=1e-6)


def test_projection_of_known_points():
    H = W = 64
    fovy = 60.0
    c = make_cameras(0.0, 0.0, 2.0, fovy, W, H)
    f = 0.5 * H / math.tan(math.radians(fovy) / 2)
    pts = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.5, 0.0, 0.0]]])
    uv, depth = c.project(pts)
    assert torch.allclose(uv[0, 0], torch.tensor([32.0, 32.0]))
    assert torch.allclose(uv[0, 1], torch.tensor([32.0, 32.0 - f * 0.25]), atol=1e-4)  # up is toward row 0
    assert torch.allclose(uv[0, 2], torch.tensor([32.0 + f * 0.25, 32.0]), atol=1e-4)  # +X is right from the front
    assert torch.allclose(depth, torch.full((1, 3), 2.0))


def test_rays_through_pixel_centres_hit_projected_points():
    c = make_cameras(20.0, 35.0, 1.8, 45.0, 24, 16)
    o, d = c.rays()
    p = o[0, 5, 7] + 1.3 * d[0, 5, 7]
    uv, _ = c.project(p.view(1, 1, 3))
    assert torch.allclose(uv[0, 0], torch.tensor([7.5, 5.5]), atol=1e-4)


def test_random_sampler_is_seeded_and_follows_schedules():
    cfg = CameraConfig(batch_size=Schedule([[0, 2], [10, 2], [11, 4]]), width=Schedule({"type": "step", "values": [32, 64], "steps": [10]}), height=Schedule(32))
    a, b = RandomCameraSampler(cfg, seed=3), RandomCameraSampler(cfg, seed=3)
    assert torch.equal(a.sample(5).c2w, b.sample(5).c2w)
    assert not torch.equal(a.sample(5).c2w, a.sample(6).c2w)
    assert len(a.sample(0)) == 2 and len(a.sample(20)) == 4
    assert a.sample(20).width == 64 and a.sample(0).width == 32
    el = torch.cat([a.sample(s).elevation_deg for s in range(50)])
    assert el.min() >= cfg.elevation_range[0] - 1e-4 and el.max() <= cfg.elevation_range[1] + 1e-4
    ld = a.sample(0).light_dir
    assert torch.allclose(ld.norm(dim=-1), torch.ones(len(ld)))


def test_orbit_starts_at_front():
    c = orbit_cameras(CameraConfig(), 8, 32)
    assert len(c) == 8 and c.azimuth_deg[0] == 0 and torch.allclose(c.azimuth_deg[2], torch.tensor(90.0))
