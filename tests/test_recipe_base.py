"""A recipe may name a ``base:`` recipe and state only what differs (configs/toy/*-nerf.yaml)."""

import pytest

from threedgen.config import ConfigError, load_config, load_raw


def test_variant_merges_over_its_base(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "name: base-name\ntrainer: {max_steps: 50, log_every: 5}\n"
        "system:\n  prompt: a cube\n  guidance:\n    - {name: sds, guidance_scale: 7.5}\n"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text(
        "base: ../a.yaml\ntrainer: {max_steps: 7}\nsystem:\n  guidance:\n    - {name: csd, coef_null: -1.0}\n"
    )
    raw = load_raw(tmp_path / "sub" / "b.yaml", ["trainer.log_every=3"])
    assert raw["name"] == "b"  # named after the variant, not the base
    assert raw["trainer"] == {"max_steps": 7, "log_every": 3}
    assert raw["system"]["prompt"] == "a cube"
    assert [g["name"] for g in raw["system"]["guidance"]] == ["csd"]  # lists replace
    cfg, _ = load_config(tmp_path / "sub" / "b.yaml")
    assert cfg.system.cfg.guidance[0].name == "csd" and cfg.trainer.max_steps == 7


def test_base_errors_name_the_file(tmp_path):
    (tmp_path / "loop.yaml").write_text("base: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_raw(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="the base of"):
        load_raw(tmp_path / "orphan.yaml")
    (tmp_path / "bad.yaml").write_text("base: [1]\n")
    with pytest.raises(ConfigError, match="base: expected the path"):
        load_raw(tmp_path / "bad.yaml")
