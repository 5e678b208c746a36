"""The toy video prior's parts (issue 21): clips move as captioned and the tracker reads them back; the
inflated UNet starts as the image prior per frame; the extended tokenizer keeps every old word's
embedding; a two-step training writes a folder the prior interface loads as a video prior."""

import pytest
import torch

from threedgen.toy import world as W
from threedgen.toy.evaluate_video import centroids, classify_motion, follows_path
from threedgen.toy.video_dataset import MOTIONS, caption, parse_motion, render_clips

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_rendered_clips_move_as_captioned_and_the_tracker_agrees():
    scenes = [W.ToyScene("cube", "red"), W.ToyScene("cone", "green"), W.ToyScene("torus", "blue")]
    for scene in scenes:
        clips = render_clips([scene] * len(MOTIONS), list(MOTIONS), seed=3)
        assert clips.shape == (len(MOTIONS), 3, 8, 32, 32)
        assert [classify_motion(c) for c in centroids(clips)] == list(MOTIONS)
        assert all(follows_path(c, m) for c, m in zip(centroids(clips), MOTIONS))
        assert not any(follows_path(c, m) for c, m in zip(centroids(clips), ("right", "left", "down", "up", "left")))
    # independent frames: the same ends as a clip moving right, but jumping about in between
    x = torch.tensor([10.0, 20.0, 9.0, 21.0, 10.0, 20.0, 11.0, 22.0])
    jitter = torch.stack([x, torch.full_like(x, 16.0)], -1)
    assert classify_motion(jitter) == "right" and not follows_path(jitter, "right")
    assert parse_motion(caption(scenes[0], "left")) == (scenes[0], "left")
    with pytest.raises(ValueError, match="names no toy motion"):
        parse_motion("a red cube spinning")


def test_inflated_unet_is_the_image_prior_per_frame_and_old_words_keep_their_embeddings():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from threedgen.toy.tokenizer import tokenize
    from threedgen.toy.video_prior_model import extend_text_side, motion_unet_from

    base = ROOT / "assets" / "toy-prior"
    image = UNet2DConditionModel.from_pretrained(base / "unet").eval()
    video = motion_unet_from(image).eval()
    x, t, emb = torch.randn(2, 3, 4, 32, 32), torch.tensor([50, 700]), torch.randn(2, 77, 64)
    with torch.no_grad():
        per_frame = image(x.transpose(1, 2).reshape(8, 3, 32, 32), t.repeat_interleave(4), emb.repeat_interleave(4, 0)).sample
        clip = video(x, t, encoder_hidden_states=emb.repeat_interleave(4, 0)).sample
    torch.testing.assert_close(clip.transpose(1, 2).reshape(8, 3, 32, 32), per_frame, atol=1e-5, rtol=1e-5)
    # a seed is one prior: the motion modules' inner layers too (they drew from the unseeded global RNG)
    same, other = (motion_unet_from(image, 0.02, seed=s).state_dict() for s in (0, 1))
    again = motion_unet_from(image, 0.02, seed=0).state_dict()
    inner = [k for k in same if "motion_modules" in k and "attn1.to_q" in k]
    assert inner and all(torch.equal(same[k], again[k]) for k in same)
    assert not any(torch.equal(same[k], other[k]) for k in inner)
    tok, te, new_ids = extend_text_side(base)
    old_tok, old_te = CLIPTokenizer.from_pretrained(base / "tokenizer"), CLIPTextModel.from_pretrained(base / "text_encoder")
    with torch.no_grad():
        a = te(tokenize(tok, ["a red cube", ""])).last_hidden_state
        b = old_te(tokenize(old_tok, ["a red cube", ""])).last_hidden_state
    torch.testing.assert_close(a, b)
    assert new_ids and len(tok.tokenize("moving left")) == 2
    # the motion words start apart, as far apart as the old words are (not all at one shared row)
    rows = te.get_input_embeddings().weight.detach()
    old_rows = old_te.get_input_embeddings().weight.detach()
    with torch.no_grad():
        l, r = (te(tokenize(tok, [f"a red cube moving {d}"])).last_hidden_state for d in ("left", "right"))
    assert (rows[new_ids[0]] - rows[new_ids[1]]).norm() > 0.5 * torch.cdist(old_rows[3:4], old_rows[4:5]).item()
    assert (l - r).abs().max() > 1e-2


@pytest.fixture(scope="module")
def clip_cache(tmp_path_factory):
    """One rendered clip dataset for the training tests of this module."""
    return tmp_path_factory.mktemp("clip-cache")


def test_training_writes_a_video_prior_the_interface_loads(tmp_path, clip_cache):
    from threedgen.guidance.model_folder import PriorConfig
    from threedgen.guidance.priors import get_prior
    from threedgen.toy.train_video import main

    out = tmp_path / "toy-video"
    main(["--steps", "2", "--clips-per-pair", "1", "--batch-size", "1", "--out", str(out), "--cache-dir", str(clip_cache),
          "--separate-motions", "3", "--motion-init-std", "0.02"])
    report = __import__("json").loads((out / "training.json").read_text())
    assert set(report["direction_gap"]) == {"caption", "opposite"} and report["motion_text"]["after"]["motion"] > 0
    prior = get_prior(PriorConfig(model=str(out), device="cpu"))
    assert prior.video and type(prior.denoiser).__name__ == "UNetMotionModel"
    from threedgen.prompts.processor import PromptProcessor

    bundle = PromptProcessor(PromptProcessor.Config(prompt="a red cube moving left", view_dependent=False)).bundle(prior)
    clips = prior.sample(bundle.cond, bundle.uncond, 7.5, n_steps=2, frames=8)
    assert clips.shape == (1, 3, 8, 32, 32) and torch.isfinite(clips).all()


def test_motion_bench_reads_the_direction_of_a_moving_silhouette():
    from threedgen.toy.motion_bench import alpha_centroids

    for direction, (dx, dy) in {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}.items():
        alpha = torch.zeros(8, 1, 32, 32)
        for f in range(8):
            x = 12 + dx * f
            alpha[f, 0, 12 + dy * f : 20 + dy * f, x : x + 8] = 1.0
        assert classify_motion(alpha_centroids(alpha)) == direction
    assert classify_motion(alpha_centroids(torch.zeros(8, 1, 32, 32))) == "still"


def test_high_noise_share_draws_that_share_from_the_upper_half():
    from threedgen.toy.train_video import draw_timesteps

    g = torch.Generator().manual_seed(0)
    uniform = draw_timesteps(4000, 1000, 0.0, g)
    assert 0.45 < float((uniform >= 500).float().mean()) < 0.55 and int(uniform.min()) < 20
    assert bool((draw_timesteps(500, 1000, 1.0, g) >= 500).all())
    half = draw_timesteps(4000, 1000, 0.5, g)
    assert 0.70 < float((half >= 500).float().mean()) < 0.80  # 0.5 + 0.5 * 0.5


def test_x0_weights_lift_only_the_noisy_levels_and_text_layers_can_train():
    from transformers import CLIPTextConfig, CLIPTextModel

    from threedgen.toy.train_prior import build_scheduler
    from threedgen.toy.train_video import high_noise_weights, trainable

    acp = build_scheduler().alphas_cumprod.float()
    t = torch.tensor([10, 300, 600, 999])
    assert torch.equal(high_noise_weights(t, acp, 1.0), torch.ones(4))
    w = high_noise_weights(t, acp, 20.0)
    snr = acp[t] / (1 - acp[t])
    assert w[0] == 1.0 and w[1] == 1.0 and bool(snr[2] < 1) and w[2] == pytest.approx(float(1 / snr[2]), rel=1e-5)
    assert w[3] == 20.0
    te = CLIPTextModel(CLIPTextConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=16))
    unet = torch.nn.Linear(2, 2)
    table = te.get_input_embeddings().weight
    assert trainable(unet, te)[-1] is table and len(trainable(unet, te)) == 1
    with_text = trainable(unet, te, text_layers=True)
    assert with_text[-1] is table and len(with_text) == sum(1 for _ in te.parameters())


def test_motion_separation_opens_the_motion_words_and_keeps_the_static_captions():
    from threedgen.toy.motion_text import motion_gap, separate_motions
    from threedgen.toy.train_video import swap_direction
    from threedgen.toy.video_prior_model import extend_text_side

    tok, te, _ = extend_text_side(ROOT / "assets" / "toy-prior")
    report = separate_motions(tok, te, steps=60, margin=0.3, log=lambda m: None)
    before, after = report["before"], report["after"]
    assert before["motion"] < 0.5 * before["colour"]           # the frozen encoder hardly tells left from right
    assert after["motion_min"] > 0.2 and after["motion"] > 5 * before["motion"]
    assert abs(after["colour"] - before["colour"]) < 0.03      # what the image prior read is unchanged
    assert report["static_caption_drift"] < 0.05
    assert motion_gap(tok, te) == pytest.approx(after)
    assert swap_direction("a red cube moving left") == "a red cube moving right"
    assert swap_direction("a green cone bouncing") == "a green cone moving down"


def test_separation_on_per_frame_captions_parts_every_motion_and_frame():
    """A plain-caption separation does not carry over to "… moving left frame zero"; the templates separate those."""
    from threedgen.toy.motion_text import motion_gap, separate_motions
    from threedgen.toy.video_dataset import FRAME_WORDS, frame_captions
    from threedgen.toy.video_prior_model import extend_text_side

    tok, te, _ = extend_text_side(ROOT / "assets" / "toy-prior", FRAME_WORDS)
    templates = frame_captions("{prompt}")
    report = separate_motions(tok, te, steps=40, margin=0.3, batch_scenes=2, log=lambda m: None, templates=templates)
    before, after = report["before"], report["after"]
    assert before["motion"] < 0.05 and before["frame"] < 0.05  # new words: every frame caption reads alike
    assert after["motion"] > 5 * before["motion"] and after["frame"] > 5 * before["frame"]  # 40 steps of 2 scenes
    assert report["static_caption_drift"] < 0.1
    assert "frame_min" not in motion_gap(tok, te)  # one template: no frames to compare


def test_sweep_clips_leave_out_the_bouncing_ones():
    from threedgen.toy.train_video import sweep_clips

    caps = ["a red cube moving left", "a red cube bouncing", "a blue cone moving up", "a blue cone bouncing"]
    idx = sweep_clips(caps, torch.Generator().manual_seed(0))
    assert sorted(idx.tolist()) == [0, 2]


def test_direction_hinge_asks_for_a_margin_and_then_lets_go(tmp_path, clip_cache):
    from threedgen.toy.train_video import direction_contrast, main

    cap = torch.tensor([1.0, 1.0], requires_grad=True)
    opp = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = direction_contrast(cap, opp, margin=0.1)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(0.05)  # only the first clip is inside the margin: (1.1 - 1.0) / 2
    assert cap.grad[0] > 0 and opp.grad[0] < 0 and cap.grad[1] == 0 and opp.grad[1] == 0
    out = tmp_path / "toy-video"
    main(["--steps", "2", "--clips-per-pair", "1", "--batch-size", "2", "--out", str(out), "--cache-dir", str(clip_cache),
          "--separate-motions", "0", "--direction-contrast", "1.0"])
    report = __import__("json").loads((out / "training.json").read_text())
    assert report["args"]["direction_contrast"] == 1.0 and report["steps"] == 2
    with pytest.raises(SystemExit):
        main(["--direction-contrast", "-1", "--out", str(tmp_path / "x")])


def test_direction_hinge_on_single_frames_reads_the_opposite_frame_caption(tmp_path, clip_cache, monkeypatch):
    from diffusers import UNetMotionModel

    from threedgen.toy.train_video import main
    from threedgen.toy.video_dataset import FRAMES

    seen, real = [], UNetMotionModel.forward

    def spy(self, sample, timestep, encoder_hidden_states, **kw):  # records what the real forward is given
        seen.append((sample.detach().clone(), encoder_hidden_states.detach().clone()))
        return real(self, sample, timestep, encoder_hidden_states, **kw)

    monkeypatch.setattr(UNetMotionModel, "forward", spy)
    main(["--steps", "1", "--frame-steps", "1", "--clips-per-pair", "1", "--batch-size", "2", "--out", str(tmp_path / "h"),
          "--cache-dir", str(clip_cache), "--separate-motions", "0", "--frame-words", "--direction-contrast", "1.0"])
    (x, enc), (x_opp, enc_opp) = seen[:2]  # the step's two passes, then the held-out gap's
    assert x.shape == (2 * FRAMES, 3, 1, 32, 32) and 0 < len(x_opp) <= len(x)
    rows = [next(i for i in range(len(x)) if torch.equal(x[i], xo)) for xo in x_opp]  # the same noisy frames ...
    assert all(not torch.equal(enc[i], eo) for i, eo in zip(rows, enc_opp))  # ... under another caption


def test_curriculum_draws_every_motion_of_the_chosen_scenes_only(tmp_path, clip_cache):
    from threedgen.toy.train_video import curriculum_clips, main

    captions = [caption(s, m) for s in W.all_scenes() if not s.marker for m in MOTIONS]
    idx = curriculum_clips(captions, 2, seed=0)
    chosen = [parse_motion(captions[i]) for i in idx.tolist()]
    assert len({s.prompt for s, _ in chosen}) == 2 and len(idx) == 2 * len(MOTIONS)
    assert sorted(m for _, m in chosen) == sorted(MOTIONS * 2)
    assert not torch.equal(idx, curriculum_clips(captions, 2, seed=1))
    with pytest.raises(ValueError, match="curriculum-scenes must be in"):
        curriculum_clips(captions, 0)
    out = tmp_path / "toy-video"
    main(["--steps", "2", "--clips-per-pair", "1", "--batch-size", "2", "--out", str(out), "--cache-dir", str(clip_cache),
          "--separate-motions", "0", "--curriculum-scenes", "1", "--curriculum-steps", "1"])
    assert __import__("json").loads((out / "training.json").read_text())["args"]["curriculum_scenes"] == 1
    with pytest.raises(SystemExit):
        main(["--curriculum-scenes", "2", "--out", str(tmp_path / "x")])


def test_frame_words_give_each_frame_its_own_caption(tmp_path, clip_cache):
    from transformers import CLIPTokenizer

    from threedgen.toy.train_video import caption_ids, main, per_frame
    from threedgen.toy.video_dataset import FRAMES, frame_captions

    caps = frame_captions("a red cube moving left")
    assert len(caps) == FRAMES and caps[0].endswith("frame zero") and caps[-1].endswith("frame seven")
    with pytest.raises(ValueError, match="at most 8 frames"):
        frame_captions("a red cube", frames=9)
    out = tmp_path / "toy-video"
    main(["--steps", "2", "--clips-per-pair", "1", "--batch-size", "2", "--out", str(out), "--cache-dir", str(clip_cache),
          "--separate-motions", "0", "--frame-words"])
    tok = CLIPTokenizer.from_pretrained(out / "tokenizer")
    ids = caption_ids(tok, ["a red cube moving left", "a blue sphere moving up"], frame_words=True)
    assert ids.shape[:2] == (2, FRAMES) and tok.unk_token_id not in ids.tolist()[0][3]
    assert not torch.equal(ids[0, 0], ids[0, 1])  # frames differ only in their index word
    from threedgen.toy.tokenizer import tokenize
    from threedgen.toy.train_video import training_caption_ids

    train_ids = training_caption_ids(tok, ["a red cube moving left"], frame_words=True)
    assert torch.equal(train_ids[1], ids[0])  # the captions keep their frame words
    assert all(torch.equal(row, tokenize(tok, [""])[0]) for row in train_ids[0])  # the dropped one is "" in every frame
    from transformers import CLIPTextModel

    te = CLIPTextModel.from_pretrained(out / "text_encoder")
    assert per_frame(te, ids, FRAMES).shape[0] == 2 * FRAMES
    plain = caption_ids(tok, ["a red cube moving left"], frame_words=False)
    states = per_frame(te, plain, FRAMES)
    assert states.shape[0] == FRAMES and torch.equal(states[0], states[-1])  # one caption, repeated per frame
    # the gate samples such a prior with its per-frame captions (read from its training.json)
    from diffusers import UNetMotionModel

    from threedgen.toy.evaluate_video import evaluate, frame_templates

    assert frame_templates(out)[0] == "{prompt} frame zero" and len(frame_templates(out)) == FRAMES
    seen, real = [], UNetMotionModel.forward

    def spy(self, sample, timestep, encoder_hidden_states, **kw):
        seen.append(encoder_hidden_states)
        return real(self, sample, timestep, encoder_hidden_states, **kw)

    UNetMotionModel.forward = spy
    try:
        rep = evaluate(str(out), per_caption=1, steps=2, scenes=[W.ToyScene("cube", "red")])
    finally:
        UNetMotionModel.forward = real
    assert len(rep["rows"]) == len(MOTIONS) and seen[0].shape[0] == 2 * FRAMES  # CFG x 1 clip x 8 frames
    assert not torch.equal(seen[0][0], seen[0][1])  # frame zero and frame one read different captions
    assert torch.equal(seen[0][FRAMES], seen[0][-1])  # the unconditional branch: one caption for every frame


def test_frame_steps_train_on_single_frames_with_their_own_captions_first(tmp_path, clip_cache, monkeypatch):
    from diffusers import UNetMotionModel

    from threedgen.toy.train_video import main
    from threedgen.toy.video_dataset import FRAMES

    seen, real = [], UNetMotionModel.forward

    def spy(self, sample, timestep, encoder_hidden_states, **kw):  # records what the real forward is given
        seen.append((tuple(sample.shape), tuple(encoder_hidden_states.shape[:1])))
        return real(self, sample, timestep, encoder_hidden_states, **kw)

    monkeypatch.setattr(UNetMotionModel, "forward", spy)
    before = {}
    real_save = UNetMotionModel.save_pretrained

    def first_save(self, *a, **kw):  # the motion modules as exported after the two single-frame steps
        before.setdefault("w", {n: p.detach().clone() for n, p in self.named_parameters() if "motion_modules" in n})
        return real_save(self, *a, **kw)

    monkeypatch.setattr(UNetMotionModel, "save_pretrained", first_save)
    main(["--steps", "2", "--frame-steps", "2", "--clips-per-pair", "1", "--batch-size", "2", "--out", str(tmp_path / "f"),
          "--cache-dir", str(clip_cache), "--separate-motions", "0", "--frame-words", "--train-all", "--motion-init-std", "0.02"])
    from threedgen.toy.video_prior_model import motion_unet_from
    from diffusers import UNet2DConditionModel

    start = motion_unet_from(UNet2DConditionModel.from_pretrained(ROOT / "assets" / "toy-prior" / "unet"), 0.02, 0)
    assert all(torch.allclose(p, before["w"][n], rtol=1e-5, atol=1e-7) for n, p in start.named_parameters() if "motion_modules" in n)  # untouched
    seen.clear()
    main(["--steps", "3", "--frame-steps", "2", "--clips-per-pair", "1", "--batch-size", "2", "--out", str(tmp_path / "v"),
          "--cache-dir", str(clip_cache), "--separate-motions", "0", "--frame-words"])
    train = seen[:3]  # then the held-out gap's passes
    assert train[0][0] == (2 * FRAMES, 3, 1, 32, 32) and train[0][1] == (2 * FRAMES,)  # 16 frames, a caption each
    assert train[1][0] == (2 * FRAMES, 3, 1, 32, 32)
    assert train[2][0] == (2, 3, FRAMES, 32, 32) and train[2][1] == (2 * FRAMES,)  # then clips
    with pytest.raises(SystemExit):
        main(["--frame-steps", "5", "--out", str(tmp_path / "x")])  # without --frame-words


def test_video_gap_scores_each_band_under_the_caption_and_its_opposite(tmp_path, clip_cache, capsys):
    from threedgen.toy.train_video import main
    from threedgen.toy.video_gap import band_gaps, main as gap_main

    out = tmp_path / "toy-video"
    main(["--steps", "1", "--clips-per-pair", "1", "--batch-size", "1", "--out", str(out), "--cache-dir", str(clip_cache),
          "--separate-motions", "0"])
    rows = band_gaps(out, clip_cache, clips=4, draws=1, bands=((0, 100), (900, 1000)))
    assert [r["band"] for r in rows] == [(0, 100), (900, 1000)]
    low, high = rows
    assert 0 < low["caption"] < high["caption"], "the clean clip is harder to recover from more noise"
    assert low["caption"] != low["opposite"], "the opposite direction is another caption, read by the prior"
    with pytest.raises(SystemExit) as e:
        gap_main([str(tmp_path / "nothing")])
    assert e.value.code == 2 and "not an exported toy video prior" in capsys.readouterr().err


def test_bf16_autocast_trains_as_float32_does(tmp_path, clip_cache):
    import json

    from threedgen.toy.train_video import main

    losses = {}
    for flag in ([], ["--bf16"]):
        out = tmp_path / ("bf16" if flag else "fp32")
        main(["--steps", "2", "--clips-per-pair", "1", "--batch-size", "1", "--out", str(out), "--cache-dir", str(clip_cache),
              "--separate-motions", "0", "--motion-init-std", "0.02", *flag])
        losses[bool(flag)] = json.loads((out / "training.json").read_text())["final_loss_avg200"]
    assert losses[True] != losses[False]  # the passes really ran in bfloat16
    assert abs(losses[True] - losses[False]) <= 0.02 * losses[False]


def test_an_exported_prior_continues_from_its_step_and_a_mismatch_is_refused(tmp_path, clip_cache, capsys):
    """``--init-from``: a training outlives its machine through the export alone (weights, step, minutes)."""
    import json

    from threedgen.toy.train_video import main

    first, second = tmp_path / "first", tmp_path / "second"
    common = ["--clips-per-pair", "1", "--batch-size", "1", "--cache-dir", str(clip_cache), "--separate-motions", "3",
              "--frame-words", "--frame-steps", "10"]
    main(["--steps", "2", "--out", str(first), *common])
    main(["--steps", "4", "--out", str(second), "--init-from", str(first), *common])
    a, b = (json.loads((d / "training.json").read_text()) for d in (first, second))
    assert a["steps"] == 2 and b["steps"] == 4 and b["train_minutes"] >= a["train_minutes"]
    assert b["motion_text"] == a["motion_text"]  # the separated text encoder came along; it was not separated again
    assert "continuing the exported prior" in capsys.readouterr().out
    third = tmp_path / "third-sep"  # --reseparate: the export's encoder is separated again, then kept frozen
    main(["--steps", "3", "--out", str(third), "--init-from", str(first), "--reseparate", "--embedding-lr-scale", "0", *common])
    c = json.loads((third / "training.json").read_text())
    assert c["steps"] == 3 and c["motion_text"] != a["motion_text"] and "frame_min" in c["motion_text"]["after"]
    for bad, says in ((tmp_path, "no training.json"), (first, "--frame-words")):
        with pytest.raises(SystemExit) as e:
            main(["--steps", "4", "--out", str(tmp_path / "third"), "--init-from", str(bad),
                  *[c for c in common if bad is tmp_path or c not in ("--frame-words", "--frame-steps", "10")]])
        assert e.value.code == 2 and says in capsys.readouterr().err
