"""Shared fixtures: the hub is offline for every test, prompt embeddings go to a temporary cache,
and tiny random diffusion models (tests/tiny_models.py) are built once per session."""

from __future__ import annotations

import os

# Set before anything imports huggingface_hub (it reads these once, at import time).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402

import tiny_models  # noqa: E402


@pytest.fixture(autouse=True)
def _offline_and_tmp_embedding_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("THREEDGEN_EMBEDDING_CACHE", str(tmp_path / "text-embeddings"))


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


def _prior(path):
    from threedgen.guidance.prior import DiffusionPrior, PriorConfig

    return DiffusionPrior(PriorConfig(model=str(path), device="cpu"))


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
