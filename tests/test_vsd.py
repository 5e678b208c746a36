"""VSD / ESD on tiny random priors: the frozen pass is the untouched UNet, gradients stay separated,
the maths matches hand computations, the LoRA lives in checkpoints, particles share one LoRA."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from threedgen import registry
from threedgen.config import load_config, from_dict, validate
from threedgen.data.cameras import make_cameras
from threedgen.guidance.base import GuidanceInput
from threedgen.guidance.esd import ESDGuidance
from threedgen.guidance.lora import camera_condition
from threedgen.guidance.ddpm_prior import DDPMPrior
from threedgen.guidance.model_folder import PriorConfig
from threedgen.guidance.sds import SDSGuidance
from threedgen.guidance.vsd import VSDGuidance
from threedgen.prompts.processor import PromptProcessor

ROOT = Path(__file__).resolve().parents[1]


def _cfg(cls, prior, **kw):
    return from_dict(cls.Config, {"prior": {"model": prior.model_id, "device": "cpu"}, **kw})


def _vsd(prior, cls=VSDGuidance, lora_prior=None, **kw):
    return cls(_cfg(cls, prior, **kw), prior=prior, lora_prior=lora_prior)


def _prompts(prior):
    return PromptProcessor(PromptProcessor.Config(prompt="a red cube")).bundle(prior)


def _cams(B, res=16):
    return make_cameras(15.0, torch.linspace(-150, 150, B), 2.0, 50.0, res, res)


def _perturb(g, seed=0, scale=0.3):
    """Non-trivial LoRA weights (PEFT initialises lora_B to zero, i.e. the LoRA starts as the base)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in g.lora.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen).to(p))


class _Calls:
    """Batch sizes of every forward call of each module."""

    def __init__(self, **modules):
        self.batches = {k: [] for k in modules}
        self._hooks = [m.register_forward_hook(lambda m, i, o, k=k: self.batches[k].append(i[0].shape[0])) for k, m in modules.items()]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()


def test_frozen_pass_is_the_untouched_unet_and_the_shared_prior_is_unchanged(sd_prior, tiny_sd_path):
    reference = DDPMPrior(PriorConfig(model=str(tiny_sd_path), device="cpu"))  # never adapted
    g = _vsd(sd_prior)
    _perturb(g)
    sds = SDSGuidance(_cfg(SDSGuidance, sd_prior), prior=sd_prior)  # another guidance on the same cached prior
    prompts = _prompts(sd_prior)
    torch.manual_seed(0)
    x_t, t, cams = torch.randn(2, 4, 8, 8), torch.tensor([100, 700]), _cams(2)
    cond, uncond = prompts.select(cams)
    want = reference.predict_guided(x_t, t, cond, uncond, 7.5).eps
    assert torch.equal(g._predict(x_t, t, prompts, cams).eps, want)
    assert torch.equal(sds._predict(x_t, t, prompts, cams).eps, want)
    # the shared UNet carries no adapter and no class embedding; the LoRA copy does, on the same weights
    assert sd_prior.unet.class_embedding is None
    assert not any("lora" in n for n, _ in sd_prior.unet.named_modules())
    assert g.lora.unet.conv_in.weight is sd_prior.unet.conv_in.weight
    lora_eps = g.lora_eps(x_t, t, prompts.cond, camera_condition(cams.c2w))
    assert (lora_eps - reference.predict(x_t, t, prompts.cond.expand(2)).eps).abs().max() > 1e-3
    # only the LoRA and the camera MLP are module state: the frozen UNet is in no state_dict
    keys = list(g.state_dict())
    assert keys and all(k.startswith(("lora.adapters.", "lora.camera_embedding.")) for k in keys)
    assert all("lora_A" in k or "lora_B" in k for k in keys if k.startswith("lora.adapters."))
    n_frozen = sum(p.numel() for p in sd_prior.unet.parameters())
    assert sum(p.numel() for p in g.parameters()) < n_frozen / 10


def test_zero_lora_and_zero_camera_embedding_give_the_base_unet(sd_prior, tiny_sd_path):
    """With lora_B = 0 (PEFT's init) and a camera MLP whose output is zero, eps_phi is the base UNet's
    own prediction: the LoRA model is the prior plus adapters plus the camera term, nothing else."""
    g = _vsd(sd_prior)
    with torch.no_grad():
        g.lora.camera_embedding.linear_2.weight.zero_()
        g.lora.camera_embedding.linear_2.bias.zero_()
    torch.manual_seed(1)
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([5, 900])
    emb = _prompts(sd_prior).cond.expand(2)
    want = sd_prior.predict(x_t, t, emb).eps
    got = g.lora.predict(x_t, t, emb, torch.randn(2, 16)).eps
    assert torch.allclose(got, want, atol=1e-6)


def test_camera_embedding_is_added_to_the_timestep_embedding(sd_prior):
    g = _vsd(sd_prior)
    unet = g.lora.unet
    seen = {}
    h = unet.down_blocks[0].resnets[0].register_forward_pre_hook(lambda m, args: seen.update(temb=args[1].clone()))
    t = torch.tensor([10, 600])
    cam = camera_condition(_cams(2).c2w)
    with torch.no_grad():
        for c in (cam, torch.zeros_like(cam)):
            g.lora.predict(torch.randn(2, 4, 8, 8), t, _prompts(sd_prior).cond.expand(2), c)
            base = sd_prior.unet  # the same weights, without the camera hook
            want = base.time_embedding(base.time_proj(t)) + g.lora.camera_embedding(c)
            assert torch.allclose(seen["temb"], want, atol=1e-6)
    h.remove()
    assert cam.shape == (2, 16) and torch.equal(cam[0], _cams(2).c2w[0].flatten())


def test_vsd_gradient_is_w_times_pretrained_minus_lora_eps(pixel_prior):
    """d loss_vsd / d rgb = 2 w(t) (eps_pre - eps_phi) / B for a pixel prior at its native size,
    with eps_pre the view-dependent CFG prediction and eps_phi the LoRA's, both recomputed here
    from the same (t, eps) draws."""
    g = _vsd(pixel_prior, guidance_scale=5.0)
    _perturb(g)
    prompts = _prompts(pixel_prior)
    cams = _cams(2)
    rgb = torch.rand(2, 3, 16, 16, requires_grad=True)
    torch.manual_seed(3)
    out = g(GuidanceInput(rgb=rgb, cameras=cams), prompts, step=0)
    (grad,) = torch.autograd.grad(out["loss_vsd"], rgb)
    torch.manual_seed(3)
    z = rgb.detach() * 2 - 1
    t = g.sampler.sample(2)
    eps = torch.randn_like(z)
    x_t = pixel_prior.add_noise(z, eps, t)
    cond, uncond = prompts.select(cams)
    eps_pre = pixel_prior.predict_guided(x_t, t, cond, uncond, 5.0).eps
    with torch.no_grad():
        eps_phi = g.lora.predict(x_t, t, prompts.cond.expand(2), camera_condition(cams.c2w)).eps
    a, b = pixel_prior.alpha_sigma(t)
    want = 2 * b**2 * (eps_pre - eps_phi) / 2
    assert torch.allclose(grad, want, atol=1e-5), (grad - want).abs().max()
    assert (eps_phi - eps).abs().mean() > 0.01  # eps_phi is a prediction, not SDS's sampled noise


def test_losses_train_disjoint_parameters(sd_prior):
    g = _vsd(sd_prior)
    _perturb(g)
    rgb = torch.rand(2, 3, 16, 16, requires_grad=True)
    out = g(GuidanceInput(rgb=rgb, cameras=_cams(2)), _prompts(sd_prior), step=0)
    lora = list(g.lora.parameters())
    grads = torch.autograd.grad(out["loss_lora"], [rgb, *lora], allow_unused=True, retain_graph=True)
    assert grads[0] is None  # loss_lora never reaches the scene
    assert all(gr is not None for gr in grads[1:]) and sum(gr.abs().sum() for gr in grads[1:]) > 0
    assert any(gr.abs().sum() > 0 for gr in grads[1:] if gr.shape[-1] == 16)  # the camera MLP learns too
    grads = torch.autograd.grad(out["loss_vsd"], [rgb, *lora], allow_unused=True)
    assert grads[0].abs().sum() > 0
    assert all(gr is None for gr in grads[1:])  # loss_vsd never reaches the LoRA
    assert not any(p.grad is not None for p in sd_prior.unet.parameters())


@pytest.mark.parametrize("dropout", [0.0, 1.0])
def test_lora_loss_v_target_and_camera_dropout(sd_v_prior, dropout):
    """v-prediction base: loss_lora = mean (v_hat - (a eps' - b z))^2 on the raw network output,
    recomputed here from the same draws; camera dropout 1 feeds the zero condition."""
    g = _vsd(sd_v_prior, lora_camera_dropout=dropout, lora_samples=2)
    _perturb(g)
    assert g.lora_target == "v_prediction"
    z = torch.randn(2, 4, 8, 8)
    cam = camera_condition(_cams(2).c2w)
    cond = _prompts(sd_v_prior).cond
    seen = {}
    h = g.lora.camera_embedding.register_forward_pre_hook(lambda m, args: seen.update(cam=args[0].clone()))
    torch.manual_seed(5)
    loss = g.lora_loss(z, cond, cam)
    h.remove()
    torch.manual_seed(5)
    z0, c = z.repeat(2, 1, 1, 1), cam.repeat(2, 1)
    t = g.lora_sampler.sample(4)
    eps = torch.randn_like(z0)
    torch.rand(4)  # the dropout draw
    a, b = sd_v_prior.alpha_sigma(t)
    x = a * z0 + b * eps
    c = c * (1 - dropout)
    assert torch.equal(seen["cam"], c)
    with torch.no_grad():
        g.lora._camera = c  # what CameraLoRA.predict sets around its call
        v_hat = g.lora.unet(x, t, encoder_hidden_states=cond.expand(4).emb).sample
    assert torch.allclose(loss, F.mse_loss(v_hat, a * eps - b * z0), rtol=1e-4)
    assert (g.lora_sampler.min_step, g.lora_sampler.max_step) == (0, 999)


def test_esd_lambda_zero_is_vsd_exactly_and_lambda_is_camera_cfg(sd_prior):
    vsd, esd0, esd = _vsd(sd_prior), _vsd(sd_prior, ESDGuidance, camera_lambda=0.0), _vsd(sd_prior, ESDGuidance)
    assert esd.camera_lambda == 0.5 and registry.get("guidance", "esd") is ESDGuidance
    _perturb(vsd)
    esd0.load_state_dict(vsd.state_dict())
    esd.load_state_dict(vsd.state_dict())
    prompts, cams = _prompts(sd_prior), _cams(3)
    results = []
    for g in (vsd, esd0):
        rgb = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        torch.manual_seed(7)
        out = g(GuidanceInput(rgb=rgb, cameras=cams), prompts, step=0)
        (out[f"loss_{g.loss_name}"] + out["loss_lora"]).backward()
        results.append((out[f"loss_{g.loss_name}"].detach(), out["loss_lora"].detach(), rgb.grad, [p.grad for p in g.lora.parameters()]))
    (lv, llv, gv, pv), (le, lle, ge, pe) = results
    assert torch.equal(lv, le) and torch.equal(llv, lle) and torch.equal(gv, ge)
    assert all(torch.equal(a, b) for a, b in zip(pv, pe))
    # lambda = 0.5: phi(0) + 0.5 (phi(c) - phi(0)), in one 2B call
    x_t, t = torch.randn(3, 4, 8, 8), torch.tensor([50, 400, 800])
    cam = camera_condition(cams.c2w)
    with torch.no_grad():
        phi_c = esd.lora.predict(x_t, t, prompts.cond.expand(3), cam).eps
        phi_0 = esd.lora.predict(x_t, t, prompts.cond.expand(3), torch.zeros_like(cam)).eps
        with _Calls(lora=esd.lora.unet) as calls:
            got = esd.lora_eps(x_t, t, prompts.cond, cam)
    assert calls.batches["lora"] == [6]
    assert torch.allclose(got, phi_0 + 0.5 * (phi_c - phi_0), atol=1e-5)
    assert (phi_c - phi_0).abs().max() > 1e-3


def test_unet_evaluations_per_step(sd_prior):
    prompts, B = _prompts(sd_prior), 2
    for cls, lora_batches in ((VSDGuidance, [B, B]), (ESDGuidance, [2 * B, B])):
        g = _vsd(sd_prior, cls)
        rgb = torch.rand(B, 3, 16, 16, requires_grad=True)
        with _Calls(frozen=sd_prior.unet, lora=g.lora.unet) as calls:
            g(GuidanceInput(rgb=rgb, cameras=_cams(B)), prompts, step=0)
        assert calls.batches == {"frozen": [2 * B], "lora": lora_batches}, cls
    g = _vsd(sd_prior, lora_every=2)
    out = g(GuidanceInput(rgb=torch.rand(B, 3, 16, 16), cameras=_cams(B)), prompts, step=1)
    assert out["loss_lora"].item() == 0.0 and not out["loss_lora"].requires_grad


def test_separate_lora_base_v_prediction(sd_prior, sd_v_prior):
    g = _vsd(sd_prior, lora_prior=sd_v_prior)
    _perturb(g)
    assert g.lora_prior is sd_v_prior and g.lora_target == "v_prediction"
    assert g.lora.unet.conv_in.weight is sd_v_prior.unet.conv_in.weight
    x_t, t, cam = torch.randn(2, 4, 8, 8), torch.tensor([30, 970]), camera_condition(_cams(2).c2w)
    emb = _prompts(sd_prior).cond.expand(2)
    with torch.no_grad():
        g.lora._camera = cam
        v = g.lora.unet(x_t, t, encoder_hidden_states=emb.emb).sample
        g.lora._camera = None
        eps = g.lora_eps(x_t, t, emb[:1], cam)
    a, b = sd_prior.alpha_sigma(t)
    assert torch.allclose(eps, a * v + b * x_t, atol=1e-5)  # v -> eps with the shared schedule


def test_fp16_prior_trains_an_fp32_lora(tiny_sd_path):
    """The GPU default (fp16 weights) on a CPU: the shared UNet stays fp16, the LoRA and camera MLP
    are fp32 parameters and receive gradients through the fp16 network."""
    prior = DDPMPrior(PriorConfig(model=str(tiny_sd_path), device="cpu", dtype="fp16"))
    g = _vsd(prior)
    assert prior.unet.dtype == torch.float16 and {p.dtype for p in g.parameters()} == {torch.float32}
    rgb = torch.rand(2, 3, 16, 16, requires_grad=True)
    out = g(GuidanceInput(rgb=rgb, cameras=_cams(2)), _prompts(prior), step=0)
    (out["loss_vsd"] + out["loss_lora"]).backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in g.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_vsd_step_matches_the_untouched_unet(tiny_sd_path):
    prior = DDPMPrior(PriorConfig(model=str(tiny_sd_path), device="cuda"))  # auto dtype: fp16
    reference = DDPMPrior(PriorConfig(model=str(tiny_sd_path), device="cuda"))
    g = _vsd(prior).cuda()
    _perturb(g)
    prompts = _prompts(prior)
    cams = _cams(2).to("cuda")
    x_t, t = torch.randn(2, 4, 8, 8, device="cuda"), torch.tensor([100, 700], device="cuda")
    cond, uncond = prompts.select(cams)
    assert torch.equal(g._predict(x_t, t, prompts, cams).eps, reference.predict_guided(x_t, t, cond, uncond, 7.5).eps)
    rgb = torch.rand(2, 3, 16, 16, device="cuda", requires_grad=True)
    out = g(GuidanceInput(rgb=rgb, cameras=cams), prompts, step=0)
    (out["loss_vsd"] + out["loss_lora"]).backward()
    assert torch.isfinite(rgb.grad).all() and all(p.grad is not None and p.is_cuda for p in g.parameters())


def test_bad_lora_setups_fail_at_start_up(tmp_path, sd_prior, pixel_prior):
    import tiny_models
    from diffusers import UNet2DConditionModel

    with pytest.raises(ValueError, match="different model space"):
        _vsd(sd_prior, lora_prior=pixel_prior)
    torch.manual_seed(0)
    plain = UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        mid_block_type=None, cross_attention_dim=tiny_models.TEXT_DIM, norm_num_groups=32,
    )
    tok = tiny_models.clip_tokenizer()
    path = tiny_models._save(tmp_path / "no-attn", "DiffusionPipeline", {
        "unet": plain, "text_encoder": tiny_models.clip_text_encoder(tok), "tokenizer": tok, "scheduler": tiny_models.sd_scheduler(),
    })
    no_attn = DDPMPrior(PriorConfig(model=str(path), device="cpu"))
    with pytest.raises(ValueError, match="needs attention layers"):
        _vsd(no_attn)
    with pytest.raises(ValueError, match="lora_samples"):
        _vsd(sd_prior, lora_samples=0)


def test_prolificdreamer_timestep_drop_and_lora_optimizer_group(sd_prior):
    cfg, _ = load_config(ROOT / "configs" / "prolificdreamer.yaml")
    gcfg = cfg.system.cfg.guidance[0].cfg
    g = VSDGuidance(gcfg, prior=sd_prior, lora_prior=sd_prior)  # the recipe's schedules on a tiny model
    for step, t_max in ((0, 980), (5000, 980), (5001, 500), (20000, 500)):
        g.update_step(0, step)
        assert (g.sampler.min_step, g.sampler.max_step) == (20, t_max), step
    (pg,) = g.param_groups()
    assert pg["lr"](0) == pytest.approx(1e-4) and pg["betas"] == (0.9, 0.99)
    assert {id(p) for p in pg["params"]} == {id(p) for p in g.parameters()}


# ---- the system: optimizer groups, checkpoint keys, particles ------------------------------------

TINY_SYSTEM = {
    "trainer": {"max_steps": 2},
    "data": {"batch_size": 1, "width": 16, "height": 16},
    "system": {
        "prompt": "a red cube",
        "representation": {"name": "nerf", "grid": {"n_levels": 2, "log2_hashmap_size": 8, "max_resolution": 16}, "mlp_width": 16},
        "renderer": {"name": "volume", "num_samples_per_ray": 8, "occupancy_grid": False},
        "optimizer": {"betas": [0.8, 0.9]},
    },
}


def _system(model: str, guidance: str = "vsd", **system):
    from threedgen.systems.runner import build_system

    raw = {**TINY_SYSTEM, "system": {**TINY_SYSTEM["system"], **system, "guidance": [{"name": guidance, "prior": {"model": model, "device": "cpu", "resolution": None}}]}}
    return build_system(validate(raw))


def test_system_optimizer_has_the_lora_group_and_checkpoint_has_only_lora(tiny_sd_path):
    s = _system(str(tiny_sd_path))
    opt = s.configure_optimizers()
    groups = {pg["name"]: pg for pg in opt.param_groups}
    assert groups["guidance0"]["lr"] == pytest.approx(1e-4) and groups["guidance0"]["betas"] == (0.9, 0.99)
    assert groups["grid"]["betas"] == (0.8, 0.9)  # the system's own setting for the other groups
    lora_ids = {id(p) for p in s.guidances[0].lora.parameters()}
    assert {id(p) for p in groups["guidance0"]["params"]} == lora_ids
    keys = [k for k in s.state_dict() if k.startswith("guidances.")]
    assert keys and all(k.startswith(("guidances.0.lora.adapters.", "guidances.0.lora.camera_embedding.")) for k in keys)


def test_particles_share_one_lora_and_keep_particle_zero_keys(tiny_sd_path):
    single = set(_system(str(tiny_sd_path)).state_dict())
    s = _system(str(tiny_sd_path), particles=2)
    keys = set(s.state_dict())
    assert single <= keys and all(k.startswith("extra_particles.0.") for k in keys - single)
    rep0, rep1 = s.particle(0)[0], s.particle(1)[0]
    assert not torch.equal(rep0.grid.params, rep1.grid.params)  # independently initialised
    names = [pg["name"] for pg in s.configure_optimizers().param_groups]
    assert names == ["grid", "mlp", "grid.p1", "mlp.p1", "guidance0"]
    s.prepare_prompts()
    with _Calls(frozen=s.guidances[0].prior.unet, lora=s.guidances[0].lora.unet) as calls:
        s.training_step(None, 0).backward()
    assert calls.batches == {"frozen": [4], "lora": [2, 2]}  # both particles in one guidance batch of 2
    assert rep0.grid.params.grad.abs().sum() > 0 and rep1.grid.params.grad.abs().sum() > 0
    assert all(p.grad is not None for p in s.guidances[0].lora.parameters())
    rr = _system(str(tiny_sd_path), particles=2, particle_mode="round_robin")
    rr.prepare_prompts()
    rr.training_step(None, 0).backward()  # global_step is 0 without a trainer: particle 0 only
    assert rr.particle(0)[0].grid.params.grad is not None and rr.particle(1)[0].grid.params.grad is None
    with pytest.raises(ValueError, match="particles: expected an int in \\[1, 64\\]"):
        _system(str(tiny_sd_path), particles=0)


@pytest.mark.slow
def test_vsd_recipe_launch_checkpoints_the_lora_and_resume_restores_it(tiny_sd_path, tiny_sd_v_path, tmp_path, monkeypatch):
    """configs/prolificdreamer.yaml's VSD stage (``stages=[]`` drops the DMTet stages) on tiny stand-ins (v-prediction LoRA base), 2 steps through
    launch.py, then resumed to 3: the checkpoint holds the LoRA and camera MLP (and their Adam
    state) but no frozen UNet weight; the resumed run continues the LoRA's optimizer state."""
    from threedgen.systems.runner import load_system

    small = ["trainer.max_steps=2", "stages=[]", "trainer.val_every=0", "trainer.export_at_end=false", "trainer.test_views=2",
             "trainer.test_resolution=8", "data.width=16", "data.height=16", "system.representation.grid.n_levels=2",
             "system.representation.grid.log2_hashmap_size=8", "system.representation.grid.max_resolution=16",
             "system.renderer.num_samples_per_ray=8", "system.background.hidden=8",
             f"system.guidance.0.prior.model={tiny_sd_path}", "system.guidance.0.prior.resolution=null",
             f"system.guidance.0.lora_prior.model={tiny_sd_v_path}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    launch = [sys.executable, str(ROOT / "launch.py"), "--config", str(ROOT / "configs" / "prolificdreamer.yaml"), "--train", "-q"]
    r = subprocess.run([*launch, *small], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "prolificdreamer").iterdir()
    ckpt_path = run / "ckpts" / "last.ckpt"
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    lora = {k: v for k, v in ck["state_dict"].items() if k.startswith("guidances.")}
    assert any("lora_B" in k for k in lora) and any("camera_embedding" in k for k in lora)
    assert all(k.startswith(("guidances.0.lora.adapters.", "guidances.0.lora.camera_embedding.")) for k in lora)
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)  # trained away from PEFT's zero init
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss_vsd" in header and "train/loss_lora" in header
    (opt_state,) = ck["optimizer_states"]
    lora_group = next(g for g in opt_state["param_groups"] if g["name"] == "guidance0")
    assert lora_group["betas"] == (0.9, 0.99) and lora_group["lr"] == pytest.approx(1e-4)
    assert all(int(opt_state["state"][i]["step"]) == 2 for i in lora_group["params"])

    cfg, _ = load_config(ROOT / "configs" / "prolificdreamer.yaml", small)
    restored = load_system(cfg, ckpt_path).guidances[0].state_dict()
    assert all(torch.equal(restored[k[len("guidances.0."):]], v) for k, v in lora.items())

    from threedgen.cli import main

    monkeypatch.chdir(tmp_path)  # the resume runs in-process (one interpreter start is enough)
    assert main([*launch[2:], "--resume", str(ckpt_path), *small[1:], "trainer.max_steps=3"]) == 0
    ck3 = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    assert ck3["global_step"] == 3
    (opt3,) = ck3["optimizer_states"]
    lora_group = next(g for g in opt3["param_groups"] if g["name"] == "guidance0")
    assert all(int(opt3["state"][i]["step"]) == 3 for i in lora_group["params"])  # Adam state carried over


def test_lora_on_a_compiled_prior_runs_its_own_adapted_network(tiny_sd_path, monkeypatch):
    """prior.compile replaces the prior network's ``forward`` on the instance; the LoRA's copy must not
    inherit it (it would run the frozen network without adapters or camera: eps_phi = the prior's eps)."""
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo.config, "disable", True)  # the compiled wrappers run eagerly: no compile time
    prior = DDPMPrior(PriorConfig(model=str(tiny_sd_path), device="cpu", compile=True))
    g = _vsd(prior)
    _perturb(g)
    copy_fwd = getattr(g.lora.unet.forward, "_torchdynamo_orig_callable", g.lora.unet.forward)
    assert copy_fwd.__self__ is g.lora.unet  # compiled, and bound to the copy
    torch.manual_seed(2)
    x_t, t, cams = torch.randn(2, 4, 8, 8), torch.tensor([100, 700]), _cams(2)
    emb = _prompts(prior).cond.expand(2)
    with _Calls(conv_in=g.lora.unet.conv_in) as calls:
        lora_eps = g.lora.predict(x_t, t, emb, camera_condition(cams.c2w)).eps
    assert calls.batches["conv_in"] == [2]
    assert (lora_eps - prior.predict(x_t, t, emb).eps).abs().max() > 1e-3
