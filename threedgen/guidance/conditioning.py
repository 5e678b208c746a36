"""``Conditioning``: everything a denoiser is conditioned on, batched, in one object.

Token embeddings always; a pooled embedding for SD3-class priors; a mask and a control image for
editing and control priors. Objectives select, expand, repeat, concatenate and interpolate it
without knowing which fields it carries, so a new kind of condition reaches the prior untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable, Optional, Sequence

import torch


@dataclass
class Conditioning:
    """What the denoiser is conditioned on, batched along dim 0.

    ``emb`` ``[N,L,D]`` token embeddings (``[N,F,L,D]``: one per frame of a clip, for a video prior that
    reads a caption per frame); ``pooled`` ``[N,P]`` (SD3-class models); ``mask``
    ``[N,1,h,w]`` (1 = repaint, at the model input's size), ``masked`` ``[N,C,h,w]`` (the model-space
    image with the masked region blanked) for inpainting priors, and ``control`` ``[N,C,H,W]`` (a
    ControlNet's image, in [0,1] at the prior's image resolution). Every present field is selected,
    expanded and concatenated together.
    """

    emb: torch.Tensor
    pooled: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None
    masked: Optional[torch.Tensor] = None
    control: Optional[torch.Tensor] = None

    def present(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def __len__(self) -> int:
        return self.emb.shape[0]

    @property
    def device(self) -> torch.device:
        return self.emb.device

    def map(self, fn: Callable, *others: "Conditioning") -> "Conditioning":
        """``fn`` applied field by field (with the same field of each of ``others``)."""
        return replace(self, **{k: fn(v, *(getattr(o, k) for o in others)) for k, v in self.present().items()})

    def expand(self, n: int) -> "Conditioning":
        """``n`` rows: itself when it has ``n``, a broadcast view when it has one."""
        if len(self) == n:
            return self
        if len(self) != 1:
            raise ValueError(f"cannot expand a conditioning of {len(self)} rows to {n}")
        return self.map(lambda t: t.expand(n, *t.shape[1:]))

    def __getitem__(self, idx) -> "Conditioning":
        """Rows ``idx`` (an index tensor, list or slice; an int keeps the batch dim)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return self.map(lambda t: t[idx])

    @staticmethod
    def cat(items: Sequence["Conditioning"]) -> "Conditioning":
        keys = set(items[0].present())
        if any(set(c.present()) != keys for c in items):
            raise ValueError("cannot concatenate conditionings that carry different fields")
        return replace(items[0], **{k: torch.cat([getattr(c, k).to(items[0].emb.device) for c in items]) for k in keys})

    def repeat(self, n: int) -> "Conditioning":
        return self.map(lambda t: t.repeat(n, *([1] * (t.dim() - 1))))

    def to(self, device=None, dtype=None) -> "Conditioning":
        return self.map(lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else None))

    def where(self, pick: torch.Tensor, other: "Conditioning") -> "Conditioning":
        """Per row: ``self`` where ``pick [N]`` is true, ``other`` elsewhere."""
        return self.map(lambda a, b: torch.where(pick.view(-1, *([1] * (a.dim() - 1))), a, b), other)

    def lerp(self, other: "Conditioning", w: torch.Tensor) -> "Conditioning":
        """Per row ``w self + (1 - w) other`` (``w [N]``); Perp-Neg's azimuth interpolation."""
        return self.map(lambda a, b: w.view(-1, *([1] * (a.dim() - 1))).to(a) * a + (1 - w.view(-1, *([1] * (a.dim() - 1))).to(a)) * b, other)


def as_conditioning(c) -> Conditioning:
    """A ``Conditioning`` from itself or a bare ``[N,L,D]`` embedding tensor."""
    return c if isinstance(c, Conditioning) else Conditioning(emb=c)


