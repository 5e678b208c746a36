"""``PromptBundle``: a prompt's precomputed conditionings and the per-camera selection rule.

Every field is a ``Conditioning`` (``guidance/prior_api.py``: token embeddings plus, for SD3-class
priors, a pooled embedding). Conditional and unconditional ones are named fields, never a chunk order. View-dependent
embeddings are stacked in ``VIEWS`` order (side, front, back, overhead) and chosen per camera by
``view_index`` (the same rule the toy world's captions use). Perp-Neg (Armandpour et al. 2023;
threestudio's variant) interpolates the positive embedding by azimuth and adds two negative view
prompts with weights from shifted exponential decays.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from ..guidance.prior_api import Conditioning, as_conditioning
from .views import VIEWS, view_index, wrap_degrees

# threestudio's Perp-Neg weight curves f(r) = a * exp(-b r) + c, as (a, b, c)
PERP_NEG_F_SB = (1.0, 0.5, -0.606)
PERP_NEG_F_FSB = (1.0, 0.5, 0.967)
PERP_NEG_F_FS = (4.0, 0.5, -2.426)
PERP_NEG_F_SF = (4.0, 0.5, -2.426)


def _decay(params: tuple[float, float, float], r: torch.Tensor) -> torch.Tensor:
    a, b, c = params
    return a * torch.exp(-b * r) + c


@dataclass
class PerpNegSelection:
    pos: Conditioning  # B rows: the azimuth-interpolated positive conditioning
    uncond: Conditioning  # B rows
    negs: list[Conditioning]  # K = 2 negative view conditionings of B rows each
    weights: torch.Tensor  # [B,K] (negative numbers: push away)


@dataclass
class PromptBundle:
    """Conditionings of one prompt for one prior.

    - ``cond`` (1 row): the prompt.
    - ``uncond`` (1 row): the negative prompt (``""`` by default); CFG's unconditional branch.
    - ``null`` (1 row): the empty prompt; the same object as ``uncond`` when the negative is empty
      (objectives such as CSD/NFSD that need both use ``null`` and ``uncond`` separately).
    - ``cond_vd`` (4 rows): ``"<prompt>, <view> view"`` for the views in ``VIEWS`` order.
    """

    cond: Conditioning
    uncond: Conditioning
    null: Conditioning
    cond_vd: Conditioning
    text: str
    negative_text: str = ""
    view_texts: tuple[str, ...] = ()
    front_threshold: float = 45.0
    back_threshold: float = 45.0
    overhead_threshold: float = 60.0
    view_dependent: bool = True
    """The processor's default for ``select`` (a guidance may still ask for view-independent)."""
    perp_neg: bool = False
    """Perp-Neg requested by the prompt processor (a guidance may also switch it on itself)."""
    perp_neg_f_sb: tuple[float, float, float] = PERP_NEG_F_SB
    perp_neg_f_fsb: tuple[float, float, float] = PERP_NEG_F_FSB
    perp_neg_f_fs: tuple[float, float, float] = PERP_NEG_F_FS
    perp_neg_f_sf: tuple[float, float, float] = PERP_NEG_F_SF
    model_id: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):  # bare [N,L,D] embeddings are token-only conditionings
        same = self.null is self.uncond
        self.cond, self.uncond, self.cond_vd = (as_conditioning(c) for c in (self.cond, self.uncond, self.cond_vd))
        self.null = self.uncond if same else as_conditioning(self.null)

    @property
    def device(self) -> torch.device:
        return self.cond.device

    def to(self, device=None, dtype=None) -> "PromptBundle":
        conv = lambda c: c.to(device=device, dtype=dtype)  # noqa: E731
        out = replace(self, cond=conv(self.cond), uncond=conv(self.uncond), cond_vd=conv(self.cond_vd))
        out.null = out.uncond if self.null is self.uncond else conv(self.null)
        return out

    def view_indices(self, cameras) -> torch.Tensor:
        """Index into ``VIEWS`` per camera ``[B]`` (long, on the embeddings' device)."""
        idx = view_index(
            cameras.elevation_deg.detach().float(),
            cameras.azimuth_deg.detach().float(),
            self.front_threshold,
            self.back_threshold,
            self.overhead_threshold,
        )
        return idx.to(self.device)

    def select(self, cameras, view_dependent: Optional[bool] = None) -> tuple[Conditioning, Conditioning]:
        """``(cond, uncond)`` of ``B`` rows each for a ``CameraBatch`` (anything with ``elevation_deg``
        and ``azimuth_deg``). With view-dependent prompting the conditional embedding is the view
        prompt chosen by ``view_index`` (azimuth wrapped to (-180, 180]); the unconditional one is
        always the negative prompt."""
        B = len(cameras.azimuth_deg)
        vd = self.view_dependent if view_dependent is None else view_dependent
        cond = self.cond_vd[self.view_indices(cameras)] if vd else self.cond.expand(B)
        return cond, self.uncond.expand(B)

    def select_perp_neg(self, cameras) -> PerpNegSelection:
        """Perp-Neg embeddings and weights per camera (threestudio's rule).

        Overhead views: the overhead prompt, no negatives (weights 0). Otherwise, with ``a = |azimuth|``:
        ``a < 90``: ``pos = r front + (1-r) side``, ``r = 1 - a/90``, negatives (front, side) with
        weights ``-f_fs(r)``, ``-f_sf(1-r)``; ``a >= 90``: ``pos = r side + (1-r) back``, ``r = 2 - a/90``,
        negatives (side, front) with weights ``-f_sb(r)``, ``-f_fsb(r)``.
        """
        idx = self.view_indices(cameras)
        az = wrap_degrees(cameras.azimuth_deg.detach().float()).to(self.device).abs()
        side, front, back, overhead = (self.cond_vd[VIEWS.index(v)] for v in ("side", "front", "back", "overhead"))
        B = az.shape[0]
        fr = az < 90.0
        r = torch.where(fr, 1.0 - az / 90.0, 2.0 - az / 90.0)
        side, front, back, overhead = (c.expand(B) for c in (side, front, back, overhead))
        pos = front.lerp(side, r).where(fr, side.lerp(back, r))
        neg0 = front.where(fr, side)
        neg1 = side.where(fr, front)
        w0 = torch.where(fr, -_decay(self.perp_neg_f_fs, r), -_decay(self.perp_neg_f_sb, r))
        w1 = torch.where(fr, -_decay(self.perp_neg_f_sf, 1.0 - r), -_decay(self.perp_neg_f_fsb, r))
        top = idx == VIEWS.index("overhead")
        uncond = self.uncond.expand(B)
        pos = overhead.where(top, pos)
        neg0 = uncond.where(top, neg0)
        neg1 = uncond.where(top, neg1)
        weights = torch.stack([w0, w1], dim=1).masked_fill(top.view(B, 1), 0.0)
        return PerpNegSelection(pos=pos, uncond=uncond, negs=[neg0, neg1], weights=weights)
