"""The toy prior's text side: a word-level ``CLIPTokenizer`` and a small ``CLIPTextModel``.

Why real CLIP classes: the toy prior must load through exactly the code path Stable Diffusion uses
(``CLIPTokenizer.from_pretrained`` / ``CLIPTextModel.from_pretrained`` on a diffusers folder).

Why merges: ``CLIPTokenizer`` is a BPE tokenizer with a ``</w>`` end-of-word marker; with an empty merge
list every word falls apart into characters. We therefore *learn* BPE merges on the toy vocabulary
(greedy most-frequent-pair, deterministic tie-break) until every vocabulary word is a single token;
replaying merges in rank order reproduces the training segmentation, so each toy word maps to exactly one
id. Lower-case letters are in the base alphabet, so an out-of-vocabulary word becomes pieces, not an error.
"""

from __future__ import annotations

import string
from collections import Counter

from .world import VOCABULARY

BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<|unk|>"
MAX_LENGTH = 77

TEXT_ENCODER_CONFIG = dict(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=MAX_LENGTH,
    projection_dim=64,
    hidden_act="quick_gelu",
)


def learn_merges(words) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """BPE vocab and merges under which each of ``words`` is one token (``"red"`` -> ``"red</w>"``)."""
    segs = {w: [*w[:-1], w[-1] + "</w>"] for w in sorted(set(words))}
    base = [BOS, EOS, UNK]
    base += list(string.ascii_lowercase) + [c + "</w>" for c in string.ascii_lowercase]
    base += sorted({t for s in segs.values() for t in s} - set(base))
    vocab = {t: i for i, t in enumerate(dict.fromkeys(base))}
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter()
        for s in segs.values():
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += 1
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]  # deterministic tie-break
        merges.append(best)
        new = best[0] + best[1]
        vocab.setdefault(new, len(vocab))
        for w, s in segs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(new)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            segs[w] = out
    return vocab, merges


def write_tokenizer_files(out, words) -> None:
    """``tokenizer/vocab.json`` + ``merges.txt`` (so the slow transformers CLIPTokenizer loads the
    folder too) and ``vocabulary.txt``, the words the prior knows: prompts with others are refused
    (``threedgen/guidance/model_folder.py``)."""
    import json
    from pathlib import Path

    out = Path(out)
    vocab, merges = learn_merges(words)
    (out / "tokenizer" / "vocab.json").write_text(json.dumps(vocab, indent=0))
    (out / "tokenizer" / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    write_vocabulary(out, words)


def write_vocabulary(out, words) -> None:
    from pathlib import Path

    (Path(out) / "vocabulary.txt").write_text("".join(f"{w}\n" for w in sorted(set(words)) if w.isalpha()))


def build_tokenizer(words=VOCABULARY):
    """Word-level CLIPTokenizer over ``words`` (default ``world.VOCABULARY``; padding with EOS to 77 tokens, like SD)."""
    from transformers import CLIPTokenizer

    vocab, merges = learn_merges(words)
    return CLIPTokenizer(
        vocab=vocab,
        merges=[tuple(m) for m in merges],
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=MAX_LENGTH,
    )


def build_text_encoder(tokenizer, seed: int = 0):
    """A small randomly initialised CLIPTextModel sized for the toy vocabulary."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TEXT_ENCODER_CONFIG,
    )
    torch.manual_seed(seed)
    return CLIPTextModel(cfg)


def tokenize(tokenizer, captions: list[str]):
    """Token ids [B, 77] padded to max length, the way SD pipelines call the tokenizer."""
    return tokenizer(
        captions, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids
