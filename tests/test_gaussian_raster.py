"""The pure-torch Gaussian rasterizer against gsplat's torch reference, closed-form single Gaussians,
compositing order, gradients (finite differences), culling and memory-bounded chunking; a `gpu` test
compares gsplat's CUDA rasterizer with it."""

import math

import pytest
import torch
import torch.nn.functional as F

from threedgen.data.cameras import make_cameras
from threedgen.renderers.gaussian import viewmats_and_Ks
from threedgen.renderers.gaussian_torch import covariance, project, rasterization
from threedgen.representations.spherical_harmonics import SH_C0, sh_basis


def random_gaussians(n, seed=0, spread=0.5, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {
        "means": (torch.randn(n, 3, generator=g) * spread).to(dtype),
        "quats": torch.randn(n, 4, generator=g).to(dtype),
        "scales": (torch.rand(n, 3, generator=g) * 0.08 + 0.01).to(dtype),
        "opacities": (torch.rand(n, generator=g) * 0.9 + 0.05).to(dtype),
        "colors": torch.rand(n, 3, generator=g).to(dtype),
    }


def render(g, cams, **kw):
    vm, K = viewmats_and_Ks(cams)
    vm, K = vm.to(g["means"].dtype), K.to(g["means"].dtype)
    return rasterization(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], vm, K,
                         cams.width, cams.height, **kw)


def test_projection_matches_gsplat_torch_reference():
    from gsplat.cuda._torch_impl import _fully_fused_projection

    g = random_gaussians(300, spread=0.8)
    g["means"][:5] = torch.tensor([0.0, 0.0, 3.0])  # behind the azimuth-0 camera (at z=2 looking at -z)
    cams = make_cameras([10, 35, -5, 60], [0, 100, 210, 300], [2.0, 1.6, 2.4, 1.9], [50, 40, 60, 45], 48, 36)
    vm, K = viewmats_and_Ks(cams)
    ours = project(g["means"], g["quats"], g["scales"], None, vm, K, 48, 36)
    radii, means2d, depths, conics, _ = _fully_fused_projection(g["means"], covariance(g["quats"], g["scales"]), vm, K, 48, 36)
    assert torch.equal(ours.radii, radii)
    vis = radii[..., 0] > 0
    assert 100 < int(vis.sum()) < vis.numel()  # some culled, most kept
    assert not vis[0, :5].any()  # behind the camera
    torch.testing.assert_close(ours.means2d[vis], means2d[vis], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ours.conics[vis], conics[vis], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.depths, depths)
    # the same pixels as the project's own camera model
    uv, _ = cams.project(g["means"][None].expand(4, -1, -1))
    torch.testing.assert_close(ours.means2d[vis], uv[vis], rtol=1e-5, atol=1e-3)


def test_antialiased_compensation_matches_gsplat_reference():
    from gsplat.cuda._torch_impl import _fully_fused_projection

    g = random_gaussians(100)
    cams = make_cameras([20, -10], [30, 250], 2.0, 50, 32, 32)
    vm, K = viewmats_and_Ks(cams)
    ours = project(g["means"], g["quats"], g["scales"], g["opacities"], vm, K, 32, 32, antialiased=True)
    _, _, _, _, comp = _fully_fused_projection(g["means"], covariance(g["quats"], g["scales"]), vm, K, 32, 32,
                                               calc_compensations=True)
    vis = ours.radii[..., 0] > 0
    torch.testing.assert_close(ours.opacities[vis], (g["opacities"][None] * comp)[vis], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_basis_matches_gsplat(degree):
    from gsplat.cuda._torch_impl import _spherical_harmonics

    dirs = F.normalize(torch.randn(50, 3), dim=-1)
    coeffs = torch.randn(50, 16, 3)
    K = (degree + 1) ** 2
    ours = torch.einsum("nk,nkd->nd", sh_basis(degree, dirs), coeffs[:, :K])
    torch.testing.assert_close(ours, _spherical_harmonics(degree, dirs, coeffs), rtol=1e-5, atol=1e-5)


def one_gaussian(pos, scale, opacity, colour=(1.0, 0.0, 0.0), dtype=torch.float32):
    return {
        "means": torch.tensor([pos], dtype=dtype),
        "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=dtype),
        "scales": torch.full((1, 3), scale, dtype=dtype),
        "opacities": torch.tensor([opacity], dtype=dtype),
        "colors": torch.tensor([colour], dtype=dtype),
    }


def test_single_gaussian_closed_form():
    # 15x15 image: the principal point (7.5, 7.5) is the centre of pixel (7, 7)
    cams = make_cameras(0.0, 0.0, 2.0, 40.0, 15, 15)
    f, z, s, o = float(cams.focal[0]), 2.0, 0.05, 0.8
    img, alpha, meta = render(one_gaussian([0.0, 0.0, 0.0], s, o), cams)
    a = alpha[0, ..., 0]
    assert torch.isclose(a[7, 7], torch.tensor(o), atol=1e-6)  # peak alpha = opacity at the centre
    var2d = (f * s / z) ** 2 + 0.3  # EWA footprint + the 0.3 px^2 low-pass
    for dy, dx in [(0, 1), (1, 0), (1, 1), (0, 2)]:
        expect = o * math.exp(-0.5 * (dx * dx + dy * dy) / var2d)
        assert abs(float(a[7 + dy, 7 + dx]) - (expect if expect >= 1 / 255 else 0.0)) < 1e-5
    torch.testing.assert_close(img[0, 7, 7, :3], torch.tensor([o, 0.0, 0.0]))  # premultiplied colour
    torch.testing.assert_close(img[0, 7, 7, 3], torch.tensor(o * z))  # accumulated camera depth
    assert int(meta["radii"][0, 0, 0]) == math.ceil(min(3.33, math.sqrt(2 * math.log(o * 255))) * math.sqrt(var2d))


def test_single_gaussian_lands_on_the_projected_pixel():
    cams = make_cameras(25.0, 70.0, 2.2, 45.0, 40, 30)
    p = torch.tensor([0.2, -0.15, 0.1])
    uv, _ = cams.project(p.view(1, 1, 3))
    _, alpha, _ = render(one_gaussian(p.tolist(), 0.02, 0.9), cams)
    iy, ix = divmod(int(alpha[0, ..., 0].argmax()), 40)
    assert (ix, iy) == (int(uv[0, 0, 0]), int(uv[0, 0, 1]))


def test_front_gaussian_occludes_regardless_of_index_order():
    cams = make_cameras(0.0, 0.0, 3.0, 40.0, 9, 9)
    front = one_gaussian([0.0, 0.0, 0.5], 0.1, 0.9, (1.0, 0.0, 0.0))
    back = one_gaussian([0.0, 0.0, -0.5], 0.1, 0.7, (0.0, 0.0, 1.0))
    for first, second in [(front, back), (back, front)]:
        g = {k: torch.cat([first[k], second[k]]) for k in front}
        img, alpha, _ = render(g, cams)
        torch.testing.assert_close(img[0, 4, 4, :3], torch.tensor([0.9, 0.0, 0.1 * 0.7]))
        torch.testing.assert_close(alpha[0, 4, 4, 0], torch.tensor(1 - 0.1 * 0.3))


def test_compositing_stops_before_transmittance_reaches_1e_4():
    cams = make_cameras(0.0, 0.0, 3.0, 40.0, 9, 9)
    ops = (0.99, 0.98, 0.99)
    gs = [one_gaussian([0.0, 0.0, 0.5 - 0.1 * i], 0.1, o, (float(i == 2), 0.0, 0.0)) for i, o in enumerate(ops)]
    g = {k: torch.cat([x[k] for x in gs]) for k in gs[0]}
    img, alpha, _ = render(g, cams)
    # after two layers T = 2e-4; the third would take it to 2e-6 <= 1e-4, so it is left out (as in gsplat)
    assert float(img[0, 4, 4, 0]) == 0.0
    torch.testing.assert_close(alpha[0, 4, 4, 0], torch.tensor(1 - 0.01 * 0.02))


def test_culling_behind_and_off_screen():
    cams = make_cameras(0.0, 0.0, 2.0, 40.0, 16, 16)
    g = {k: torch.cat([one_gaussian(p, 0.05, 0.9)[k] for p in ([0, 0, 0], [0, 0, 2.5], [3.0, 0, 0])])
         for k in ("means", "quats", "scales", "opacities", "colors")}
    img, alpha, meta = render(g, cams, packed=True)
    assert meta["gaussian_ids"].tolist() == [0]  # behind the camera and far off screen are culled
    assert meta["radii"].shape == (1, 2) and meta["means2d"].shape == (1, 2)
    img1, alpha1, _ = render({k: v[:1] for k, v in g.items()}, cams)
    torch.testing.assert_close(alpha, alpha1)


def test_nothing_visible_still_backpropagates():
    g = one_gaussian([0.0, 0.0, 2.5], 0.05, 0.9)  # behind the camera
    g["means"].requires_grad_(True)
    img, alpha, meta = render(g, make_cameras(0.0, 0.0, 2.0, 40.0, 8, 8))
    assert float(alpha.detach().sum()) == 0.0 and int(meta["radii"].sum()) == 0
    (img.sum() + alpha.sum()).backward()
    assert torch.equal(g["means"].grad, torch.zeros(1, 3))


def test_chunked_compositing_is_identical_to_one_chunk():
    g = random_gaussians(150)
    for v in g.values():
        v.requires_grad_(True)
    cams = make_cameras([10, 30], [0, 120], 2.0, 50, 24, 20)
    results = []
    for chunk in (1 << 24, 1024):  # one chunk vs many (with activation checkpointing)
        img, alpha, meta = render(g, cams, chunk_pairs=chunk)
        loss = (img * torch.linspace(0, 1, 4)).sum() + alpha.square().sum()
        grads = torch.autograd.grad(loss, list(g.values()))
        results.append((img.detach(), alpha.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)
    for a, b in zip(results[0][2], results[1][2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_packed_and_unpacked_agree():
    g = random_gaussians(80)
    cams = make_cameras([5, 40], [45, 200], 2.0, 50, 20, 20)
    a = render(g, cams, packed=False)
    b = render(g, cams, packed=True)
    torch.testing.assert_close(a[0], b[0])
    ids = torch.nonzero(a[2]["radii"][..., 0] > 0)
    assert torch.equal(b[2]["gaussian_ids"], ids[:, 1]) and torch.equal(b[2]["camera_ids"], ids[:, 0])


def test_gradients_match_finite_differences():
    g = random_gaussians(3, seed=3, spread=0.15, dtype=torch.float64)
    g["scales"] = torch.full((3, 3), 0.12, dtype=torch.float64)
    cams = make_cameras(10.0, 20.0, 2.0, 45.0, 8, 8)
    weight = torch.rand(8, 8, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    names = ["means", "quats", "scales", "opacities", "colors"]

    def f(*xs):
        img, alpha, _ = render(dict(zip(names, xs)), cams)
        return (img[0] * weight).sum() + alpha.sum()

    inputs = [g[k].clone().requires_grad_(True) for k in names]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_means2d_gradient_is_retained_for_densification():
    g = random_gaussians(40)
    g["means"].requires_grad_(True)
    cams = make_cameras([0, 20], [0, 90], 2.0, 50, 16, 16)
    img, alpha, meta = render(g, cams)
    img.sum().backward()
    assert meta["means2d"].shape == (2, 40, 2) and meta["means2d"].grad is not None
    vis = meta["radii"][..., 0] > 0
    assert meta["means2d"].grad[vis].abs().sum() > 0 and meta["means2d"].grad[~vis].abs().sum() == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("packed", [False, True])
def test_gsplat_cuda_matches_torch_rasterizer(packed):
    import gsplat

    g = random_gaussians(2000, spread=0.4)
    cams = make_cameras([10, 30, -5, 45], [0, 90, 180, 270], 2.0, 50, 64, 64)
    vm, K = viewmats_and_Ks(cams)
    out = {}
    for name, dev in (("torch", "cpu"), ("cuda", "cuda")):
        p = {k: v.to(dev).requires_grad_(True) for k, v in g.items()}
        args = (p["means"], p["quats"], p["scales"], p["opacities"], p["colors"], vm.to(dev), K.to(dev), 64, 64)
        fn = rasterization if name == "torch" else gsplat.rasterization
        img, alpha, meta = fn(*args, packed=packed, render_mode="RGB+D")
        meta["means2d"].retain_grad()
        w = torch.linspace(0, 1, 64 * 64, device=dev).view(1, 64, 64, 1)
        ((img[..., :3] * w).sum() + alpha.sum()).backward()
        grad = meta["means2d"].grad.detach().cpu()
        if packed:  # scatter [nnz,2] into [C,N,2]: the two paths may cull a borderline Gaussian differently
            dense = torch.zeros(4, 2000, 2)
            dense[meta["camera_ids"].cpu(), meta["gaussian_ids"].cpu()] = grad
            grad = dense
        out[name] = (img.detach().cpu(), alpha.detach().cpu(), grad)
    assert (out["torch"][0][..., :3] - out["cuda"][0][..., :3]).abs().mean() < 1e-2
    assert (out["torch"][1] - out["cuda"][1]).abs().mean() < 1e-2
    cos = F.cosine_similarity(out["torch"][2].flatten(), out["cuda"][2].flatten(), dim=0)
    assert cos > 0.99


def test_dc_colour_convention():
    # a DC-only SH Gaussian renders 0.5 + C0 * dc (3DGS / INRIA PLY convention)
    dirs = F.normalize(torch.randn(5, 3), dim=-1)
    dc = torch.randn(5, 1, 3)
    rgb = torch.einsum("nk,nkd->nd", sh_basis(0, dirs), dc) + 0.5
    torch.testing.assert_close(rgb, 0.5 + SH_C0 * dc[:, 0])


def test_small_chunks_split_the_work():
    g = random_gaussians(150)
    cams = make_cameras([10, 30], [0, 120], 2.0, 50, 24, 20)
    _, _, meta = render(g, cams, chunk_pairs=1024)
    assert meta["n_pairs"] > 4 * 1024  # so the test above really used several chunks


def dense_reference(g, cams):
    """Per pixel, every projected Gaussian in depth order, composited one after another (float64 autograd):
    the definition the tiled rasterizer and its hand-written backward must reproduce."""
    vm, K = viewmats_and_Ks(cams)
    vm, K = vm.double(), K.double()
    W, H = cams.width, cams.height
    proj = project(g["means"], g["quats"], g["scales"], g["opacities"], vm, K, W, H)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5,
                            indexing="ij")
    images, alphas, stopped = [], [], 0
    for c in range(vm.shape[0]):
        T = torch.ones(H, W, dtype=torch.float64)
        img = torch.zeros(H, W, 4, dtype=torch.float64)
        acc = torch.zeros(H, W, dtype=torch.float64)
        feats = torch.cat([g["colors"], proj.depths[c][:, None]], 1)
        for i in torch.argsort(proj.depths[c].detach()).tolist():
            if int(proj.radii[c, i, 0]) == 0:
                continue
            dx, dy = proj.means2d[c, i, 0] - xs, proj.means2d[c, i, 1] - ys
            a, b, cc = proj.conics[c, i]
            sigma = 0.5 * (a * dx * dx + cc * dy * dy) + b * dx * dy
            alpha = (proj.opacities[c, i] * torch.exp(-sigma)).clamp(max=0.999)
            alpha = torch.where((sigma >= 0) & (alpha >= 1 / 255), alpha, torch.zeros_like(alpha))
            w = alpha * T * (T * (1 - alpha) > 1e-4)
            stopped += int(((w == 0) & (alpha > 0)).sum())
            img = img + w[..., None] * feats[i]
            acc = acc + w
            T = T * (1 - alpha)
        images.append(img)
        alphas.append(acc[..., None])
    return torch.stack(images), torch.stack(alphas), stopped


@pytest.mark.parametrize("tile,chunk", [(2, 1 << 22), (3, 1 << 22), (2, 256)])
def test_tiled_compositing_and_its_backward_match_a_dense_per_pixel_reference(tile, chunk):
    g = random_gaussians(40, seed=5, spread=0.3, dtype=torch.float64)
    g["opacities"] = g["opacities"].clamp(max=0.95)  # below the 3.33-sigma radius clamp: the boxes hold every 1/255 pixel
    g["opacities"][:6] = 0.95  # a stack of nearly opaque ones, so some pixels reach the 1e-4 stop
    g["means"][:6] = torch.linspace(-0.1, 0.1, 6, dtype=torch.float64)[:, None] * torch.tensor([1.0, 0.5, -1.0])
    g["scales"][:6] = 0.12
    cams = make_cameras([10, 40], [30, 200], 1.6, 50, 13, 11)
    inputs = {k: v.clone().requires_grad_(True) for k, v in g.items()}
    weight = torch.rand(2, 11, 13, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    ref, ref_alpha, stopped = dense_reference(inputs, cams)
    img, alpha, meta = render(inputs, cams, tile_size=tile, chunk_pairs=chunk, render_mode="RGB+D")
    assert meta["n_pairs"] > 0 and stopped > 0 and float((ref_alpha > 0).float().mean()) > 0.5
    torch.testing.assert_close(img, ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(alpha, ref_alpha, rtol=1e-9, atol=1e-10)
    names = list(inputs)
    want = torch.autograd.grad((ref * weight).sum() + ref_alpha.square().sum(), [inputs[k] for k in names])
    got = torch.autograd.grad((img * weight).sum() + alpha.square().sum(), [inputs[k] for k in names])
    for k, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, msg=k)
