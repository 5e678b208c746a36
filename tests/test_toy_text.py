"""The toy prior's tokenizer is word-level, round-trips through save/from_pretrained, and captions follow the view rule."""

from __future__ import annotations

import torch

from threedgen.prompts.views import VIEWS, view_index
from threedgen.toy.dataset import CAPTION_MIX, all_captions, build_dataset, sample_captions
from threedgen.toy.tokenizer import MAX_LENGTH, build_text_encoder, build_tokenizer, tokenize
from threedgen.toy.world import VOCABULARY


def test_every_vocabulary_word_is_one_token(tmp_path):
    from transformers import CLIPTokenizer

    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    for t in (tok, CLIPTokenizer.from_pretrained(tmp_path)):
        for w in VOCABULARY:
            assert t.tokenize(w) == [w + "</w>"], w
        assert t.tokenize("An orange cube with a white dot, front view") == [
            w + "</w>" for w in "an orange cube with a white dot , front view".split()
        ]
    ids = tokenize(tok, ["a red cube", ""])
    assert ids.shape == (2, MAX_LENGTH)
    assert ids[0, 0] == tok.bos_token_id and ids[0, 4] == tok.eos_token_id and ids[1, 1] == tok.eos_token_id
    assert tok.unk_token_id not in tokenize(tok, ["a pink blob"])[0].tolist()  # falls back to letters


def test_text_encoder_shapes():
    tok = build_tokenizer()
    te = build_text_encoder(tok)
    h = te(tokenize(tok, ["a red cube, front view"])).last_hidden_state
    assert h.shape == (1, MAX_LENGTH, te.config.hidden_size)


def test_dataset_captions_use_the_view_rule():
    ds = build_dataset(views_per_scene=3, resolution=8, ssaa=1, seed=1)
    n = ds["images"].shape[0]
    assert n == 70 * 3 and ds["images"].dtype == torch.uint8
    assert torch.equal(ds["view"], view_index(ds["elevation"], ds["azimuth"]))
    table = [""] + all_captions()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, n, (4000,), generator=g)
    cap = sample_captions(ds, idx, generator=g)
    texts = [table[c] for c in cap.tolist()]
    frac_empty = sum(t == "" for t in texts) / len(texts)
    frac_view = sum(t.endswith(" view") for t in texts) / len(texts)
    assert abs(frac_empty - CAPTION_MIX[0]) < 0.03 and abs(frac_view - CAPTION_MIX[2]) < 0.03
    for i, t in zip(idx.tolist(), texts):
        if t.endswith(" view"):
            assert t.endswith(f", {VIEWS[ds['view'][i]]} view")


def test_dataset_marker_mask_covers_only_marker_scenes_and_front_views_show_more():
    ds = build_dataset(views_per_scene=6, resolution=16, ssaa=1, seed=2)
    m = ds["marker_mask"].float().flatten(1).sum(1) / 255.0
    assert ds["marker_mask"].shape == (ds["images"].shape[0], 1, 16, 16)
    assert m[ds["marker"] == 0].eq(0).all()  # no dot drawn, no dot pixels
    front, back = VIEWS.index("front"), VIEWS.index("back")
    with_dot = ds["marker"] == 1
    assert m[with_dot & (ds["view"] == front)].min() > 0  # the dot faces +Z: always seen from the front
    assert m[with_dot & (ds["view"] == back)].mean() < m[with_dot & (ds["view"] == front)].mean()


def test_training_loss_weights_min_snr_and_marker_boost():
    from threedgen.toy.train_prior import build_scheduler, loss_weights

    ac = build_scheduler().alphas_cumprod.float()
    t = torch.tensor([5, 500, 990])
    marker = torch.zeros(3, 1, 8, 8)
    marker[:, :, 4, 4] = 1.0
    w = loss_weights(t, ac, marker, min_snr_gamma=5.0, marker_weight=3.0)
    snr = ac[t] / (1 - ac[t])
    expected_t = torch.minimum(snr, torch.tensor(5.0)) / snr
    assert torch.allclose(w[:, 0, 0, 0], expected_t)  # away from the dot: the Min-SNR weight alone
    assert expected_t[0] < 0.05 and expected_t[2] == 1.0  # nearly clean steps are damped, noisy ones kept
    assert torch.allclose(w[:, 0, 3:6, 3:6], 4.0 * expected_t.view(3, 1, 1))  # dot dilated by one pixel
    assert torch.allclose(w[:, 0, 2, 2], expected_t)
    plain = loss_weights(t, ac, marker, min_snr_gamma=0.0, marker_weight=0.0)
    assert torch.equal(plain, torch.ones_like(plain))
