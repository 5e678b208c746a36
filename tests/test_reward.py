"""Critics as differentiable rewards (issue 20): the torch preprocessing against the stock processors,
gradients reaching the renders, start-up errors, and the reward guidance's schedule."""

from dataclasses import replace

import numpy as np
import pytest
import torch

import tiny_critics
from threedgen.config import ConfigError, build_module
from threedgen.rewards import qwen_inputs as Q


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return tiny_critics.build_qwen_vl(tmp_path_factory.mktemp("qwen"))


def _smooth(h, w, b=1):
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([x, y, (x * y).sqrt()])
    return torch.stack([img.flip(-1) if i % 2 else img for i in range(b)])


def _quantised(img):
    return (img * 255).round() / 255


@pytest.mark.parametrize("size", [(56, 56), (112, 84), (64, 64), (40, 40), (128, 96)])
def test_pixel_values_match_the_stock_processor(size):
    spec = Q.VisionSpec(min_pixels=56 * 56, max_pixels=112 * 112)
    img = _quantised(_smooth(*size, b=2)).requires_grad_(True)
    pv, thw = Q.pixel_values(img, spec)
    assert pv.requires_grad
    stock = tiny_critics.image_processor()(images=[(im * 255).round().to(torch.uint8) for im in img.detach()], return_tensors="pt")
    assert thw.tolist() == stock["image_grid_thw"].tolist()
    ref = stock["pixel_values"]
    assert pv.shape == ref.shape
    if Q.target_size(*size, spec) == size:  # no resize: the same numbers
        torch.testing.assert_close(pv.detach(), ref, atol=1e-5, rtol=0)
    else:  # torch's bicubic vs PIL's on an 8-bit image: within 0.05 normalised (about 1.3% of the [0,1] range)
        assert (pv.detach() - ref).abs().max() < 0.05 and (pv.detach() - ref).abs().mean() < 0.005
    assert sum(Q.image_token_count(thw, spec)) == int(stock["image_grid_thw"].prod(-1).sum()) // 4


def test_target_size_rounds_to_multiples_of_28_within_the_pixel_range():
    spec = Q.VisionSpec(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    assert Q.target_size(256, 256, spec) == (252, 252)
    assert Q.target_size(512, 512, spec) == (504, 504)
    assert Q.target_size(20, 20, spec) == (56, 56)
    with pytest.raises(ValueError, match="aspect ratio"):
        Q.target_size(1, 300, spec)


def test_logits_from_our_inputs_equal_the_stock_processors(qwen):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    model, tok = AutoModelForImageTextToText.from_pretrained(qwen).eval(), AutoTokenizer.from_pretrained(qwen)
    spec = Q.VisionSpec.load(qwen)
    img = _quantised(_smooth(56, 56, b=2))
    pv, thw = Q.pixel_values(img, spec)
    stock = tiny_critics.image_processor()(images=[(im * 255).round().to(torch.uint8) for im in img], return_tensors="pt")
    ids = Q.input_ids(tok, Q.chat_text(tok, "a red cube?", 2), Q.image_token_count(thw, spec))
    assert int((ids == tok.convert_tokens_to_ids(Q.IMAGE_PAD)).sum()) == 2 * 4  # 4x4 patches merged 2x2, per image
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pv, image_grid_thw=thw).logits[0, -1]
        ref = model(input_ids=ids, pixel_values=stock["pixel_values"], image_grid_thw=stock["image_grid_thw"]).logits[0, -1]
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def _critic(name, **cfg):
    return build_module("critic", {"name": name, **cfg})


def test_vlm_critic_gradient_reaches_the_renders(qwen):
    critic = _critic("qwen_vl", model=str(qwen))
    renders = torch.rand(3, 3, 64, 64, requires_grad=True)
    out = critic(renders, "a red cube", None)
    assert out["loss"].shape == () and 0 < float(out["p_yes"]) < 1
    torch.testing.assert_close(out["loss"].detach(), -out["margin"])
    out["loss"].backward()
    assert renders.grad is not None and renders.grad.abs().sum() > 0 and torch.isfinite(renders.grad).all()
    assert not any(p.requires_grad for p in critic.model.parameters()) and not critic.model.training
    assert not critic.state_dict()  # the VLM never enters a checkpoint
    prob = _critic("qwen_vl", model=str(qwen), loss="prob")(renders, "a red cube", None)
    torch.testing.assert_close(prob["loss"].detach(), 1 - 2 * prob["p_yes"])


def test_vlm_gradient_checkpointing_gives_the_same_gradient(qwen):
    renders = torch.rand(2, 3, 56, 56)
    grads = []
    for ckpt in (False, True):
        x = renders.clone().requires_grad_(True)
        _critic("qwen_vl", model=str(qwen), gradient_checkpointing=ckpt, device="cpu", dtype="fp32")(x, "a cone", None)["loss"].backward()
        grads.append(x.grad)
        from threedgen.rewards.base import clear_critic_cache

        clear_critic_cache()
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("cfg,needle", [
    ({"question": "Is it good? Answer {yes} or {no}."}, "must contain {prompt}"),
    ({"question": "Is it {prompt}? Answer yes or no."}, "must name both answers"),
    ({"max_views": -1}, "max_views: expected an int in \\[0, "),
])
def test_vlm_critic_config_errors(qwen, cfg, needle):
    with pytest.raises((ValueError, ConfigError), match=needle):
        _critic("qwen_vl", model=str(qwen), **cfg)


def test_vlm_reward_refuses_a_render_size_the_vlm_cannot_take(qwen):
    g = build_module("guidance", {"name": "vlm_reward", "critic": {"name": "qwen_vl", "model": str(qwen)}})
    g.check_render_size(64, 64)
    with pytest.raises(ValueError, match="aspect ratio is above 200"):
        g.check_render_size(2, 512)


def test_vlm_folder_without_processor_or_chat_template_is_refused(tmp_path):
    no_proc = tiny_critics.build_qwen_vl(tmp_path / "a", processor=False)
    with pytest.raises(ValueError, match="no preprocessor_config.json"):
        _critic("qwen_vl", model=str(no_proc))
    no_chat = tiny_critics.build_qwen_vl(tmp_path / "b", chat_template=False)
    with pytest.raises(ValueError, match="no chat template"):
        _critic("qwen_vl", model=str(no_chat))


def test_clip_critic_matches_the_stock_processor_and_model(tmp_path):
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    path = tiny_critics.build_clip(tmp_path / "clip", image_size=32)
    critic = _critic("clip", model=str(path), template="a photo of {prompt}")
    img = _quantised(_smooth(32, 32, b=2)).requires_grad_(True)
    out = critic(img, "a red cube", None)
    out["loss"].backward()
    assert img.grad.abs().sum() > 0
    model, tok = CLIPModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    pix = CLIPImageProcessor.from_pretrained(path)(images=[(im * 255).round().to(torch.uint8) for im in img.detach()],
                                                     return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        i = model.get_image_features(pixel_values=pix)
        t = model.get_text_features(**tok(["a photo of a red cube"], return_tensors="pt"))
        i, t = (getattr(v, "pooler_output", v) for v in (i, t))
        cos = torch.nn.functional.cosine_similarity(i, t).mean()
    np.testing.assert_allclose(float(out["cos"]), float(cos), atol=1e-4)


def _toy_views(scene, azimuths, elevation=15.0):
    from threedgen.data.cameras import make_cameras
    from threedgen.toy.render import render_scene

    az = torch.tensor(azimuths, dtype=torch.float32)
    cams = make_cameras(torch.full_like(az, elevation), az, 1.8, 52.5, 32, 32)
    return render_scene([scene] * len(az), cams)["rgb"], cams


def test_toy_critic_prefers_the_prompted_object_and_the_right_view():
    from threedgen.toy import world as W

    critic = _critic("toy")
    rgb, cams = _toy_views(W.ToyScene("cube", "red"), [0, 90, 180, -90])
    right = critic(rgb, "a red cube", cams)
    assert float(critic(rgb, "a red sphere", cams)["loss"]) > float(right["loss"]) + 1
    assert float(critic(rgb, "a blue cube", cams)["loss"]) > float(right["loss"]) + 1
    dot, cams = _toy_views(W.ToyScene("sphere", "blue", marker=True), [0, 180])
    back_as_front = replace(cams, azimuth=cams.azimuth.flip(0))  # the same renders, told they were seen from the other side
    honest = critic(dot, "a blue sphere with a white dot", cams)
    swapped = critic(dot, "a blue sphere with a white dot", back_as_front)
    assert float(swapped["loss"]) > float(honest["loss"]) + 1 and float(honest["p_view"]) > 0.5
    x = rgb.clone().requires_grad_(True)
    _, cams = _toy_views(W.ToyScene("cube", "red"), [0, 90, 180, -90])
    critic(x, "a red sphere", cams)["loss"].backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="toy-world prompts only"):
        critic(rgb, "a red dragon", cams)


def test_reward_guidance_stops_after_until_step_and_resizes():
    from threedgen.guidance.base import GuidanceInput
    from threedgen.toy import world as W

    rgb, cams = _toy_views(W.ToyScene("cube", "red"), [0, 90])
    g = build_module("guidance", {"name": "reward", "critic": {"name": "toy"}, "until_step": 5, "resolution": 48})
    x = rgb.clone().requires_grad_(True)
    out = g(GuidanceInput(rgb=x, cameras=cams), "a red sphere", 4)
    assert float(out["loss_reward"]) > 1 and out["loss_reward"].requires_grad
    late = g(GuidanceInput(rgb=x, cameras=cams), "a red sphere", 5)
    assert float(late["loss_reward"]) == 0 and not late["loss_reward"].requires_grad
    with pytest.raises((ValueError, ConfigError), match="resolution: expected an int in \\[0, 4096\\]"):
        build_module("guidance", {"name": "reward", "critic": {"name": "toy"}, "resolution": -1})
