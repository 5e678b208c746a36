"""Independent references for the score-objective tests (``test_score_objectives.py``, ``test_cds.py``):
one-off diffusers UNet calls, the scheduler's own alphas, DDIM steps and inversion built by hand, so each
objective's gradient is checked against its spec and not against the code under test.

The pixel prior works at its native 16x16, so ``z = 2 rgb - 1`` and ``d loss / d rgb = 2 g / B``.
"""

import os

import torch

from threedgen import registry
from threedgen.config import from_dict
from threedgen.data.cameras import make_cameras
from threedgen.guidance.base import GuidanceInput
from threedgen.prompts.processor import PromptProcessor

B = 2


def _guidance(name, prior, **kw):
    cls = registry.get("guidance", name)
    return cls(from_dict(cls.Config, {"prior": {"model": prior.model_id, "device": "cpu"}, **kw}), prior=prior)


def pixel_prompts(pixel_prior, tmp_path_factory):
    """The prompt bundle the tests score against ("a red cube", negative "ugly"), embeddings cached per module."""
    os.environ["THREEDGEN_EMBEDDING_CACHE"] = str(tmp_path_factory.mktemp("emb"))
    return PromptProcessor(PromptProcessor.Config(prompt="a red cube", negative_prompt="ugly")).bundle(pixel_prior)


def _cams():
    return make_cameras(15.0, torch.tensor([0.0, 120.0]), 2.0, 50.0, 16, 16)


def _image(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Parameter(torch.rand(B, 3, 16, 16) * 0.6 + 0.2)


def _run(g, image, prompts, step=0, seed=1):
    """One forward + backward under a fixed seed; returns (outputs, d loss / d image)."""
    image.grad = None
    torch.manual_seed(seed)
    out = g(GuidanceInput(rgb=image, cameras=_cams()), prompts, step)
    (loss,) = [v for k, v in out.items() if k.startswith("loss_")]
    loss.backward()
    return out, image.grad.clone()


# ---- independent references: raw UNet calls and the scheduler table --------------------------


def _eps(prior, x, t, emb):
    """One un-batched call straight to the diffusers UNet (the pixel prior predicts epsilon)."""
    t = torch.as_tensor(t).long().reshape(-1).clamp_min(0).expand(x.shape[0])
    with torch.no_grad():
        return prior.unet(x, t, encoder_hidden_states=emb.expand(x.shape[0]).emb).sample.float()


def _ab(prior, t):
    t = torch.as_tensor(t).long().reshape(-1)
    ac = prior.scheduler.alphas_cumprod.double()[t.clamp_min(0)]
    ac = torch.where(t < 0, torch.ones_like(ac), ac)
    return ac.sqrt().float().view(-1, 1, 1, 1), (1 - ac).sqrt().float().view(-1, 1, 1, 1)


def _ddim(prior, x, eps, t_cur, t_next):
    a, b = _ab(prior, t_cur)
    a_n, b_n = _ab(prior, t_next)
    return a_n * (x - b * eps) / a + b_n * eps


def _cfg(prior, x, t, cond, uncond, s):
    e_c, e_u = _eps(prior, x, t, cond), _eps(prior, x, t, uncond)
    return e_u + s * (e_c - e_u)


def _invert(prior, z, levels, eps_fn):
    x = z
    for cur, nxt in zip(levels[:-1], levels[1:]):
        e = eps_fn(x, cur)
        x = _ddim(prior, x, e, cur, nxt)
    return x, e


def _close(grad, g, rtol=1e-4):
    ref = 2 * g / B
    assert torch.allclose(grad, ref, rtol=rtol, atol=rtol * ref.abs().max()), (grad - ref).abs().max()


class _UnetCalls:
    def __init__(self, unet):
        self.batches = []
        self._h = unet.register_forward_hook(lambda m, i, o: self.batches.append(i[0].shape[0]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._h.remove()
