"""PromptBundle view selection, Perp-Neg weights and the PromptProcessor's on-disk embedding cache."""

from __future__ import annotations

import math
import os

import pytest
import torch

from threedgen.data.cameras import make_cameras
from threedgen.prompts.bundle import PromptBundle
from threedgen.prompts.processor import PromptProcessor
from threedgen.prompts.views import VIEWS


def _bundle(**kw) -> PromptBundle:
    # distinct constant embeddings so a selection can be read back: side=0, front=1, back=2, overhead=3
    cond_vd = torch.arange(4, dtype=torch.float32).view(4, 1, 1).expand(4, 2, 3).clone()
    return PromptBundle(
        cond=torch.full((1, 2, 3), 10.0),
        uncond=torch.full((1, 2, 3), -1.0),
        null=torch.full((1, 2, 3), -2.0),
        cond_vd=cond_vd,
        text="a red cube",
        **kw,
    )


def _cams(elevation, azimuth):
    return make_cameras(elevation, azimuth, 2.0, 50.0, 8, 8)


def test_view_dependent_selection_by_azimuth_and_elevation():
    azimuths = [-179, -100, -30, 0, 44, 46, 135, 180]
    # front: |az| < 45; back: |az| > 180 - 45 (strict, so 135 is still side); overhead: elevation > 60
    expected = ["back", "side", "front", "front", "front", "side", "side", "back"]
    cond, uncond = _bundle().select(_cams(10.0, azimuths))
    got = [VIEWS[int(round(v))] for v in cond.emb[:, 0, 0].tolist()]
    assert got == expected
    assert torch.all(uncond.emb == -1.0)  # the negative prompt for every view

    cond, _ = _bundle().select(_cams(70.0, azimuths))
    assert [VIEWS[int(v)] for v in cond.emb[:, 0, 0].tolist()] == ["overhead"] * len(azimuths)

    # azimuth given outside (-180, 180] wraps: 350 deg == -10 deg (front), 225 deg == -135 deg (side)
    cond, _ = _bundle().select(_cams(0.0, [350.0, 225.0]))
    assert [VIEWS[int(v)] for v in cond.emb[:, 0, 0].tolist()] == ["front", "side"]

    cond, _ = _bundle().select(_cams(10.0, azimuths), view_dependent=False)
    assert torch.all(cond.emb == 10.0) and cond.emb.shape == (8, 2, 3)


def test_custom_thresholds():
    b = _bundle(front_threshold=30.0, back_threshold=30.0)
    cond, _ = b.select(_cams(0.0, [29.0, 31.0, 149.0, 151.0]))
    assert [VIEWS[int(v)] for v in cond.emb[:, 0, 0].tolist()] == ["front", "side", "side", "back"]


def test_perp_neg_selection_weights():
    b = _bundle()
    sel = b.select_perp_neg(_cams([0.0, 0.0, 0.0, 0.0, 80.0], [0.0, 45.0, 90.0, 180.0, 30.0]))
    f = lambda a, bb, c, r: a * math.exp(-bb * r) + c  # noqa: E731
    # az 0: pure front; negatives (front, side) with weights -f_fs(1) ~ 0 and -f_sf(0) = -1.574
    assert torch.allclose(sel.pos.emb[0], torch.full((2, 3), 1.0))
    torch.testing.assert_close(sel.weights[0], torch.tensor([-f(4, 0.5, -2.426, 1.0), -f(4, 0.5, -2.426, 0.0)]))
    torch.testing.assert_close(torch.stack([n.emb[0, 0, 0] for n in sel.negs]), torch.tensor([1.0, 0.0]))
    # az 45: halfway between front (1) and side (0)
    assert torch.allclose(sel.pos.emb[1], torch.full((2, 3), 0.5))
    # az 90: side, negatives (side, front), weights -f_sb(1), -f_fsb(1)
    assert torch.allclose(sel.pos.emb[2], torch.full((2, 3), 0.0))
    torch.testing.assert_close(torch.stack([n.emb[2, 0, 0] for n in sel.negs]), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(sel.weights[2], torch.tensor([-f(1, 0.5, -0.606, 1.0), -f(1, 0.5, 0.967, 1.0)]))
    # az 180: back
    assert torch.allclose(sel.pos.emb[3], torch.full((2, 3), 2.0))
    # overhead: the overhead prompt, no negative guidance
    assert torch.allclose(sel.pos.emb[4], torch.full((2, 3), 3.0))
    assert torch.all(sel.weights[4] == 0)
    assert sel.uncond.emb.shape == (5, 2, 3) and len(sel.negs) == 2 and sel.negs[0].emb.shape == (5, 2, 3)


def test_processor_embeds_prompts(pixel_prior):
    proc = PromptProcessor(PromptProcessor.Config(prompt="a red cube", negative_prompt="blurry"))
    b = proc.bundle(pixel_prior)
    assert b.cond.emb.shape == (1, 77, 32) and b.cond_vd.emb.shape == (4, 77, 32)
    assert b.view_texts == ("a red cube, side view", "a red cube, front view", "a red cube, back view", "a red cube, overhead view")
    assert not pixel_prior.text_encoder_loaded  # freed after computing
    direct = pixel_prior.encode_text(["a red cube", "blurry", "", "a red cube, back view"])
    torch.testing.assert_close(b.cond.emb[0], direct.emb[0])
    torch.testing.assert_close(b.uncond.emb[0], direct.emb[1])
    torch.testing.assert_close(b.null.emb[0], direct.emb[2])
    torch.testing.assert_close(b.cond_vd.emb[VIEWS.index("back")], direct.emb[3])

    plain = PromptProcessor(PromptProcessor.Config(prompt="a red cube")).bundle(pixel_prior)
    assert plain.null is plain.uncond
    pre = PromptProcessor(PromptProcessor.Config(prompt="a red cube", view_prefix=True))
    assert pre.view_texts()[1] == "front view of a red cube"


def test_embedding_cache_hit_does_not_load_text_encoder(tiny_pixel_path, monkeypatch):
    from threedgen.guidance.ddpm_prior import DDPMPrior
    from threedgen.guidance.model_folder import PriorConfig

    cfg = PromptProcessor.Config(prompt="a blue torus", negative_prompt="ugly")
    prior = DDPMPrior(PriorConfig(model=str(tiny_pixel_path), device="cpu"))
    first = PromptProcessor(cfg).bundle(prior)
    assert prior.text_encoder_loads == 1 and not prior.text_encoder_loaded
    files = os.listdir(os.environ["THREEDGEN_EMBEDDING_CACHE"])
    assert len(files) == 1 and files[0].endswith(".safetensors")

    # a second run (fresh prior object, as in a new process) must not touch the text encoder
    prior2 = DDPMPrior(PriorConfig(model=str(tiny_pixel_path), device="cpu"))

    def boom(subfolder):
        raise AssertionError("text encoder loaded on a cache hit")

    monkeypatch.setattr(prior2, "_text_encoder", boom)
    second = PromptProcessor(cfg).bundle(prior2)
    assert prior2.text_encoder_loads == 0
    for k in ("cond", "uncond", "null", "cond_vd"):
        torch.testing.assert_close(getattr(second, k).emb, getattr(first, k).emb)

    # a different prompt misses the cache
    with pytest.raises(AssertionError, match="cache hit"):
        PromptProcessor(PromptProcessor.Config(prompt="a blue cone")).bundle(prior2)


def test_t5_prompts_for_if_prior(if_prior):
    b = PromptProcessor(PromptProcessor.Config(prompt="a green cone")).bundle(if_prior)
    assert b.cond.emb.shape == (1, 77, 32)
    assert not torch.allclose(b.cond.emb, b.uncond.emb)


def test_perp_neg_needs_view_dependent():
    with pytest.raises(ValueError, match="view_dependent"):
        PromptProcessor(PromptProcessor.Config(prompt="x", perp_neg=True, view_dependent=False))


def test_remove_phrases_cuts_whole_words_before_embedding():
    from threedgen.prompts.processor import PromptProcessor, remove_phrases

    assert remove_phrases("a red cube moving left", ["moving left", "bouncing"]) == "a red cube"
    assert remove_phrases("a green cone bouncing", ["moving left", "bouncing"]) == "a green cone"
    assert remove_phrases("a bouncingly odd prompt", ["bouncing"]) == "a bouncingly odd prompt"
    pp = PromptProcessor(PromptProcessor.Config(prompt="a red cube moving up", remove=["moving up"]))
    assert pp.cfg.prompt == "a red cube" and pp.view_texts()[1] == "a red cube, front view"


def test_remove_for_image_keeps_the_motion_for_a_video_prior(tiny_sd_path, tiny_video_path):
    from threedgen.guidance.model_folder import ModelFolder, PriorConfig
    from threedgen.guidance.priors import get_prior

    cfg = PromptProcessor.Config(prompt="a red cube moving up", remove=["moving up"], remove_for="image", use_cache=False)
    pp = PromptProcessor(cfg)
    image, video = (get_prior(PriorConfig(model=str(p), device="cpu")) for p in (tiny_sd_path, tiny_video_path))
    assert not image.video and video.video
    assert ModelFolder(PriorConfig(model=str(tiny_video_path)), torch.float32).is_video()
    assert pp.bundle(image).text == "a red cube" and pp.bundle(video).text == "a red cube moving up"
    plain = PromptProcessor(PromptProcessor.Config(prompt="a red cube moving up", remove=["moving up"], use_cache=False))
    assert plain.bundle(video).text == "a red cube"
    with pytest.raises(ValueError, match="remove_for must be 'all' or 'image'"):
        PromptProcessor(PromptProcessor.Config(prompt="x", remove_for="video"))


def test_negative_swaps_make_the_reversed_prompt_the_negative_where_the_prior_reads_the_phrase(tiny_sd_path, tiny_video_path):
    """With ``negative_swaps`` the video prior's negative is the prompt with its motion reversed (a contrastive
    negative), the image prior's, which reads the prompt without the motion, stays the configured one."""
    from threedgen.guidance.model_folder import PriorConfig
    from threedgen.guidance.priors import get_prior
    from threedgen.prompts.processor import swap_phrases

    pairs = [("moving left", "moving right"), ("moving up", "moving down")]
    assert swap_phrases("a red cube moving up", pairs) == "a red cube moving down"
    assert swap_phrases("a red cube moving right past a cube moving left", pairs) == "a red cube moving left past a cube moving right"
    assert swap_phrases("a red cube bouncing", pairs) == "a red cube bouncing"
    assert swap_phrases("a red cube moving upwards", pairs) == "a red cube moving upwards"
    cfg = PromptProcessor.Config(prompt="a red cube moving up", remove=["moving up"], remove_for="image", use_cache=False,
                                 negative_prompt="blurry", negative_swaps=pairs)
    pp = PromptProcessor(cfg)
    image, video = (get_prior(PriorConfig(model=str(p), device="cpu")) for p in (tiny_sd_path, tiny_video_path))
    vb, ib = pp.bundle(video), pp.bundle(image)
    assert (vb.text, vb.negative_text) == ("a red cube moving up", "a red cube moving down")
    assert (ib.text, ib.negative_text) == ("a red cube", "blurry")
    down = PromptProcessor(PromptProcessor.Config(prompt="a red cube moving down", use_cache=False)).bundle(video)
    assert torch.equal(vb.uncond.emb, down.cond.emb) and not torch.equal(vb.uncond.emb, vb.null.emb)
    with pytest.raises(ValueError, match="negative_swaps must be pairs of two different phrases"):
        PromptProcessor(PromptProcessor.Config(prompt="x", negative_swaps=[("up", "up")]))
