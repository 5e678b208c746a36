"""The toy world for scene edits (issue 19): toy Gaussian scenes, the inpainting training views, the
widened-UNet start of the toy inpainting prior, and the judge of its quality gates."""

import numpy as np
import pytest
import torch

import threedgen.toy.world as W
from threedgen.data.cameras import make_cameras
from threedgen.edit.box import EditBox
from threedgen.edit.scene_ply import read_splat_ply
from threedgen.renderers.background import SolidBackground
from threedgen.renderers.gaussian import GaussianRenderer
from threedgen.toy.scene_builder import LAYOUTS, insert_box, toy_scene_path


def test_toy_scene_is_built_once_reads_back_and_leaves_the_box_free(tmp_path, monkeypatch):
    monkeypatch.setenv("THREEDGEN_CACHE", str(tmp_path))
    path = toy_scene_path("toy:pair")
    assert path.parent == tmp_path / "toy-scenes" and toy_scene_path("toy:pair") == path
    d = read_splat_ply(path)
    box = EditBox.parse(insert_box())
    means = torch.from_numpy(d["means"])
    above_ground = means[:, 1] > -0.2 + 0.01
    assert not box.contains(means[above_ground]).any()  # objects stand outside the insert box
    box.check_in_scene(means)
    for name, layout in LAYOUTS.items():
        for p in layout:
            assert p.shape in W.SHAPES and p.colour in W.COLOURS, name
    with pytest.raises(ValueError, match="unknown toy scene 'nope'; toy scenes: toy:pair, toy:row"):
        toy_scene_path("toy:nope")


def test_toy_scene_renders_its_objects_in_their_colours(tmp_path, monkeypatch):
    monkeypatch.setenv("THREEDGEN_CACHE", str(tmp_path))
    from threedgen.edit.scene import SceneWithObject
    from threedgen.config import from_dict

    rep = SceneWithObject(from_dict(SceneWithObject.Config, {"scene": "toy:pair", "box": insert_box(),
                                                             "object": {"num_points": 10, "init_opacity": 0.01}}))
    cams = make_cameras([20], [0], 1.6, 50, 48, 48)
    with torch.no_grad():
        out = GaussianRenderer(GaussianRenderer.Config())(rep, cams, SolidBackground(SolidBackground.Config(color=(1, 1, 1))))
    img = out.rgb[0]
    left, right = img[:, 20:30, 6:18], img[:, 20:30, 30:42]  # the red cube at x = -0.4, the blue sphere at +0.4
    assert left[0].mean() > 0.4 > left[2].mean() and right[2].mean() > 0.4 > right[0].mean()


def test_edit_dataset_fields(tmp_path, monkeypatch):
    from threedgen.toy.edit_dataset import build_edit_dataset

    scenes = W.all_scenes()
    monkeypatch.setattr(W, "all_scenes", lambda: scenes[:4])  # two no-marker scenes
    ds = build_edit_dataset(layouts_per_object=1, views_per_layout=3, points=400)
    assert ds["images"].shape == (6, 3, 32, 32) and ds["images"].dtype == torch.uint8
    for k in ("disparity", "object_alpha", "box_mask"):
        assert ds[k].shape == (6, 1, 32, 32), k
    obj, box = ds["object_alpha"] > 128, ds["box_mask"] > 128
    assert obj.flatten(1).any(1).all() and (obj & ~box).sum() < 0.1 * obj.sum()  # the centre object lies in the box
    assert sorted(set(ds["scene"].tolist())) == [0, 2]


def test_widened_inpaint_unet_starts_as_the_base_model():
    import tiny_models
    from threedgen.toy.train_inpaint import inpaint_unet_from

    base = tiny_models.unet(3, 3, sample_size=16)
    wide = inpaint_unet_from(base)
    assert wide.config.in_channels == 7
    x, t, emb = torch.randn(2, 3, 16, 16), torch.tensor([10, 500]), torch.randn(2, 77, tiny_models.TEXT_DIM)
    extra = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(wide(torch.cat([x, extra], 1), t, emb).sample, base(x, t, emb).sample)


def test_inpaint_judge_scores_the_truth_high_and_a_blank_fill_zero():
    from threedgen.toy.evaluate_inpaint import _judge, pixel_colours

    truth = torch.ones(2, 3, 16, 16)
    truth[:, :, 8:] = torch.tensor([0.6, 0.6, 0.6]).view(1, 3, 1, 1) * 0.8  # lit ground
    obj = torch.zeros(2, 1, 16, 16)
    obj[:, :, 4:12, 5:11] = 1
    red, blue = torch.tensor(W.COLOURS["red"]), torch.tensor(W.COLOURS["blue"])
    truth[0] = torch.where(obj[0] > 0, (red * 0.7).view(3, 1, 1), truth[0])
    truth[1] = torch.where(obj[1] > 0, (blue * 0.5).view(3, 1, 1), truth[1])
    hole = torch.zeros_like(obj)
    hole[:, :, 2:14, 3:13] = 1
    idx = torch.tensor([W.COLOUR_NAMES.index("red"), W.COLOUR_NAMES.index("blue")])
    assert pixel_colours(truth)[0, 0, 0] == len(W.COLOUR_NAMES)  # the sky is no palette colour
    right, iou = _judge(truth, truth, obj, hole, idx)
    assert right.all() and (iou == 1).all()
    blank = truth * (1 - hole) + 0.6 * 0.8 * hole
    right, iou = _judge(blank, truth, obj, hole, idx)
    assert (iou == 0).all() and not right.any()
    swapped = truth.flip(0)
    right, _ = _judge(swapped, truth, obj, hole, idx)
    assert not right.any()
    np.testing.assert_equal(sorted(set(pixel_colours(swapped).flatten().tolist())), [0, 2, len(W.COLOUR_NAMES)])
