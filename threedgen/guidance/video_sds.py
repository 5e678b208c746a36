"""Video SDS: score distillation through a text-to-video prior, for scenes that move (4D-fy, Dream-in-4D;
``docs/4d.md``).

The batch is ``clips x frames`` renders, consecutive ``frames`` views forming one clip (one camera or a
slow orbit, times increasing; the 4D system samples them so). Per step::

    z   = encode each frame -> [N, C, F, h, w]     # with grad through only ``grad_frames`` random frames
                                                   # of each clip (4D-fy's low_ram_vae), the rest no_grad
    t   ~ one level per clip; eps ~ N(0, I) over the whole clip; x_t = a_t z + b_t eps
    eps_hat = CFG over the clip, one prompt per clip (the first view's)
    g   = w(t) (eps_hat - eps)
    g   <- mean_F(g) + m (g - mean_F(g))           # motion amplification (m = 1: off)
    loss_video_sds = surrogate(z, g)

The prior must be a text-to-video model (``DDPMPrior.video``: zeroscope / ModelScope's UNet3D or an
AnimateDiff motion UNet); an image prior is refused at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import GuidanceInput, surrogate
from .clip_noise import clip_noise
from .frame_prompts import check_frame_prompts, frame_conditioning, frame_uncond, per_frame
from .score import ScoreGuidance


class VideoSDSGuidance(ScoreGuidance):
    @dataclass
    class Config(ScoreGuidance.Config):
        frames: int = 8
        """F: consecutive views of the batch that form one clip (the batch size must be a multiple)."""
        grad_frames: int = 0
        """Frames per clip whose VAE encoding keeps its gradient (4D-fy's ``low_ram_vae``); 0: all."""
        motion_amplification: float = 1.0
        """``m`` in ``mean_F(g) + m (g - mean_F(g))``: above 1 strengthens the motion part of the gradient."""
        frame_prompts: list[str] = field(default_factory=list)
        """One template per frame, each with ``{prompt}`` (AnimateDiff's per-frame prompts): frame k of every clip
        reads ``frame_prompts[k]`` with the run's prompt (its view prompt when ``view_dependent``) filled in, e.g. a
        toy video prior trained with ``--frame-words`` reads ``"{prompt} frame zero"`` … ``"{prompt} frame seven"``.
        Needs a prior that reads a caption per frame (``UNetMotionModel``); empty: one caption per clip."""
        frame_noise_share: float = 0.0
        """Share of the added noise's variance common to a clip's frames (``clip_noise.py``): near 1 the frames'
        gradients differ only where their renders and captions do, for a prior whose frames are denoised on their own."""

    def __init__(self, cfg: "VideoSDSGuidance.Config", prior=None):
        if cfg.frames < 1 or cfg.grad_frames < 0 or cfg.grad_frames > cfg.frames:
            raise ValueError(f"video_sds: frames must be >= 1 and 0 <= grad_frames <= frames, got {cfg.frames} and {cfg.grad_frames}")
        if not 0.0 <= cfg.frame_noise_share <= 1.0:
            raise ValueError(f"video_sds: frame_noise_share is a share of the noise's variance in [0, 1], got {cfg.frame_noise_share}")
        if cfg.motion_amplification < 0:
            raise ValueError(f"video_sds: motion_amplification must be >= 0 (1: off), got {cfg.motion_amplification}")
        super().__init__(cfg, prior)
        if not getattr(self.prior, "video", False):
            raise ValueError(f"video_sds needs a text-to-video prior (a UNet3DConditionModel or UNetMotionModel under unet/); "
                             f"{cfg.prior.model} has a {type(self.prior.denoiser).__name__}")
        if cfg.frame_prompts:
            check_frame_prompts(cfg.frame_prompts, cfg.frames, self.prior, "video_sds")
        self._frame_table = None  # (view texts, Conditioning [V,F,L,D])
        self._negative_table = None  # (negative text, Conditioning [1,F,L,D])

    def clips(self, rgb: torch.Tensor) -> torch.Tensor:
        """Renders ``[N*F,3,H,W]`` -> model-space clips ``[N,C,F,h,w]``, gradient through ``grad_frames`` per clip."""
        F_, k = self.cfg.frames, self.cfg.grad_frames
        if rgb.shape[0] % F_:
            raise ValueError(f"video_sds: the batch of {rgb.shape[0]} views is not a whole number of {F_}-frame clips; "
                             f"set data.batch_size to a multiple of {F_}")
        N = rgb.shape[0] // F_
        if k and k < F_:
            keep = torch.zeros(N, F_, dtype=torch.bool)
            keep[torch.arange(N)[:, None], torch.rand(N, F_).argsort(1)[:, :k]] = True
            keep = keep.flatten().to(rgb.device)
            with torch.no_grad():
                z_all = self.model_input(rgb[~keep])
            z_grad = self.model_input(rgb[keep])
            z = torch.empty((rgb.shape[0], *z_grad.shape[1:]), device=z_grad.device, dtype=z_grad.dtype)
            z = z.index_put((torch.nonzero(~keep).squeeze(1),), z_all).index_put((torch.nonzero(keep).squeeze(1),), z_grad)
        else:
            z = self.model_input(rgb)
        return z.reshape(N, F_, *z.shape[1:]).transpose(1, 2)  # [N,C,F,h,w]

    def forward(self, inp: GuidanceInput, prompts, step: int) -> dict:
        self._sync(step)
        z = self.clips(inp.rgb)
        N = z.shape[0]
        t = self.sampler.sample(N)
        g = self.clip_gradient(z, t, prompts, inp.cameras[:: self.cfg.frames])  # one prompt per clip: its first view's
        loss, stats = surrogate(z, g, self.grad_clip)
        return {"loss_video_sds": loss, **stats, **self.stats(t)}

    @torch.no_grad()
    def clip_gradient(self, z: torch.Tensor, t: torch.Tensor, prompts, first_views) -> torch.Tensor:
        """``g`` on clips ``z`` ``[N,C,F,h,w]`` at levels ``t`` ``[N]``, motion-amplified."""
        eps = clip_noise(z.shape, self.cfg.frame_noise_share, device=z.device, dtype=z.dtype)
        x_t = self.prior.add_noise(z.detach(), eps, t)
        cond, uncond = prompts.select(first_views, self.cfg.view_dependent)
        if self.cfg.frame_prompts:
            cond, uncond = self.frame_conditioning(prompts, first_views), self.frame_negative(prompts, uncond)
        pred = self.prior.predict_guided(x_t, t, cond, uncond, self.guidance_scale)
        g = self.weight(t, z.dim()) * (pred.eps - eps)
        m = self.cfg.motion_amplification
        if m != 1.0:
            mean = g.mean(2, keepdim=True)
            g = mean + m * (g - mean)
        return g

    def frame_negative(self, prompts, uncond):
        """``[N,F,L,D]``: the negative prompt's frame captions (embedded once), or ``uncond`` repeated per frame."""
        if not prompts.negative_text:
            return per_frame(uncond, self.cfg.frames)
        if self._negative_table is None or self._negative_table[0] != prompts.negative_text:
            self._negative_table = (prompts.negative_text, frame_uncond(self.prior, prompts.negative_text, self.cfg.frame_prompts, uncond[:1]))
        return self._negative_table[1].to(uncond.emb.device).expand(len(uncond))

    def frame_conditioning(self, prompts, first_views):
        """``[N,F,L,D]``: each clip's frame captions, its (view) prompt put into ``frame_prompts``; embedded once per prompt."""
        vd = self.cfg.view_dependent
        texts = tuple(prompts.view_texts) if vd else (prompts.text,)
        if self._frame_table is None or self._frame_table[0] != texts:
            self._frame_table = (texts, frame_conditioning(self.prior, texts, self.cfg.frame_prompts))
        idx = prompts.view_indices(first_views) if vd else torch.zeros(len(first_views.azimuth_deg), dtype=torch.long)
        return self._frame_table[1][idx.to(self._frame_table[1].device)]
