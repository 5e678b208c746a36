"""Export of textured meshes: GLB/OBJ checked by real loaders (Khronos glTF Validator through node, trimesh)
and against analytic scenes with known geometry and colour; bad input; the runner's export step.
Splat formats: ``test_export_splats.py``."""

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from export_fixtures import LatticeGaussians, accessor, cfg, read_glb, validate_glb
from threedgen.config import ConfigError, ExportConfig, from_dict
from threedgen.export.bake import dilate, rasterize_uv
from threedgen.export.mesh import MeshExporter, build_textured_mesh
from threedgen.export.splats import SplatExporter
from threedgen.systems import runner

CENTRE = np.array([0.1, 0.2, -0.1], dtype=np.float32)
RADIUS = 0.5


class Ball:
    """Analytic sphere whose albedo is linear in position, so every texel's expected colour is known."""

    last_threshold = None

    def isosurface(self, resolution=64, threshold="auto"):
        import mcubes

        lin = np.linspace(-1, 1, resolution)
        x = np.stack(np.meshgrid(lin, lin, lin, indexing="ij"), -1)
        sdf = RADIUS - np.linalg.norm(x - CENTRE, axis=-1)
        level = 0.0 if threshold == "auto" else float(threshold) - 1.0
        if sdf.max() <= level:
            raise ValueError(f"no surface at threshold {threshold}")
        v, f = mcubes.marching_cubes(sdf, level)
        v = (v * 2 / (resolution - 1) - 1).astype(np.float32)
        return v, f.astype(np.int64), None  # wound inward: the exporter must orient it outward

    @staticmethod
    def albedo_at(points):
        p = torch.as_tensor(points, dtype=torch.float32)
        return (0.5 + 0.4 * (p - torch.from_numpy(CENTRE)) / RADIUS).clamp(0, 1)


@pytest.fixture(scope="module")
def ball_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ball")
    c = cfg()
    mesh = build_textured_mesh(Ball(), c)
    MeshExporter()(Ball(), c, folder)
    return mesh, folder


# ---- textured mesh ----------------------------------------------------------------------------


def test_glb_passes_the_khronos_validator_with_no_errors_or_warnings(ball_export):
    _, folder = ball_export
    issues = validate_glb(folder / "model.glb")
    assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, issues["messages"]


def test_trimesh_reloads_glb_and_obj_with_uvs_normals_and_the_same_vertices(ball_export):
    import trimesh

    mesh, folder = ball_export
    glb = trimesh.load(folder / "model.glb", force="mesh", process=False)
    obj = trimesh.load(folder / "model.obj", force="mesh", process=False)
    for m in (glb, obj):
        assert m.visual.kind == "texture"
        assert len(m.vertices) == len(mesh.positions) and len(m.faces) == len(mesh.faces)
        assert m.visual.uv.shape == (len(mesh.positions), 2)
        np.testing.assert_allclose(m.vertices, mesh.positions, atol=1e-5)
    # trimesh converts both files to bottom-left UVs: the two loaders agree with each other
    np.testing.assert_allclose(glb.visual.uv, obj.visual.uv, atol=1e-5)
    # and trimesh's own texture lookup (its UV convention, not ours) gives the colour field at the vertices
    for m in (glb, obj):
        looked_up = m.visual.to_color().vertex_colors[:, :3] / 255.0
        err = np.abs(looked_up - Ball.albedo_at(m.vertices).numpy()).max(1)
        assert np.percentile(err, 99) < 0.04, np.percentile(err, 99)
    gltf, binary = read_glb(folder / "model.glb")
    attrs = gltf["meshes"][0]["primitives"][0]["attributes"]
    assert set(attrs) == {"POSITION", "NORMAL", "TEXCOORD_0"}
    np.testing.assert_array_equal(accessor(gltf, binary, attrs["NORMAL"]), mesh.normals)
    assert glb.volume > 0  # counter-clockwise seen from outside
    # bounding box in metres, +Y up, where the analytic sphere is
    np.testing.assert_allclose(glb.bounds, [CENTRE - RADIUS, CENTRE + RADIUS], atol=0.03)
    outward = ((mesh.positions - CENTRE) * mesh.normals).sum(1) / RADIUS
    assert outward.min() > 0.9


def _sample(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest-texel lookup with our (glTF) convention: row = v * H."""
    h, w = texture.shape[:2]
    col = np.clip((uv[:, 0] * w).astype(int), 0, w - 1)
    row = np.clip((uv[:, 1] * h).astype(int), 0, h - 1)
    return texture[row, col]


def test_baked_texture_reproduces_the_colour_field_at_every_vertex_and_face(ball_export):
    mesh, _ = ball_export
    tex = mesh.texture.astype(np.float32) / 255
    pos = mesh.positions  # pivot=center keeps world coordinates
    err_v = np.abs(_sample(tex, mesh.uv) - Ball.albedo_at(pos).numpy()).max(1)
    centroid_uv = mesh.uv[mesh.faces].mean(1)
    err_f = np.abs(_sample(tex, centroid_uv) - Ball.albedo_at(pos[mesh.faces].mean(1)).numpy()).max(1)
    assert np.percentile(err_v, 99) < 0.03 and err_v.max() < 0.08, err_v.max()
    assert err_f.max() < 0.03, err_f.max()


def test_dilation_leaves_no_background_inside_islands_and_survives_mip_mapping(ball_export):
    mesh, _ = ball_export
    tri, _ = rasterize_uv(mesh.uv, mesh.faces, 256, conservative=0.0)
    covered = (tri >= 0).numpy()
    assert 0.3 < covered.mean() < 0.95  # a packed atlas with gaps between islands
    tex = mesh.texture.astype(np.float32) / 255
    assert tex.min() > 0.05  # no black (background) texel anywhere: islands and gaps are all filled
    centroid_uv = mesh.uv[mesh.faces].mean(1)
    want = Ball.albedo_at(mesh.positions[mesh.faces].mean(1)).numpy()

    def mip_error(t, level):
        k = 2**level
        small = t.reshape(256 // k, k, 256 // k, k, 3).mean((1, 3))  # box-filtered mip level
        return np.abs(_sample(small, centroid_uv) - want).max(1)

    undilated = tex * covered[..., None]
    for level in (1, 2, 3):  # 128, 64, 32 px
        assert np.percentile(mip_error(tex, level), 99) < 0.12
    assert np.percentile(mip_error(undilated, 3), 99) > 0.2  # the check can fail: black gaps bleed in


def test_rasterizer_covers_a_triangle_exactly_and_interpolates_linearly():
    uv = np.array([[0.1, 0.1], [0.9, 0.2], [0.3, 0.8]], dtype=np.float32)
    tri, bary = rasterize_uv(uv, np.array([[0, 1, 2]]), 64, conservative=0.0)
    area = 0.5 * abs((0.8 * 0.7) - (0.1 * 0.2)) * 64 * 64
    assert abs(int((tri == 0).sum()) - area) < 0.05 * area
    # barycentrics reproduce the texel centres
    rows, cols = torch.nonzero(tri == 0, as_tuple=True)
    p = (bary[rows, cols].double() @ torch.from_numpy(uv).double()) * 64
    torch.testing.assert_close(p, torch.stack([cols, rows], 1).double() + 0.5, atol=1e-4, rtol=0)


def test_dilate_fills_every_hole_from_the_nearest_island():
    tex = torch.zeros(32, 32, 3)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    tex[4:10, 4:10], mask[4:10, 4:10] = torch.tensor([1.0, 0.0, 0.0]), True
    tex[20:28, 20:28], mask[20:28, 20:28] = torch.tensor([0.0, 0.0, 1.0]), True
    out = dilate(tex, mask, iterations=3)
    assert torch.equal(out[mask], tex[mask])
    torch.testing.assert_close(out[11, 7], torch.tensor([1.0, 0.0, 0.0]))  # 2 px from the red island
    torch.testing.assert_close(out[18, 24], torch.tensor([0.0, 0.0, 1.0]))
    assert bool((out.sum(-1) > 0.99).all())  # push-pull filled the rest, no black left


def test_dilation_rings_average_exactly_the_filled_3x3_neighbours():
    import torch.nn.functional as F

    from threedgen.export.bake import _box3

    x = torch.rand(1, 4, 17, 23)
    ref = F.conv2d(x, torch.ones(4, 1, 3, 3), padding=1, groups=4)  # an independent 3x3 sum, zero padding at the border
    torch.testing.assert_close(_box3(x), ref)
    tex, mask = torch.zeros(5, 5, 3), torch.zeros(5, 5, dtype=torch.bool)
    tex[0, 0], tex[0, 2], mask[0, 0], mask[0, 2] = torch.tensor([1.0, 0, 0]), torch.tensor([0, 0, 1.0]), True, True
    torch.testing.assert_close(dilate(tex, mask, iterations=1)[1, 1], torch.tensor([0.5, 0.0, 0.5]))  # both neighbours, averaged


def test_pivot_bottom_and_size_m_give_a_bottom_centred_object_of_that_height():
    mesh = build_textured_mesh(Ball(), cfg(pivot="bottom", size_m=1.7, texture_size=64, target_faces=500))
    lo, hi = mesh.positions.min(0), mesh.positions.max(0)
    assert abs(lo[1]) < 1e-6 and abs(hi[1] - 1.7) < 1e-4
    assert np.abs((lo + hi)[[0, 2]] / 2).max() < 1e-5


def test_decimation_reaches_the_target_face_count():
    for target in (400, 2000):
        mesh = build_textured_mesh(Ball(), cfg(target_faces=target, texture_size=64))
        assert 0.9 * target <= len(mesh.faces) <= target, len(mesh.faces)


def test_small_floaters_are_dropped():
    class BallWithFloater(Ball):
        def isosurface(self, resolution=64, threshold="auto"):
            v, f, _ = super().isosurface(resolution, threshold)
            vs, fs, _ = super().isosurface(16, threshold)  # a coarse copy: about 1/10 of the faces
            small = (vs - CENTRE) * 0.2 + np.array([0.8, 0.8, 0.8], dtype=np.float32)
            return np.concatenate([v, small]), np.concatenate([f, fs + len(v)]), None

    keep_all = build_textured_mesh(BallWithFloater(), cfg(texture_size=64, target_faces=0, min_component_fraction=0.0))
    assert keep_all.positions.max() > 0.85
    mesh = build_textured_mesh(BallWithFloater(), cfg(texture_size=64, target_faces=0, min_component_fraction=0.2))
    assert mesh.positions.max() < (CENTRE + RADIUS).max() + 0.05


# ---- bad input ----------------------------------------------------------------------------------


def test_bad_input_gives_clear_errors_and_keeps_the_previous_export(tmp_path):
    MeshExporter()(Ball(), cfg(texture_size=64, target_faces=500), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    class Empty(Ball):
        def isosurface(self, resolution=64, threshold="auto"):
            raise ValueError("the scene is empty: no ray through the box becomes half opaque")

    with pytest.raises(ValueError, match="no surface at threshold 5"):
        MeshExporter()(Ball(), cfg(threshold=5.0), tmp_path)
    with pytest.raises(ValueError, match="empty"):
        MeshExporter()(Empty(), cfg(), tmp_path)
    with pytest.raises(ValueError, match="NaN"):
        SplatExporter().encode(LatticeGaussians(nan=True), cfg(formats=["ply"]))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing lost, no temp files
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="not writable"):
        MeshExporter()(Ball(), cfg(), tmp_path / "afile" / "export")
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    try:
        if not os.access(locked, os.W_OK):  # root ignores permissions
            with pytest.raises(ValueError, match="not writable"):
                MeshExporter()(Ball(), cfg(), locked / "export")
    finally:
        os.chmod(locked, 0o700)


def test_nan_weights_are_named_before_meshing(tmp_path):
    from threedgen.representations.nerf import NeRF

    nerf = NeRF(from_dict(NeRF.Config, {"grid": {"n_levels": 2, "log2_hashmap_size": 8, "base_resolution": 4, "max_resolution": 8},
                                       "mlp_width": 8, "normals": "none"}))
    with torch.no_grad():
        nerf.grid.params[0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite parameters .*'grid.params'"):
        MeshExporter()(nerf, cfg(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_export_config_errors_name_the_key_and_the_valid_values():
    with pytest.raises(ConfigError, match=r"export.formats.0: expected one of 'glb', 'obj', 'ply'.*got 'fbx'"):
        from_dict(ExportConfig, {"formats": ["fbx"]}, "export")
    with pytest.raises(ConfigError, match=r"export.texture_size: expected an int in \[16, 8192\]"):
        from_dict(ExportConfig, {"texture_size": 4}, "export")
    with pytest.raises(ConfigError, match="export.size_m"):
        from_dict(ExportConfig, {"size_m": -1.0}, "export")
def test_gaussian_scene_exports_splats_and_a_textured_mesh_through_runner(tmp_path):
    import trimesh

    system = SimpleNamespace(representation=LatticeGaussians())
    c = cfg(resolution=40, texture_size=128, target_faces=2000, formats=["glb", "ply", "splat", "splat_glb"])
    paths = runner.export(system, SimpleNamespace(export=c), tmp_path)
    assert sorted(p.name for p in paths) == ["gaussians.glb", "gaussians.ply", "gaussians.splat", "model.glb"]
    from plyfile import PlyData

    ply = PlyData.read(str(tmp_path / "export" / "gaussians.ply"))["vertex"]
    np.testing.assert_allclose(np.mean(ply["y"]), -0.3, atol=1e-5)  # default splat_axes=rdf: y down
    mesh = trimesh.load(tmp_path / "export" / "model.glb", force="mesh")
    # the 6x6x6 lattice spans [-0.25, 0.25] (+0.3 in y) plus roughly one Gaussian width of skin
    lo, hi = mesh.bounds
    assert np.all(lo > [-0.45, 0.3 - 0.45, -0.45]) and np.all(hi < [0.45, 0.3 + 0.45, 0.45]) and np.all(lo < [-0.25, 0.05, -0.25])
    tex = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"), dtype=np.float32) / 255
    np.testing.assert_allclose(np.median(tex.reshape(-1, 3), 0), [0.2, 0.8, 0.3], atol=0.05)  # dominant colour


def test_nerf_export_through_runner_skips_splat_formats(tmp_path, caplog):
    from threedgen.representations.nerf import NeRF

    torch.manual_seed(0)
    nerf = NeRF(from_dict(NeRF.Config, {"grid": {"n_levels": 4, "log2_hashmap_size": 12, "base_resolution": 8, "max_resolution": 32},
                                       "mlp_width": 16, "normals": "none"}))
    c = from_dict(ExportConfig, {"mesher": "density", "resolution": 32, "texture_size": 64, "target_faces": 500})
    with caplog.at_level("INFO", logger="threedgen"):
        paths = runner.export(SimpleNamespace(representation=nerf), SimpleNamespace(export=c), tmp_path)
    assert sorted(p.name for p in paths) == ["model.glb", "model.mtl", "model.obj", "model_basecolor.png", "viewer.html"]
    for stage in ("extraction", "cleanup", "decimation", "unwrap", "bake"):
        assert f"export: {stage}" in caplog.text


def test_dmtet_exports_its_own_mesh_textured_and_valid(tmp_path):
    """DMTet skips marching cubes: its marching-tets surface is what gets unwrapped and baked."""
    import trimesh

    from threedgen.representations.dmtet import DMTet

    torch.manual_seed(0)
    grid = {"n_levels": 4, "log2_hashmap_size": 12, "base_resolution": 8, "max_resolution": 32}
    rep = DMTet(from_dict(DMTet.Config, {"tet_resolution": 16, "init_radius": 0.4, "albedo_grid": grid, "mlp_width": 16,
                                         "tet_cache_dir": str(tmp_path / "tets")}))
    c = from_dict(ExportConfig, {"mesher": "density", "texture_size": 64, "target_faces": 400, "formats": ["glb"]})
    (path,) = runner.export(SimpleNamespace(representation=rep), SimpleNamespace(export=c), tmp_path)
    issues = validate_glb(path)
    assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, issues["messages"][:5]
    mesh = trimesh.load(path, force="mesh")
    assert mesh.visual.kind == "texture" and len(mesh.faces) <= 400
    radii = np.linalg.norm(mesh.vertices - mesh.vertices.mean(0), axis=1)
    assert 0.3 < radii.mean() < 0.45  # the initial sphere of radius 0.4, on a 16-cell grid


def test_export_resume_accepts_a_run_folder_and_reads_its_config(tmp_path):
    from threedgen.cli import _config_path
    from threedgen.config import load_config

    run = tmp_path / "outputs" / "tiny" / "a_ball@1"
    (run / "ckpts").mkdir(parents=True)
    torch.save({"state_dict": {}, "global_step": 3}, run / "ckpts" / "last.ckpt")
    (run / "config.yaml").write_text("name: tiny\nexport: {texture_size: 64}\n")
    args = SimpleNamespace(config=None, test=False, export=True, resume=str(run))
    cfg, _ = load_config(_config_path(args), ["export.target_faces=5000"])
    assert (cfg.export.texture_size, cfg.export.target_faces) == (64, 5000)
    assert runner.resolve_run(cfg, str(run), need_ckpt=True) == (run, run / "ckpts" / "last.ckpt")
