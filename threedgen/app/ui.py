"""The web app's page (Gradio): prompt → recipe → live progress → 3D previews → downloads.

The page polls the run queue (``jobs.py``) once a second: the progress bar (step, it/s, ETA), the
latest validation grid and, when the run is done, the mesh and splat previews, the orbit video and
every exported file. Bad input and failed runs show one line in the status box; the app stays usable.
"""

from __future__ import annotations

import html
from pathlib import Path

from .jobs import RunQueue
from .recipes import list_recipes

DEFAULT_RECIPE = "configs/toy/sds-gaussian.yaml"


def _fmt_s(s) -> str:
    if s is None:
        return "—"
    s = int(round(s))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def progress_html(job) -> str:
    """The progress bar and its line (stage, step/total, it/s, ETA), as HTML the page shows."""
    if job is None:
        return "<div id='td-progress'>No run yet.</div>"
    p = job.progress()
    step, total = p.get("step", 0), p.get("total") or 1
    frac = 1.0 if job.state == "done" else min(step / total, 1.0)
    stages = p.get("stages") or []
    stage = f"stage {p.get('stage_index', 0) + 1}/{len(stages)} ({p.get('stage')}), " if len(stages) > 1 else ""
    rate = f"{p['it_s']:.2f} it/s" if p.get("it_s") else "— it/s"
    line = (f"run {job.id}: <b>{job.state}</b> — {stage}step {step}/{total}, {rate}, ETA {_fmt_s(p.get('run_eta_s'))}"
            if p else f"run {job.id}: <b>{job.state}</b> — starting")
    if p.get("phase") == "rendering and exporting" and job.state == "running":
        line = f"run {job.id}: <b>rendering the orbit and exporting</b>"
    if job.state == "done" and job.finished and job.started:
        line = f"run {job.id}: <b>done</b> in {_fmt_s(job.finished - job.started)}"
    bar = (f"<div style='background:#ddd;height:14px;border-radius:7px'><div id='td-bar' style='background:#4a7;"
           f"height:14px;border-radius:7px;width:{100 * frac:.1f}%'></div></div>")
    return f"<div id='td-progress' data-state='{job.state}'>{bar}<div>{line}</div></div>"


def queue_markdown(queue: RunQueue) -> str:
    if not queue.jobs:
        return ""
    rows = ["| run | state | recipe | prompt | seed |", "|---|---|---|---|---|"]
    for j in reversed(queue.jobs[-10:]):
        rows.append(f"| {j.id} | {j.state} | {Path(j.recipe).name} | {html.escape(j.prompt)} | {j.seed} |")
    return "\n".join(rows)


def build(queue: RunQueue):
    import gradio as gr

    recipes = list_recipes()
    choices = [(r.label, r.rel) for r in recipes]
    available = [r for r in recipes if r.available]
    missing = [r for r in recipes if not r.available]
    note = (f"{len(available)} recipes run on this machine; {len(missing)} need models it does not have "
            f"({', '.join(sorted({m.split(':')[0] for r in missing for m in r.missing}))}).") if missing else \
        f"All {len(recipes)} recipes have their models here."

    with gr.Blocks(title="threedgen") as demo:
        gr.Markdown("# threedgen\nText to 3D by score distillation. The toy recipes run offline on the embedded toy prior.")
        with gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Prompt", value="a red cube", elem_id="td-prompt")
                recipe = gr.Dropdown(choices=choices, value=DEFAULT_RECIPE, label="Recipe", elem_id="td-recipe")
                gr.Markdown(note)
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, label="Seed", elem_id="td-seed")
                    steps = gr.Number(value=0, precision=0, label="Steps (0: the recipe's own)", elem_id="td-steps")
                with gr.Row():
                    start = gr.Button("Start", variant="primary", elem_id="td-start")
                    stop = gr.Button("Stop", elem_id="td-stop")
                    resume = gr.Button("Resume", elem_id="td-resume")
                runs = gr.Markdown(elem_id="td-queue")
            with gr.Column(scale=3):
                status = gr.Textbox(label="Status", interactive=False, elem_id="td-status")
                progress = gr.HTML(progress_html(None))
                val = gr.Image(label="Latest validation views", type="filepath", elem_id="td-val")
                with gr.Row():
                    # (azimuth, polar angle from +Y, distance): a three-quarter view from a little above, object in frame
                    mesh = gr.Model3D(label="Mesh (model.glb)", elem_id="td-mesh", camera_position=(60, 70, 3.0), height=300)
                    splat = gr.Model3D(label="Gaussian splats", elem_id="td-splat", camera_position=(60, 70, 3.0), height=300)
                video = gr.Video(label="Orbit", elem_id="td-video", height=300, autoplay=True, loop=True)
                files = gr.File(label="Exported files", file_count="multiple", elem_id="td-files")
        current = gr.State(None)

        def on_start(p, r, s, n):
            try:
                job = queue.submit(r, p, 0 if s is None else s, None if n in (None, "", 0) else n)
            except ValueError as e:
                return None, f"error: {e}"
            ahead = sum(j.state in ("queued", "running") for j in queue.jobs if j.id != job.id)
            return job.id, f"run {job.id} queued" + (f" behind {ahead} other run(s)" if ahead else "")

        def on_stop(cur):
            if cur is None:
                return "no run to stop"
            try:
                queue.stop(cur)
            except ValueError as e:
                return f"error: {e}"
            return f"stopping run {cur}: it saves a checkpoint; Resume continues it"

        def on_resume(cur):
            try:
                job = queue.resume(cur) if cur is not None else None
            except ValueError as e:
                return cur, f"error: {e}"
            return (job.id, f"run {job.id} resumes run {cur}") if job else (cur, "no run to resume")

        def poll(cur, shown):
            job = queue.get(cur) if cur is not None else (queue.jobs[-1] if queue.jobs else None)
            grid = job.latest_validation() if job else None
            outs = [progress_html(job), queue_markdown(queue), str(grid) if grid else None]
            done_key = (job.id, job.state) if job else None
            if job is None or job.state != "done" or shown == done_key:
                return outs + [gr.skip()] * 4 + [shown, gr.skip()]
            ex = job.exports()
            glb = next((p for p in ex if p.name == "model.glb" and p.parent.name == "export"), None)
            spl = next((p for p in ex if p.name == "gaussians.splat"), None) or next((p for p in ex if p.name == "gaussians.ply"), None)
            orbit = job.run_dir / "renders" / "test" / "orbit.mp4"
            msg = f"run {job.id} done: {len(ex)} files in {job.run_dir / 'export'}"
            return outs + [str(glb) if glb else None, str(spl) if spl else None, str(orbit) if orbit.is_file() else None,
                           [str(p) for p in ex], done_key, msg]

        def poll_status(cur):
            job = queue.get(cur) if cur is not None else None
            if job is not None and job.state == "failed":
                return f"run {job.id} failed: {job.error}"
            return gr.skip()

        shown = gr.State(None)
        start.click(on_start, [prompt, recipe, seed, steps], [current, status])
        stop.click(on_stop, [current], [status])
        resume.click(on_resume, [current], [current, status])
        timer = gr.Timer(1.0)
        timer.tick(poll, [current, shown], [progress, runs, val, mesh, splat, video, files, shown, status])
        timer.tick(poll_status, [current], [status])
    return demo
