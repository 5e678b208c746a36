"""CSD, CSM, CDS, ISM and SDI on the tiny pixel prior: each gradient on a free image equals its
spec, rebuilt by hand from separate (un-batched) diffusers UNet calls and the scheduler's own
alphas; CSM's noise modes; CDS's sign, Gaussian closed form and checkpointed noise; one recipe
launched end to end on the tiny SD stand-in.

The pixel prior works at its native 16x16, so ``z = 2 rgb - 1`` and ``d loss / d rgb = 2 g / B``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from threedgen import registry
from threedgen.config import from_dict
from threedgen.data.cameras import make_cameras
from threedgen.guidance.base import GuidanceInput
from threedgen.guidance.prior_api import Prediction
from threedgen.prompts.processor import PromptProcessor

ROOT = Path(__file__).resolve().parents[1]
B = 2


def _guidance(name, prior, **kw):
    cls = registry.get("guidance", name)
    return cls(from_dict(cls.Config, {"prior": {"model": prior.model_id, "device": "cpu"}, **kw}), prior=prior)


@pytest.fixture(scope="module")
def prompts(pixel_prior, tmp_path_factory):
    os.environ["THREEDGEN_EMBEDDING_CACHE"] = str(tmp_path_factory.mktemp("emb"))
    return PromptProcessor(PromptProcessor.Config(prompt="a red cube", negative_prompt="ugly")).bundle(pixel_prior)


def _cams():
    return make_cameras(15.0, torch.tensor([0.0, 120.0]), 2.0, 50.0, 16, 16)


def _image(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Parameter(torch.rand(B, 3, 16, 16) * 0.6 + 0.2)


def _run(g, image, prompts, step=0, seed=1):
    """One forward + backward under a fixed seed; returns (outputs, d loss / d image)."""
    image.grad = None
    torch.manual_seed(seed)
    out = g(GuidanceInput(rgb=image, cameras=_cams()), prompts, step)
    (loss,) = [v for k, v in out.items() if k.startswith("loss_")]
    loss.backward()
    return out, image.grad.clone()


# ---- independent references: raw UNet calls and the scheduler table --------------------------


def _eps(prior, x, t, emb):
    """One un-batched call straight to the diffusers UNet (the pixel prior predicts epsilon)."""
    t = torch.as_tensor(t).long().reshape(-1).clamp_min(0).expand(x.shape[0])
    with torch.no_grad():
        return prior.unet(x, t, encoder_hidden_states=emb.expand(x.shape[0]).emb).sample.float()


def _ab(prior, t):
    t = torch.as_tensor(t).long().reshape(-1)
    ac = prior.scheduler.alphas_cumprod.double()[t.clamp_min(0)]
    ac = torch.where(t < 0, torch.ones_like(ac), ac)
    return ac.sqrt().float().view(-1, 1, 1, 1), (1 - ac).sqrt().float().view(-1, 1, 1, 1)


def _ddim(prior, x, eps, t_cur, t_next):
    a, b = _ab(prior, t_cur)
    a_n, b_n = _ab(prior, t_next)
    return a_n * (x - b * eps) / a + b_n * eps


def _cfg(prior, x, t, cond, uncond, s):
    e_c, e_u = _eps(prior, x, t, cond), _eps(prior, x, t, uncond)
    return e_u + s * (e_c - e_u)


def _invert(prior, z, levels, eps_fn):
    x = z
    for cur, nxt in zip(levels[:-1], levels[1:]):
        e = eps_fn(x, cur)
        x = _ddim(prior, x, e, cur, nxt)
    return x, e


def _close(grad, g, rtol=1e-4):
    ref = 2 * g / B
    assert torch.allclose(grad, ref, rtol=rtol, atol=rtol * ref.abs().max()), (grad - ref).abs().max()


class _UnetCalls:
    def __init__(self, unet):
        self.batches = []
        self._h = unet.register_forward_hook(lambda m, i, o: self.batches.append(i[0].shape[0]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._h.remove()


# ---- CSD -----------------------------------------------------------------------------------


def test_csd_is_the_classifier_score(pixel_prior, prompts):
    """Defaults (a_c = 1, a_null = -1, w = b^2): g = b_t^2 (eps(x_t; y_view) - eps(x_t; "")), no eps term."""
    g = _guidance("csd", pixel_prior)
    image = _image()
    with _UnetCalls(pixel_prior.unet) as calls:
        out, grad = _run(g, image, prompts)
    assert calls.batches == [2 * B]  # the negative prompt has coefficient 0: not evaluated
    torch.manual_seed(1)
    t = g.sampler.sample(B)
    z = image.detach() * 2 - 1
    x_t = _ab(pixel_prior, t)[0] * z + _ab(pixel_prior, t)[1] * torch.randn_like(z)
    cond, _ = prompts.select(_cams())
    ref = _ab(pixel_prior, t)[1] ** 2 * (_eps(pixel_prior, x_t, t, cond) - _eps(pixel_prior, x_t, t, prompts.null))
    _close(grad, ref)


def test_csd_annealed_negative_and_normalisation(pixel_prior, prompts):
    """CSD's IF schedule half-way: a_n = a_null = -0.5 (3B); with grad_normalize ||g|| = 1."""
    kw = dict(coef_negative=[0, 0.0, -1.0, 100], coef_null=[0, -1.0, 0.0, 100], weighting="uniform")
    g = _guidance("csd", pixel_prior, **kw)
    image = _image()
    with _UnetCalls(pixel_prior.unet) as calls:
        out, grad = _run(g, image, prompts, step=50)
    assert calls.batches == [3 * B] and out["coef_negative"].item() == pytest.approx(-0.5)
    torch.manual_seed(1)
    t = g.sampler.sample(B)
    z = image.detach() * 2 - 1
    a, b = _ab(pixel_prior, t)
    x_t = a * z + b * torch.randn_like(z)
    cond, neg = prompts.select(_cams())
    e = lambda emb: _eps(pixel_prior, x_t, t, emb)  # noqa: E731
    _close(grad, e(cond) - 0.5 * e(neg) - 0.5 * e(prompts.null))
    gn = _guidance("csd", pixel_prior, grad_normalize=True, **kw)
    _, grad_n = _run(gn, image, prompts, step=50)
    assert grad_n.norm().item() == pytest.approx(2 / B, rel=1e-4)
    torch.testing.assert_close(grad_n, grad / grad.norm() * (2 / B), rtol=1e-4, atol=1e-6)


def test_csd_with_sds_coefficients_is_sds(pixel_prior, prompts):
    """a_c = s, a_n = 1 - s, a_null = 0, a_eps = -1 reproduces SDS (negative prompt as uncond) exactly."""
    s = 7.5
    csd = _guidance("csd", pixel_prior, coef_cond=s, coef_negative=1 - s, coef_null=0.0, coef_noise=-1.0)
    sds = _guidance("sds", pixel_prior, guidance_scale=s)
    image = _image()
    _, g_csd = _run(csd, image, prompts)
    _, g_sds = _run(sds, image, prompts)
    torch.testing.assert_close(g_csd, g_sds, rtol=1e-4, atol=1e-5)
    pn = _guidance("csd", pixel_prior, perp_neg=True, coef_negative=-0.5)
    with _UnetCalls(pixel_prior.unet) as calls:
        _, grad = _run(pn, image, prompts)
    assert calls.batches == [5 * B] and torch.isfinite(grad).all()


# ---- CSM -----------------------------------------------------------------------------------


def test_csm_fixed_noise_is_deterministic_random_is_not(pixel_prior, prompts):
    frozen_t = dict(min_step_percent=0.5, max_step_percent=0.5)
    image = _image()
    fixed = _guidance("csm", pixel_prior, noise_mode="fixed", **frozen_t)
    _, g1 = _run(fixed, image, prompts, seed=1)
    _, g2 = _run(fixed, image, prompts, seed=2)
    assert torch.equal(g1, g2)
    # the form: g = w(t) s (eps_c - eps_null) at a_t z + b_t eps*, w = b/a (ISM)
    t = torch.full((B,), 500)
    a, b = _ab(pixel_prior, t)
    z = image.detach() * 2 - 1
    x_t = a * z + b * fixed.fixed_noise
    cond, _ = prompts.select(_cams())
    _close(g1, (b / a) * 7.5 * (_eps(pixel_prior, x_t, t, cond) - _eps(pixel_prior, x_t, t, prompts.null)))
    rnd = _guidance("csm", pixel_prior, noise_mode="random", **frozen_t)
    _, r1 = _run(rnd, image, prompts, seed=1)
    _, r2 = _run(rnd, image, prompts, seed=2)
    assert not torch.allclose(r1, r2)


def test_csm_ddim_inversion_noising(pixel_prior, prompts):
    """Inversion from the clean render (`inversion_start: clean`): x_t by unconditional DDIM inversion (clean -> s = t - 50 in strides of 200,
    then s -> t), deterministic across calls; the classifier term at that x_t."""
    g = _guidance("csm", pixel_prior, min_step_percent=0.45, max_step_percent=0.45, inversion_start="clean")
    image = _image()
    with _UnetCalls(pixel_prior.unet) as calls:
        out, grad = _run(g, image, prompts, seed=1)
    assert calls.batches == [B, B, B, B, 2 * B] and out["unet_evals"].item() == 6 * B  # (k + 1) B + 2B, k = 3
    _, again = _run(g, image, prompts, seed=2)
    assert torch.equal(grad, again)
    t = torch.full((B,), 450)
    null = prompts.null
    x_s, _ = _invert(pixel_prior, image.detach() * 2 - 1, [-1, 199, 399, 400], lambda x, l: _eps(pixel_prior, x, l, null))
    x_t, _ = _invert(pixel_prior, x_s, [400, 450], lambda x, l: _eps(pixel_prior, x, l, null))
    a, b = _ab(pixel_prior, t)
    cond, _ = prompts.select(_cams())
    _close(grad, (b / a) * 7.5 * (_eps(pixel_prior, x_t, t, cond) - _eps(pixel_prior, x_t, t, null)), rtol=1e-3)


# ---- ISM -----------------------------------------------------------------------------------


def test_ism_interval_score(pixel_prior, prompts):
    """g = (b_t/a_t) (eps_cfg(x_t, t; y) - eps(x_s, s; "")), x_s / x_t by null-prompt DDIM inversion."""
    g = _guidance("ism", pixel_prior, min_step_percent=0.3, max_step_percent=0.3, interval=0.1, inversion_start="clean")
    image = _image()
    out, grad = _run(g, image, prompts)
    null = prompts.null
    t = torch.full((B,), 300)
    # s = 300 - 100 = 200: strides clean -> 199 -> 200, then 200 -> 300
    x_s, _ = _invert(pixel_prior, image.detach() * 2 - 1, [-1, 199, 200], lambda x, l: _eps(pixel_prior, x, l, null))
    x_t, eps_s = _invert(pixel_prior, x_s, [200, 300], lambda x, l: _eps(pixel_prior, x, l, null))
    cond, neg = prompts.select(_cams())
    a, b = _ab(pixel_prior, t)
    _close(grad, (b / a) * (_cfg(pixel_prior, x_t, t, cond, neg, 7.5) - eps_s), rtol=1e-3)
    assert out["unet_evals"].item() == 3 * B + 2 * B


def test_ism_noised_start_is_lucid_dreamers(pixel_prior, prompts, monkeypatch):
    """The default start (LucidDreamer's ``add_noise_with_cfg``): the render noised with fresh noise at the
    least noisy level, then the same strides from there (0 -> 199 -> 200 -> 300); fresh noise per call."""
    import threedgen.guidance.ism as ism_mod

    g = _guidance("ism", pixel_prior, min_step_percent=0.3, max_step_percent=0.3, interval=0.1)
    assert g.cfg.inversion_start == "noised"
    drawn = []
    real = ism_mod.interval_invert
    monkeypatch.setattr(ism_mod, "interval_invert", lambda *a, **k: (drawn.append(k["start_noise"]), real(*a, **k))[1])
    image = _image()
    _, grad = _run(g, image, prompts, seed=1)
    _, other = _run(g, image, prompts, seed=2)
    assert not torch.allclose(grad, other), "fresh start noise each call"
    eps0 = drawn[0]
    assert eps0.shape == image.shape and 0.8 < float(eps0.std()) < 1.2
    null = prompts.null
    z = image.detach() * 2 - 1
    a0, b0 = _ab(pixel_prior, 0)
    x_s, _ = _invert(pixel_prior, a0 * z + b0 * eps0, [0, 199, 200], lambda x, l: _eps(pixel_prior, x, l, null))
    x_t, eps_s = _invert(pixel_prior, x_s, [200, 300], lambda x, l: _eps(pixel_prior, x, l, null))
    cond, neg = prompts.select(_cams())
    a, b = _ab(pixel_prior, torch.full((B,), 300))
    _close(grad, (b / a) * (_cfg(pixel_prior, x_t, 300, cond, neg, 7.5) - eps_s), rtol=1e-3)


# ---- SDI -----------------------------------------------------------------------------------


def test_sdi_inverted_noise_x0_target(pixel_prior, prompts):
    """eta = 0, t = 350: CFG(-6.5) DDIM inversion over the 10-step grid below t, then g = (z - x0_cfg)/numel."""
    g = _guidance("sdi", pixel_prior, min_step_percent=0.35, max_step_percent=0.35, t_jitter=0, inversion_eta=0.0)
    image = _image()
    _, grad = _run(g, image, prompts)
    cond, neg = prompts.select(_cams())
    z = image.detach() * 2 - 1
    x_t, _ = _invert(pixel_prior, z, [-1, 100, 200, 300, 350], lambda x, l: _cfg(pixel_prior, x, l, cond, neg, -6.5))
    t = torch.full((B,), 350)
    a, b = _ab(pixel_prior, t)
    x0 = (x_t - b * _cfg(pixel_prior, x_t, t, cond, neg, 8.5)) / a
    _close(grad, (z - x0) / z.numel(), rtol=1e-3)


# ---- CDS -----------------------------------------------------------------------------------


def _cds(prior, **kw):
    return _guidance("cds", prior, guidance_scale=7.5, t_next=0.5, **kw)


def test_cds_gradient_and_sign(pixel_prior, prompts):
    """Rebuilt in the code's VE coordinates: x~_t = z + sigma~_t eps*, eps_t = CFG(x_t, t),
    x~_t' = x~_t + (sigma~_t' - sigma~_t) eps_t, eps_t' = CFG(x_t', t'), g = eps_t - eps_t'.
    The SGD step on the render is along +(eps_t' - eps_t), i.e. along x0_hat(x_t) - x0_hat(x_t')."""
    g = _cds(pixel_prior)
    image = _image()
    with _UnetCalls(pixel_prior.unet) as calls:
        out, grad = _run(g, image, prompts)
    assert calls.batches == [2 * B, 2 * B]  # two sequential CFG calls
    torch.manual_seed(1)
    t, tn = g.sampler.consistency_pair(B, 0.5, 0.1, 0.2)
    assert tn.tolist() == [500, 500] and ((t - tn >= 100) & (t - tn < 300)).all()
    assert out["t_next"].item() == 500
    z = image.detach() * 2 - 1
    (a, b), (a_n, b_n) = _ab(pixel_prior, t), _ab(pixel_prior, tn)
    sig, sig_n = b / a, b_n / a_n
    cond, neg = prompts.select(_cams())
    xv_t = z + sig * g.fixed_noise
    eps_t = _cfg(pixel_prior, a * xv_t, t, cond, neg, 7.5)
    xv_n = xv_t + (sig_n - sig) * eps_t
    eps_n = _cfg(pixel_prior, a_n * xv_n, tn, cond, neg, 7.5)
    _close(grad, eps_t - eps_n, rtol=1e-3)
    step = -grad  # gradient descent
    cos = torch.nn.functional.cosine_similarity
    assert (cos(step.flatten(1), (eps_n - eps_t).flatten(1)) > 0.999).all()
    x0_t, x0_n = xv_t - sig * eps_t, xv_n - sig_n * eps_n
    assert (cos(step.flatten(1), (x0_t - x0_n).flatten(1)) > 0.999).all()


def test_cds_gaussian_closed_form(pixel_prior, prompts, monkeypatch):
    """With the exact denoiser of Gaussian data N(mu, s^2 I) in place of the network, the CDS gradient
    is g = s^2 (sig_t - sig_t') / ((s^2 + sig_t^2)(s^2 + sig_t'^2)) (x~_t - mu): positive multiple of
    x~_t - mu, so descent pulls the render towards the data mean."""
    mu, s2 = 0.3, 0.25

    def exact(x_t, t, emb, *_, **__):
        a, b = pixel_prior.alpha_sigma(t, x_t.dim())
        eps = b * (x_t - a * mu) / (a**2 * s2 + b**2)
        return Prediction(eps=eps, x0=(x_t - b * eps) / a, a=a, b=b)

    monkeypatch.setattr(pixel_prior, "predict", exact)
    g = _cds(pixel_prior)
    image = _image()
    _, grad = _run(g, image, prompts)
    torch.manual_seed(1)
    t, tn = g.sampler.consistency_pair(B, 0.5, 0.1, 0.2)
    (a, b), (a_n, b_n) = _ab(pixel_prior, t), _ab(pixel_prior, tn)
    sig, sig_n = b / a, b_n / a_n
    xv_t = image.detach() * 2 - 1 + sig * g.fixed_noise
    c = s2 * (sig - sig_n) / ((s2 + sig**2) * (s2 + sig_n**2))
    assert (c > 0).all()
    _close(grad, c * (xv_t - mu), rtol=1e-3)


def test_cds_noise_is_checkpointed(pixel_prior, prompts):
    a, b, other = _cds(pixel_prior, seed=3), _cds(pixel_prior, seed=3), _cds(pixel_prior, seed=4)
    assert torch.equal(a.fixed_noise, b.fixed_noise) and not torch.equal(a.fixed_noise, other.fixed_noise)
    assert a.fixed_noise.shape == (1, 3, 16, 16)
    sd = a.state_dict()
    assert list(sd) == ["fixed_noise"]
    other.load_state_dict(sd)  # a resumed run gets the saved noise, not its seed's
    assert torch.equal(other.fixed_noise, a.fixed_noise)
    image = _image()
    _, ga = _run(a, image, prompts, seed=5)
    _, go = _run(other, image, prompts, seed=5)
    assert torch.equal(ga, go)
    assert a.param_groups() == [] and list(a.parameters()) == []


def test_cds_time_schedule():
    from threedgen.guidance.cds import CDSGuidance

    cfg = from_dict(CDSGuidance.Config, {})
    sched = cfg.t_next
    assert sched(0) == pytest.approx(0.7) and sched(3000) == pytest.approx(0.1)
    assert sched(750) == pytest.approx(0.7 - 0.6 * 0.5)  # sqrt anneal: a quarter of the way -> half the drop


# ---- a recipe end to end -------------------------------------------------------------------


def test_consistent3d_recipe_runs_on_tiny_sd(tiny_sd_path, tmp_path):
    """The Consistent3D recipe's coarse NeRF stage (``stages=[]``: the DMTet stages take ~2 min on
    this CPU; their configs are validated by tests/test_recipes.py), 2 steps at 16x16 with CDS; the
    checkpoint holds the fixed noise."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    small = [
        "stages=[]", "trainer.max_steps=2", "trainer.val_every=2", "trainer.test_views=2", "trainer.test_resolution=16",
        "trainer.export_at_end=false", "system.val_views=1", "system.val_resolution=16", "data.batch_size=2",
        "data.width=16", "data.height=16", "system.representation.grid.n_levels=4",
        "system.representation.grid.log2_hashmap_size=12", "system.representation.grid.max_resolution=64",
        "system.renderer.num_samples_per_ray=16",
        f"system.guidance.0.prior.model={tiny_sd_path}", "system.guidance.0.prior.resolution=null",
    ]
    r = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "--config", str(ROOT / "configs" / "consistent3d.yaml"), "--train", "-q", *small],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "consistent3d").iterdir()
    assert "train/loss_cds" in (run / "metrics.csv").read_text().splitlines()[0]
    ck = torch.load(run / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
    (key,) = [k for k in ck["state_dict"] if k.endswith("fixed_noise")]
    assert ck["state_dict"][key].shape == (1, 4, 8, 8) and ck["global_step"] == 2


# ---- the contract every score objective keeps ----------------------------------------------


@pytest.mark.parametrize("name", ["csd", "csm", "cds", "ism", "sdi"])
def test_objective_contract_on_latent_v_prior(name, sd_v_prior):
    """Latent (VAE) v-prediction prior: finite loss named loss_<name>, gradient reaches the render and
    not the prior, nothing trainable, the config round-trips through plain data."""
    from threedgen.config import to_plain

    prompts = PromptProcessor(PromptProcessor.Config(prompt="a red cube")).bundle(sd_v_prior)
    g = _guidance(name, sd_v_prior)
    rgb = torch.rand(B, 3, 24, 24, requires_grad=True)
    out = g(GuidanceInput(rgb=rgb, cameras=_cams()), prompts, step=10)
    assert [k for k in out if k.startswith("loss_")] == [f"loss_{name}"]
    assert torch.isfinite(out[f"loss_{name}"]) and out["nonfinite"].item() == 0
    out[f"loss_{name}"].backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    assert not any(p.grad is not None for p in sd_v_prior.unet.parameters())
    assert g.param_groups() == [] and list(g.parameters()) == []
    cls = type(g)
    assert to_plain(from_dict(cls.Config, to_plain(g.cfg))) == to_plain(g.cfg)


def test_cds_recon_std_rescale_follows_consistent3d(pixel_prior, prompts):
    """phi = 0.5, rebuilt as Consistent3D's ``get_rescaled_sample`` / ``compute_grad_consistency``:
    x0_r = phi x0 std(x0_c)/std(x0) + (1 - phi) x0 (per sample), eps_r = (x~_t - x0_r) / sig_t in
    VE coordinates, the Euler step along eps_r, and g = (sig_t/sig_t')(eps_t - eps_r) + (eps_r - eps_t')."""
    g = _cds(pixel_prior, recon_std_rescale=0.5)
    image = _image()
    _, grad = _run(g, image, prompts)
    torch.manual_seed(1)
    t, tn = g.sampler.consistency_pair(B, 0.5, 0.1, 0.2)
    z = image.detach() * 2 - 1
    (a, b), (a_n, b_n) = _ab(pixel_prior, t), _ab(pixel_prior, tn)
    sig, sig_n = b / a, b_n / a_n
    cond, neg = prompts.select(_cams())
    xv_t = z + sig * g.fixed_noise
    eps_c = _eps(pixel_prior, a * xv_t, t, cond)
    eps_t = _cfg(pixel_prior, a * xv_t, t, cond, neg, 7.5)
    x0, x0_c = xv_t - sig * eps_t, xv_t - sig * eps_c
    std = lambda x: x.std(dim=(1, 2, 3), keepdim=True) + 1e-8  # noqa: E731
    x0_r = 0.5 * x0 * std(x0_c) / std(x0) + 0.5 * x0
    eps_r = (xv_t - x0_r) / sig
    xv_n = xv_t + (sig_n - sig) * eps_r
    eps_n = _cfg(pixel_prior, a_n * xv_n, tn, cond, neg, 7.5)
    _close(grad, (sig / sig_n) * (eps_t - eps_r) + (eps_r - eps_n), rtol=1e-3)
    with pytest.raises(ValueError, match="recon_std_rescale"):
        _cds(pixel_prior, recon_std_rescale=1.5)


def test_noise_levels_are_fractions_and_old_spellings_are_explained(pixel_prior):
    """A paper's integer step where a fraction belongs is refused with the conversion; an older run
    folder's ``per_sample_t`` still reads as ``views_per_level``."""
    with pytest.raises(ValueError, match=r"interval is a fraction of the noise range.*100 -> 0.1"):
        _guidance("ism", pixel_prior, interval=[0, 100, 50, 1500])
    with pytest.raises(ValueError, match="t_next is a fraction"):
        _guidance("cds", pixel_prior, t_next=700)
    with pytest.warns(DeprecationWarning, match="views_per_level"):
        g = _guidance("sds", pixel_prior, per_sample_t=False)
    assert g.sampler.views_per_level == 0


def test_cds_fresh_noise_ablation_draws_per_step(pixel_prior, prompts):
    """``fixed_noise: false`` (an ablation switch) draws a new noise each step, one for all views."""
    g = _cds(pixel_prior, fixed_noise=False)
    image = _image()
    _, a = _run(g, image, prompts, seed=1)
    _, again = _run(g, image, prompts, seed=1)
    torch.testing.assert_close(a, again)  # the draw follows the run's seed
    _, fixed = _run(_cds(pixel_prior), image, prompts, seed=1)  # same levels, the checkpointed noise instead
    assert not torch.allclose(a, fixed)
