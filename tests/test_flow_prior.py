"""FlowPrior on a tiny random SD3-shaped model (SD3Transformer2DModel, two CLIPs with projection, T5,
FlowMatchEulerDiscreteScheduler with shift 3), loaded through ``from_pretrained``; the identity
between SDS on a flow prior and rectified-flow score distillation; bad model folders."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from threedgen.config import from_dict
from threedgen.data.cameras import make_cameras
from threedgen.guidance.base import GuidanceInput
from threedgen.guidance.flow_prior import FlowPrior
from threedgen.guidance.model_folder import PriorConfig
from threedgen.guidance.prior_api import CLEAN, to_prediction
from threedgen.guidance.priors import load_prior
from threedgen.guidance.sds import SDSGuidance
from threedgen.prompts.processor import PromptProcessor


def test_levels_follow_the_schedulers_shifted_sigmas(flow_prior):
    p = flow_prior
    assert isinstance(p, FlowPrior) and p.kind == "flow" and p.parameterisation == "flow" and p.shift == 3.0
    sig = p.scheduler.sigmas[: p.levels.n].flip(0)  # the scheduler lists them from most to least noisy
    torch.testing.assert_close(p._b, sig.float())
    t = torch.tensor([0, 250, 999, CLEAN])
    a, b = p.alpha_sigma(t)
    torch.testing.assert_close(a.view(-1) + b.view(-1), torch.ones(4))
    assert b.view(-1)[-1] == 0 and a.view(-1)[-1] == 1
    # a fraction of the range is a uniform draw of the unshifted time, then shifted (SD3's training)
    assert p.levels.at(0.5) == 500 and float(p.alpha_sigma(500)[1]) == pytest.approx(3 * 0.501 / (1 + 2 * 0.501), rel=1e-4)
    z, eps = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    lv = torch.tensor([10, 400, 800, 999])
    s = sig[lv].float().view(-1, 1, 1, 1)  # FlowMatchEulerDiscreteScheduler.scale_noise: s eps + (1 - s) z
    torch.testing.assert_close(p.add_noise(z, eps, lv), s * eps + (1 - s) * z)


def test_velocity_is_converted_to_x0_and_eps(flow_prior):
    p = flow_prior
    torch.manual_seed(0)
    z, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([100, 900])
    x_t = p.add_noise(z, eps, t)
    a, b = p.alpha_sigma(t)
    perfect = to_prediction(eps - z, x_t, a, b, "flow")  # a perfect velocity gives back both
    torch.testing.assert_close(perfect.eps, eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(perfect.x0, z, atol=1e-5, rtol=1e-5)
    cond = p.encode_text(["a red cube"])
    with torch.no_grad():
        u = p.transformer(hidden_states=x_t, encoder_hidden_states=cond.emb.expand(2, -1, -1),
                          pooled_projections=cond.pooled.expand(2, -1), timestep=b.view(-1) * 1000).sample
        got = p.predict(x_t, t, cond)
    torch.testing.assert_close(got.eps, x_t + a * u, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.x0, x_t - b * u, atol=1e-5, rtol=1e-4)
    assert torch.equal(got.a, a) and torch.equal(got.b, b)


def test_text_is_sd3_style_and_vae_uses_shift_and_scale(flow_prior):
    p = flow_prior
    c = p.encode_text(["a red cube", ""])
    assert c.emb.shape == (2, 77 + 77, 32) and c.pooled.shape == (2, 32)
    ids = p._tokenizer("tokenizer")(["a red cube"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        out = p._text_encoder("text_encoder")(ids, output_hidden_states=True)
    torch.testing.assert_close(c.emb[0, :77, :16], out.hidden_states[-2][0])
    torch.testing.assert_close(c.pooled[0, :16], out[0][0])
    assert p.scaling_factor == pytest.approx(1.5305) and p.shift_factor == pytest.approx(0.0609)
    rgb = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        mean = p.vae.encode(rgb * 2 - 1).latent_dist.mean
    torch.testing.assert_close(p.encode(rgb, mode="mean"), (mean - 0.0609) * 1.5305)


def test_sds_on_a_flow_prior_is_rectified_flow_score_distillation(flow_prior, tmp_path, monkeypatch):
    """With ``x_t = (1 - s) z + s eps`` and the network's velocity ``u``, the prior's
    ``eps_hat = x_t + (1 - s) u``, so SDS's ``eps_hat - eps = (1 - s) z + (1 - s) u - (1 - s) eps
    = (1 - s) (u - (eps - z))``: SDS on a flow prior is the rectified-flow form of score distillation,
    ``w(t) (u_cfg - (eps - z))`` (Yang et al. 2024, "Text-to-Image Rectified Flow as Plug-and-Play
    Priors", RFDS), with the weight ``(1 - s) w(t)``. CFG is linear in ``u``, so it carries over."""
    monkeypatch.setenv("THREEDGEN_EMBEDDING_CACHE", str(tmp_path))
    p = flow_prior
    prompts = PromptProcessor(PromptProcessor.Config(prompt="a red cube", view_dependent=False)).bundle(p)
    g = SDSGuidance(from_dict(SDSGuidance.Config, {"prior": {"model": p.model_id, "device": "cpu"},
                                                   "weighting": "uniform", "guidance_scale": 4.0,
                                                   "view_dependent": False}), prior=p)
    cams = make_cameras(15.0, torch.tensor([0.0, 90.0]), 2.0, 50.0, 16, 16)
    rgb = torch.nn.Parameter(torch.rand(2, 3, 16, 16))
    torch.manual_seed(7)
    z = p.encode(rgb)  # the same VAE sample SDS draws next (same seed)
    torch.manual_seed(7)
    g(GuidanceInput(rgb=rgb, cameras=cams), prompts, step=0)["loss_sds"].backward()
    sds_grad = rgb.grad.clone()
    # rebuild the RFDS gradient from raw transformer velocities with the same draws
    torch.manual_seed(7)
    z = p.encode(rgb)
    t = g.sampler.sample(2)
    eps = torch.randn_like(z)
    a, b = p.alpha_sigma(t)
    x_t = a * z.detach() + b * eps
    with torch.no_grad():
        def vel(c):
            return p.transformer(hidden_states=x_t, encoder_hidden_states=c.emb.expand(2, -1, -1),
                                 pooled_projections=c.pooled.expand(2, -1), timestep=b.view(-1) * 1000).sample
        u_c, u_u = vel(prompts.cond), vel(prompts.uncond)
    u_cfg = u_u + 4.0 * (u_c - u_u)
    rfds = a * (u_cfg - (eps - z.detach()))
    rgb.grad = None
    (0.5 * ((z - (z - rfds).detach()) ** 2).sum() / 2).backward()
    torch.testing.assert_close(sds_grad, rgb.grad, atol=1e-5, rtol=1e-3)


def test_bad_model_folders_are_refused_before_any_step(tiny_sd3_path, tiny_pixel_path, tmp_path):
    """A scheduler that is neither DDPM-family nor flow matching; a prediction type a DDPM prior does
    not know; a flow scheduler with resolution-dependent shifting: one clear error each."""
    odd = tmp_path / "odd"
    shutil.copytree(tiny_pixel_path, odd)
    cfg_file = odd / "scheduler" / "scheduler_config.json"
    sc = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({"_class_name": "ConsistencyDecoderScheduler", "num_train_timesteps": 1024}))
    with pytest.raises(ValueError, match="neither a DDPM-family schedule"):
        load_prior(PriorConfig(model=str(odd), device="cpu"))
    cfg_file.write_text(json.dumps({**sc, "prediction_type": "velocity"}))
    with pytest.raises(ValueError, match="prediction_type 'velocity'"):
        load_prior(PriorConfig(model=str(odd), device="cpu"))
    dyn = tmp_path / "dyn"
    shutil.copytree(tiny_sd3_path, dyn)
    f = dyn / "scheduler" / "scheduler_config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "use_dynamic_shifting": True}))
    with pytest.raises(ValueError, match="dynamic"):
        load_prior(PriorConfig(model=str(dyn), device="cpu"))


def test_a_lora_base_of_another_kind_or_target_is_refused(flow_prior, sd_prior, tiny_sd3_path):
    from threedgen.guidance.vsd import VSDGuidance

    def vsd(prior, **kw):
        return VSDGuidance(from_dict(VSDGuidance.Config, {"prior": {"model": prior.model_id, "device": "cpu"}, **kw}), prior=prior)

    with pytest.raises(ValueError, match="cannot be the LoRA base"):
        VSDGuidance(from_dict(VSDGuidance.Config, {"prior": {"model": sd_prior.model_id, "device": "cpu"}}),
                    prior=sd_prior, lora_prior=flow_prior)
    with pytest.raises(ValueError, match="not a parameterisation of the flow"):
        vsd(flow_prior, lora_target="v_prediction")
    with pytest.raises(ValueError, match="not a parameterisation of the ddpm"):
        vsd(sd_prior, lora_target="flow")


def test_flow_prior_sampler_runs_and_prompts_cache_pooled_embeddings(flow_prior, tmp_path, monkeypatch):
    monkeypatch.setenv("THREEDGEN_EMBEDDING_CACHE", str(tmp_path))
    first = PromptProcessor(PromptProcessor.Config(prompt="a blue torus")).bundle(flow_prior)
    again = PromptProcessor(PromptProcessor.Config(prompt="a blue torus")).bundle(flow_prior)
    torch.testing.assert_close(again.cond_vd.pooled, first.cond_vd.pooled)
    assert first.cond_vd.pooled.shape == (4, 32)
    img = flow_prior.sample(first.cond, first.uncond, 3.0, n_steps=3, generator=torch.Generator().manual_seed(0))
    assert img.shape == (1, 3, 16, 16) and torch.isfinite(img).all()
