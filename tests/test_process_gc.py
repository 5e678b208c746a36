"""The garbage-collector phases of a launch.py process (threedgen/utils/process_gc.py).

The program runs its start-up with the collector off. It freezes what the imports made and turns the
collector back on before the first system is built, so a system's cycles stay collectable. Before it
exits, it freezes everything. An in-process ``cli.main(argv)`` (tests, the web app) leaves the
collector as it found it.
"""

import gc
import json
import subprocess
import sys
from pathlib import Path

from test_fuzz_inputs import TINY  # a two-step photometric NeRF: no prior to load
from threedgen import cli

ROOT = Path(__file__).resolve().parents[1]

# Runs the program's entry (cli.main with no argv, as launch.py does) and records the collector's state
# when the first system is about to be built, just after it is built, and after main returns.
PROBE = """
import gc, json, sys
from threedgen import cli
from threedgen.systems import runner
seen = {}
build = runner.build_system
def probe(stage_cfg):
    seen.setdefault("before_build", [gc.isenabled(), gc.get_freeze_count()])
    system = build(stage_cfg)
    seen.setdefault("after_build", [gc.isenabled(), gc.get_freeze_count()])
    return system
runner.build_system = probe
sys.argv = ["launch.py"] + sys.argv[1:]
code = cli.main()
seen["code"] = code
seen["after_main"] = [gc.isenabled(), gc.get_freeze_count(), len(gc.get_objects())]
print("PROBE " + json.dumps(seen))
"""


def test_program_collects_nothing_during_startup_and_freezes_for_exit(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY)
    out = subprocess.run([sys.executable, "-c", PROBE, "--config", str(recipe), "--train", "-q", f"output_dir={tmp_path / 'out'}"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    line = [x for x in out.stdout.splitlines() if x.startswith("PROBE ")]
    assert out.returncode == 0 and line, out.stderr[-2000:]
    seen = json.loads(line[0][len("PROBE "):])
    assert seen["code"] == 0
    assert seen["before_build"] == [False, 0]  # the imports ran with the collector off and nothing frozen yet
    enabled, frozen = seen["after_build"]
    assert enabled and frozen > 100_000  # torch, Lightning and friends: frozen, then collection is back on
    enabled, frozen_at_exit, tracked = seen["after_main"]
    assert frozen_at_exit > frozen and tracked < 1_000  # everything alive at exit is frozen


def test_in_process_main_leaves_the_collector_alone(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY)
    before = gc.get_freeze_count()
    assert cli.main(["--config", str(recipe), "--train", "-q", f"output_dir={tmp_path / 'out'}"]) == 0
    assert gc.isenabled()
    assert gc.get_freeze_count() == before
