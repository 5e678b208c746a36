"""3D Gaussians: initialisation, the exporter interface, gsplat's DefaultStrategy on the CPU path (growth,
pruning, the opacity reset gsplat 1.5.3 forgets, the cap), the tiled rasterizer, a photometric fit of the
toy cube, and variable-N checkpoints through load_state_dict. Across stages and runs:
``test_gaussian_stages.py``."""

import math

import pytest
import torch
import torch.nn.functional as F

from threedgen import registry
from threedgen.config import from_dict
from threedgen.data.cameras import make_cameras
from threedgen.renderers.background import SolidBackground
from threedgen.renderers.gaussian import GaussianRenderer
from threedgen.representations.gaussians import Gaussians
from threedgen.representations.spherical_harmonics import SH_C0



def gaussians(**kw) -> Gaussians:
    return Gaussians(from_dict(Gaussians.Config, kw))


def optimizer_for(rep):
    groups = [{"params": g["params"], "lr": g["lr"](0), "name": g["name"], "eps": 1e-15} for g in rep.param_groups()]
    opt = torch.optim.Adam(groups)
    rep.bind_optimizer(opt)
    return opt


def test_registered_and_initialisations():
    assert registry.get("representation", "gaussians") is Gaussians
    assert registry.get("renderer", "gaussian") is GaussianRenderer
    torch.manual_seed(0)
    s = gaussians(init="sphere", init_surface=True, init_radius=0.4, num_points=500)
    torch.testing.assert_close(s.params["means"].norm(dim=-1), torch.full((500,), 0.4))
    b = gaussians(init="box", init_surface=True, init_radius=0.3, num_points=500)
    assert torch.allclose(b.params["means"].abs().amax(-1), torch.tensor(0.3))
    r = gaussians(init="random_sphere", init_radius=0.5, num_points=2000)
    assert r.params["means"].norm(dim=-1).max() <= 0.5 and r.params["means"].norm(dim=-1).mean() > 0.3
    assert torch.allclose(torch.sigmoid(r.params["opacities"]), torch.tensor(0.1))
    with pytest.raises(ValueError, match="sh_degree: expected an int in \\[0, 3\\]"):
        gaussians(sh_degree=4)
    with pytest.raises(ValueError, match="init_opacity: expected a number in \\[1e-06, 0.999999\\]"):
        gaussians(init_opacity=1.0)


def test_param_groups_are_named_like_the_parameters():
    rep = gaussians(num_points=10, sh_degree=2)
    names = [g["name"] for g in rep.param_groups()]
    assert names == ["means", "scales", "quats", "opacities", "sh0", "shN"] == list(rep.params.keys())
    assert rep.params["shN"].shape == (10, 8, 3)
    assert all(len(g["params"]) == 1 for g in rep.param_groups())


def test_splat_data_interface():
    rep = gaussians(init="sphere", num_points=7, sh_degree=3, sh_degree_schedule={"type": "step", "values": [0, 1, 3], "steps": [10, 20]})
    d = rep.splat_data()
    assert set(d) == {"means", "log_scales", "quats", "logit_opacities", "sh", "sh_degree"}
    assert d["sh_degree"] == 0 and d["sh"].shape == (7, 1, 3)
    rep.update_step(0, 25)
    d = rep.splat_data()
    assert d["sh_degree"] == 3 and d["sh"].shape == (7, 16, 3)
    assert d["means"].shape == (7, 3) and d["log_scales"].shape == (7, 3) and d["quats"].shape == (7, 4)
    assert d["logit_opacities"].shape == (7,)
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for k, v in d.items() if k != "sh_degree")
    # colour convention: 0.5 + C0 * dc, stored pre-activation
    torch.testing.assert_close(0.5 + SH_C0 * d["sh"][:, 0], torch.full((7, 3), 0.5))
    torch.testing.assert_close(d["logit_opacities"], torch.logit(torch.tensor(0.1)).expand(7))


def test_min_scale_3d_filter_widens_small_gaussians_keeps_their_mass_and_is_exported():
    torch.manual_seed(0)
    rep = gaussians(init="sphere", num_points=50, init_scale=0.005, init_opacity=0.6, min_scale=0.02)
    with torch.no_grad():
        rep.params["scales"][:10] = math.log(0.5)  # a few big ones the filter barely changes
    a = rep.activated()
    s, o = torch.exp(rep.params["scales"]), torch.sigmoid(rep.params["opacities"])
    assert (a["scales"] >= 0.02).all()
    torch.testing.assert_close(a["scales"], (s.square() + 0.02**2).sqrt())
    torch.testing.assert_close(a["opacities"] * a["scales"].prod(-1), o * s.prod(-1))  # mass kept
    assert (a["opacities"][:10] > 0.59).all() and (a["opacities"][10:] < 0.05).all()
    d = rep.splat_data()  # exports carry the filtered Gaussians, so viewers match the renders
    torch.testing.assert_close(d["log_scales"].exp(), a["scales"].detach())
    torch.testing.assert_close(torch.sigmoid(d["logit_opacities"]), a["opacities"].detach(), rtol=1e-4, atol=1e-6)
    a["opacities"].sum().backward()  # the filter is differentiable w.r.t. the raw parameters
    assert rep.params["scales"].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="min_scale: expected a number >= 0"):
        gaussians(min_scale=-0.1)


def test_renderer_output_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    rep = gaussians(num_points=200, sh_degree=1, init_opacity=0.5)
    rep.params["shN"].data.normal_(0, 0.1)
    ren = GaussianRenderer(GaussianRenderer.Config(return_normal=True))
    cams = make_cameras([10, 30], [0, 120], 1.8, 50, 20, 16)
    out = ren(rep, cams, SolidBackground(SolidBackground.Config(color=(0.0, 1.0, 0.0))))
    assert out.rgb.shape == (2, 3, 16, 20) and out.alpha.shape == (2, 1, 16, 20) and out.normal.shape == (2, 3, 16, 20)
    assert set(out.meta) >= {"means2d", "radii", "width", "height", "n_cameras", "gaussian_ids"}
    # background composited where empty; depth is a ray distance near the camera distance
    a = out.alpha
    torch.testing.assert_close(out.rgb[:, 1][a[:, 0] < 1e-6], torch.ones_like(out.rgb[:, 1][a[:, 0] < 1e-6]))
    d = out.depth / a.clamp_min(1e-6)
    assert (d[a > 0.5] > 1.2).all() and (d[a > 0.5] < 2.4).all()
    (out.rgb.sum() + out.depth.sum() + out.normal.sum()).backward()
    for name, p in rep.params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0 and torch.isfinite(p.grad).all(), name


def strategy_rep(**densify):
    base = {"refine_start_iter": 0, "refine_every": 2, "grow_grad2d": 1e-7, "reset_every": 0, "refine_stop_iter": 100}
    return gaussians(num_points=100, init_opacity=0.5, init_radius=0.3, densify={**base, **densify})


def train_steps(rep, steps, start=1, res=16, loss_fn=None, packed=False):
    ren = GaussianRenderer(GaussianRenderer.Config(packed=packed))
    bg = SolidBackground(SolidBackground.Config())
    opt = optimizer_for(rep)
    cams = make_cameras([10, 30], [0, 120], 1.8, 50, res, res)
    for step in range(start, start + steps):
        out = ren(rep, cams, bg)
        loss = loss_fn(out) if loss_fn else (out.rgb - 0.2).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        rep.after_step(step, out)
    return opt


def test_default_strategy_grows_and_prunes_on_the_cpu_path():
    torch.manual_seed(0)
    rep = strategy_rep()
    opt = train_steps(rep, 2)
    assert rep.num_gaussians > 100  # grown at step 2 by gsplat's DefaultStrategy
    n = rep.num_gaussians
    # optimizer groups and Adam state follow the new parameters
    for g in opt.param_groups:
        (p,) = g["params"]
        assert p is rep.params[g["name"]]
        assert opt.state[p]["exp_avg"].shape == p.shape
    # prune: make half the Gaussians transparent
    with torch.no_grad():
        rep.params["opacities"][: n // 2] = -10.0
    rep.strategy.grow_grad2d = 1e9  # no growth now, so the count can only fall
    train_steps(rep, 2, start=3)
    assert rep.num_gaussians == n - n // 2
    assert torch.sigmoid(rep.params["opacities"]).min() >= rep.cfg.densify.prune_opa


def test_packed_render_meta_drives_the_same_growth():
    counts = []
    for packed in (False, True):
        torch.manual_seed(0)
        rep = strategy_rep(grow_scale3d=10.0)  # duplicate only: no random split samples
        train_steps(rep, 2, packed=packed)
        counts.append(rep.num_gaussians)
    assert counts[0] == counts[1] > 100


def test_opacity_reset_happens_at_reset_every():
    torch.manual_seed(0)
    rep = strategy_rep(reset_every=4, refine_every=1000, prune_opa=0.01)
    opt = train_steps(rep, 3)
    assert torch.sigmoid(rep.params["opacities"]).max() > 0.4  # no reset yet
    opt = train_steps(rep, 1, start=4)
    assert torch.sigmoid(rep.params["opacities"]).max() <= 0.02 + 1e-6  # clamped to 2 * prune_opa at step 4
    assert opt.state[rep.params["opacities"]]["exp_avg"].abs().max() == 0


def test_cap_removes_the_least_opaque():
    torch.manual_seed(0)
    rep = strategy_rep(max_gaussians=120)
    with torch.no_grad():
        rep.params["opacities"][:5] = -4.0
    train_steps(rep, 2)
    assert rep.num_gaussians == 120
    assert torch.sigmoid(rep.params["opacities"]).min() > 0.02  # the five faint ones went first


def test_state_dict_round_trip_with_a_different_count():
    torch.manual_seed(0)
    rep = strategy_rep()
    train_steps(rep, 2)
    sd = rep.state_dict()
    fresh = strategy_rep()
    assert fresh.num_gaussians != rep.num_gaussians
    fresh.load_state_dict(sd)
    assert fresh.num_gaussians == rep.num_gaussians
    for k in rep.params:
        assert torch.equal(fresh.params[k], rep.params[k])
    assert torch.equal(fresh.strategy_state["grad2d"], rep.strategy_state["grad2d"])


@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_tiled_rasterizer_equals_a_brute_force_per_pixel_composite(mode):
    """Silhouette check for the cube fit: overlapping, partly near-opaque Gaussians (the 0.999 clamp,
    the 1/255 skip and the T <= 1e-4 stop all trigger) composited pixel by pixel over *every*
    Gaussian in depth order, with no tiles or bounding boxes, give the tiled rasterizer's image."""
    from threedgen.renderers import gaussian_torch as gt

    torch.manual_seed(0)
    N, W, H = 200, 13, 11
    means = torch.randn(N, 3) * 0.2 + torch.tensor([0.0, 0.0, 3.0])
    quats, scales = torch.randn(N, 4), torch.rand(N, 3) * 0.2 + 0.02
    opac = torch.rand(N) * 0.9 + 0.1
    opac[:10] = 1.0  # ten opaque ones centred on pixel centres: alpha 1 there, clamped to 0.999
    z = 2.5 + torch.rand(10)
    u, v = torch.randint(0, W, (10,)) + 0.5, torch.randint(0, H, (10,)) + 0.5
    means[:10] = torch.stack([(u - 6.5) * z / 30, (v - 5.5) * z / 30, z], -1)
    cols = torch.rand(N, 3)
    view, K = torch.eye(4)[None], torch.tensor([[[30.0, 0, 6.5], [0, 30.0, 5.5], [0, 0, 1]]])
    rgb, alpha, _ = gt.rasterization(means, quats, scales, opac, cols, view, K, W, H, rasterize_mode=mode,
                                     render_mode="RGB")
    p = gt.project(means, quats, scales, opac, view, K, W, H, antialiased=mode == "antialiased")
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    T, out, live = torch.ones(H, W), torch.zeros(H, W, 3), torch.ones(H, W, dtype=torch.bool)
    stopped_early = clamped = False
    for i in torch.argsort(p.depths[0]).tolist():
        if p.radii[0, i, 0] == 0:
            continue
        dx, dy = p.means2d[0, i, 0] - xs, p.means2d[0, i, 1] - ys
        a, b, c = p.conics[0, i]
        s = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        al = (p.opacities[0, i] * torch.exp(-s)).clamp(max=0.999)
        clamped |= bool((al == 0.999).any())
        al = torch.where((s >= 0) & (al >= 1 / 255), al, torch.zeros_like(al))
        nT = T * (1 - al)
        live = live & (nT > 1e-4)  # a pixel stops before the Gaussian that would take T to 1e-4
        stopped_early |= bool((~live).any())
        out = out + torch.where(live, al * T, torch.zeros_like(T))[..., None] * cols[i]
        T = torch.where(live, nT, T)
    assert stopped_early and (clamped or mode == "antialiased")  # the edge cases were exercised
    # (antialiased scales opacity below 1 by its compensation, so nothing reaches the clamp there)
    torch.testing.assert_close(rgb[0], out, atol=1e-5, rtol=0)
    torch.testing.assert_close(alpha[0, ..., 0], 1 - T, atol=1e-5, rtol=0)


def test_photometric_fit_of_the_toy_cube_densifies_under_the_cap():
    """Issue 10: fit 8 analytic renders of the red cube (densification on); > 24 dB on held-out views.

    The ground truth integrates each pixel's area (4x4 samples, box filter: variance 1/12 px² per
    axis). The renderer is set up to match it: Mip-Splatting's 2D filter (``eps2d=0.1`` ≈ a one-pixel
    box, with the opacity compensation of ``antialiased``). With 3DGS's classic 0.3 px² dilation the
    training views fit only by per-view edge compromises and held-out views stay at ~22.5 dB (see
    docs/gaussians.md for the measurements)."""
    from threedgen.toy.render import render_scene
    from threedgen.toy.world import parse_prompt

    torch.manual_seed(0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rep = gaussians(init="sphere", num_points=300, init_radius=0.4, init_opacity=0.3, lr_means=4e-3, lr_sh0=0.02,
                        lr_scales=0.01, densify={"refine_start_iter": 20, "refine_every": 20, "grow_grad2d": 2e-4,
                                                 "reset_every": 0, "refine_stop_iter": 120, "max_gaussians": 600})
        ren = GaussianRenderer(GaussianRenderer.Config(antialiased=True, eps2d=0.1))
        bg = SolidBackground(SolidBackground.Config())
        scene = parse_prompt("a red cube")
        S = 24

        def exact(cams):  # the toy world's render, box-filtered from 4x4 samples per pixel
            return F.avg_pool2d(render_scene(scene, cams.with_resolution(4 * S, 4 * S))["rgb"], 4)

        train = make_cameras([20, -10, 30, 0, 40, -20, 10, 60], [0, 45, 90, 135, 180, 225, 270, 315], 1.8, 50, S, S)
        test = make_cameras([15, 25, -5], [22.5, 160, 290], 1.8, 50, S, S)
        gt, gt_test = exact(train), exact(test)
        opt = optimizer_for(rep)
        counts = []
        for step in range(1, 161):
            idx = torch.randperm(8)[:4]
            out = ren(rep, train[idx], bg)
            loss = F.mse_loss(out.rgb, gt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            rep.after_step(step, out)
            counts.append(rep.num_gaussians)
        with torch.no_grad():
            pred, pred_train = ren(rep, test, bg).rgb, ren(rep, train, bg).rgb
    finally:
        torch.set_num_threads(n)
    psnr = -10 * math.log10(F.mse_loss(pred, gt_test).item())
    psnr_train = -10 * math.log10(F.mse_loss(pred_train, gt).item())
    assert counts[0] == 300 and counts[40] > 300 and max(counts) <= 600  # grew, never above the cap
    assert counts[-1] == counts[125]  # stable once refinement stops
    # measured (seed 0): 36.5 dB on the 8 training views, 25.4 dB on the 3 held-out views
    assert psnr_train > 32.0, psnr_train
    assert psnr > 24.0, psnr
