"""The shipped toy prior and classifier load offline through ``from_pretrained`` and behave."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


PRIOR = Path(__file__).resolve().parents[1] / "assets" / "toy-prior"

needs_prior = needs_classifier = pytest.mark.usefixtures("toy_prior_present")


@needs_prior
def test_prior_folder_loads_offline_and_samples(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from threedgen.toy.sample import load_prior, sample

    index = json.loads((PRIOR / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    prior = load_prior(PRIOR)
    assert prior.scheduler.config.clip_sample is False and prior.scheduler.config.beta_schedule == "scaled_linear"
    assert prior.tokenizer.tokenize("a red cube, front view") == [
        w + "</w>" for w in ("a", "red", "cube", ",", "front", "view")
    ]
    x = sample(prior, ["a red cube", "a blue torus, back view"], steps=2)
    assert x.shape == (2, 3, 32, 32) and 0 <= x.min() and x.max() <= 1


@needs_classifier
def test_classifier_names_fresh_renders():
    from threedgen.toy.classifier import HEADS, classify, load_classifier, render_labelled

    clf = load_classifier(PRIOR / "classifier")
    data = render_labelled(views_per_scene=2, seed=12345)
    pred = classify(clf, data["rgb"])
    # marker visibility is ambiguous at grazing angles (label: >= 1 pixel of the dot in view)
    for k, floor in (("shape", 0.95), ("colour", 0.95), ("marker", 0.85)):
        acc = (pred[k] == data[k]).float().mean().item()
        assert acc >= floor, f"{k}: {acc:.3f}"
    assert pred["shape_prob"].shape == (140, len(HEADS["shape"]))
    assert torch.equal(pred["shape"], pred["shape_prob"].argmax(-1))


@needs_prior
def test_fine_tuning_starts_from_the_shipped_weights_and_shape_weights_are_checked(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from diffusers import UNet2DConditionModel

    from threedgen.toy.tokenizer import build_text_encoder, build_tokenizer
    from threedgen.toy.train_prior import _load_weights, build_unet, image_weights

    unet, te = build_unet(seed=5), build_text_encoder(build_tokenizer(), seed=5)
    shipped = UNet2DConditionModel.from_pretrained(PRIOR / "unet").state_dict()
    assert not torch.equal(unet.state_dict()["conv_in.weight"], shipped["conv_in.weight"])
    _load_weights(PRIOR, unet, te)
    assert all(torch.equal(v, shipped[k]) for k, v in unet.state_dict().items())
    with pytest.raises(SystemExit, match="not a prior folder"):
        _load_weights(PRIOR / "unet", unet, te)

    shapes = torch.tensor([0, 1, 0, 4])  # world.SHAPES order: cube, sphere, cylinder, cone, torus
    assert image_weights(shapes, []) is None
    assert image_weights(shapes, ["cube=2", "torus=0.5"]).tolist() == [2.0, 1.0, 2.0, 0.5]
    for bad in ("cubes=2", "cube=0", "cube", "cube=x"):
        with pytest.raises(SystemExit, match="SHAPE=W"):
            image_weights(shapes, [bad])


def test_outline_iou_scores_true_silhouettes_high_and_wrong_ones_low():
    from threedgen.data.cameras import RandomCameraSampler
    from threedgen.toy import world as W
    from threedgen.toy.evaluate_prior import outline_iou
    from threedgen.toy.render import render_scene

    cams = RandomCameraSampler(W.TOY_CAMERAS, seed=7).sample(0, batch_size=4).with_resolution(32, 32)
    cube = render_scene(W.ToyScene("cube", "red"), cams, ssaa=2)["rgb"]
    sphere = render_scene(W.ToyScene("sphere", "red"), cams, ssaa=2)["rgb"]
    blank = torch.ones(1, 3, 32, 32)
    box = torch.ones(1, 3, 32, 32)
    box[..., 2:30, 2:30] = 0.3  # a frame-filling blob
    imgs = torch.cat([cube, sphere, blank, box])
    shape = torch.tensor([0] * 4 + [1] * 4 + [0, 0])
    per = outline_iou(imgs[:8], shape[:8], bank=128)
    assert per["cube"] > 0.85 and per["sphere"] > 0.95
    wrong = outline_iou(torch.cat([sphere, blank, box]), torch.tensor([0] * 4 + [0, 0]), bank=128)
    assert wrong["cube"] < per["cube"] - 0.1
    assert outline_iou(blank, torch.tensor([0]), bank=16)["cube"] == 0.0
