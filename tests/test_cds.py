"""CDS (Consistent3D) on the tiny pixel prior: its gradient and sign rebuilt by hand in VE coordinates, the
Gaussian closed form, checkpointed and fresh noise, the time schedule, the reconstruction-std rescale, and
the Consistent3D recipe launched end to end on the tiny SD stand-in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from score_reference import B, _UnetCalls, _ab, _cams, _cfg, _close, _eps, _guidance, _image, _run, pixel_prompts
from threedgen.config import from_dict
from threedgen.guidance.prior_api import Prediction

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prompts(pixel_prior, tmp_path_factory):
    return pixel_prompts(pixel_prior, tmp_path_factory)


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


def test_cds_fresh_noise_ablation_draws_per_step(pixel_prior, prompts):
    """``fixed_noise: false`` (an ablation switch) draws a new noise each step, one for all views."""
    g = _cds(pixel_prior, fixed_noise=False)
    image = _image()
    _, a = _run(g, image, prompts, seed=1)
    _, again = _run(g, image, prompts, seed=1)
    torch.testing.assert_close(a, again)  # the draw follows the run's seed
    _, fixed = _run(_cds(pixel_prior), image, prompts, seed=1)  # same levels, the checkpointed noise instead
    assert not torch.allclose(a, fixed)
