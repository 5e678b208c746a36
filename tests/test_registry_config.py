"""Registry lookups and typed config validation: errors name the key path and suggest a fix."""

import subprocess
import sys
from pathlib import Path

import pytest

from threedgen import registry
from threedgen.config import ConfigError, from_dict, load_config, to_plain, validate
from threedgen.recipe_files import parse_overrides
from threedgen.renderers.background import MLPBackground, SolidBackground
from threedgen.schedule import Schedule

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("diffusers", "transformers", "gsplat", "nerfacc", "nvdiffrast", "tinycudann")


def test_unknown_name_lists_valid_names_and_closest_match():
    with pytest.raises(registry.RegistryError) as e:
        registry.get("guidance", "sdss")
    msg = str(e.value)
    assert "'sds'" in msg and "Valid guidance names" in msg


def test_unknown_category():
    with pytest.raises(registry.RegistryError, match="renderer"):
        registry.names("renderr")


def test_every_registered_module_imports_light_and_has_a_config():
    """Importing any module file (what config validation does) must not pull heavy libraries.

    The system category is exempt: it subclasses Lightning's module, and Lightning's torchmetrics
    imports transformers whenever it is installed.
    """
    code = (
        "import sys, importlib\n"
        "from threedgen import registry\n"
        "for cat in [c for c in registry.CATEGORIES if c != 'system']:\n"
        "    for n in registry.names(cat):\n"
        "        cls = registry.get(cat, n)\n"
        "        assert hasattr(cls, 'Config'), (cat, n)\n"
        f"bad = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('HEAVY', bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_import_threedgen_and_help_import_nothing_heavy():
    code = f"import sys, threedgen, threedgen.cli; print([m for m in {HEAVY + ('lightning',)!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "launch.py", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0 and "--config" in out.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "|" in line}
    assert not imported & set(HEAVY + ("torch",)), imported & set(HEAVY + ("torch",))


def test_from_dict_types_and_schedules():
    cfg = from_dict(MLPBackground.Config, {"hidden": 16, "lr": [0, 1e-3, 1e-4, 100]})
    assert cfg.hidden == 16 and isinstance(cfg.lr, Schedule) and cfg.lr(50) == pytest.approx(5.5e-4)
    assert from_dict(SolidBackground.Config, {"color": [0, 0, 0]}).color == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "data,expected",
    [
        ({"hiden": 3}, "hiden: unknown key; did you mean 'hidden'?"),
        ({"hidden": "wide"}, "hidden: expected int, got 'wide'"),
        ({"lr": "abc"}, "lr: expected float or schedule, got 'abc'"),
        ({"random_aug": [1]}, "random_aug: expected float, got [1]"),
    ],
)
def test_from_dict_errors_name_the_key(data, expected):
    with pytest.raises(ConfigError) as e:
        from_dict(MLPBackground.Config, data, "system.background")
    assert str(e.value).startswith("system.background." + expected.split(":")[0])
    assert expected.split(": ", 1)[1] in str(e.value)


def test_overrides_parse_dotted_paths_and_list_indices():
    o = parse_overrides(["system.guidance.0.guidance_scale=7.5", "a.b=[1, 2]", "system.prompt=a red cube"])
    assert o == {"system": {"guidance": {"0": {"guidance_scale": 7.5}}, "prompt": "a red cube"}, "a": {"b": [1, 2]}}


def _write(tmp_path, text):
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    return p


RECIPE = """
trainer: {max_steps: 3}
system:
  prompt: a red cube
  representation: {name: nerf}
  guidance:
    - name: photometric
      target: a red cube
  background: {name: solid}
"""


def test_load_config_full_paths(tmp_path):
    p = _write(tmp_path, RECIPE)
    cfg, raw = load_config(p, ["system.guidance.0.weight=[0, 1.0, 0.5, 10]", "trainer.max_steps=5"])
    assert cfg.name == "recipe" and cfg.trainer.max_steps == 5
    assert cfg.system.cfg.guidance[0].weight(10) == 0.5
    # the resolved config round-trips
    again = validate(to_plain(cfg))
    assert to_plain(again) == to_plain(cfg)
    with pytest.raises(ConfigError, match=r"^system.guidance.0.weight: expected float or schedule, got 'abc'"):
        load_config(p, ["system.guidance.0.weight=abc"])
    with pytest.raises(ConfigError, match=r"system.guidance.0.name: unknown guidance 'photometrc'.*'photometric'"):
        load_config(p, ["system.guidance.0.name=photometrc"])
    with pytest.raises(ConfigError, match=r"^trainer.max_step: unknown key; did you mean 'max_steps'"):
        load_config(p, ["trainer.max_step=5"])
    with pytest.raises(ConfigError, match=r"system.guidance.3: list index out of range"):
        load_config(p, ["system.guidance.3.weight=1"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_stage_overrides_are_validated_up_front(tmp_path):
    p = _write(tmp_path, RECIPE + "stages:\n  - {name: coarse, steps: 2}\n  - {name: fine, steps: 2, system: {renderer: {num_samples_per_rai: 3}}}\n")
    with pytest.raises(ConfigError, match=r"stages.1 \(fine\): system.renderer.num_samples_per_rai: unknown key"):
        load_config(p)


def test_numbers_are_read_as_people_write_them(tmp_path):
    """YAML 1.1 reads 1e-4 and 1e2 as strings; overrides and recipe files must take them as numbers."""
    from threedgen.config import load_config

    recipe = tmp_path / "r.yaml"
    recipe.write_text("base: " + str(ROOT / "configs" / "toy" / "sds-nerf.yaml") + "\nsystem:\n  representation: {lr_grid: 1e-2}\n")
    cfg, _ = load_config(recipe, ["system.guidance.0.guidance_scale=1e2", "system.representation.lr_mlp=5E-4", "trainer.max_steps=1e3"])
    sds = cfg.system.cfg.guidance[0].cfg
    assert float(sds.guidance_scale(0)) == 100.0 and cfg.trainer.max_steps == 1000
    rep = cfg.system.cfg.representation.cfg
    assert float(rep.lr_grid(0)) == 0.01 and float(rep.lr_mlp(0)) == 0.0005
