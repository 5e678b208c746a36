"""prior.cuda_graph: the frozen denoiser's no-grad calls replayed as CUDA graphs give the eager results,
and everything a graph cannot serve runs the plain forward (threedgen/guidance/cuda_graphs.py).

The replay itself needs a GPU (the ``gpu`` tests); the refusals and the CPU behaviour are checked anywhere."""

from __future__ import annotations

import pytest
import torch

from threedgen.config import from_dict
from threedgen.guidance.cuda_graphs import GraphedForward, graph_forward
from threedgen.guidance.ddpm_prior import DDPMPrior
from threedgen.guidance.model_folder import PriorConfig
from threedgen.guidance.priors import clear_prior_cache, get_prior
from threedgen.guidance.sds import SDSGuidance
from threedgen.prompts.processor import PromptProcessor

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_cuda_graph_is_refused_with_cpu_offload_or_compile():
    with pytest.raises(ValueError, match=r"prior.cuda_graph and prior.cpu_offload do not go together"):
        PriorConfig(cuda_graph=True, cpu_offload=True)
    with pytest.raises(ValueError, match=r"prior.cuda_graph and prior.compile do not go together"):
        PriorConfig(cuda_graph=True, compile=True)


def test_a_shared_prior_cannot_be_asked_for_both(tiny_pixel_path):
    clear_prior_cache()
    get_prior(PriorConfig(model=str(tiny_pixel_path), device="cpu", compile=True))
    with pytest.raises(ValueError, match="cuda_graph and prior.compile"):
        get_prior(PriorConfig(model=str(tiny_pixel_path), device="cpu", cuda_graph=True))
    clear_prior_cache()


def test_on_a_cpu_the_option_leaves_the_denoiser_as_it_is(tiny_pixel_path):
    prior = DDPMPrior(PriorConfig(model=str(tiny_pixel_path), device="cpu", cuda_graph=True))
    assert "forward" not in vars(prior.denoiser)  # nothing to capture on a CPU
    net = torch.nn.Linear(3, 2)
    wrapped = graph_forward(net)
    assert graph_forward(net) is wrapped and isinstance(net.forward, GraphedForward)
    x = torch.randn(4, 3)
    with torch.no_grad():
        out = net(x)
    assert torch.equal(out, x @ net.weight.t() + net.bias) and wrapped.replays == 0 and not wrapped.graphs


def _sd(path, **kw):
    return DDPMPrior(PriorConfig(model=str(path), device="cuda", dtype="fp32", **kw))


@pytest.mark.gpu
@cuda
def test_graphed_denoiser_predicts_as_the_eager_one(tiny_sd_path):
    eager, graphed = _sd(tiny_sd_path), _sd(tiny_sd_path, cuda_graph=True)
    wrapper = graphed.denoiser.forward
    assert isinstance(wrapper, GraphedForward)
    calls = []
    graphed.denoiser.register_forward_pre_hook(lambda *_: calls.append(1))  # hooks stay outside the graph
    emb = torch.randn(1, 77, eager.cond_width, device="cuda")
    for i, batch in enumerate([2, 2, 2, 3, 2]):  # a second shape gets its own graph; new inputs, new answers
        gen = torch.Generator(device="cuda").manual_seed(i)
        x = torch.randn(batch, 4, 8, 8, device="cuda", generator=gen)
        t = torch.randint(0, 1000, (batch,), device="cuda", generator=gen)
        with torch.no_grad():
            want, got = eager.predict(x, t, emb).eps, graphed.predict(x, t, emb).eps
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert len(calls) == 5 and len(wrapper.graphs) == 2 and wrapper.replays == 5 and wrapper.failed is None
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):  # another autocast state: another graph
        want, got = eager.predict(x, t, emb).eps, graphed.predict(x, t, emb).eps
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
    assert len(wrapper.graphs) == 3 and wrapper.replays == 6
    with torch.inference_mode():  # Lightning's validation: its own graph, whose buffers no_grad calls never write
        graphed.predict(x, t, emb)
    with torch.no_grad():
        torch.testing.assert_close(graphed.predict(x, t, emb).eps, eager.predict(x, t, emb).eps, atol=1e-4, rtol=1e-4)
    assert len(wrapper.graphs) == 4 and wrapper.replays == 8
    x = torch.randn(2, 4, 8, 8, device="cuda", requires_grad=True)
    graphed.predict(x, torch.tensor([5, 9], device="cuda"), emb).eps.sum().backward()  # with grad: the plain forward
    assert wrapper.replays == 8 and torch.isfinite(x.grad).all()


@pytest.mark.gpu
@cuda
def test_sds_step_on_a_graphed_prior_matches_and_vsd_lora_runs_its_own_network(tiny_sd_path):
    from threedgen.data.cameras import make_cameras
    from threedgen.guidance.base import GuidanceInput
    from threedgen.guidance.lora import CameraLoRA

    cams = make_cameras(15.0, torch.tensor([-90.0, 90.0]), 2.0, 50.0, 16, 16).to("cuda")
    grads = []
    for flag in (False, True):
        prior = _sd(tiny_sd_path, cuda_graph=flag)
        g = SDSGuidance(from_dict(SDSGuidance.Config, {"prior": {"model": str(tiny_sd_path), "device": "cuda"}}), prior=prior)
        prompts = PromptProcessor(PromptProcessor.Config(prompt="a red cube")).bundle(prior)
        rgb = torch.rand(2, 3, 16, 16, device="cuda", generator=torch.Generator(device="cuda").manual_seed(0), requires_grad=True)
        torch.manual_seed(3)
        g(GuidanceInput(rgb=rgb, cameras=cams), prompts, step=0)["loss_sds"].backward()
        grads.append(rgb.grad)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-4, rtol=1e-4)
    assert prior.denoiser.forward.replays >= 1
    lora = CameraLoRA(prior, rank=4).cuda()
    assert "forward" not in vars(lora.unet)  # the copy runs its own (adapted) network, not the prior's graphs
