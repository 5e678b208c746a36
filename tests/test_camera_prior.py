"""Camera-conditioned (multi-view) priors: threedgen/guidance/camera_condition.py, the DDPM prior passing
each image's camera, and ``train_prior --camera`` starting as the text-only prior it extends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tiny_models as T
from threedgen.data.cameras import make_cameras
from threedgen.guidance.camera_condition import CAMERA_DIM, camera_vectors, is_camera_conditioned
from threedgen.guidance.model_folder import PriorConfig
from threedgen.guidance.priors import clear_prior_cache, get_prior

REPO = Path(__file__).resolve().parents[1]


def _cams(az):
    return make_cameras(15.0, torch.tensor(az, dtype=torch.float32), 1.8, 50.0, 16, 16)


def test_camera_vectors_are_the_flattened_pose_with_a_unit_translation():
    c = _cams([0.0, 90.0])
    v = camera_vectors(c.c2w, 2)
    assert v.shape == (2, CAMERA_DIM)
    m = v.view(2, 4, 4)
    assert torch.allclose(m[:, :3, :3], c.c2w[:, :3, :3])
    assert torch.allclose(m[:, :3, 3].norm(dim=-1), torch.ones(2))
    assert torch.equal(camera_vectors(None, 3), torch.zeros(3, CAMERA_DIM))
    with pytest.raises(ValueError, match="2 cameras for a batch of 3"):
        camera_vectors(c.c2w, 3)


@pytest.fixture
def camera_prior(tmp_path):
    tok = T.clip_tokenizer()
    unet = T.unet(3, 3, sample_size=16, seed=1, class_embed_type="projection", projection_class_embeddings_input_dim=CAMERA_DIM)
    path = T._save(tmp_path / "mv", "DiffusionPipeline", {"unet": unet, "text_encoder": T.clip_text_encoder(tok),
                                                           "tokenizer": tok, "scheduler": T.sd_scheduler()})
    clear_prior_cache()
    yield get_prior(PriorConfig(model=str(path), device="cpu")), unet
    clear_prior_cache()


def test_the_prior_passes_each_images_camera_to_the_unet(camera_prior):
    prior, unet = camera_prior
    assert is_camera_conditioned(prior.unet)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 16, generator=g)
    emb = torch.randn(2, 8, T.TEXT_DIM, generator=g)
    t = torch.tensor([500, 500])
    a = prior.predict(x, t, emb, cameras=_cams([0.0, 45.0])).eps
    b = prior.predict(x, t, emb, cameras=_cams([90.0, 180.0])).eps
    assert (a - b).abs().max() > 1e-4, "another camera must change the prediction"
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=emb, class_labels=camera_vectors(_cams([0.0, 45.0]).c2w, 2)).sample
        unknown = unet(x, t, encoder_hidden_states=emb, class_labels=torch.zeros(2, CAMERA_DIM)).sample
    assert torch.allclose(a, ref, atol=1e-5)
    assert torch.allclose(prior.predict(x, t, emb).eps, unknown, atol=1e-5)  # no cameras: "camera unknown"
    guided = prior.predict_guided(x, t, emb, torch.zeros_like(emb), 5.0, cameras=_cams([0.0, 45.0]))  # CFG repeats them
    assert guided.eps.shape == x.shape


def test_train_prior_with_cameras_starts_as_the_text_only_prior(tmp_path):
    """The added camera embedding's output layer starts at zero: before any step the camera prior predicts
    exactly what the prior it extends does, for every camera."""
    out = tmp_path / "toy-mv"
    r = subprocess.run([sys.executable, "-m", "threedgen.toy.train_prior", "--out", str(out), "--init-from",
                        str(REPO / "assets" / "toy-prior"), "--camera", "--steps", "0", "--views-per-scene", "1",
                        "--cache-dir", str(tmp_path / "cache"), "--no-interim-export"],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    from diffusers import UNet2DConditionModel

    mv = UNet2DConditionModel.from_pretrained(out / "unet").eval()
    base = UNet2DConditionModel.from_pretrained(REPO / "assets" / "toy-prior" / "unet").eval()
    assert is_camera_conditioned(mv) and not is_camera_conditioned(base)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 32, 32, generator=g), torch.tensor([100, 700])
    emb = torch.randn(2, 8, base.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        want = base(x, t, encoder_hidden_states=emb).sample
        got = mv(x, t, encoder_hidden_states=emb, class_labels=camera_vectors(_cams([30.0, 200.0]).c2w, 2)).sample
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("name", ["ism", "csm", "sdi"])
def test_inverting_objectives_give_the_camera_prior_every_renders_camera(camera_prior, name):
    """ISM, CSM and SDI reach x_t by DDIM inversion; each inversion stride is a network call that must
    see the render's camera (under "camera unknown" the inversion and the guided prediction it is
    paired with would come from two different conditionings)."""
    from threedgen import registry
    from threedgen.config import from_dict
    from threedgen.guidance.base import GuidanceInput
    from threedgen.prompts.processor import PromptProcessor

    prior, _ = camera_prior
    cls = registry.get("guidance", name)
    g = cls(from_dict(cls.Config, {"prior": {"model": prior.model_id, "device": "cpu"}}), prior=prior)
    prompts = PromptProcessor(PromptProcessor.Config(prompt="a red cube")).bundle(prior)
    cams = _cams([0.0, 90.0])
    seen = []
    real = prior._denoise

    def spy(x_t, t, cond, cameras):
        seen.append(cameras)
        return real(x_t, t, cond, cameras)

    prior._denoise = spy
    try:
        rgb = torch.nn.Parameter(torch.rand(2, 3, 16, 16))
        out = g(GuidanceInput(rgb=rgb, cameras=cams), prompts, 0)
    finally:
        del prior._denoise
    assert len(seen) >= 2, "the objective must invert, then predict"
    for c in seen:
        assert c is not None, f"{name}: a network call without the renders' cameras"
        n = c.c2w.shape[0]
        assert torch.allclose(c.c2w, cams.c2w.repeat(n // 2, 1, 1))
    assert torch.isfinite(next(v for k, v in out.items() if k.startswith("loss_")))


@pytest.mark.parametrize("name", ["vsd", "esd"])
def test_the_vsd_lora_on_a_camera_prior_reads_the_renders_camera(camera_prior, name, monkeypatch):
    """The LoRA model ε_φ is a copy of the prior's denoiser: on a camera-conditioned prior its base must
    read the render's camera too (else ε_φ starts as the prior under "camera unknown" and VSD's update
    starts as a camera-classifier term); ESD's dropped cameras stay unknown (zero rows)."""
    from threedgen import registry
    from threedgen.config import from_dict
    from threedgen.guidance.base import GuidanceInput
    from threedgen.guidance.ddpm_prior import DDPMPrior
    from threedgen.prompts.processor import PromptProcessor

    prior, _ = camera_prior
    cls = registry.get("guidance", name)
    g = cls(from_dict(cls.Config, {"prior": {"model": prior.model_id, "device": "cpu"}, "lora_camera_dropout": 0.5}), prior=prior)
    prompts = PromptProcessor(PromptProcessor.Config(prompt="a red cube")).bundle(prior)
    cams = _cams([0.0, 90.0])
    seen = []
    real = DDPMPrior._denoise

    def spy(self, x_t, t, cond, cameras):
        seen.append(None if cameras is None else cameras.c2w.detach().clone())
        return real(self, x_t, t, cond, cameras)

    monkeypatch.setattr(DDPMPrior, "_denoise", spy)
    torch.manual_seed(0)
    out = g(GuidanceInput(rgb=torch.nn.Parameter(torch.rand(2, 3, 16, 16)), cameras=cams), prompts, 0)
    assert torch.isfinite(out["loss_lora"]) and len(seen) >= 3
    assert all(c is not None for c in seen), "every network call, the LoRA model's included, gets cameras"
    rows = torch.cat(seen).flatten(1)
    known = rows.abs().sum(-1) > 0
    ref = cams.c2w.flatten(1)
    assert all(any(torch.allclose(r, q, atol=1e-6) for q in ref) for r in rows[known]), "a camera that is not a render's"
