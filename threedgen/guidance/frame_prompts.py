"""Per-frame captions for a video prior that reads one caption per frame (AnimateDiff's per-frame prompts).

A template per frame, each with ``{prompt}`` (``"{prompt} frame zero"`` … for a toy video prior trained with
``--frame-words``), filled with a prompt and embedded once: ``frame_conditioning`` gives the ``[N,F,L,D]``
conditioning that ``DDPMPrior`` flattens per frame. Video SDS (``video_sds.py``), the sampled clip of the
clip anchor (``clip_anchor.py``) and the toy video prior's gate (``toy/evaluate_video.py``) read it.
"""

from __future__ import annotations

from .conditioning import Conditioning


def check_frame_prompts(templates, frames: int, prior, where: str) -> None:
    """ValueError at start-up unless ``templates`` are ``frames`` templates with ``{prompt}`` and the prior reads a
    caption per frame; ``where`` names the module in the message."""
    if len(templates) != frames or not all("{prompt}" in p for p in templates):
        raise ValueError(f"{where}: frame_prompts must be {frames} templates (one per frame) each containing "
                         f"'{{prompt}}', got {list(templates)}")
    if not getattr(prior, "per_frame_text", False):
        raise ValueError(f"{where}: frame_prompts need a prior that reads a caption per frame (an AnimateDiff-class "
                         f"UNetMotionModel); {prior.model_id} has a {type(prior.denoiser).__name__}, which reads one per clip")


def frame_conditioning(prior, texts, templates) -> Conditioning:
    """``[len(texts), F, L, D]``: text i's captions, one per template, as the prior embeds them."""
    captions = [p.format(prompt=t) for t in texts for p in templates]
    emb = prior.encode_text(captions)
    return emb.map(lambda e: e.reshape(len(texts), len(templates), *e.shape[1:]))


def frame_uncond(prior, negative_text: str, templates, uncond: Conditioning) -> Conditioning:
    """The CFG branch paired with per-frame captions, ``[len(uncond), F, L, D]``: the negative prompt's own frame
    captions when there is one (a contrastive negative such as the reversed motion must name the frame too),
    else ``uncond`` ``[N,L,D]`` (the empty prompt's) repeated per frame."""
    if negative_text:
        return frame_conditioning(prior, [negative_text], templates).expand(len(uncond))
    return per_frame(uncond, len(templates))


def per_frame(cond: Conditioning, frames: int) -> Conditioning:
    """A one-caption-per-clip conditioning ``[N,L,D]`` as ``[N,F,L,D]`` (the branch a per-frame one is paired with)."""
    return cond.map(lambda e: e[:, None].expand(e.shape[0], frames, *e.shape[1:]))
