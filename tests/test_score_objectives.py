"""CSD, CSM, ISM and SDI on the tiny pixel prior: each gradient on a free image equals its spec,
rebuilt by hand from separate (un-batched) diffusers UNet calls and the scheduler's own alphas
(``score_reference.py``); CSM's noise modes; every objective's contract on a latent v-prediction prior.
CDS: ``test_cds.py``.

The pixel prior works at its native 16x16, so ``z = 2 rgb - 1`` and ``d loss / d rgb = 2 g / B``.
"""

from __future__ import annotations


import pytest
import torch

from score_reference import B, _UnetCalls, _ab, _cams, _cfg, _close, _eps, _guidance, _image, _invert, _run, pixel_prompts
from threedgen.config import from_dict
from threedgen.guidance.base import GuidanceInput
from threedgen.prompts.processor import PromptProcessor



@pytest.fixture(scope="module")
def prompts(pixel_prior, tmp_path_factory):
    return pixel_prompts(pixel_prior, tmp_path_factory)


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
