"""Volume renderer: chunking, AABB misses, occupancy skipping, shading, regularisers, CUDA parity."""

import pytest
import torch

from threedgen import registry
from threedgen.config import from_dict
from threedgen.data.cameras import make_cameras
from threedgen.renderers.background import SolidBackground
from threedgen.renderers.volume import VolumeRenderer, ray_aabb
from threedgen.representations.nerf import NeRF

BG = (0.2, 0.5, 0.8)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add contention on a loaded machine
    yield
    torch.set_num_threads(n)


def nerf(**kw) -> NeRF:
    torch.manual_seed(0)
    raw = {"radius": 0.8, "grid": {"n_levels": 6, "log2_hashmap_size": 12, "base_resolution": 8,
                                   "max_resolution": 64}, "mlp_width": 16, "normals": "analytic", **kw}
    n = NeRF(from_dict(NeRF.Config, raw))
    with torch.no_grad():  # some texture so colours vary
        n.grid.params.uniform_(-0.5, 0.5)
    return n


def renderer(**kw) -> VolumeRenderer:
    return VolumeRenderer(from_dict(VolumeRenderer.Config, {"num_samples_per_ray": 24, **kw}))


def bg():
    return SolidBackground(SolidBackground.Config(color=BG))


def cams(res=16, **kw):
    return make_cameras([10, 30], [0, 120], 2.0, 45, res, res, **kw)


def test_chunked_render_equals_unchunked():
    rep, c = nerf(), cams(20)
    r = renderer(chunk_rays=0, return_normal=True).eval()
    with torch.no_grad():
        a = r(rep, c, bg(), shading="lambertian")
        r.cfg.chunk_rays = 97  # same occupancy grid, rays in uneven chunks
        b = r(rep, c, bg(), shading="lambertian")
    for k in ("rgb", "alpha", "depth", "normal"):
        torch.testing.assert_close(getattr(a, k), getattr(b, k), atol=1e-5, rtol=1e-5)
    assert a.rgb.shape == (2, 3, 20, 20) and a.alpha.shape == (2, 1, 20, 20) and a.normal.shape == (2, 3, 20, 20)


def test_rays_missing_the_aabb_show_the_background():
    rep = nerf(radius=0.3)
    c = make_cameras(0, 0, 3.0, 60, 16, 16)
    r = renderer().eval()
    with torch.no_grad():
        out = r(rep, c, bg())
    o, d = c.rays()
    near, far = ray_aabb(o, d, 0.3)
    miss = (far <= near)[0]
    assert miss.sum() > 50 and (~miss).sum() > 10
    rgb = out.rgb[0].permute(1, 2, 0)[miss]
    torch.testing.assert_close(rgb, torch.tensor(BG).expand_as(rgb))
    assert out.alpha[0, 0][miss].abs().max() == 0 and out.depth[0, 0][miss].abs().max() == 0
    assert out.alpha[0, 0][~miss].max() > 0.5  # the blob is visible where rays hit


def test_occupancy_grid_skips_samples_without_changing_the_image():
    rep, c = nerf(), cams(24)
    on, off = renderer(occupancy_grid=True).eval(), renderer(occupancy_grid=False).eval()
    with torch.no_grad():
        a, b = on(rep, c, bg()), off(rep, c, bg())
    assert a.meta["num_samples"] < 0.5 * b.meta["num_samples"]
    assert (a.rgb - b.rgb).abs().mean() < 2e-3


def test_occupancy_grid_updates_while_training():
    rep, c = nerf(), cams(8)
    r = renderer(occ_update_every=2)
    for _ in range(5):
        r(rep, c, bg())
    assert int(r.occ.n_updates) == 3  # calls 0, 2, 4
    assert 0.0 < r.occ.occupied_fraction < 0.5


def test_lambertian_and_textureless_shading():
    rep = nerf(density_bias="blob_magic3d")
    c = make_cameras(0, 0, 2.0, 30, 9, 9)  # light_dir defaults to the camera direction
    r = renderer(num_samples_per_ray=64).eval()
    with torch.no_grad():
        alb = r(rep, c, bg(), shading="albedo")
        lam = r(rep, c, bg(), shading="lambertian")
        tex = r(rep, c, bg(), shading="textureless")
    centre = (0, slice(None), 4, 4)
    # facing the light: n.l ~ 1, so lambertian ~ albedo * (ambient + diffuse) and textureless ~ white
    torch.testing.assert_close(lam.rgb[centre], alb.rgb[centre], atol=0.03, rtol=0)
    assert tex.rgb[centre].min() > 0.95
    # off-centre the surface turns away from the light and gets darker
    assert tex.rgb[0, :, 4, 1].mean() < tex.rgb[centre].mean() - 0.05
    assert alb.normal is None and lam.normal is not None


def test_random_shading_and_gradients_through_analytic_normals():
    rep, c = nerf(), cams(8)
    r = renderer(shading="random", random_shading_probs=(0.0, 1.0, 0.0))
    out = r(rep, c, bg())
    assert (out.meta["shading_modes"] == 1).all()
    out.rgb.mean().backward()  # double backward through the density gradient
    assert rep.grid.params.grad.abs().sum() > 0
    r.eval()
    assert (r(rep, c, bg()).meta["shading_modes"] == 0).all()  # evaluation renders albedo


def test_shading_that_needs_normals_fails_clearly_without_them():
    rep = nerf(normals="none")
    with pytest.raises(ValueError, match="normals"):
        renderer()(rep, cams(8), bg(), shading="lambertian")


@pytest.mark.parametrize("name", ["opacity_sparsity", "orientation", "opaqueness", "z_variance"])
def test_regularisers_return_differentiable_scalars(name):
    rep, c = nerf(), cams(8)
    out = renderer(return_normal=True)(rep, c, bg())
    cls = registry.get("regulariser", name)
    reg = cls(from_dict(cls.Config, {}))
    v = reg(out, rep, c)
    assert v.dim() == 0 and torch.isfinite(v) and v >= 0
    if v.requires_grad:
        v.backward()
        assert rep.grid.params.grad is not None


def test_opacity_sparsity_is_a_per_image_sum():
    rep, c = nerf(), cams(8)
    out = renderer()(rep, c, bg())
    cls = registry.get("regulariser", "opacity_sparsity")
    v = cls(from_dict(cls.Config, {"form": "l1"}))(out, rep, c)
    torch.testing.assert_close(v, out.alpha.sum() / 2)


def test_orientation_needs_normals():
    rep, c = nerf(), cams(8)
    out = renderer()(rep, c, bg())
    cls = registry.get("regulariser", "orientation")
    with pytest.raises(ValueError, match="normals"):
        cls(cls.Config())(out, rep, c)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_matches_torch_path():
    pytest.importorskip("nerfacc")
    rep = nerf().cuda()
    c = cams(64).to("cuda")
    b = bg().cuda()
    r_cuda = renderer(num_samples_per_ray=512, backend="cuda", early_termination=0.0).cuda().eval()
    r_torch = renderer(num_samples_per_ray=512, backend="torch").cuda().eval()
    with torch.no_grad():
        a = r_cuda(rep, c, b, shading="lambertian")
        t = r_torch(rep, c, b, shading="lambertian")
    assert a.meta["backend"] == "cuda" and t.meta["backend"] == "torch"
    assert (a.rgb - t.rgb).abs().mean() < 1e-2
    assert (a.alpha - t.alpha).abs().mean() < 1e-2


def test_evaluation_renders_sample_finer_than_training():
    """Evaluation (orbit, validation, export) uses 4x the training samples by default: on a random
    NeRF the default evaluation render is closer to a 512-sample reference than one at the training
    count is, by far; training keeps its own count (and its jitter)."""
    rep, c = nerf(), cams(24)
    r = renderer(num_samples_per_ray=16).eval()
    assert r.samples_per_ray() == 64 and r.train().samples_per_ray() == 16
    r.eval()
    with torch.no_grad():
        default = r(rep, c, bg()).rgb
        r.cfg.eval_samples_per_ray = 16
        coarse = r(rep, c, bg()).rgb
        r.cfg.eval_samples_per_ray = 512
        ref = r(rep, c, bg()).rgb
    err = lambda x: float((x - ref).abs().mean())  # noqa: E731
    assert err(default) < 0.5 * err(coarse), (err(default), err(coarse))
