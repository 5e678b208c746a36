"""Shared fixtures: the hub is offline for every test, prompt embeddings go to a temporary cache,
and tiny random diffusion models (tests/tiny_models.py) are built once per session."""

from __future__ import annotations

import os

# Set before anything imports huggingface_hub (it reads these once, at import time).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# Under pytest-xdist (the README's `-n 2`) each worker, and each run it starts, takes its share of the cores:
# two workers at two torch threads each would make every test slower than one alone.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _CORES // _WORKERS)))
    import torch  # noqa: E402  (in case a plugin imported it before the variable was set)

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import tiny_models  # noqa: E402

TOY_PRIOR = Path(__file__).resolve().parents[1] / "assets" / "toy-prior"


@pytest.fixture
def toy_prior_present():
    """The committed toy prior (and its classifier) must be there: a test that needs it fails, never skips."""
    for sub in ("unet", "text_encoder", "tokenizer", "scheduler", "classifier"):
        if not (TOY_PRIOR / sub).is_dir():
            pytest.fail(f"assets/toy-prior/{sub}/ is missing: the toy prior is committed with the repository; "
                        "restore it with `git checkout -- assets/toy-prior` (or retrain: python -m threedgen.toy.train_prior)")
    return TOY_PRIOR


@pytest.fixture(autouse=True)
def _offline_and_tmp_embedding_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("THREEDGEN_EMBEDDING_CACHE", str(tmp_path / "text-embeddings"))
    monkeypatch.setenv("THREEDGEN_CACHE", str(tmp_path / "threedgen-cache"))  # toy scenes (toy/scene_builder.py)


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory):
    """Stable-Diffusion-layout folder: AutoencoderKL + 4-channel UNet + CLIP, epsilon prediction."""
    return tiny_models.build_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_sd_v_path(tmp_path_factory):
    """The same with a v-prediction scheduler config."""
    return tiny_models.build_sd(tmp_path_factory.mktemp("tiny-sd-v"), prediction_type="v_prediction")


@pytest.fixture(scope="session")
def tiny_pixel_path(tmp_path_factory):
    """Pixel-space 3-channel UNet without a VAE (the toy prior's layout)."""
    return tiny_models.build_pixel(tmp_path_factory.mktemp("tiny-pixel"))


@pytest.fixture(scope="session")
def tiny_if_path(tmp_path_factory):
    """DeepFloyd-IF-like: pixel space, T5 text encoder, 6 output channels."""
    return tiny_models.build_if(tmp_path_factory.mktemp("tiny-if"))


@pytest.fixture(scope="session")
def tiny_sd3_path(tmp_path_factory):
    """SD3-shaped flow-matching model: SD3Transformer2DModel, two CLIPs + T5, FlowMatchEuler shift 3."""
    return tiny_models.build_sd3(tmp_path_factory.mktemp("tiny-sd3"))


@pytest.fixture(scope="session")
def tiny_sd_inpaint_path(tmp_path_factory):
    """SD-inpainting layout (9-channel UNet), no ControlNet of its own."""
    return tiny_models.build_sd_inpaint(tmp_path_factory.mktemp("tiny-sd-inpaint"), with_controlnet=False)


@pytest.fixture(scope="session")
def tiny_controlnet_path(tmp_path_factory):
    """A ControlNet of the tiny SD layout, saved as a single-model folder (like a hub ControlNet repo)."""
    path = tmp_path_factory.mktemp("tiny-controlnet")
    tiny_models.controlnet(4, (8, 16)).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_video_path(tmp_path_factory):
    """A zeroscope-layout text-to-video model: UNet3DConditionModel, VAE, CLIP text encoder."""
    return tiny_models.build_video(tmp_path_factory.mktemp("tiny-video"))


@pytest.fixture(scope="session")
def tiny_qwen_vl_path(tmp_path_factory):
    """A Qwen2.5-VL folder: model, Qwen2 tokenizer with a chat template, PIL image processor config."""
    import tiny_critics

    return tiny_critics.build_qwen_vl(tmp_path_factory.mktemp("tiny-qwen-vl"))


@pytest.fixture(scope="session")
def flow_prior(tiny_sd3_path):
    from threedgen.guidance.model_folder import PriorConfig
    from threedgen.guidance.priors import get_prior

    return get_prior(PriorConfig(model=str(tiny_sd3_path), device="cpu"))


def _prior(path):
    from threedgen.guidance.ddpm_prior import DDPMPrior
    from threedgen.guidance.model_folder import PriorConfig

    return DDPMPrior(PriorConfig(model=str(path), device="cpu"))


@pytest.fixture(scope="session")
def sd_prior(tiny_sd_path):
    return _prior(tiny_sd_path)


@pytest.fixture(scope="session")
def sd_v_prior(tiny_sd_v_path):
    return _prior(tiny_sd_v_path)


@pytest.fixture(scope="session")
def pixel_prior(tiny_pixel_path):
    return _prior(tiny_pixel_path)


@pytest.fixture(scope="session")
def if_prior(tiny_if_path):
    return _prior(tiny_if_path)
