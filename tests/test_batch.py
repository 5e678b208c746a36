"""launch.py --prompts FILE (threedgen/batch.py): the file's rules checked before any training, one run
folder per prompt, a rerun skips finished prompts and continues an unfinished one, a summary table."""

from test_cli import TINY, launch


def _setup(tmp_path, lines):
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "prompts.txt").write_text("\n".join(lines) + "\n")


def test_bad_prompt_files_are_refused_before_any_training(tmp_path):
    for lines, needle in [(["a red sphere", "", "a blue cube", "A red sphere!"], "lines 1 and 4 give the same prompt"),
                          (["# nothing", "   "], "has no prompts"),
                          (["a red sphere", "a red dragon"], "dragon")]:
        _setup(tmp_path, lines)
        extra = ["system.guidance=[{name: sds, prior: {model: assets/toy-prior}}]"] if "a red dragon" in lines else []
        r = launch("--config", "tiny.yaml", "--prompts", "prompts.txt", *extra, cwd=tmp_path)
        assert r.returncode == 2, r.stderr[-1500:]
        assert r.stderr.count("\n") == 1 and needle in r.stderr
        assert not (tmp_path / "outputs").exists()
    r = launch("--config", "tiny.yaml", "--prompts", "missing.txt", cwd=tmp_path)
    assert r.returncode == 2 and "cannot be read" in r.stderr


def test_a_batch_runs_each_prompt_once_and_a_rerun_skips_or_continues(tmp_path):
    _setup(tmp_path, ["# two toy prompts", "a red sphere", "", "a blue cube"])
    args = ("--config", "tiny.yaml", "--prompts", "prompts.txt", "-q", "trainer.export_at_end=false")
    r = launch(*args, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    runs = sorted((tmp_path / "outputs" / "tiny").glob("*@*"))
    assert [p.name.split("@")[0] for p in runs] == ["a_blue_cube", "a_red_sphere"]
    table = (tmp_path / "outputs" / "tiny" / "batch-prompts.md").read_text()
    rows = [ln for ln in table.splitlines() if ln.startswith("| a ")]
    assert len(rows) == 2 and all("| done |" in ln for ln in rows)
    iou = [float(ln.split("|")[5]) for ln in rows]  # ToyBench IoU of each toy prompt's run
    assert all(0.0 <= v <= 1.0 for v in iou)
    assert "2 prompts, 0 already finished, 2 to run" in r.stdout

    r = launch(*args, cwd=tmp_path, timeout=600)
    assert r.returncode == 0 and "2 already finished, 0 to run" in r.stdout
    # an unfinished run (killed before its orbit video) is continued, not started again
    (runs[0] / "renders" / "test" / "orbit.mp4").unlink()
    r = launch(*args, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "1 already finished, 1 to run" in r.stdout and "(resuming)" in r.stdout
    assert sorted((tmp_path / "outputs" / "tiny").glob("*@*")) == runs
    assert (runs[0] / "renders" / "test" / "orbit.mp4").is_file()
