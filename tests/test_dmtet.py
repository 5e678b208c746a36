"""DMTet: generated tet grids, marching tetrahedra (volume, watertightness, gradients), the
representation (init, NeRF conversion, frozen geometry), mesh regularisers and a three-stage
coarse -> geometry -> texture launch with resume."""

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from threedgen.config import from_dict
from threedgen.representations.dmtet import DMTet
from threedgen.representations.marching_tets import marching_tets
from threedgen.representations.mesh_regularisers import LaplacianSmoothness, NormalConsistency
from threedgen.representations.tets import build_tet_grid, load_tet_grid, tet_volumes

ROOT = Path(__file__).resolve().parents[1]
TINY_GRID = {"n_levels": 4, "log2_hashmap_size": 12, "base_resolution": 8, "max_resolution": 64}


@pytest.fixture(autouse=True)
def _tet_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("THREEDGEN_TET_CACHE", str(tmp_path / "tets"))


def test_tet_grid_is_conforming_positive_and_fills_the_box():
    v, t = build_tet_grid(3)
    assert v.shape == (64, 3) and t.shape == (6 * 27, 4)
    vol = tet_volumes(v, t)
    assert (vol > 0).all() and vol.sum() == pytest.approx(8.0)
    faces = np.sort(np.concatenate([t[:, [0, 1, 2]], t[:, [0, 1, 3]], t[:, [0, 2, 3]], t[:, [1, 2, 3]]]), 1)
    _, counts = np.unique(faces, axis=0, return_counts=True)
    # boundary triangles (6 sides x 9 squares x 2) once, every other face shared by exactly two tets
    assert (counts == 1).sum() == 108 and set(counts.tolist()) == {1, 2}


def test_tet_grid_is_cached_and_reloaded(tmp_path):
    v, t = load_tet_grid(5)
    path = tmp_path / "tets" / "tets_5.npz"
    assert path.is_file() and not list(path.parent.glob("*.tmp*"))
    with np.load(path) as z:  # the reload reads the file: tamper with it and see the change
        np.savez(path, vertices=z["vertices"] * 2, tets=z["tets"])
    v2, t2 = load_tet_grid(5)
    assert np.array_equal(v2, v * 2) and np.array_equal(t2, t)
    path.write_bytes(b"garbage")  # an unreadable cache is rebuilt
    v3, _ = load_tet_grid(5)
    assert np.array_equal(v3, v)


def test_marching_tets_sphere_is_watertight_outward_and_has_the_right_volume():
    import trimesh

    v, t = build_tet_grid(64)
    v = torch.from_numpy(v) * 0.8
    r = 0.5
    mv, f = marching_tets(v, r - v.norm(dim=-1), torch.from_numpy(t))
    mesh = trimesh.Trimesh(mv.numpy(), f.numpy(), process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    exact = 4 / 3 * math.pi * r**3
    assert mesh.volume > 0  # outward normals give a positive signed volume
    assert abs(mesh.volume - exact) / exact < 0.03
    # shared edge vertices: a closed triangle mesh of genus 0 has V = F/2 + 2 (unshared would be 3F)
    assert len(mv) == len(f) // 2 + 2


def test_marching_tets_gradients_match_finite_differences_and_have_the_right_sign():
    v, t = build_tet_grid(6)
    v = torch.from_numpy(v).double()
    t = torch.from_numpy(t)
    sdf0 = 0.55 - v.norm(dim=-1) + 0.01 * torch.sin(7 * v[:, 0])

    def size(s, x=v):  # sum of surface-vertex distances from the centre: grows when s grows
        mv, _ = marching_tets(x, s, t)
        return mv.norm(dim=-1).sum()

    s = sdf0.clone().requires_grad_(True)
    size(s).backward()
    g = s.grad
    active = g.abs() > 1e-8
    assert active.sum() > 20
    assert (g[active] > 0).all()  # raising the SDF (more inside) moves the surface outwards
    eps = 1e-6
    for i in active.nonzero().squeeze(1)[:6]:
        d = torch.zeros_like(sdf0)
        d[i] = eps
        fd = (size(sdf0 + d) - size(sdf0 - d)) / (2 * eps)
        assert g[i].item() == pytest.approx(fd.item(), rel=1e-5)
    x = v.clone().requires_grad_(True)
    size(sdf0, x).backward()
    assert x.grad.abs().sum() > 0  # the deformation gets gradients too


def _dmtet(**kw):
    cfg = {"tet_resolution": 16, "radius": 0.8, "albedo_grid": TINY_GRID, "geometry_grid": TINY_GRID, "mlp_width": 16, **kw}
    return DMTet(from_dict(DMTet.Config, cfg))


@pytest.mark.parametrize("geometry", ["parameters", "hashgrid"])
def test_dmtet_mesh_gets_gradients_through_the_mesh_renderer(geometry):
    from threedgen.data.cameras import make_cameras
    from threedgen.renderers.background import SolidBackground
    from threedgen.renderers.mesh import MeshRenderer

    rep = _dmtet(geometry=geometry, init="ellipsoid", init_axes=[0.5, 0.3, 0.4])
    v, f, c = rep.isosurface()
    assert v.dtype == np.float32 and f.dtype == np.int64 and c.shape == v.shape and ((c >= 0) & (c <= 1)).all()
    assert np.abs(v).max(0) == pytest.approx([0.5, 0.3, 0.4], abs=0.06)
    out = MeshRenderer(MeshRenderer.Config(shading="lambertian"))(rep, make_cameras([15.0], [30.0], 2.0, 50.0, 24, 24), SolidBackground(SolidBackground.Config()))
    out.rgb.mean().backward()
    groups = {g["name"]: g["params"] for g in rep.param_groups()}
    assert set(groups) == {"geometry", "albedo_grid", "albedo_mlp"}
    assert all(any(p.grad is not None and p.grad.abs().sum() > 0 for p in groups[n]) for n in groups)


def test_an_empty_dmtet_renders_the_background_and_still_backpropagates():
    from threedgen.data.cameras import make_cameras
    from threedgen.renderers.background import SolidBackground
    from threedgen.renderers.mesh import MeshRenderer

    rep = _dmtet(init="none")
    bg = SolidBackground(SolidBackground.Config(color=(0.2, 0.4, 0.6)))
    out = MeshRenderer(MeshRenderer.Config())(rep, make_cameras([0.0], [0.0], 2.0, 50.0, 8, 8), bg)
    assert torch.allclose(out.rgb, torch.tensor([0.2, 0.4, 0.6])[None, :, None, None].expand(1, 3, 8, 8))
    assert out.alpha.abs().sum() == 0
    out.rgb.sum().backward()  # an SDS step on an empty scene must not crash the run
    with pytest.raises(ValueError, match="surface is empty"):
        rep.isosurface()


def test_frozen_geometry_has_no_trainable_geometry_and_reuses_its_mesh():
    rep = _dmtet(freeze_geometry=True)
    assert all(not p.requires_grad for p in rep.geometry_parameters())
    assert "geometry" not in {g["name"] for g in rep.param_groups()}
    v1, f1 = rep.mesh()
    assert rep.mesh()[0] is v1 and not v1.requires_grad
    trained = _dmtet()
    with torch.no_grad():
        trained.sdf_res.add_(0.05)
    rep.convert_from(trained)  # a new state: the cached mesh is rebuilt (bigger sphere)
    assert rep.mesh()[0].norm(dim=-1).mean() > v1.norm(dim=-1).mean() + 0.03


def test_convert_from_a_nerf_gives_its_surface_and_colours():
    from threedgen.representations.nerf import NeRF

    torch.manual_seed(0)
    nerf = NeRF(from_dict(NeRF.Config, {"radius": 0.8, "grid": TINY_GRID, "mlp_width": 16, "normals": "none"}))
    ref_v, _, _ = nerf.isosurface(resolution=48)  # the blob at the NeRF's own automatic threshold
    rep = _dmtet(init="none", convert_resolution=48)
    assert len(rep.mesh()[1]) == 0
    rep.convert_from(nerf)
    v, f = rep.mesh()
    assert len(f) > 100
    r_dm, r_nerf = v.norm(dim=-1).mean().item(), float(np.linalg.norm(ref_v, axis=1).mean())
    assert abs(r_dm - r_nerf) < 0.1 * 0.8  # within one tet cell (2 * 0.8 / 16)
    x = v.detach()[:50]
    assert torch.allclose(rep.albedo_at(x), nerf(x, normals=False)["albedo"], atol=1e-6)  # same layout: copied
    other = _dmtet(init="none", mlp_width=8, convert_albedo_steps=40, convert_resolution=48)  # different layout: distilled
    other.convert_from(nerf)
    assert (other.albedo_at(x) - nerf(x, normals=False)["albedo"]).abs().mean() < 0.05


def test_convert_from_gaussians_through_their_renders_gives_a_closed_surface_with_their_colour():
    """A hollow shell of red splats (what SDS leaves) becomes a solid DMTet sphere whose albedo is the
    rendered red, not a mix with anything inside."""
    from threedgen.export.refine import black
    from threedgen.export.topology import mesh_stats
    from threedgen.renderers.gaussian import GaussianRenderer
    from threedgen.representations.gaussians import Gaussians

    torch.manual_seed(0)
    gs = Gaussians(from_dict(Gaussians.Config, {"init": "sphere", "init_surface": True, "num_points": 2000, "init_radius": 0.4,
                                                "init_opacity": 0.9, "init_color": [0.85, 0.1, 0.1]}))
    renderer = GaussianRenderer(GaussianRenderer.Config())
    rep = _dmtet(init="none", convert_resolution=64, convert_albedo_steps=100)
    rep.convert_from(gs, render=lambda cams: renderer(gs, cams, black))
    v, f = rep.mesh()
    st = mesh_stats(v.detach().numpy(), f.numpy())
    assert st["watertight"] and st["euler"] == 2 and st["components"] == 1
    r = v.detach().norm(dim=-1)
    assert 0.33 < float(r.mean()) < 0.5, float(r.mean())  # the shell's outer radius, within a tet cell (0.1)
    alb = rep.albedo_at(v.detach()[::10])
    assert torch.allclose(alb.median(0).values, torch.tensor([0.85, 0.1, 0.1]), atol=0.08), alb.median(0).values


def test_normal_consistency_and_laplacian_on_meshes_with_known_values():
    import trimesh

    box = trimesh.creation.box()
    v, f = torch.tensor(box.vertices, dtype=torch.float32), torch.tensor(box.faces)
    # 18 edges: 6 face diagonals between coplanar faces (0) and 12 cube edges at 90 degrees (1)
    assert NormalConsistency(NormalConsistency.Config())(None, _Mesh(v, f)).item() == pytest.approx(12 / 18)
    v = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=torch.float32)
    f = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    # octahedron: each vertex's 4 neighbours average to the origin, |L v|^2 = 1, edge length^2 = 2
    assert LaplacianSmoothness(LaplacianSmoothness.Config())(None, _Mesh(v, f)).item() == pytest.approx(0.5)


class _Mesh:
    def __init__(self, v, f):
        self.v, self.f = v, f

    def mesh(self):
        return self.v, self.f


def test_three_stage_launch_writes_every_stage_and_resume_auto_finishes_the_interrupted_one(tmp_path, monkeypatch, toy_prior_present):
    """coarse NeRF -> DMTet geometry -> frozen-geometry texture on the toy prior, 2 steps each; then an
    interruption during the geometry stage is simulated and --resume auto finishes geometry and texture
    without redoing the coarse stage."""
    from threedgen.config import load_config
    from threedgen.systems import runner

    monkeypatch.chdir(tmp_path)
    (tmp_path / "assets").symlink_to(ROOT / "assets")
    small = ["trainer.val_every=0", "trainer.ckpt_every=1", "trainer.export_at_end=false", "trainer.progress_bar=false",
             "data.batch_size=1", "data.width=16", "data.height=16", "system.representation.grid.n_levels=4",
             "system.representation.grid.log2_hashmap_size=12", "system.renderer.num_samples_per_ray=16",
             "stages.1.system.representation.tet_resolution=16", "stages.2.system.representation.tet_resolution=16",
             "stages.1.system.representation.convert_resolution=48", "stages.0.steps=2", "stages.2.steps=2"]
    recipe = ROOT / "configs" / "toy" / "magic3d.yaml"
    cfg, raw = load_config(recipe, small + ["stages.1.steps=2"])
    run, ckpt = runner.resolve_run(cfg, None, need_ckpt=False)
    system = runner.train(cfg, raw, run, ckpt)
    ck = {s: torch.load(run / "ckpts" / f"{s}.ckpt", map_location="cpu", weights_only=False) for s in ("coarse", "geometry", "texture")}
    assert {s: (c["threedgen_stage"], c["global_step"]) for s, c in ck.items()} == {s: (s, 2) for s in ck}
    assert ck["geometry"]["threedgen"]["representation"] == "dmtet"
    # the geometry moved in stage 2 and stayed put in stage 3; the texture changed in stage 3
    sd_g, sd_t = ck["geometry"]["state_dict"], ck["texture"]["state_dict"]
    assert sd_g["representation.sdf_res"].abs().sum() > 0
    assert torch.equal(sd_g["representation.sdf_res"], sd_t["representation.sdf_res"])
    assert not torch.equal(sd_g["representation.albedo_grid.params"], sd_t["representation.albedo_grid.params"])
    v, f, _ = system.representation.isosurface()
    assert len(f) > 0
    # simulate a crash after step 2 of the geometry stage: last.ckpt is geometry's, later files are gone
    coarse_bytes = (run / "ckpts" / "coarse.ckpt").read_bytes()
    shutil.copy(run / "ckpts" / "geometry.ckpt", run / "ckpts" / "last.ckpt")
    (run / "ckpts" / "geometry.ckpt").unlink()
    (run / "ckpts" / "texture.ckpt").unlink()
    cfg2, raw2 = load_config(recipe, small + ["stages.1.steps=3"])
    run2, ckpt2 = runner.resolve_run(cfg2, "auto", need_ckpt=False)
    assert run2 == run and ckpt2 == run / "ckpts" / "last.ckpt"
    runner.train(cfg2, raw2, run2, ckpt2)
    assert (run / "ckpts" / "coarse.ckpt").read_bytes() == coarse_bytes  # not redone
    g2 = torch.load(run / "ckpts" / "geometry.ckpt", map_location="cpu", weights_only=False)
    t2 = torch.load(run / "ckpts" / "texture.ckpt", map_location="cpu", weights_only=False)
    assert (g2["global_step"], t2["global_step"], t2["threedgen_stage"]) == (3, 2, "texture")
    rows = [ln.split(",")[:2] for ln in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert ["geometry", "3"] in rows and rows.count(["coarse", "2"]) == 1


def _kuhn_sdf_at(sdf: torch.Tensor, points: torch.Tensor, resolution: int, radius: float) -> torch.Tensor:
    """The piecewise-linear SDF that marching tets meshes, at world points [..., 3] of the undeformed grid.

    Every cube cell holds the 6 Kuhn tets of ``tets.py``; the one containing a point adds the axes in
    order of decreasing fractional coordinate f1 >= f2 >= f3, and the linear interpolant there is
    ``s0 (1 - f1) + s1 (f1 - f2) + s2 (f2 - f3) + s3 f3`` along that corner path (Freudenthal). Using
    this, not trilinear interpolation, keeps the carving term consistent with the extracted mesh."""
    n = resolution + 1
    u = ((points.reshape(-1, 3) / radius + 1.0) * 0.5 * resolution)
    cell = u.floor().clamp(0, resolution - 1)
    f, order = (u - cell).clamp(0, 1).sort(-1, descending=True)
    stride = torch.tensor([n * n, n, 1])
    c0 = (cell.long() * stride).sum(-1)
    step = stride[order]
    c1 = c0 + step[:, 0]
    c2 = c1 + step[:, 1]
    c3 = c2 + step[:, 2]
    s = sdf[c0] * (1 - f[:, 0]) + sdf[c1] * (f[:, 0] - f[:, 1]) + sdf[c2] * (f[:, 1] - f[:, 2]) + sdf[c3] * f[:, 2]
    return s.view(points.shape[:-1])


def _inside_by_ray_parity(v: torch.Tensor, f: torch.Tensor, xs, ys, zs) -> torch.Tensor:
    """Occupancy [X,Y,Z] of a closed mesh on a lattice: parity of the crossings of a +Y ray per (x, z) column."""
    tri = v.double()[f]
    tx, ty, tz = tri[..., 0], tri[..., 1], tri[..., 2]
    X, Z = torch.meshgrid(xs, zs, indexing="ij")
    cx, cz = X.reshape(-1), Z.reshape(-1)
    count = torch.zeros(len(cx), len(ys), dtype=torch.long)
    for s in range(0, len(cx), 256):
        px, pz = cx[s:s + 256, None], cz[s:s + 256, None]
        near = (px >= tx.amin(1)) & (px <= tx.amax(1)) & (pz >= tz.amin(1)) & (pz <= tz.amax(1))
        ci, fi = near.nonzero(as_tuple=True)
        (x0, x1, x2), (z0, z1, z2) = tx[fi].unbind(-1), tz[fi].unbind(-1)
        qx, qz = px[ci, 0], pz[ci, 0]
        area = (x1 - x0) * (z2 - z0) - (x2 - x0) * (z1 - z0)
        b0 = ((x1 - qx) * (z2 - qz) - (x2 - qx) * (z1 - qz)) / area
        b1 = ((x2 - qx) * (z0 - qz) - (x0 - qx) * (z2 - qz)) / area
        b2 = 1 - b0 - b1
        hit = (b0 >= 0) & (b1 >= 0) & (b2 >= 0) & (area != 0)
        y_hit = (b0 * ty[fi, 0] + b1 * ty[fi, 1] + b2 * ty[fi, 2])[hit]
        count.index_add_(0, ci[hit] + s, (ys[None, :] < y_hit[:, None]).long())
    return (count % 2 == 1).view(len(xs), len(zs), len(ys)).permute(0, 2, 1)


def _largest_component(v: torch.Tensor, f: torch.Tensor):
    import trimesh

    parts = trimesh.Trimesh(v.detach().numpy(), f.numpy(), process=True).split(only_watertight=False)
    return max(parts, key=lambda m: len(m.faces)), len(parts)


@pytest.mark.slow
def test_dmtet_fits_a_torus_with_its_hole():
    """Fit a DMTet (tet resolution 20, per-vertex SDF + deformation) to 24 analytic renders of the toy
    torus (major 0.35, tube 0.15, XZ plane; ``toy.render``, 64², elevations -75..75 deg so the hole is
    seen from above and below) and check the topology and the volume.

    Losses: photometric L1 and alpha (mask) MSE through the torch mesh renderer (Lambertian with the toy
    world's light, so the renders can match exactly); a silhouette *carving* term, relu(SDF) at random
    points on the rays of background pixels (the analytic DMTet SDF, see ``_kuhn_sdf_at``), which is
    what opens the hole: inside a silhouette the rasterizer has no gradient that could punch through
    a surface; and a small grid-Laplacian smoothness term on the SDF. Start: an ellipsoid thin in Y
    (genus 0). Measured (seed 0, 160 steps): genus 1 with IoU 0.91; without carving the renderer alone
    reaches genus 2 / IoU 0.79, carving without the renderer loses the surface.

    Genus from the Euler characteristic V - E + F = 2 - 2g of the largest (watertight) component.
    IoU is volumetric: the whole mesh's occupancy (ray-crossing parity) against the analytic torus on
    a 0.01 m lattice over [-0.6, 0.6]^3 (the true SDF meshed on this grid scores 0.97)."""
    import torch.nn.functional as F

    from threedgen.data.cameras import make_cameras
    from threedgen.renderers.background import SolidBackground
    from threedgen.renderers.mesh import MeshRenderer
    from threedgen.toy.render import render_scene, sdf_shape
    from threedgen.toy.world import AMBIENT, LIGHT_DIR, ToyScene

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    R, radius, views = 20, 0.6, 24
    el = torch.linspace(-75.0, 75.0, 6)[torch.arange(views) % 6]
    az = torch.arange(views) * (360.0 / views) + 7.0
    cams = make_cameras(el, az, 1.8, 50.0, 64, 64, light_dir=torch.tensor(LIGHT_DIR).expand(views, 3).contiguous())
    gt = render_scene(ToyScene("torus", "red"), cams, ssaa=2)
    origins, dirs = cams.rays()
    background = gt["mask"][:, 0] < 0.5

    rep = _dmtet(tet_resolution=R, radius=radius, init="ellipsoid", init_axes=[0.55, 0.22, 0.55])
    start, _ = _largest_component(*rep.mesh())
    assert start.is_watertight and start.euler_number == 2  # a sphere-like start: no hole yet
    renderer = MeshRenderer(MeshRenderer.Config(backend="torch", shading="lambertian", ambient=AMBIENT, diffuse=1 - AMBIENT))
    white = SolidBackground(SolidBackground.Config())
    opt = torch.optim.Adam([
        {"params": [rep.sdf_res, rep.deform_raw], "lr": 3e-3},
        {"params": list(rep.albedo_grid.parameters()), "lr": 1e-2, "eps": 1e-15},
        {"params": list(rep.albedo_mlp.parameters()), "lr": 1e-2},
    ])
    n = R + 1
    for _ in range(160):
        idx = torch.randint(views, (4,), generator=g).tolist()
        out = renderer(rep, cams[idx], white)
        loss = (out.rgb - gt["rgb"][idx]).abs().mean() + (out.alpha - gt["mask"][idx]).square().mean()
        # carving: points on background rays inside the bounding sphere must be outside (SDF < 0)
        o, d = origins[idx][background[idx]], dirs[idx][background[idx]]
        b = (o * d).sum(-1)
        disc = b * b - ((o * o).sum(-1) - 0.75**2)
        o, d, b, half = o[disc > 0], d[disc > 0], b[disc > 0], disc[disc > 0].sqrt()
        t = (-b - half)[:, None] + 2 * half[:, None] * torch.rand(len(o), 32, generator=g)
        sdf = rep.sdf_init + rep.sdf_res
        loss = loss + 5.0 * F.relu(_kuhn_sdf_at(sdf, o[:, None] + t[..., None] * d[:, None], R, radius)).mean()
        s = sdf.view(n, n, n)
        lap = (s[2:, 1:-1, 1:-1] + s[:-2, 1:-1, 1:-1] + s[1:-1, 2:, 1:-1] + s[1:-1, :-2, 1:-1]
               + s[1:-1, 1:-1, 2:] + s[1:-1, 1:-1, :-2] - 6 * s[1:-1, 1:-1, 1:-1])
        loss = loss + 0.005 * lap.square().mean() / rep.cell**2
        opt.zero_grad()
        loss.backward()
        opt.step()

    with torch.no_grad():
        v, f = rep.mesh()
    body, _ = _largest_component(v, f)
    assert body.is_watertight
    assert body.euler_number == 0, f"genus {(2 - body.euler_number) / 2}, want 1"
    h = 0.01
    xs = torch.arange(-0.6 + h / 2, 0.6, h, dtype=torch.float64)
    inside = _inside_by_ray_parity(v, f, xs + 1.234e-5, xs, xs + 2.345e-5)  # offsets: no ray through a vertex
    lattice = torch.stack(torch.meshgrid(xs, xs, xs, indexing="ij"), -1)
    truth = sdf_shape("torus", lattice.reshape(-1, 3)).view(inside.shape) < 0
    iou = ((truth & inside).sum() / (truth | inside).sum()).item()
    assert iou > 0.85, f"IoU {iou:.3f}"
