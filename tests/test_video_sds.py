"""Video SDS (issue 21) on a tiny zeroscope-layout model (UNet3DConditionModel + VAE + CLIP) loaded with
``from_pretrained``: clips of consecutive views, one level per clip, gradients through the chosen frames,
motion amplification, and the start-up errors."""

import pytest
import torch

import tiny_models
from threedgen.config import build_module
from threedgen.data.cameras import make_cameras
from threedgen.guidance.base import GuidanceInput
from threedgen.prompts.processor import PromptProcessor


@pytest.fixture(scope="module")
def video_path(tmp_path_factory):
    return tiny_models.build_video(tmp_path_factory.mktemp("tiny-video"))


def _guidance(path, **cfg):
    return build_module("guidance", {"name": "video_sds", "prior": {"model": str(path), "device": "cpu"}, "frames": 4, **cfg})


def _batch(clips=2, frames=4, res=16):
    n = clips * frames
    cams = make_cameras(torch.full((n,), 10.0), torch.linspace(-20, 20, n), 2.0, 50.0, res, res,
                        time=torch.linspace(0, 1, frames).repeat(clips))
    return torch.rand(n, 3, res, res, requires_grad=True), cams


def test_video_prior_is_recognised_and_gradients_reach_every_frame(video_path):
    g = _guidance(video_path)
    assert g.prior.video and type(g.prior.denoiser).__name__ == "UNet3DConditionModel"
    bundle = PromptProcessor(PromptProcessor.Config(prompt="a red cube moving left")).bundle(g.prior)
    rgb, cams = _batch()
    z = g.clips(rgb)
    assert z.shape == (2, 4, 4, 8, 8)  # [clips, C, F, h, w]
    out = g(GuidanceInput(rgb=rgb, cameras=cams), bundle, 0)
    out["loss_video_sds"].backward()
    per_frame = rgb.grad.flatten(1).abs().sum(1)
    assert (per_frame > 0).all() and torch.isfinite(rgb.grad).all()


def test_only_grad_frames_get_gradient(video_path):
    g = build_module("guidance", {"name": "video_sds", "frames": 4, "grad_frames": 1,
                                  "prior": {"model": str(video_path), "device": "cpu", "encode_mode": "mean"}})
    bundle = PromptProcessor(PromptProcessor.Config(prompt="a cube")).bundle(g.prior)
    rgb, cams = _batch()
    g(GuidanceInput(rgb=rgb, cameras=cams), bundle, 0)["loss_video_sds"].backward()
    with_grad = (rgb.grad.flatten(1).abs().sum(1) > 0).view(2, 4)
    assert with_grad.sum(1).tolist() == [1, 1]  # one frame per clip
    whole = g.model_input(rgb.detach()).reshape(2, 4, 4, 8, 8).transpose(1, 2)
    torch.testing.assert_close(g.clips(rgb.detach()), whole)  # the same latents, whichever frames keep their gradient


def test_motion_amplification_scales_the_per_frame_part(video_path):
    bundle = None
    grads = {}
    rgb, cams = _batch()
    for m in (0.0, 1.0, 3.0):
        g = _guidance(video_path, motion_amplification=m)
        bundle = bundle or PromptProcessor(PromptProcessor.Config(prompt="a cube")).bundle(g.prior)
        torch.manual_seed(1)
        z = g.clips(rgb.detach())
        t = torch.full((2,), 500)
        torch.manual_seed(0)
        grads[m] = g.clip_gradient(z, t, bundle, cams[::4])
    mean = grads[1.0].mean(2, keepdim=True)
    torch.testing.assert_close(grads[0.0], mean.expand_as(grads[0.0]))
    torch.testing.assert_close(grads[3.0], mean + 3 * (grads[1.0] - mean), atol=1e-5, rtol=1e-5)


def test_start_up_errors(video_path):
    sd = tiny_models.build_sd(video_path.parent / "sd")
    with pytest.raises(ValueError, match="needs a text-to-video prior"):
        _guidance(sd)
    with pytest.raises(ValueError, match="grad_frames <= frames"):
        _guidance(video_path, grad_frames=5)
    g = _guidance(video_path)
    bundle = PromptProcessor(PromptProcessor.Config(prompt="a cube")).bundle(g.prior)
    rgb, cams = _batch(clips=1, frames=3)
    with pytest.raises(ValueError, match="multiple of 4"):
        g(GuidanceInput(rgb=rgb, cameras=cams), bundle, 0)


@pytest.fixture(scope="module")
def motion_path(tmp_path_factory):
    return tiny_models.build_motion_video(tmp_path_factory.mktemp("tiny-motion"))


def test_frame_prompts_give_each_frame_its_caption(motion_path, video_path):
    templates = ["{prompt} frame zero", "{prompt} frame one", "{prompt} frame two", "{prompt} frame three"]
    g = _guidance(motion_path, frame_prompts=templates, view_dependent=False)
    bundle = PromptProcessor(PromptProcessor.Config(prompt="a red cube moving left", view_dependent=False)).bundle(g.prior)
    seen = []
    hook = g.prior.denoiser.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["encoder_hidden_states"]), with_kwargs=True)
    rgb, cams = _batch()
    g(GuidanceInput(rgb=rgb, cameras=cams), bundle, 0)["loss_video_sds"].backward()
    hook.remove()
    states = seen[-1]  # CFG: 2 x 2 clips x 4 frames
    assert states.shape[0] == 16 and torch.isfinite(rgb.grad).all()
    want = g.prior.encode_text([t.format(prompt="a red cube moving left") for t in templates]).emb
    torch.testing.assert_close(states[:4], want)  # clip 0's frames read their own captions, in order
    torch.testing.assert_close(states[4:8], want)
    assert not torch.equal(states[0], states[1])
    torch.testing.assert_close(states[8:], bundle.uncond.emb.expand(8, *states.shape[1:]))  # the negative per frame
    # view-dependent: the view prompt of the clip's first camera goes into the templates
    g = _guidance(motion_path, frame_prompts=templates, view_dependent=True)
    bundle = PromptProcessor(PromptProcessor.Config(prompt="a red cube moving left")).bundle(g.prior)
    cond = g.frame_conditioning(bundle, cams[::4])
    view = bundle.view_texts[int(bundle.view_indices(cams[::4])[1])]
    torch.testing.assert_close(cond.emb[1], g.prior.encode_text([t.format(prompt=view) for t in templates]).emb)
    with pytest.raises(ValueError, match="4 templates"):
        _guidance(motion_path, frame_prompts=templates[:3])
    with pytest.raises(ValueError, match="reads one per clip"):
        _guidance(video_path, frame_prompts=templates)


def test_clip_noise_shares_the_asked_part_of_each_frames_variance(motion_path):
    from threedgen.guidance.model_folder import PriorConfig
    from threedgen.guidance.clip_noise import clip_noise
    from threedgen.guidance.priors import get_prior

    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(clip_noise((2, 3, 4, 8, 8), 0.0, g), torch.randn((2, 3, 4, 8, 8), generator=torch.Generator().manual_seed(0)))
    for share in (0.0, 0.5, 0.9):
        x = clip_noise((64, 4, 2, 16, 16), share, g)
        a, b = x[:, :, 0].flatten(), x[:, :, 1].flatten()
        assert abs(float(a.std()) - 1.0) < 0.02 and abs(float(b.std()) - 1.0) < 0.02  # every frame still N(0, 1)
        assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1]) - share) < 0.02
    with pytest.raises(ValueError, match=r"in \[0, 1\], got 1.5"):
        clip_noise((1, 1, 2, 2, 2), 1.5)
    prior = get_prior(PriorConfig(model=str(motion_path), device="cpu"))
    cond = prior.encode_text(["a red cube"])
    clips = [prior.sample(cond, None, n_steps=2, generator=torch.Generator().manual_seed(1), frames=4, frame_noise_share=s)
             for s in (0.0, 1.0)]
    spread = [float((c - c.mean(2, keepdim=True)).abs().mean()) for c in clips]
    assert clips[0].shape == (1, 3, 4, *clips[0].shape[-2:]) and spread[1] < 0.5 * spread[0]  # frames start alike


def test_shared_frame_noise_noises_alike_frames_alike(video_path):
    """``frame_noise_share: 1``: a clip of identical renders is noised identically in every frame (clip_noise.py)."""
    seen = []
    for share in (1.0, 0.0):
        g = build_module("guidance", {"name": "video_sds", "frames": 4, "frame_noise_share": share, "view_dependent": False,
                                      "prior": {"model": str(video_path), "device": "cpu", "encode_mode": "mean"}})
        bundle = PromptProcessor(PromptProcessor.Config(prompt="a cube", view_dependent=False)).bundle(g.prior)
        hook = g.prior.denoiser.register_forward_pre_hook(lambda m, a, kw: seen.append(a[0] if a else kw["sample"]), with_kwargs=True)
        _, cams = _batch(clips=1)
        rgb = torch.rand(1, 3, 16, 16).expand(4, 3, 16, 16).clone().requires_grad_(True)  # one still frame, 4 times
        g(GuidanceInput(rgb=rgb, cameras=cams), bundle, 0)
        hook.remove()
        x = seen[-1]  # [2 (CFG) x 1 clip, C, F, h, w]
        assert torch.allclose(x[:, :, 0], x[:, :, 3], atol=1e-6) == (share == 1.0)
    with pytest.raises(ValueError, match=r"frame_noise_share is a share .* got 2"):
        _guidance(video_path, frame_noise_share=2)
