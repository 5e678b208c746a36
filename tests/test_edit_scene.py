"""Scene editing, part 1 (issue 19): reading third-party 3DGS PLYs, the edit box, the frozen
background with a trainable object in one render, its own densification, masks, ControlNet depth
and the anchor view."""

import numpy as np
import pytest
import torch

from threedgen.config import from_dict
from threedgen.data.cameras import CameraConfig, make_cameras, orbit_cameras
from threedgen.edit.box import EditBox
from threedgen.edit.scene import SceneWithObject, object_meta
from threedgen.edit.scene_ply import NotAGaussianScene, read_splat_ply
from threedgen.edit.views import alpha_mask, box_mask, dilate, disparity_image, propose_anchor
from threedgen.export.splats import check_splat_data, ply_bytes, to_axes
from threedgen.renderers.background import SolidBackground
from threedgen.renderers.gaussian import GaussianRenderer


def random_splats(n: int, degree: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"means": torch.randn(n, 3, generator=g), "log_scales": torch.randn(n, 3, generator=g) - 3,
            "quats": torch.randn(n, 4, generator=g), "logit_opacities": torch.randn(n, generator=g),
            "sh": torch.randn(n, (degree + 1) ** 2, 3, generator=g) * 0.3, "sh_degree": degree}


def write_scene(path, d: dict, axes: str = "rdf"):
    path.write_bytes(ply_bytes(to_axes(check_splat_data(d), axes)))
    return path


def ground_and_wall(n_side: int = 24) -> dict:
    """A grey ground plane y = -0.3 over [-1, 1]^2 and a red wall at z = -0.6 (behind the origin from the front)."""
    u = torch.linspace(-1, 1, n_side)
    gx, gz = torch.meshgrid(u, u, indexing="ij")
    ground = torch.stack([gx.flatten(), torch.full_like(gx.flatten(), -0.3), gz.flatten()], 1)
    wy = torch.linspace(-0.3, 0.6, n_side // 2)
    wx, wy = torch.meshgrid(u, wy, indexing="ij")
    wall = torch.stack([wx.flatten(), wy.flatten(), torch.full_like(wx.flatten(), -0.6)], 1)
    means = torch.cat([ground, wall])
    n = len(means)
    sh = torch.zeros(n, 1, 3)
    sh[len(ground):, 0, 0] = 1.5
    return {"means": means, "log_scales": torch.full((n, 3), float(np.log(0.06))), "quats": torch.tensor([1.0, 0, 0, 0]).repeat(n, 1),
            "logit_opacities": torch.full((n,), 4.0), "sh": sh, "sh_degree": 0}


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@pytest.mark.parametrize("axes", ["rdf", "rub"])
def test_ply_round_trip_is_exact_for_every_sh_degree_and_axes(tmp_path, degree, axes):
    d = random_splats(50, degree)
    back = read_splat_ply(write_scene(tmp_path / "s.ply", d, axes), axes)
    assert back["sh_degree"] == degree
    for k in ("means", "log_scales", "quats", "logit_opacities", "sh"):
        np.testing.assert_array_equal(back[k], d[k].numpy(), err_msg=k)


def third_party_ply(path, d: dict, fmt: str = "binary_big_endian", with_normals: bool = False):
    """Properties shuffled, doubles, an extra property, no normals, another endianness or ASCII."""
    n = len(d["means"])
    cols = {"x": d["means"][:, 0], "y": d["means"][:, 1], "z": d["means"][:, 2]}
    if with_normals:
        cols.update(nx=torch.zeros(n), ny=torch.zeros(n), nz=torch.zeros(n))
    for i in range(3):
        cols[f"f_dc_{i}"] = d["sh"][:, 0, i]
    rest = d["sh"][:, 1:].permute(0, 2, 1).reshape(n, -1)
    for i in range(rest.shape[1]):
        cols[f"f_rest_{i}"] = rest[:, i]
    cols["opacity"] = d["logit_opacities"]
    for i in range(3):
        cols[f"scale_{i}"] = d["log_scales"][:, i]
    for i in range(4):
        cols[f"rot_{i}"] = d["quats"][:, i]
    cols["semantic_id"] = torch.arange(n).float()
    names = list(cols)[::-1]
    table = torch.stack([cols[c] for c in names], 1).double().numpy()
    header = f"ply\nformat {fmt} 1.0\ncomment made by another tool\nelement vertex {n}\n"
    header += "".join(f"property double {c}\n" for c in names) + "end_header\n"
    if fmt == "ascii":
        body = "\n".join(" ".join(repr(float(v)) for v in row) for row in table).encode() + b"\n"
    else:
        body = table.astype(">f8" if fmt == "binary_big_endian" else "<f8").tobytes()
    path.write_bytes(header.encode() + body)
    return path


@pytest.mark.parametrize("fmt", ["binary_big_endian", "binary_little_endian", "ascii"])
def test_third_party_layouts_read_the_same_scene(tmp_path, fmt):
    d = random_splats(20, 2, seed=3)
    back = read_splat_ply(third_party_ply(tmp_path / "t.ply", d, fmt, with_normals=fmt == "ascii"), "rub")
    for k in ("means", "log_scales", "quats", "logit_opacities", "sh"):
        np.testing.assert_allclose(back[k], d[k].numpy(), rtol=1e-6, atol=1e-7, err_msg=k)


def test_files_that_are_not_gaussian_scenes_are_named(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(NotAGaussianScene, match="not a PLY file"):
        read_splat_ply(tmp_path / "a.txt")
    mesh = tmp_path / "mesh.ply"
    mesh.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nproperty float z\n"
                     b"element face 0\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n")
    with pytest.raises(NotAGaussianScene, match=r"lack f_dc_0, f_dc_1, f_dc_2, opacity, scale_0.*rot_3"):
        read_splat_ply(mesh)
    good = write_scene(tmp_path / "g.ply", random_splats(10, 1))
    raw = good.read_bytes()
    (tmp_path / "cut.ply").write_bytes(raw[:-100])
    with pytest.raises(NotAGaussianScene, match="truncated PLY"):
        read_splat_ply(tmp_path / "cut.ply")
    (tmp_path / "odd.ply").write_bytes(raw.replace(b"property float f_rest_44\n", b""))
    with pytest.raises(NotAGaussianScene, match="44 f_rest_"):
        read_splat_ply(tmp_path / "odd.ply")
    with pytest.raises(ValueError, match="scene axes must be one of rdf, rub"):
        read_splat_ply(good, "zup")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_splat_ply(tmp_path / "missing.ply")


def test_edit_box_parsing_and_scene_bounds():
    box = EditBox.parse([-0.1, -0.3, -0.1, 0.1, 0.0, 0.1])
    torch.testing.assert_close(box.center, torch.tensor([0.0, -0.15, 0.0]))
    for bad, msg in [([0, 0, 0, 1, 1], "six numbers"), ([0, 0, 0, 1, 0, 1], "empty or inverted along y"),
                     ([1, 0, 0, 0, 1, 1], "inverted along x"), ("abc", "six numbers"), ([0, 0, 0, 1, float("nan"), 1], "NaN")]:
        with pytest.raises(ValueError, match=msg):
            EditBox.parse(bad)
    means = ground_and_wall()["means"]
    box.check_in_scene(means)
    with pytest.raises(ValueError, match="outside the scene's bounds"):
        EditBox.parse([5, 5, 5, 6, 6, 6]).check_in_scene(means)


def edit_scene(tmp_path, **kw) -> SceneWithObject:
    path = write_scene(tmp_path / "scene.ply", ground_and_wall())
    obj = {"init": "box", "num_points": 200, "init_opacity": 0.5, "init_color": [0.1, 0.2, 0.9],
           "densify": {"refine_start_iter": 0, "refine_every": 2, "grow_grad2d": 1e-7, "reset_every": 0, "refine_stop_iter": 100}}
    cfg = {"scene": str(path), "box": [-0.15, -0.3, -0.15, 0.15, 0.0, 0.15], "object": obj, **kw}
    return SceneWithObject(from_dict(SceneWithObject.Config, cfg))


def test_object_trains_and_densifies_while_the_background_stays_bit_identical(tmp_path):
    torch.manual_seed(0)
    rep = edit_scene(tmp_path)
    assert rep.object.params["means"].amin(0).ge(torch.tensor([-0.15, -0.3, -0.15]) - 1e-6).all()
    assert rep.object.params["means"].amax(0).le(torch.tensor([0.15, 0.0, 0.15]) + 1e-6).all()
    assert [n for n, _ in rep.named_parameters()] == [f"object.params.{k}" for k in ("means", "scales", "quats", "opacities", "sh0")]
    assert not any(k.startswith("bg_") for k in rep.state_dict())  # the scene file, not the checkpoint, holds it
    before = {k: v.clone() for k, v in rep.named_buffers()}
    n_bg = rep.num_background
    groups = [{"params": g["params"], "lr": g["lr"](0), "name": g["name"], "eps": 1e-15} for g in rep.param_groups()]
    opt = torch.optim.Adam(groups)
    rep.bind_optimizer(opt)
    ren, bg = GaussianRenderer(GaussianRenderer.Config()), SolidBackground(SolidBackground.Config())
    cams = make_cameras([15, 30], [0, 90], 1.6, 50, 24, 24, center=torch.tensor([0.0, -0.15, 0.0]))
    n0 = rep.object.num_gaussians
    for step in range(1, 5):
        out = ren(rep, cams, bg)
        assert out.meta["extra"].shape == (2, 1, 24, 24)
        loss = (out.rgb - torch.tensor([1.0, 1.0, 0.0]).view(1, 3, 1, 1)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        rep.after_step(step, out)
    assert rep.object.num_gaussians > n0 and rep.num_background == n_bg  # densified the object only
    for k, v in rep.named_buffers():
        assert torch.equal(v, before[k]), k
    data = rep.splat_data()
    assert len(data["means"]) == rep.num_gaussians
    np.testing.assert_array_equal(data["means"][rep.object.num_gaussians:].numpy(), ground_and_wall()["means"].numpy())


def test_object_splats_are_kept_inside_the_box(tmp_path):
    rep = edit_scene(tmp_path, object={"init": "box", "num_points": 50, "min_scale": 0.01})
    with torch.no_grad():
        rep.object.params["means"][:10] = torch.tensor([0.15, 0.0, 0.0])  # on a face
        rep.object.params["means"][10:20] = torch.tensor([0.5, 0.4, 0.0])  # outside
        rep.object.params["scales"].fill_(float(torch.tensor(0.08).log()))  # far wider than the box allows
    ren, bg = GaussianRenderer(GaussianRenderer.Config()), SolidBackground(SolidBackground.Config())
    cams = make_cameras([15, 30, 60], [0, 90, 200], 1.2, 50, 48, 48, center=torch.tensor([0.0, -0.15, 0.0]))
    rep.keep_inside()
    m, s = rep.object.params["means"], rep.object.params["scales"].exp()
    assert rep.box.contains(m, margin=-0.02 + 1e-6).all()  # 2 x min_scale in from every face
    room = torch.minimum(m - torch.tensor(rep.box.lo), torch.tensor(rep.box.hi) - m).amin(-1)
    assert (s.amax(-1) <= room / 3 + 1e-6).all()
    from threedgen.edit.views import box_mask, dilate

    with torch.no_grad():
        before, after = ren(rep.without_object(), cams, bg).rgb, ren(rep, cams, bg).rgb
    outside = 1 - dilate(box_mask(cams, rep.box), 2)
    assert float(((before - after).abs() * outside).max()) < 0.02  # nothing of the object beyond the box's outline


def test_settle_rests_a_floating_object_on_the_box_floor(tmp_path):
    rep = edit_scene(tmp_path, object={"init": "box", "num_points": 60, "init_opacity": 0.9, "min_scale": 0.005})
    with torch.no_grad():  # a small object floating at the top of the box
        rep.object.params["means"].mul_(0.2).add_(torch.tensor([0.0, -0.03, 0.0]))
        rep.object.params["scales"].fill_(float(torch.tensor(0.01).log()))
    before = rep.object.params["means"].clone()
    drop = rep.settle()
    assert drop > 0.15
    g = rep.object.activated()
    bottom = float((g["means"][:, 1] - 2 * g["scales"].amax(-1)).min())
    assert abs(bottom - rep.box.lo[1]) < 0.011  # resting on the floor (within the faces' filter margin)
    torch.testing.assert_close(rep.object.params["means"][:, [0, 2]], before[:, [0, 2]])  # straight down
    assert rep.settle() < 0.011  # already resting


def test_object_alpha_channel_is_the_visible_object_alpha(tmp_path):
    rep = edit_scene(tmp_path)
    ren, bg = GaussianRenderer(GaussianRenderer.Config()), SolidBackground(SolidBackground.Config())
    front = make_cameras([10], [0], 1.6, 50, 32, 32, center=torch.tensor([0.0, -0.15, 0.0]))
    behind = make_cameras([0], [180], 1.6, 50, 32, 32, center=torch.tensor([0.0, -0.15, 0.0]))  # the wall hides the box
    with torch.no_grad():
        a_front = ren(rep, front, bg).meta["extra"]
        out_behind = ren(rep, behind, bg)
    assert a_front.max() > 0.5 and a_front.min() >= 0
    assert out_behind.meta["extra"].max() < 0.05 < out_behind.alpha.mean()
    m = alpha_mask(a_front, dilate_px=2)
    core = (a_front > 0.05).float()
    assert m.sum() > core.sum() and (m >= core).all()
    near_box = dilate(box_mask(front, rep.box), 2)  # the Gaussians' footprints spill a pixel or two
    assert (near_box[core > 0] == 1).all()  # the object renders where the box is


def test_replace_mode_drops_the_background_inside_the_box(tmp_path):
    keep, drop = edit_scene(tmp_path), edit_scene(tmp_path, mode="replace")
    inside = EditBox.parse(keep.cfg.box).contains(keep.bg_means)
    assert inside.sum() > 0 and drop.num_background == keep.num_background - int(inside.sum()) and drop.removed == int(inside.sum())


def test_box_mask_disparity_and_camera_centre():
    box = EditBox.parse([-0.2, -0.2, -0.2, 0.2, 0.2, 0.2])
    c = torch.tensor([0.3, 0.1, -0.2])
    cams = make_cameras([20], [40], 2.0, 50, 33, 33, center=c)
    uv, depth = cams.project(c.view(1, 1, 3))
    torch.testing.assert_close(uv[0, 0], torch.tensor([16.5, 16.5]), atol=1e-4, rtol=0)
    torch.testing.assert_close(depth[0, 0], torch.tensor(2.0))
    centred = make_cameras([20], [40], 2.0, 50, 33, 33)
    m = box_mask(centred, box)[0, 0]
    assert m[16, 16] == 1 and m[0, 0] == 0 and m[32, 32] == 0
    corners_uv, _ = centred.project(box.corners()[None])
    lo, hi = corners_uv[0].amin(0), corners_uv[0].amax(0)
    ys, xs = torch.nonzero(m, as_tuple=True)
    assert xs.min() >= lo[0].floor() - 1 and xs.max() <= hi[0].ceil() and ys.min() >= lo[1].floor() - 1 and ys.max() <= hi[1].ceil()
    depth = torch.tensor([[1.0, 2.0], [4.0, 0.0]]).view(1, 1, 2, 2)
    alpha = torch.tensor([[1.0, 1.0], [1.0, 0.0]]).view(1, 1, 2, 2)
    d = disparity_image(depth, alpha)
    assert d.shape == (1, 3, 2, 2)
    torch.testing.assert_close(d[0, 0], torch.tensor([[1.0, 1 / 3], [0.0, 0.0]]))
    cfg = CameraConfig(center=(0.3, 0.1, -0.2))
    o = orbit_cameras(cfg, 4, 8)
    torch.testing.assert_close((o.c2w[:, :3, 3] - c).norm(dim=-1), torch.full((4,), cfg.eval_distance))


def test_anchor_view_looks_past_the_wall(tmp_path):
    rep = edit_scene(tmp_path)
    ren, bg = GaussianRenderer(GaussianRenderer.Config()), SolidBackground(SolidBackground.Config())
    with torch.no_grad():
        rep.object.params["opacities"].fill_(-20.0)  # the background alone
        best, scores, cams = propose_anchor(lambda c: ren(rep, c, bg), rep.box, distance=1.8, fovy=50, resolution=24,
                                            elevations=(0.0, 20.0), n_azimuth=8)
    s = scores[best]
    assert s.visible > 0.6 and s.context > 0.3  # the ground hides a sliver of the box bottom
    assert abs(((s.azimuth + 180) % 360) - 180) <= 45  # from the front, with the wall behind as context
    back = [x for x in scores if abs(x.azimuth - 180) < 1 and x.elevation == 0.0][0]
    assert back.visible < 0.5  # from behind, the wall hides the box


def test_object_meta_restricts_dense_and_packed_statistics():
    means2d = torch.randn(2, 7, 2, requires_grad=True)
    (means2d.square().sum()).backward()
    m = object_meta({"means2d": means2d, "radii": torch.ones(2, 7, dtype=torch.int32), "width": 8, "height": 8, "n_cameras": 2}, 3)
    assert m["means2d"].shape == (2, 3, 2) and torch.equal(m["means2d"].grad, means2d.grad[:, :3]) and m["radii"].shape == (2, 3)
    ids = torch.tensor([0, 5, 2, 6])
    packed = torch.randn(4, 2, requires_grad=True)
    packed.sum().backward()
    m = object_meta({"means2d": packed, "gaussian_ids": ids, "camera_ids": torch.tensor([0, 0, 1, 1]), "radii": torch.ones(4)}, 3)
    assert m["gaussian_ids"].tolist() == [0, 2] and m["camera_ids"].tolist() == [0, 1] and m["means2d"].grad.shape == (2, 2)
