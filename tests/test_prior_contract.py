"""The prior interface as a contract: every registered guidance runs on every kind of prior (pixel
epsilon, latent v-prediction, latent flow matching) through the same code, cameras and view groups
reach the prior, and no objective asks what kind of prior it holds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from threedgen import registry
from threedgen.config import from_dict
from threedgen.data.cameras import make_cameras
from threedgen.guidance.base import GuidanceInput
from threedgen.guidance.ddpm_prior import DDPMPrior
from threedgen.guidance.model_folder import PriorConfig
from threedgen.prompts.processor import PromptProcessor

ROOT = Path(__file__).resolve().parents[1]
PRIORS = ["pixel_prior", "sd_v_prior", "flow_prior"]
# photometric and the rewards use no prior (tests/test_reward.py); disds needs an inpainting prior and an
# edit mask (tests/test_disds.py); video_sds a text-to-video prior (tests/test_video_sds.py); clip_anchor fits a
# clip, sampling it only from a video prior (tests/test_clip_anchor.py)
SCORE_GUIDANCES = [n for n in registry.names("guidance")
                   if n not in ("photometric", "disds", "reward", "vlm_reward", "video_sds", "clip_anchor")]
B = 2


def _guidance(name, prior, **kw):
    cls = registry.get("guidance", name)
    return cls(from_dict(cls.Config, {"prior": {"model": prior.model_id, "device": "cpu"}, **kw}), prior=prior)


def _cams(n=B):
    return make_cameras(15.0, torch.linspace(0.0, 300.0, n), 2.0, 50.0, 16, 16)


@pytest.mark.parametrize("prior_fixture", PRIORS)
@pytest.mark.parametrize("name", SCORE_GUIDANCES)
def test_every_guidance_runs_on_every_kind_of_prior(name, prior_fixture, request, tmp_path, monkeypatch):
    """One forward + backward: a finite, non-zero gradient on the render, a ``loss_<name>`` key, and
    for VSD/ESD a LoRA that receives gradient (its loss is in the base model's parameterisation)."""
    monkeypatch.setenv("THREEDGEN_EMBEDDING_CACHE", str(tmp_path))
    prior = request.getfixturevalue(prior_fixture)
    prompts = PromptProcessor(PromptProcessor.Config(prompt="a red cube", negative_prompt="ugly")).bundle(prior)
    g = _guidance(name, prior)
    torch.manual_seed(0)
    rgb = torch.nn.Parameter(torch.rand(B, 3, 16, 16) * 0.6 + 0.2)
    out = g(GuidanceInput(rgb=rgb, cameras=_cams()), prompts, step=0)
    losses = {k: v for k, v in out.items() if k.startswith("loss_")}
    assert f"loss_{name}" in losses
    sum(losses.values()).backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    if name in ("vsd", "esd"):
        grads = [p.grad for p in g.lora.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(x).all() for x in grads) and sum(x.abs().sum() for x in grads) > 0
        assert g.lora_target == prior.parameterisation


class _RecordingPrior(DDPMPrior):
    """A tiny pixel prior that records and checks what reaches ``predict``: the levels and cameras."""

    def _denoise(self, x_t, level, cond, cameras, **kw):
        assert cameras is not None and len(cameras) == x_t.shape[0] == len(level) == len(cond)
        self.calls.append((level.clone(), cameras.c2w.clone()))
        return super()._denoise(x_t, level, cond, cameras, **kw)


def test_cameras_and_view_groups_reach_the_prior(tiny_pixel_path, tmp_path, monkeypatch):
    """SDS with ``views_per_level: 4`` on 8 views: one level per 4-view group, and the prior's CFG call
    (2B) receives the batch's cameras, conditional half then unconditional half."""
    monkeypatch.setenv("THREEDGEN_EMBEDDING_CACHE", str(tmp_path))
    prior = _RecordingPrior(PriorConfig(model=str(tiny_pixel_path), device="cpu"))
    prior.calls = []
    prompts = PromptProcessor(PromptProcessor.Config(prompt="a red cube")).bundle(prior)
    g = _guidance("sds", prior, views_per_level=4)
    cams = _cams(8)
    torch.manual_seed(3)
    g(GuidanceInput(rgb=torch.rand(8, 3, 16, 16, requires_grad=True), cameras=cams), prompts, step=0)
    ((level, c2w),) = prior.calls
    assert level.shape == (16,) and torch.equal(level[:8], level[8:])
    groups = level[:8].view(2, 4)
    assert (groups == groups[:, :1]).all() and groups[0, 0] != groups[1, 0]
    torch.testing.assert_close(c2w, torch.cat([cams.c2w, cams.c2w]))
    # the sampler on its own: groups of 3 over 7 views (the last group is short), 0 = one for all
    sampler = g.sampler
    sampler.views_per_level = 3
    t = sampler.sample(7, torch.Generator().manual_seed(0))
    assert t[:3].unique().numel() == 1 and t[3:6].unique().numel() == 1 and t[6:].numel() == 1
    sampler.views_per_level = 0
    assert sampler.sample(5).unique().numel() == 1
    with pytest.raises(ValueError, match="views_per_level"):
        _guidance("sds", prior, views_per_level=-1)


OBJECTIVES = ["sds", "vsd", "esd", "csd", "csm", "cds", "ism", "sdi", "score", "inversion", "timesteps", "lora"]
FORBIDDEN = [
    r"\.kind\b", r"isinstance\([^)]*Prior", r"FlowPrior|DDPMPrior", r"prediction_type", r"alphas_cumprod",
    r"num_train_timesteps", r"\.unet\b", r"\._t\(", r"randint", r"\.scheduler\b",
]


@pytest.mark.parametrize("module", OBJECTIVES)
def test_objectives_speak_only_the_prior_interface(module):
    """The objectives (and their shared helpers) never branch on, or reach into, a particular kind of
    prior: no kind checks, no scheduler tables, no UNet, no integer timestep draws."""
    src = (ROOT / "threedgen" / "guidance" / f"{module}.py").read_text()
    code = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith("#"))
    code = re.sub(r'"""(.|\n)*?"""', "", code)  # docstrings may name what they replace
    hits = [pat for pat in FORBIDDEN if re.search(pat, code)]
    assert not hits, f"guidance/{module}.py uses {hits}"


def test_docstrings_point_only_inside_the_repository():
    """A path a module's docstring points at must exist in the repository (no ``notes/`` outside it)."""
    missing = []
    for f in (ROOT / "threedgen").rglob("*.py"):
        for ref in re.findall(r"\b((?:notes|docs|configs|assets|benchmarks|scripts|tests)/[\w./-]+\.(?:md|py|yaml|json))", f.read_text()):
            if not (ROOT / ref).exists():
                missing.append(f"{f.relative_to(ROOT)}: {ref}")
    assert not missing, missing
