"""Writes that fail half-way leave the previous file intact and nothing partial under the final name;
a full disk ends a run with one line naming the file and the filesystem.

The full-disk tests mount a small tmpfs (root in a container, as on this project's machines and CI)
and skip, saying why, where mounting is not permitted.
"""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from threedgen.export.files import write_files
from threedgen.systems.callbacks import atomic_save_checkpoint
from threedgen.utils.atomic import DiskError, staged_path

ROOT = Path(__file__).resolve().parents[1]


class _HalfThenFail:
    """Fault injection: a checkpoint writer that writes half the bytes of a real save, then raises."""

    def __init__(self, payload: bytes, exc: BaseException):
        self.payload, self.exc = payload, exc

    def save_checkpoint(self, path):
        with open(path, "wb") as fh:
            fh.write(self.payload[: len(self.payload) // 2])
        raise self.exc


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("exc", [RuntimeError("encoder crashed"), KeyboardInterrupt()])
def test_checkpoint_failing_half_way_keeps_the_previous_one(tmp_path, exc):
    path = tmp_path / "ckpts" / "last.ckpt"
    path.parent.mkdir()
    torch.save({"global_step": 3}, path)
    before = path.read_bytes()
    with pytest.raises(type(exc)):
        atomic_save_checkpoint(_HalfThenFail(b"x" * 1000, exc), path)
    assert path.read_bytes() == before and torch.load(path, weights_only=False)["global_step"] == 3
    assert _leftovers(path.parent) == []


def test_export_failing_half_way_keeps_every_previous_file(tmp_path, monkeypatch):
    write_files(tmp_path, {"model.glb": b"old glb", "model.obj": b"old obj"})

    real_fdopen = os.fdopen
    calls = []

    def failing_fdopen(fd, mode="r", *a, **k):  # the second file's write dies after half its bytes
        fh = real_fdopen(fd, mode, *a, **k)
        calls.append(fh)
        if len(calls) == 2:
            def write(data, _w=fh.write):
                _w(data[: len(data) // 2])
                raise OSError(5, "Input/output error")
            fh.write = write
        return fh

    monkeypatch.setattr(os, "fdopen", failing_fdopen)
    with pytest.raises(OSError, match="Input/output"):
        write_files(tmp_path, {"model.glb": b"new glb" * 100, "model.obj": b"new obj" * 100})
    monkeypatch.undo()
    assert (tmp_path / "model.glb").read_bytes() == b"old glb"  # staged files are renamed only when all are written
    assert (tmp_path / "model.obj").read_bytes() == b"old obj"
    assert _leftovers(tmp_path) == [] and not any(p.name.startswith(".") for p in tmp_path.iterdir())


@pytest.fixture()
def small_disk(tmp_path):
    """A tmpfs mount of ``size`` kB, unmounted afterwards."""
    mounts = []

    def make(size_kb: int) -> Path:
        where = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(where)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'mount failed'}); needs root")
        mounts.append(where)
        return where

    yield make
    for m in mounts:
        subprocess.run(["umount", "--lazy", str(m)], capture_output=True)  # lazy: a writer torch left open must not keep it


def test_staged_write_on_a_full_disk_raises_a_disk_error_naming_it(small_disk):
    disk = small_disk(64)
    (disk / "state.pt").write_bytes(b"previous")
    with pytest.raises(DiskError) as e:
        with staged_path(disk / "state.pt") as tmp:
            torch.save({"a": torch.zeros(100_000)}, tmp)  # 400 kB into 64 kB: torch's own error is cryptic
    msg = str(e.value)
    assert "\n" not in msg and "the disk is full" in msg and f"mounted at {disk}" in msg and "state.pt" in msg
    assert (disk / "state.pt").read_bytes() == b"previous" and _leftovers(disk) == []


TINY = """
name: tiny
seed: 0
trainer: {max_steps: 40, val_every: 0, log_every: 2, ckpt_every: 3, test_views: 4, test_resolution: 24}
data: {batch_size: 2, width: 16, height: 16}
system:
  prompt: a red sphere
  representation: {name: nerf, grid: {n_levels: 4, log2_hashmap_size: 12, base_resolution: 8, max_resolution: 32}, mlp_width: 16}
  renderer: {name: volume, num_samples_per_ray: 16, occupancy_grid: false}
  background: {name: solid}
  guidance:
    - {name: photometric, target: a red sphere}
"""


def test_training_onto_a_full_disk_exits_with_one_line_and_keeps_the_last_checkpoint(tmp_path, small_disk):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def launch(out, *extra):
        return subprocess.run([sys.executable, str(ROOT / "launch.py"), "--config", str(recipe), "--train", "-q",
                               f"output_dir={out}", *extra], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    r = launch(tmp_path / "probe", "trainer.max_steps=3", "trainer.export_at_end=false")  # how big is a checkpoint?
    assert r.returncode == 0, r.stderr[-2000:]
    size = next((tmp_path / "probe").rglob("last.ckpt")).stat().st_size
    # room for config.yaml, metrics.csv and one checkpoint, not for the next one staged beside it
    disk = small_disk(int(size * 1.5) // 1024 + 16)
    r = launch(disk, "trainer.export_at_end=false")
    assert r.returncode == 1, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not write ") and "last.ckpt: the disk is full" in last and f"mounted at {disk}" in last
    assert "Traceback" not in r.stderr
    ckpt = next(disk.rglob("ckpts/last.ckpt"))
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 3
    assert not [p for p in disk.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_get_the_permissions_of_a_plain_write(tmp_path, umask):
    """Staged writes used to come from mkstemp (0o600): exports that another user or a web server
    could not read. Now every writer gives what ``open(path, "w")`` would under the umask."""
    from threedgen.utils.atomic import write_bytes

    old = os.umask(umask)
    try:
        write_bytes(tmp_path / "a.bin", b"x")
        write_files(tmp_path / "export", {"model.glb": b"glb", "viewer.html": b"<html>"})
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    want = (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert want == 0o666 & ~umask
    for p in (tmp_path / "a.bin", tmp_path / "export" / "model.glb", tmp_path / "export" / "viewer.html"):
        assert p.stat().st_mode & 0o777 == want, (p, oct(p.stat().st_mode))
    assert not list(tmp_path.rglob("*.tmp"))  # nothing staged is left behind
