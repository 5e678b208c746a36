"""DDPMPrior on tiny random diffusers models: loading, CFG, v-prediction, IF channels, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from threedgen.guidance.base import surrogate
from threedgen.guidance.cfg import cfg_combine, perp_neg_combine, perpendicular_component
from threedgen.guidance.ddpm_prior import DDPMPrior
from threedgen.guidance.inversion import invert_along
from threedgen.guidance.model_folder import PriorConfig, PriorNotFoundError, PromptTruncatedWarning
from threedgen.guidance.prior_api import to_prediction
from threedgen.guidance.priors import clear_prior_cache, get_prior


def _emb(prior, *texts):
    return prior.encode_text(list(texts))


def test_surrogate_gradient_is_g_over_batch():
    torch.manual_seed(0)
    z = torch.randn(3, 4, 5, 5, requires_grad=True)
    g = torch.randn(3, 4, 5, 5)
    loss, stats = surrogate(z, g)
    loss.backward()
    torch.testing.assert_close(z.grad, g / 3, rtol=0, atol=1e-6)
    assert stats["nonfinite"].item() == 0

    z.grad = None
    g_bad = g.clone()
    g_bad[0, 0, 0, 0] = float("nan")
    loss, stats = surrogate(z, g_bad, clip=0.5)
    loss.backward()
    expected = torch.nan_to_num(g_bad, nan=0.0).clamp(-0.5, 0.5) / 3
    torch.testing.assert_close(z.grad, expected, rtol=0, atol=1e-6)
    assert stats["nonfinite"].item() == 1


def test_loads_sd_layout_frozen_and_describes_itself(sd_prior, tiny_sd_path):
    p = sd_prior
    assert p.is_latent and p.latent_channels == 4 and p.num_train_timesteps == 1000
    assert p.resolution == 16  # unet sample_size 8 x VAE factor 2
    assert p.model_id == str(tiny_sd_path)
    assert not any(q.requires_grad for q in p.unet.parameters())
    assert not any(q.requires_grad for q in p.vae.parameters())
    assert not p.unet.training and not p.vae.training
    procs = {type(v).__name__ for v in p.unet.attn_processors.values()}
    assert procs == {"AttnProcessor2_0"}  # SDPA
    assert not p.text_encoder_loaded  # loaded lazily, only for prompts


def test_alpha_sigma_and_add_noise_match_scheduler(sd_prior):
    t = torch.tensor([0, 17, 500, 999])
    a, b = sd_prior.alpha_sigma(t)
    ac = sd_prior.scheduler.alphas_cumprod[t]
    torch.testing.assert_close(a.view(-1), ac.sqrt())
    torch.testing.assert_close(b.view(-1), (1 - ac).sqrt())
    z, eps = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    torch.testing.assert_close(sd_prior.add_noise(z, eps, t), sd_prior.scheduler.add_noise(z, eps, t))
    a0, b0 = sd_prior.alpha_sigma(torch.tensor([-1]))
    assert a0.item() == 1.0 and b0.item() == 0.0


def test_cfg_one_batched_call_matches_two_separate_calls(sd_prior):
    p = sd_prior
    torch.manual_seed(0)
    cond, uncond = _emb(p, "a red cube"), _emb(p, "")
    x_t = torch.randn(2, 4, 8, 8)
    t = torch.tensor([100, 700])
    calls = []
    h = p.unet.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        with torch.no_grad():
            pred = p.predict_guided(x_t, t, cond, uncond, 7.5)
    finally:
        h.remove()
    assert calls == [4]  # one UNet call on 2B
    with torch.no_grad():
        e_c = p.unet(x_t, t, encoder_hidden_states=cond.expand(2).emb).sample
        e_u = p.unet(x_t, t, encoder_hidden_states=uncond.expand(2).emb).sample
    torch.testing.assert_close(pred.eps_cond, e_c, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pred.eps_uncond, e_u, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pred.eps, e_u + 7.5 * (e_c - e_u), atol=1e-4, rtol=1e-4)
    a, b = p.alpha_sigma(t)
    torch.testing.assert_close(pred.x0, (x_t - b * pred.eps) / a, atol=1e-4, rtol=1e-4)
    # scale 1 is the conditional prediction; a per-sample scale tensor applies row by row
    torch.testing.assert_close(cfg_combine(e_c, e_u, 1.0), e_c)
    per = cfg_combine(e_c, e_u, torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(per[0], e_c[0])
    torch.testing.assert_close(per[1], e_u[1] + 3.0 * (e_c[1] - e_u[1]))


def test_v_prediction_is_converted_to_eps(sd_v_prior):
    p = sd_v_prior
    assert p.prediction_type == "v_prediction"
    torch.manual_seed(1)
    z, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([50, 800])
    x_t = p.add_noise(z, eps, t)
    v_true = p.scheduler.get_velocity(z, eps, t)
    pred = to_prediction(v_true, x_t, *p.alpha_sigma(t), p.parameterisation)  # a perfect v-model must give back the true eps and z
    torch.testing.assert_close(pred.eps, eps, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pred.x0, z, atol=1e-3, rtol=1e-3)
    # and the network's own output is converted with eps = a v + b x_t
    cond = _emb(p, "a blue torus")
    with torch.no_grad():
        v = p.unet(x_t, t, encoder_hidden_states=cond.expand(2).emb).sample
        got = p.predict(x_t, t, cond)
    a, b = p.alpha_sigma(t)
    torch.testing.assert_close(got.eps, a * v + b * x_t, atol=1e-5, rtol=1e-4)


def test_if_six_channel_output_keeps_epsilon_half(if_prior):
    p = if_prior
    assert not p.is_latent and p.unet.config.out_channels == 6 and p.latent_channels == 3
    emb = _emb(p, "a green cone")
    assert emb.emb.shape == (1, 77, 32)
    x = p.encode(torch.rand(2, 3, 24, 24))
    assert x.shape == (2, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    t = torch.tensor([10, 900])
    with torch.no_grad():
        full = p.unet(x, t, encoder_hidden_states=emb.expand(2).emb).sample
        pred = p.predict_guided(x, t, emb, _emb(p, ""), 5.0)
    assert full.shape[1] == 6 and pred.eps.shape == x.shape
    torch.testing.assert_close(pred.eps_cond, full[:, :3], atol=1e-5, rtol=1e-4)


def test_latent_encode_decode_shapes_and_gradient(sd_prior):
    rgb = torch.rand(2, 3, 32, 32, requires_grad=True)
    z = sd_prior.encode(rgb, mode="mean")
    assert z.shape == (2, 4, 8, 8)
    z.sum().backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    with torch.no_grad():
        img = sd_prior.decode(z)
    assert img.shape == (2, 3, 16, 16) and img.min() >= 0 and img.max() <= 1
    # "sample" mode draws from the posterior; "mean" is deterministic
    with torch.no_grad():
        torch.testing.assert_close(sd_prior.encode(rgb, mode="mean"), sd_prior.encode(rgb, mode="mean"))


def test_ddim_step_and_inversion(pixel_prior):
    p = pixel_prior
    torch.manual_seed(2)
    z, eps = torch.rand(1, 3, 16, 16) * 2 - 1, torch.randn(1, 3, 16, 16)
    t = torch.tensor([600])
    x_t = p.add_noise(z, eps, t)
    # with the true noise, one DDIM step lands exactly on z (t_prev = -1) or on x at t_prev
    torch.testing.assert_close(p.ddim_step(x_t, t, -1, eps), z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p.ddim_step(x_t, t, 200, eps), p.add_noise(z, eps, 200), atol=1e-5, rtol=1e-5)
    cond = _emb(p, "a red cube")
    walk = lambda n: invert_along(p, z, torch.linspace(0, 400, n + 1).round().long().view(-1, 1), cond).x  # noqa: E731
    x1, x2 = walk(4), walk(4)
    torch.testing.assert_close(x1, x2)  # deterministic
    with torch.no_grad():
        pred = p.predict(z, 0, cond)
    one = walk(1)
    torch.testing.assert_close(one, p.ddim_step(z, 0, 400, pred.eps), atol=1e-5, rtol=1e-5)


def test_get_prior_is_shared(tiny_pixel_path):
    clear_prior_cache()
    cfg = PriorConfig(model=str(tiny_pixel_path), device="cpu")
    a = get_prior(cfg)
    b = get_prior(PriorConfig(model=str(tiny_pixel_path), device="cpu", encode_mode="mean"))
    assert a is b
    assert get_prior(PriorConfig(model=str(tiny_pixel_path), device="cpu", dtype="bf16")) is not a
    clear_prior_cache()


def test_relative_folder_found_from_repo_root(tiny_pixel_path, tmp_path, monkeypatch):
    import threedgen.guidance.model_folder as prior_mod

    root = tmp_path / "repo"
    shutil.copytree(tiny_pixel_path, root / "assets" / "mini-prior")
    monkeypatch.setattr(prior_mod, "REPO_ROOT", root)
    monkeypatch.chdir(tmp_path)  # not the repo root: found through REPO_ROOT
    loc, local = prior_mod.resolve_model("assets/mini-prior")
    assert local and loc == str((root / "assets" / "mini-prior").resolve())


def test_missing_folder_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PriorNotFoundError) as e:
        DDPMPrior(PriorConfig(model="./no/such/prior", device="cpu"))
    msg = str(e.value)
    assert "no/such/prior" in msg and str(tmp_path) in msg

    # owner/name with no folder: also looked up in the HF cache, which offline fetches nothing
    with pytest.raises(PriorNotFoundError) as e:
        DDPMPrior(PriorConfig(model="nobody/not-a-model", device="cpu"))
    msg = str(e.value)
    assert str(tmp_path / "nobody" / "not-a-model") in msg
    assert "HF cache" in msg and "HF_HUB_OFFLINE=1" in msg


def test_folder_without_unet_is_rejected(tmp_path):
    bad = tmp_path / "not-a-prior"
    (bad / "scheduler").mkdir(parents=True)
    (bad / "model_index.json").write_text(json.dumps({"_class_name": "X"}))
    with pytest.raises(PriorNotFoundError) as e:
        DDPMPrior(PriorConfig(model=str(bad), device="cpu"))
    msg = str(e.value)
    assert "no unet/" in msg and str(bad / "unet" / "config.json") in msg


def test_overlong_prompt_is_truncated_with_warning(pixel_prior):
    long_prompt = "a " + "very " * 60 + "red cube"  # byte-level tokenizer: far more than 77 tokens
    with pytest.warns(PromptTruncatedWarning, match="very very") as rec:
        emb = pixel_prior.encode_text([long_prompt, "a red cube"])
    assert emb.emb.shape == (2, 77, 32)
    assert len(rec) == 1 and "truncated to 77" in str(rec[0].message)


def test_perp_neg_algebra():
    torch.manual_seed(3)
    x, y = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    p = perpendicular_component(x, y)
    assert torch.allclose((p * y).sum(dim=(1, 2, 3)), torch.zeros(2), atol=1e-4)
    e_u, e_p, e_n = torch.randn(3, 2, 3, 4, 4)
    zero = perp_neg_combine(e_p, e_u, [e_n], torch.zeros(2, 1), 5.0)
    torch.testing.assert_close(zero, cfg_combine(e_p, e_u, 5.0))


def test_module_imports_stay_light():
    code = (
        "import sys, threedgen.guidance.sds, threedgen.guidance.priors, threedgen.guidance.flow_prior, threedgen.prompts.processor;"
        "bad = [m for m in ('diffusers', 'transformers') if m in sys.modules]; print(bad); assert not bad"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_cpu_offload_path_runs(tiny_pixel_path):
    p = DDPMPrior(PriorConfig(model=str(tiny_pixel_path), device="cpu", cpu_offload=True))
    emb = p.encode_text(["a red cube"])
    x = p.encode(torch.rand(1, 3, 16, 16))
    with torch.no_grad():
        pred = p.predict_guided(x, 300, emb, emb, 3.0)
    assert pred.eps.shape == x.shape and next(p.unet.parameters()).device.type == "cpu"


def test_compiled_denoiser_predicts_as_the_eager_one_and_hooks_stay_outside(tiny_pixel_path):
    clear_prior_cache()
    eager = DDPMPrior(PriorConfig(model=str(tiny_pixel_path), device="cpu"))
    x = torch.randn(2, 3, eager.resolution, eager.resolution)
    t = torch.tensor([100, 700])
    cond, uncond = _emb(eager, "a red cube"), _emb(eager, "")
    with torch.no_grad():
        ref = eager.predict_guided(x, t, cond, uncond, 5.0).eps
    shared = get_prior(PriorConfig(model=str(tiny_pixel_path), device="cpu"))
    assert get_prior(PriorConfig(model=str(tiny_pixel_path), device="cpu", compile=True)) is shared and shared.cfg.compile
    calls = []
    shared.denoiser.register_forward_pre_hook(lambda *_: calls.append(1))  # a timer's hook: runs eagerly, no recompile
    with torch.no_grad():
        for _ in range(2):
            out = shared.predict_guided(x, t, cond, uncond, 5.0).eps
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert len(calls) == 2 and hasattr(shared.denoiser.forward, "_torchdynamo_orig_callable")
    with pytest.raises(ValueError, match="compile and prior.cpu_offload"):
        DDPMPrior(PriorConfig(model=str(tiny_pixel_path), device="cpu", compile=True, cpu_offload=True))
    clear_prior_cache()


def test_fast_dtype_is_bf16_only_where_the_cpu_computes_it(tiny_pixel_path, monkeypatch):
    from threedgen.guidance import model_folder
    from threedgen.guidance.model_folder import resolve_dtype

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("fast", gpu) is torch.float16 and resolve_dtype("auto", cpu) is torch.float32
    monkeypatch.setattr(model_folder, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype("fast", cpu) is torch.float32  # emulated bf16 would be slower than fp32
    monkeypatch.setattr(model_folder, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype("fast", cpu) is torch.bfloat16
    clear_prior_cache()
    prior = get_prior(PriorConfig(model=str(tiny_pixel_path), dtype="fast", device="cpu"))
    assert prior.unet.dtype is torch.bfloat16
    clear_prior_cache()
