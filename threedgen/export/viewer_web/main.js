"use strict";
// The page: reads the embedded files, builds the mesh and/or splat views, an orbit camera framed on the
// object's box (+Y up, first seen from the front-right and a little above), Mesh/Splats buttons, and the
// flags tests read: window.viewerReady, window.viewerStats, window.viewerError.

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = "Cannot show this export: " + message;
  box.title = box.textContent;
  box.hidden = false;
  window.viewerError = message;
}

class OrbitCamera {
  constructor(canvas, box, onChange) {
    const size = V3.sub(box.hi, box.lo);
    this.target = box.lo.map((v, k) => v + size[k] / 2);
    this.radius = Math.max(Math.hypot(...size) / 2, 1e-6);
    this.fovy = 40 * Math.PI / 180;
    this.yaw = 0.5;
    this.pitch = 0.3;
    this.distance = null;  // framed on the first frame, when the canvas' aspect ratio is known
    let last = null;
    canvas.addEventListener("pointerdown", (e) => { last = [e.clientX, e.clientY]; canvas.setPointerCapture(e.pointerId); });
    for (const type of ["pointerup", "pointercancel"]) canvas.addEventListener(type, () => { last = null; });
    canvas.addEventListener("pointermove", (e) => {
      if (!last) return;
      this.yaw -= (e.clientX - last[0]) * 0.008;
      this.pitch = Math.max(-1.55, Math.min(1.55, this.pitch + (e.clientY - last[1]) * 0.008));
      last = [e.clientX, e.clientY];
      onChange();
    });
    canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      if (this.distance === null) return;
      this.distance = Math.max(this.radius * 0.05, Math.min(this.radius * 100, this.distance * Math.exp(e.deltaY * 0.001)));
      onChange();
    }, { passive: false });
  }

  matrices(aspect) {
    const halfFov = Math.min(this.fovy, 2 * Math.atan(Math.tan(this.fovy / 2) * aspect)) / 2;
    if (this.distance === null) this.distance = 1.1 * this.radius / Math.sin(halfFov);
    const d = this.distance, cp = Math.cos(this.pitch);
    const eye = [this.target[0] + d * Math.sin(this.yaw) * cp, this.target[1] + d * Math.sin(this.pitch), this.target[2] + d * Math.cos(this.yaw) * cp];
    const near = Math.max(d - 2 * this.radius, d * 0.01), far = d + 4 * this.radius;  // the mesh's depth range (splats ignore it)
    return { view: M4.lookAt(eye, this.target, [0, 1, 0]), proj: M4.perspective(this.fovy, aspect, near, far) };
  }
}

function modeButtons(views, select) {
  const bar = document.getElementById("bar");
  if (Object.keys(views).length < 2) return;
  for (const [mode, label] of [["mesh", "Mesh"], ["splats", "Splats"]]) {
    const b = document.createElement("button");
    b.textContent = label;
    b.id = "mode-" + mode;
    b.addEventListener("click", () => select(mode));
    bar.appendChild(b);
  }
}

async function main() {
  const files = JSON.parse(document.getElementById("viewer-data").textContent);
  const canvas = document.getElementById("view");
  const gl = canvas.getContext("webgl2", { antialias: true, preserveDrawingBuffer: true });
  if (!gl) throw new Error("this browser gives the page no WebGL2 context");
  const views = {}, failures = [];
  if (files.glb) {
    try { views.mesh = await MeshView.create(gl, loadGlb(fromBase64(files.glb))); } catch (e) { failures.push(`model.glb: ${e.message}`); }
  }
  if (files.splat) {
    try { views.splats = new SplatView(gl, parseSplats(fromBase64(files.splat), files.splatAxes)); } catch (e) { failures.push(`gaussians.splat: ${e.message}`); }
  }
  if (failures.length) showError(failures.join("; "));
  if (!views.mesh && !views.splats) { if (!failures.length) showError("the export has neither model.glb nor gaussians.splat"); return; }

  const meshStats = views.mesh ? views.mesh.stats() : { vertices: 0, triangles: 0, morphTargets: 0 };
  const stats = { mode: "", ...meshStats, splats: views.splats ? views.splats.n : 0, frames: 0 };
  const camera = new OrbitCamera(canvas, (views.mesh || views.splats).bounds(), () => { dirty = true; });
  let mode = views.mesh ? "mesh" : "splats", dirty = true;
  const select = (m) => {
    mode = m;
    dirty = true;
    for (const b of document.querySelectorAll("#bar button")) b.classList.toggle("on", b.id === "mode-" + m);
  };
  modeButtons(views, select);
  select(mode);
  const parts = [];
  if (views.mesh) parts.push(`${stats.vertices} vertices, ${stats.triangles} triangles` + (stats.morphTargets ? `, ${stats.morphTargets} morph targets` : ""));
  if (views.splats) parts.push(`${stats.splats} Gaussians`);
  document.getElementById("info").textContent = parts.join(" · ") + " — drag to orbit, wheel to zoom";

  const start = performance.now();
  const frame = (now) => {
    const w = Math.max(1, Math.round(canvas.clientWidth * devicePixelRatio)), h = Math.max(1, Math.round(canvas.clientHeight * devicePixelRatio));
    const animating = mode === "mesh" && views.mesh.animated;
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; dirty = true; }
    if (dirty || animating) {
      dirty = false;
      gl.viewport(0, 0, w, h);
      gl.clearColor(0.96, 0.96, 0.96, 1);
      gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
      const { view, proj } = camera.matrices(w / h);
      if (mode === "mesh") {
        views.mesh.setTime((now - start) / 1000);
        views.mesh.draw(view, proj);
      } else {
        views.splats.draw(view, proj, w, h);
      }
      stats.mode = mode;
      stats.frames++;
      window.viewerStats = { ...stats };
      window.viewerReady = true;
    }
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
}

main().catch((e) => showError(e && e.message ? e.message : String(e)));
