"""DI-SDS (issue 19): inpainting UNets and ControlNets behind the prior interface, checked against the
diffusers calls they stand for, and the objective's gradient confined to the edit mask."""

import pytest
import torch

import tiny_models
from threedgen import registry
from threedgen.config import from_dict
from threedgen.data.cameras import make_cameras
from threedgen.guidance.base import GuidanceInput
from threedgen.guidance.ddpm_prior import DDPMPrior
from threedgen.guidance.model_folder import PriorConfig
from threedgen.guidance.prior_api import Conditioning
from threedgen.prompts.processor import PromptProcessor


@pytest.fixture(scope="module")
def sd_inpaint(tmp_path_factory):
    return DDPMPrior(PriorConfig(model=str(tiny_models.build_sd_inpaint(tmp_path_factory.mktemp("sd-inpaint"))), device="cpu"))


@pytest.fixture(scope="module")
def pixel_inpaint_path(tmp_path_factory):
    return tiny_models.build_pixel_inpaint(tmp_path_factory.mktemp("pixel-inpaint"))


def _emb(prior, n):
    return prior.encode_text(["a vase"] * n).emb


def test_inpainting_unet_and_controlnet_match_the_diffusers_wiring(sd_inpaint):
    p = sd_inpaint
    assert p.inpainting and p.latent_channels == 4 and p.controlnet is not None and p.resolution == 16
    g = torch.Generator().manual_seed(0)
    x_t, masked = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    mask = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    control = torch.rand(2, 3, 16, 16, generator=g)
    t = torch.tensor([100, 700])
    emb = _emb(p, 2)
    got = p.predict(x_t, t, Conditioning(emb=emb, mask=mask, masked=masked, control=control)).eps
    with torch.no_grad():
        down, mid = p.controlnet(x_t, t, encoder_hidden_states=emb, controlnet_cond=control, conditioning_scale=1.0, return_dict=False)
        want = p.unet(torch.cat([x_t, mask, masked], 1), t, encoder_hidden_states=emb,
                      down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    torch.testing.assert_close(got, want)
    other = p.predict(x_t, t, Conditioning(emb=emb, mask=mask, masked=masked, control=1 - control)).eps
    assert (other - got).abs().max() > 1e-4  # the depth image reaches the prediction
    with pytest.raises(ValueError, match="inpainting UNet: its objective must pass a mask"):
        p.predict(x_t, t, Conditioning(emb=emb, control=control))
    with pytest.raises(ValueError, match="has a ControlNet"):
        p.predict(x_t, t, Conditioning(emb=emb, mask=mask, masked=masked))


def test_separate_controlnet_folder_and_its_scale(tmp_path):
    base = tiny_models.build_sd_inpaint(tmp_path / "base", with_controlnet=False)
    tiny_models.controlnet(4, (8, 16), seed=3).save_pretrained(tmp_path / "cn")
    plain = DDPMPrior(PriorConfig(model=str(base), device="cpu"))
    off = DDPMPrior(PriorConfig(model=str(base), controlnet=str(tmp_path / "cn"), controlnet_scale=0.0, device="cpu"))
    on = DDPMPrior(PriorConfig(model=str(base), controlnet=str(tmp_path / "cn"), device="cpu"))
    assert plain.controlnet is None and on.controlnet is not None
    g = torch.Generator().manual_seed(1)
    x_t, masked = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    c = Conditioning(emb=_emb(plain, 1), mask=torch.ones(1, 1, 8, 8), masked=masked, control=torch.rand(1, 3, 16, 16, generator=g))
    t = torch.tensor([500])
    torch.testing.assert_close(off.predict(x_t, t, c).eps, plain.predict(x_t, t, c).eps)  # scale 0: no residual
    assert (on.predict(x_t, t, c).eps - plain.predict(x_t, t, c).eps).abs().max() > 1e-4


def test_a_unet_of_unexpected_width_is_refused(tmp_path):
    tok = tiny_models.clip_tokenizer()
    path = tiny_models._save(tmp_path / "odd", "DiffusionPipeline", {
        "unet": tiny_models.unet(5, 4), "vae": tiny_models.vae(), "text_encoder": tiny_models.clip_text_encoder(tok),
        "tokenizer": tok, "scheduler": tiny_models.sd_scheduler()})
    with pytest.raises(ValueError, match="takes 5 input channels; a prior's UNet takes 4 .* or 9"):
        DDPMPrior(PriorConfig(model=str(path), device="cpu"))


def _disds(path, **kw):
    cfg = from_dict(registry.get("guidance", "disds").Config, {"prior": {"model": str(path), "device": "cpu"}, **kw})
    return registry.get("guidance", "disds")(cfg)


def _edit_input(requires_grad=True):
    g = torch.Generator().manual_seed(2)
    rgb = torch.rand(2, 3, 16, 16, generator=g).requires_grad_(requires_grad)
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 6:14] = 1.0
    depth = 1.5 + torch.rand(2, 1, 16, 16, generator=g)
    return GuidanceInput(rgb=rgb, cameras=make_cameras([10, 20], [0, 90], 1.8, 50, 16, 16), alpha=torch.ones(2, 1, 16, 16),
                         depth=depth, mask=mask)


def test_disds_gradient_stays_inside_the_edit_mask(pixel_inpaint_path):
    g = _disds(pixel_inpaint_path)
    bundle = PromptProcessor(PromptProcessor.Config(prompt="a vase")).bundle(g.prior)
    inp = _edit_input()
    torch.manual_seed(0)
    out = g(inp, bundle, step=0)
    out["loss_disds"].backward()
    grad = inp.rgb.grad.abs().sum(1, keepdim=True)
    assert grad[inp.mask > 0].sum() > 0 and grad[inp.mask == 0].sum() == 0
    assert abs(float(out["mask_fraction"]) - 64 / 256) < 1e-6
    free = _disds(pixel_inpaint_path, mask_gradient=False)
    inp2 = _edit_input()
    torch.manual_seed(0)
    free(inp2, bundle, step=0)["loss_disds"].backward()
    assert inp2.rgb.grad.abs().sum(1, keepdim=True)[inp2.mask == 0].sum() > 0  # the ablation really unmasks


def test_disds_feeds_the_masked_image_and_the_depth_to_both_cfg_branches(pixel_inpaint_path, monkeypatch):
    g = _disds(pixel_inpaint_path)
    bundle = PromptProcessor(PromptProcessor.Config(prompt="a vase")).bundle(g.prior)
    seen = []
    real = g.prior._denoise
    monkeypatch.setattr(g.prior, "_denoise", lambda x, t, c, cams: seen.append(c) or real(x, t, c, cams))
    inp = _edit_input(requires_grad=False)
    g(inp, bundle, step=0)
    (c,) = seen
    assert c.mask.shape == (4, 1, 16, 16) and torch.equal(c.mask[:2], c.mask[2:])
    hole = c.masked[:, :, 4:12, 6:14]
    assert torch.equal(hole, torch.zeros_like(hole))  # the masked region is blank (0 in [-1, 1])
    torch.testing.assert_close(c.masked[:2, :, 0], inp.rgb[:, :, 0] * 2 - 1)
    assert c.control.shape == (4, 3, 16, 16) and c.control.max() <= 1 and c.control.min() >= 0


def test_disds_refuses_text_to_image_priors_and_missing_masks(tiny_pixel_path, pixel_inpaint_path):
    with pytest.raises(ValueError, match="disds needs an inpainting prior"):
        _disds(tiny_pixel_path)
    g = _disds(pixel_inpaint_path)
    bundle = PromptProcessor(PromptProcessor.Config(prompt="a vase")).bundle(g.prior)
    inp = _edit_input(requires_grad=False)
    inp.mask = None
    with pytest.raises(ValueError, match="needs an edit mask per view"):
        g(inp, bundle, step=0)
