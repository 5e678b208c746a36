"""Many prompts in one command: ``launch.py --config C --prompts prompts.txt [--gpu 0,1] key=value ...``.

Rules of the prompts file, checked before any training: one prompt per line; blank lines and lines
starting with ``#`` are skipped; two lines that give the same prompt (or the same run folder name)
are an error naming both line numbers; every prompt passes the same checks as a single run (its words
against the prior's vocabulary, the recipe's stages).

Each prompt trains in its own ``launch.py`` process and run folder (``outputs/<recipe>/<prompt>@<time>``),
one after another on a CPU, or one per listed GPU at a time. The batch is resumable as a whole: a
prompt whose latest run of this recipe is finished (orbit video written, and the export when the
recipe exports at the end) is skipped; an unfinished one continues from its checkpoint
(``--resume auto``). At the end a summary (prompt, state, minutes, exported files, and for toy prompts
ToyBench's IoU and colour error) is printed and written to ``outputs/<recipe>/batch-<file>.md``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from .recipe_files import ConfigError

REPO = Path(__file__).resolve().parents[1]


def read_prompts(path: Path) -> list[str]:
    """The prompts of a prompts file under the rules above; ConfigError (one line) otherwise."""
    from .systems.runner import slugify

    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"--prompts {str(path)!r} cannot be read ({e.strerror}); pass a text file with one prompt per line") from None
    seen: dict[str, int] = {}
    prompts = []
    for n, line in enumerate(lines, 1):
        p = line.strip()
        if not p or p.startswith("#"):
            continue
        key = slugify(p)
        if key in seen:
            raise ConfigError(f"--prompts {str(path)!r}: lines {seen[key]} and {n} give the same prompt (run folder "
                              f"{key!r}); remove one, or word them differently")
        seen[key] = n
        prompts.append(p)
    if not prompts:
        raise ConfigError(f"--prompts {str(path)!r} has no prompts (blank and #-comment lines are skipped); write one prompt per line")
    return prompts


def run_finished(cfg, run: Optional[Path]) -> bool:
    if run is None or not (run / "renders" / "test" / "orbit.mp4").is_file():
        return False
    return not cfg.trainer.export_at_end or any((run / "export").glob("*"))


def plan(config: str, prompts: list[str], overrides: list[str]) -> list[tuple[str, object, Optional[Path]]]:
    """(prompt, its config, its latest run or None) for each prompt; every check before any training."""
    from .config import load_config
    from .systems.runner import find_latest_run, plan_stages, resolve_run

    out = []
    for p in prompts:
        cfg, raw = load_config(config, [*overrides, f"system.prompt={p}"])
        plan_stages(cfg, raw, Path(cfg.output_dir))
        resolve_run(cfg, None, False)  # the output folder is writable
        out.append((p, cfg, find_latest_run(cfg)))
    return out


def run_batch(config: str, prompts_file: str, overrides: list[str], gpu: Optional[str], quiet: bool) -> int:
    from .systems.runner import find_latest_run

    jobs = plan(config, read_prompts(Path(prompts_file)), overrides)
    gpus = [g.strip() for g in gpu.split(",") if g.strip()] if gpu else [None]
    rows, running = {}, []
    pending = []
    for p, cfg, run in jobs:
        if run_finished(cfg, run):
            rows[p] = {"state": "done before", "run": run, "seconds": None}
        else:
            pending.append((p, cfg, run))
    print(f"batch: {len(jobs)} prompts, {len(jobs) - len(pending)} already finished, {len(pending)} to run", flush=True)
    t_batch = time.time()
    free = list(gpus)
    while pending or running:
        while pending and free:
            p, cfg, run = pending.pop(0)
            g = free.pop(0)
            args = [sys.executable, str(REPO / "launch.py"), "--config", config, "--train", *(["-q"] if quiet else []),
                    *(["--resume", "auto"] if run is not None else []), *(["--gpu", g] if g is not None else []),
                    *overrides, f"system.prompt={p}"]
            print(f"[{len(rows) + len(running) + 1}/{len(jobs)}] {p!r}" + (f" on GPU {g}" if g else "") +
                  (" (resuming)" if run is not None else ""), flush=True)
            running.append((p, cfg, g, time.time(), subprocess.Popen(args)))
        for item in list(running):
            p, cfg, g, t0, proc = item
            if proc.poll() is None:
                continue
            running.remove(item)
            free.append(g)
            state = "done" if proc.returncode == 0 else "interrupted" if proc.returncode == 130 else f"failed ({proc.returncode})"
            rows[p] = {"state": state, "run": find_latest_run(cfg), "seconds": time.time() - t0}
            done = len([r for r in rows.values() if r["seconds"] is not None])
            left = len(pending) + len(running)
            rate = (time.time() - t_batch) / max(done, 1)
            print(f"batch: {p!r} {state} in {rows[p]['seconds'] / 60:.1f} min; {left} left, ETA {left * rate / max(len(gpus), 1) / 60:.1f} min", flush=True)
        time.sleep(0.5)
    table = summary([p for p, _, _ in jobs], rows, config, overrides)
    print(table, flush=True)
    out = Path(jobs[0][1].output_dir) / jobs[0][1].name / f"batch-{Path(prompts_file).stem}.md"
    from .utils.atomic import write_bytes

    write_bytes(out, (table + "\n").encode())
    print(f"batch summary: {out}", flush=True)
    return 0 if all(r["state"].startswith("done") for r in rows.values()) else 1


def summary(prompts: list[str], rows: dict, config: str, overrides: list[str]) -> str:
    lines = ["| prompt | state | minutes | exported files | ToyBench IoU | colour error | run |", "|---|---|---|---|---|---|---|"]
    for p in prompts:
        r = rows.get(p, {"state": "not run", "run": None, "seconds": None})
        run = r["run"]
        files = sorted(f.name for f in (run / "export").glob("*") if f.is_file()) if run is not None and (run / "export").is_dir() else []
        iou = colour = "—"
        if run is not None and r["state"].startswith("done"):
            scores = toy_scores(run, config, overrides, p)
            if scores:
                iou, colour = f"{scores['iou']:.3f}", f"{scores['colour_err']:.3f}"
        minutes = "—" if r["seconds"] is None else f"{r['seconds'] / 60:.1f}"
        lines.append(f"| {p} | {r['state']} | {minutes} | {len(files)} ({', '.join(files[:4])}{', …' if len(files) > 4 else ''}) "
                     f"| {iou} | {colour} | {run} |")
    return "\n".join(lines)


def toy_scores(run: Path, config: str, overrides: list[str], prompt: str) -> Optional[dict]:
    """ToyBench's scores of a finished run when its prompt is a toy-world prompt (else None)."""
    from .toy import world as W

    try:
        scene = W.parse_prompt(prompt)
    except ValueError:
        return None
    from .toy.bench import render_run, score

    rgb, alpha = render_run(run, Path(config), [*overrides, f"system.prompt={prompt}"])
    return score(rgb, alpha, scene)
