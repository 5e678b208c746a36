"""Open the text side of the toy video prior to the motion words, before the UNet learns motion.

Why: the toy text encoder (2 layers, trained with the image prior) passes a new word mostly to its own
position. For "a red cube moving left" vs "… moving right" its output differs by 0.09 at that word and
by 0.03 at the padding positions (the ones the toy UNet's cross-attention reads), against 0.23 for
"red" vs "blue" (docs/4d.md). Trained jointly with the UNet the two never open: the UNet ignores a
difference that small, so the text side gets no gradient to widen it (measured over 150 steps).

``separate_motions`` trains the text encoder alone for a few hundred cheap steps with two terms:
- *keep*: every caption without a motion word (each toy scene, with and without a view word) keeps the
  frozen encoder's output, so the image prior's captions mean what they meant;
- *separate*: for each toy scene, the outputs of its five motion captions are pushed apart until each
  pair differs by at least ``margin`` (mean absolute difference per entry, all positions), while each
  stays near its scene's static caption (so the object is still named).
The result is an ordinary ``CLIPTextModel`` (any loader reads it); ``motion_gap`` reports the numbers.

A prior trained on per-frame captions (``train_video.py --frame-words``) reads "… moving left frame zero",
not "… moving left": a separation learnt on the plain captions does not carry over to those (the frame
words change every position after the motion word), so ``templates`` separates the captions as the prior
reads them, every (motion, frame) pair of a scene from every other. Trained jointly with the UNet, the
new words' embeddings drift back together — "left" and "right" ended 0.02 apart after 4,600 steps, and
"frame zero" and "frame seven" 0.008, so the prior placed the object by its distance from the centre and
ignored the direction (docs/4d.md) — so a prior trained on a separated encoder keeps it frozen
(``--embedding-lr-scale 0``).
"""

from __future__ import annotations

import itertools

import torch

from . import world as W
from .tokenizer import tokenize
from .video_dataset import MOTIONS, caption


def _static_captions() -> list[str]:
    scenes = W.all_scenes()
    return [W.caption(s) for s in scenes] + [W.caption(s, v) for s in scenes for v in W.VIEWS]


def motion_captions(scene: W.ToyScene, templates=("{prompt}",)) -> list[str]:
    """The scene's motion captions as a prior reads them: ``[motion][template]`` flattened (templates inner)."""
    return [t.format(prompt=caption(scene, m)) for m in MOTIONS for t in templates]


def motion_gap(tokenizer, text_encoder, scenes: list[W.ToyScene] | None = None, templates=("{prompt}",)) -> dict:
    """Mean |Δ| per entry of the encoder's output between captions that differ only in the motion word (read
    through each of ``templates``), and between captions that differ only in the colour (the scale the toy UNet
    already follows); with several templates also the smallest gap between two frames of one motion."""
    scenes = scenes or [s for s in W.all_scenes() if not s.marker][:5]
    T = len(templates)
    with torch.no_grad():
        motion, frame, colour = [], [], []
        for s in scenes:
            h = text_encoder(tokenize(tokenizer, motion_captions(s, templates))).last_hidden_state
            h = h.view(len(MOTIONS), T, *h.shape[1:])
            for i, j in itertools.combinations(range(len(MOTIONS)), 2):
                motion += (h[i] - h[j]).abs().mean((-1, -2)).tolist()
            for a, b in itertools.combinations(range(T), 2):
                frame += (h[:, a] - h[:, b]).abs().mean((-1, -2)).tolist()
            other = W.ToyScene(s.shape, next(c for c in W.COLOUR_NAMES if c != s.colour))
            h2 = text_encoder(tokenize(tokenizer, [W.caption(s), W.caption(other)])).last_hidden_state
            colour.append(float((h2[0] - h2[1]).abs().mean()))
    out = {"motion": sum(motion) / len(motion), "motion_min": min(motion), "colour": sum(colour) / len(colour)}
    if frame:
        out.update(frame=sum(frame) / len(frame), frame_min=min(frame))
    return out


def separate_motions(tokenizer, text_encoder, steps: int = 300, margin: float = 0.3, lr: float = 3e-3,
                     keep_weight: float = 10.0, near_weight: float = 0.1, batch_scenes: int = 8, seed: int = 0,
                     log=print, templates=("{prompt}",)) -> dict:
    """Train ``text_encoder`` in place (see the module docstring); returns ``motion_gap`` before and after.
    Every pair of a scene's captions (motions × ``templates``) is pushed ``margin`` apart."""
    import copy

    before = motion_gap(tokenizer, text_encoder, templates=templates)
    frozen = copy.deepcopy(text_encoder).eval().requires_grad_(False)
    static_ids = tokenize(tokenizer, _static_captions())
    with torch.no_grad():
        static_ref = frozen(static_ids).last_hidden_state
    scenes = [s for s in W.all_scenes() if not s.marker]
    per_scene = len(MOTIONS) * len(templates)
    motion_ids = tokenize(tokenizer, [c for s in scenes for c in motion_captions(s, templates)]).view(len(scenes), per_scene, -1)
    plain_ids = tokenize(tokenizer, [W.caption(s) for s in scenes])
    with torch.no_grad():
        plain_ref = frozen(plain_ids).last_hidden_state
    text_encoder.requires_grad_(True).train()
    opt = torch.optim.Adam(text_encoder.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    pairs = torch.tensor(list(itertools.combinations(range(per_scene), 2)))
    for step in range(steps):
        pick = torch.randperm(len(scenes), generator=g)[:batch_scenes]
        keep_pick = torch.randperm(len(static_ids), generator=g)[:32]
        h_keep = text_encoder(static_ids[keep_pick]).last_hidden_state
        keep = (h_keep - static_ref[keep_pick]).pow(2).mean()
        h = text_encoder(motion_ids[pick].flatten(0, 1)).last_hidden_state.view(len(pick), per_scene, *h_keep.shape[1:])
        diff = (h[:, pairs[:, 0]] - h[:, pairs[:, 1]]).abs().mean((-1, -2))  # [scenes, pairs]
        separate = torch.relu(margin - diff).mean()
        near = (h - plain_ref[pick].unsqueeze(1)).pow(2).mean()
        loss = keep_weight * keep + separate + near_weight * near
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"motion text step {step}: keep {keep.item():.2e} separate {separate.item():.4f} "
                f"near {near.item():.4f} min pair gap {diff.min().item():.3f}")
    text_encoder.requires_grad_(False).eval()
    keep_err = float((text_encoder(static_ids).last_hidden_state - static_ref).abs().mean().detach())
    return {"before": before, "after": motion_gap(tokenizer, text_encoder, templates=templates), "static_caption_drift": keep_err}
