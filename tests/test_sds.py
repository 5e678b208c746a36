"""SDS guidance on tiny random priors: gradient direction, UNet call count, config, latent path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from threedgen import registry
from threedgen.config import ConfigError, from_dict
from threedgen.data.cameras import make_cameras
from threedgen.guidance.base import GuidanceInput
from threedgen.guidance.model_folder import PriorConfig
from threedgen.guidance.sds import SDSGuidance
from threedgen.prompts.processor import PromptProcessor

from score_reference import _UnetCalls


def _sds(prior, **kw) -> SDSGuidance:
    cfg = from_dict(SDSGuidance.Config, {"prior": {"model": prior.model_id, "device": "cpu"}, **kw})
    return SDSGuidance(cfg, prior=prior)


def _prompts(prior, **kw):
    return PromptProcessor(PromptProcessor.Config(prompt="a red cube", **kw)).bundle(prior)


def _cams(B):
    return make_cameras(15.0, torch.linspace(-150, 150, B), 2.0, 50.0, 16, 16)


def test_sds_step_moves_render_toward_one_step_denoised(pixel_prior):
    """One SDS step on a free image moves it toward the prior's own one-step denoised estimate.

    Asserted precisely: with z = 2*image - 1 (pixel prior at its native 16x16, so no resize) and
    x0_hat the CFG one-step estimate from the same (t, eps, x_t) the guidance drew, the identity
    eps_hat - eps = (a_t / b_t) (z - x0_hat) makes the gradient on z a positive per-sample multiple
    of (z - x0_hat). So (1) the SGD update of z is exactly anti-parallel to (z - x0_hat)
    (cosine < -0.999 per sample) and (2) ||z - x0_hat|| decreases after a small step.
    """
    torch.manual_seed(0)
    guidance = _sds(pixel_prior, guidance_scale=5.0, weighting="sds")
    prompts = _prompts(pixel_prior)
    image = torch.nn.Parameter(torch.rand(2, 3, 16, 16) * 0.5 + 0.25)
    seen = {}
    orig = guidance._predict

    def spy(x_t, t, prompts_, cameras):
        pred = orig(x_t, t, prompts_, cameras)
        seen.update(pred=pred, t=t)
        return pred

    guidance._predict = spy
    out = guidance(GuidanceInput(rgb=image, cameras=_cams(2)), prompts, step=0)
    out["loss_sds"].backward()
    z0 = (image.detach() * 2 - 1).clone()
    x0_hat = seen["pred"].x0
    lr = 1e-3
    with torch.no_grad():
        image -= lr * image.grad
    dz = image.detach() * 2 - 1 - z0
    to_target = z0 - x0_hat
    cos = torch.nn.functional.cosine_similarity(dz.flatten(1), to_target.flatten(1), dim=1)
    assert torch.all(cos < -0.999), cos
    before = to_target.flatten(1).norm(dim=1)
    after = (image.detach() * 2 - 1 - x0_hat).flatten(1).norm(dim=1)
    assert torch.all(after < before)
    assert 0.02 * 1000 <= out["t"].item() <= 0.98 * 1000


def test_one_batched_unet_call_per_step(pixel_prior):
    g = _sds(pixel_prior)
    prompts = _prompts(pixel_prior)
    rgb = torch.rand(3, 3, 16, 16, requires_grad=True)
    with _UnetCalls(pixel_prior.unet) as calls:
        g(GuidanceInput(rgb=rgb, cameras=_cams(3)), prompts, step=0)
    assert calls.batches == [6]  # 2B
    g_pn = _sds(pixel_prior, perp_neg=True)
    with _UnetCalls(pixel_prior.unet) as calls:
        out = g_pn(GuidanceInput(rgb=rgb, cameras=_cams(3)), prompts, step=0)
    assert calls.batches == [12]  # Perp-Neg: (2 + 2)B
    out["loss_sds"].backward()
    assert torch.isfinite(rgb.grad).all()


def test_latent_sd_end_to_end_gradient_reaches_rgb(sd_prior):
    g = _sds(sd_prior, guidance_scale=101.0, grad_clip=[0, 2.0, 8.0, 1000])
    prompts = _prompts(sd_prior)
    rgb = torch.rand(2, 3, 32, 32, requires_grad=True)
    out = g(GuidanceInput(rgb=rgb, cameras=_cams(2)), prompts, step=500)
    assert set(out) >= {"loss_sds", "grad_norm", "t", "min_step", "max_step", "guidance_scale"}
    out["loss_sds"].backward()
    assert rgb.grad is not None and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    assert g.grad_clip == pytest.approx(5.0)
    assert out["guidance_scale"].item() == pytest.approx(101.0)
    # the prior is shared and stays out of the module: no parameters, nothing in the state dict
    assert list(g.parameters()) == [] and g.state_dict() == {} and g.param_groups() == []
    assert g.prior is sd_prior
    assert not any(p.grad is not None for p in sd_prior.unet.parameters())
    images = g.evaluate(GuidanceInput(rgb=rgb.detach(), cameras=_cams(2)), prompts, step=500)
    for k in ("input", "noisy", "denoised"):
        assert images[k].shape == (2, 3, 16, 16) and 0 <= images[k].min() and images[k].max() <= 1


def test_if_like_prior_sds(if_prior):
    g = _sds(if_prior, guidance_scale=21.0)
    prompts = _prompts(if_prior)
    rgb = torch.rand(2, 3, 20, 20, requires_grad=True)
    g(GuidanceInput(rgb=rgb, cameras=_cams(2)), prompts, step=0)["loss_sds"].backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0


def test_timestep_schedule_and_per_batch_t(pixel_prior):
    g = _sds(pixel_prior, min_step_percent=0.5, max_step_percent=[0, 0.98, 0.6, 100], views_per_level=0)
    prompts = _prompts(pixel_prior)
    g.update_step(0, 100)
    assert (g.sampler.min_step, g.sampler.max_step) == (500, 600)
    rgb = torch.rand(4, 3, 16, 16, requires_grad=True)
    ts = []
    orig = g.sampler.sample
    g.sampler.sample = lambda B, generator=None: ts.append(orig(B)) or ts[-1]
    out = g(GuidanceInput(rgb=rgb, cameras=_cams(4)), prompts, step=100)
    assert out["min_step"].item() == 500 and out["max_step"].item() == 600
    assert torch.all(ts[0] == ts[0][0]) and 500 <= ts[0][0] <= 600


def test_rgb_as_latents(sd_prior):
    g = _sds(sd_prior, rgb_as_latents=True)
    prompts = _prompts(sd_prior)
    lat = torch.randn(1, 4, 24, 24, requires_grad=True)
    g(GuidanceInput(rgb=lat, cameras=_cams(1)), prompts, step=0)["loss_sds"].backward()
    assert lat.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="4 channels"):
        g(GuidanceInput(rgb=torch.rand(1, 3, 16, 16), cameras=_cams(1)), prompts, step=0)


def test_config_is_validated_with_key_paths():
    assert registry.get("guidance", "sds") is SDSGuidance
    cfg = from_dict(SDSGuidance.Config, {"prior": {"model": "x/y", "dtype": "fp16"}, "guidance_scale": [0, 101, 21, 10]})
    assert isinstance(cfg.prior, PriorConfig) and cfg.guidance_scale(5) == pytest.approx(61.0)
    with pytest.raises(ConfigError, match="prior.dtype"):
        from_dict(SDSGuidance.Config, {"prior": {"dtype": "fp8"}})
    with pytest.raises(ConfigError, match="weighting"):
        from_dict(SDSGuidance.Config, {"weighting": "dreamfusion"})
    with pytest.raises(ConfigError, match="guidance_scale"):
        from_dict(SDSGuidance.Config, {"guidance_scale": "abc"})


# ---- the shipped toy prior (skipped until assets/toy-prior is trained) ----------------------------

from threedgen.guidance.model_folder import REPO_ROOT  # noqa: E402

TOY = REPO_ROOT / "assets" / "toy-prior"
needs_toy = pytest.mark.usefixtures("toy_prior_present")


@needs_toy
def test_toy_prior_loads_by_relative_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # "assets/toy-prior" resolves against the repository root
    g = SDSGuidance(from_dict(SDSGuidance.Config, {"prior": {"device": "cpu"}}))
    assert Path(g.prior.location) == TOY.resolve() and not g.prior.is_latent
    prompts = _prompts(g.prior)
    rgb = torch.rand(2, 3, 32, 32, requires_grad=True)
    g(GuidanceInput(rgb=rgb, cameras=_cams(2)), prompts, step=0)["loss_sds"].backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0


@needs_toy
@pytest.mark.slow
@pytest.mark.parametrize("colour,channel", [("red", 0), ("blue", 2)])
def test_toy_prior_2d_sds_paints_the_prompted_colour(colour, channel):
    """2D SDS on a free grey image with the toy prior: after 120 Adam steps the prompted colour's
    channel dominates the image's foreground-weighted mean (the object appears in the right colour)."""
    from threedgen.guidance.priors import get_prior

    torch.manual_seed(0)
    prior = get_prior(PriorConfig(model="assets/toy-prior", device="cpu"))
    g = _sds(prior, guidance_scale=7.5, min_step_percent=0.05, max_step_percent=[0, 0.98, 0.3, 120])
    prompts = PromptProcessor(PromptProcessor.Config(prompt=f"a {colour} sphere")).bundle(prior)
    R = prior.resolution
    image = torch.nn.Parameter(torch.full((1, 3, R, R), 0.5))
    opt = torch.optim.Adam([image], lr=0.03)
    cams = make_cameras(15.0, 0.0, 2.0, 50.0, R, R)
    for step in range(120):
        opt.zero_grad()
        g(GuidanceInput(rgb=image, cameras=cams), prompts, step=step)["loss_sds"].backward()
        opt.step()
        with torch.no_grad():
            image.clamp_(0, 1)
    img = image.detach()[0]
    # weight pixels by how far they are from the white/grey background
    fg = (1 - img.min(dim=0).values).clamp_min(0)
    mean = (img * fg).sum(dim=(1, 2)) / fg.sum().clamp_min(1e-6)
    others = [c for c in range(3) if c != channel]
    assert all(mean[channel] > mean[c] + 0.05 for c in others), mean
