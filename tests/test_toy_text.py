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
