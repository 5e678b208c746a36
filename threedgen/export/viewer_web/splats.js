"use strict";
// Gaussian splats from an antimatter15 .splat file (32 bytes each: position f32x3, linear scale f32x3,
// RGBA u8x4, rotation quaternion u8x4 as w, x, y, z with q = (byte - 128) / 128). Each Gaussian's
// 3D covariance R S S^T R^T is projected to the screen with the perspective's Jacobian (EWA splatting),
// drawn as an instanced quad along the 2D ellipse's axes with a Gaussian falloff, and blended back to
// front in the order of a depth sort redone whenever the camera moves.

const FLOATS = 13;  // per instance: centre xyz, covariance (xx, xy, xz), (yy, yz, zz), RGBA

const SPLAT_VS = `#version 300 es
precision highp float;
in vec2 aCorner; in vec3 aCenter; in vec3 aCovA; in vec3 aCovB; in vec4 aColor;
uniform mat4 uView, uProj; uniform vec2 uViewport;
out vec4 vColor; out vec2 vOffset;
void main() {
  vec4 cam = uView * vec4(aCenter, 1.0), clip = uProj * cam;
  if (cam.z > -1e-4 || any(greaterThan(abs(clip.xy), vec2(1.5 * clip.w)))) { gl_Position = vec4(0.0, 0.0, 2.0, 1.0); return; }
  vec2 f = vec2(uProj[0][0], uProj[1][1]) * uViewport * 0.5;  // focal lengths in pixels
  float iz = -1.0 / cam.z;
  // d(pixel x, pixel y)/d(camera x, y, z) for u = f.x x / -z, v = f.y y / -z (columns: x, y, z)
  mat3 J = mat3(f.x * iz, 0.0, 0.0, 0.0, f.y * iz, 0.0, f.x * cam.x * iz * iz, f.y * cam.y * iz * iz, 0.0);
  mat3 T = J * mat3(uView);
  mat3 C = T * mat3(aCovA, vec3(aCovA.y, aCovB.xy), vec3(aCovA.z, aCovB.yz)) * transpose(T);
  float a = C[0][0] + 0.3, b = C[0][1], c = C[1][1] + 0.3;  // + 0.3 px^2: the EWA low-pass filter
  float mid = 0.5 * (a + c), r = length(vec2(0.5 * (a - c), b));
  float l1 = mid + r, l2 = max(mid - r, 0.01);
  vec2 e1 = abs(b) < 1e-6 ? (a >= c ? vec2(1.0, 0.0) : vec2(0.0, 1.0)) : normalize(vec2(b, l1 - a));
  vec2 e2 = vec2(-e1.y, e1.x);
  vec2 px = 3.0 * (aCorner.x * min(sqrt(l1), 2048.0) * e1 + aCorner.y * min(sqrt(l2), 2048.0) * e2);  // 3 sigma
  vOffset = 3.0 * aCorner;
  vColor = aColor;
  gl_Position = vec4(clip.xy + px / uViewport * 2.0 * clip.w, 0.0, clip.w);  // z = 0: no near/far clipping
}`;

const SPLAT_FS = `#version 300 es
precision highp float;
in vec4 vColor; in vec2 vOffset;
out vec4 outColor;
void main() {
  float alpha = vColor.a * exp(-0.5 * dot(vOffset, vOffset));
  if (alpha < 1.0 / 255.0) discard;
  outColor = vec4(vColor.rgb * alpha, alpha);  // premultiplied, blended with (ONE, ONE_MINUS_SRC_ALPHA)
}`;

function parseSplats(bytes, axes) {  // axes "rdf": the file is the world turned 180 degrees about x
  if (bytes.length === 0 || bytes.length % 32) throw new Error(`${bytes.length} bytes, not a positive multiple of 32`);
  const n = bytes.length / 32, f = new Float32Array(bytes.slice().buffer), out = new Float32Array(n * FLOATS);
  const flip = axes === "rdf" ? -1 : 1;
  for (let i = 0; i < n; i++) {
    const o = i * FLOATS, s = [f[8 * i + 3], f[8 * i + 4], f[8 * i + 5]];
    let [w, x, y, z] = [28, 29, 30, 31].map((k) => (bytes[32 * i + k] - 128) / 128);
    const len = Math.hypot(w, x, y, z) || 1;
    [w, x, y, z] = [w / len, x / len, y / len, z / len];
    const R = [[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
      [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
      [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]];
    const cov = (a, b) => R[a][0] * R[b][0] * s[0] * s[0] + R[a][1] * R[b][1] * s[1] * s[1] + R[a][2] * R[b][2] * s[2] * s[2];
    out.set([f[8 * i], flip * f[8 * i + 1], flip * f[8 * i + 2],
      cov(0, 0), flip * cov(0, 1), flip * cov(0, 2), cov(1, 1), cov(1, 2), cov(2, 2)], o);
    for (let k = 0; k < 4; k++) out[o + 9 + k] = bytes[32 * i + 24 + k] / 255;
  }
  if (!out.every(Number.isFinite)) throw new Error("NaN or infinite values");
  return { count: n, data: out };
}

class SplatView {
  constructor(gl, splats) {
    this.gl = gl;
    this.n = splats.count;
    this.data = splats.data;
    this.sorted = new Float32Array(this.data.length);
    this.keys = new Uint16Array(this.n);
    this.depth = new Float32Array(this.n);
    this.lastView = null;
    this.program = compileProgram(gl, SPLAT_VS, SPLAT_FS);
    const p = this.program;
    this.vao = gl.createVertexArray();
    gl.bindVertexArray(this.vao);
    arrayBuffer(gl, gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]));
    gl.enableVertexAttribArray(p.attr("aCorner"));
    gl.vertexAttribPointer(p.attr("aCorner"), 2, gl.FLOAT, false, 0, 0);
    this.instances = arrayBuffer(gl, gl.ARRAY_BUFFER, this.sorted, gl.DYNAMIC_DRAW);
    for (const [name, size, offset] of [["aCenter", 3, 0], ["aCovA", 3, 3], ["aCovB", 3, 6], ["aColor", 4, 9]]) {
      gl.enableVertexAttribArray(p.attr(name));
      gl.vertexAttribPointer(p.attr(name), size, gl.FLOAT, false, FLOATS * 4, offset * 4);
      gl.vertexAttribDivisor(p.attr(name), 1);
    }
    gl.bindVertexArray(null);
  }

  bounds() {  // 1st to 99th percentile of the visible centres per axis (stray Gaussians do not shrink the view),
    // widened by 10% and by two typical standard deviations (the few Gaussians of thin parts lie outside it)
    const picked = [];
    const step = Math.max(1, Math.floor(this.n / 20000));
    for (let i = 0; i < this.n; i += step) if (this.data[i * FLOATS + 12] > 0.1) picked.push(i);
    if (!picked.length) picked.push(0);
    const quantile = (v, q) => v[Math.round(q * (v.length - 1))];
    const sigmas = picked.map((i) => Math.sqrt(Math.max(...[3, 6, 8].map((k) => this.data[i * FLOATS + k])))).sort((a, b) => a - b);
    const lo = [], hi = [];
    for (let k = 0; k < 3; k++) {
      const v = picked.map((i) => this.data[i * FLOATS + k]).sort((a, b) => a - b);
      const pad = 0.1 * (quantile(v, 0.99) - quantile(v, 0.01)) + 2 * quantile(sigmas, 0.5);
      lo.push(quantile(v, 0.01) - pad);
      hi.push(quantile(v, 0.99) + pad);
    }
    return { lo, hi };
  }

  sort(view) {  // counting sort on 16-bit camera depth: farthest (most negative z) first
    const { n, data, depth, keys, sorted } = this;
    let lo = Infinity, hi = -Infinity;
    for (let i = 0; i < n; i++) {
      const o = i * FLOATS, z = view[2] * data[o] + view[6] * data[o + 1] + view[10] * data[o + 2] + view[14];
      depth[i] = z;
      if (z < lo) lo = z;
      if (z > hi) hi = z;
    }
    const scale = hi > lo ? 65535 / (hi - lo) : 0, start = new Uint32Array(65537);
    for (let i = 0; i < n; i++) { keys[i] = (depth[i] - lo) * scale; start[keys[i] + 1]++; }
    for (let k = 1; k < 65537; k++) start[k] += start[k - 1];
    for (let i = 0; i < n; i++) {
      const src = i * FLOATS, dst = start[keys[i]]++ * FLOATS;
      for (let k = 0; k < FLOATS; k++) sorted[dst + k] = data[src + k];
    }
    const gl = this.gl;
    gl.bindBuffer(gl.ARRAY_BUFFER, this.instances);
    gl.bufferSubData(gl.ARRAY_BUFFER, 0, sorted);
    this.lastView = Float32Array.from(view);
  }

  draw(view, proj, width, height) {
    if (!this.lastView || view.some((v, k) => v !== this.lastView[k])) this.sort(view);
    const gl = this.gl, { prog, loc } = this.program;
    gl.useProgram(prog);
    gl.disable(gl.DEPTH_TEST);
    gl.enable(gl.BLEND);
    gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
    gl.uniformMatrix4fv(loc.uView, false, view);
    gl.uniformMatrix4fv(loc.uProj, false, proj);
    gl.uniform2f(loc.uViewport, width, height);
    gl.bindVertexArray(this.vao);
    gl.drawArraysInstanced(gl.TRIANGLE_STRIP, 0, 4, this.n);
    gl.bindVertexArray(null);
  }
}
