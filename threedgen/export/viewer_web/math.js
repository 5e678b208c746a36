"use strict";
// Small vector and 4x4 matrix helpers. Matrices are column-major Float32Arrays (WebGL's layout):
// element (row r, column c) is m[4 * c + r].

const V3 = {
  sub: (a, b) => [a[0] - b[0], a[1] - b[1], a[2] - b[2]],
  dot: (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2],
  cross: (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]],
  norm: (a) => { const l = Math.hypot(a[0], a[1], a[2]) || 1; return [a[0] / l, a[1] / l, a[2] / l]; },
};

const M4 = {
  identity() { const m = new Float32Array(16); m[0] = m[5] = m[10] = m[15] = 1; return m; },

  mul(a, b) {  // a * b
    const o = new Float32Array(16);
    for (let c = 0; c < 4; c++) {
      for (let r = 0; r < 4; r++) {
        let s = 0;
        for (let k = 0; k < 4; k++) s += a[4 * k + r] * b[4 * c + k];
        o[4 * c + r] = s;
      }
    }
    return o;
  },

  perspective(fovy, aspect, near, far) {  // OpenGL clip space: the camera looks down -z
    const f = 1 / Math.tan(fovy / 2), m = new Float32Array(16);
    m[0] = f / aspect; m[5] = f; m[10] = (far + near) / (near - far); m[11] = -1; m[14] = 2 * far * near / (near - far);
    return m;
  },

  lookAt(eye, target, up) {  // world -> camera: x right, y up, z towards the viewer
    const z = V3.norm(V3.sub(eye, target)), x = V3.norm(V3.cross(up, z)), y = V3.cross(z, x);
    return new Float32Array([x[0], y[0], z[0], 0, x[1], y[1], z[1], 0, x[2], y[2], z[2], 0,
      -V3.dot(x, eye), -V3.dot(y, eye), -V3.dot(z, eye), 1]);
  },

  fromTRS(t, q, s) {  // glTF node: translation, rotation quaternion (x, y, z, w), scale; M = T R S
    const [x, y, z, w] = q;
    const r = [1 - 2 * (y * y + z * z), 2 * (x * y + w * z), 2 * (x * z - w * y),
      2 * (x * y - w * z), 1 - 2 * (x * x + z * z), 2 * (y * z + w * x),
      2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)];  // columns of R
    const m = M4.identity();
    for (let c = 0; c < 3; c++) for (let k = 0; k < 3; k++) m[4 * c + k] = r[3 * c + k] * s[c];
    m[12] = t[0]; m[13] = t[1]; m[14] = t[2];
    return m;
  },

  point(m, p) {  // m * (p, 1), without the projective divide
    return [0, 1, 2].map((r) => m[r] * p[0] + m[4 + r] * p[1] + m[8 + r] * p[2] + m[12 + r]);
  },

  normalMatrix(m) {  // inverse transpose of the upper 3x3: columns (a1 x a2, a2 x a0, a0 x a1) / det
    const a = [0, 1, 2].map((c) => [m[4 * c], m[4 * c + 1], m[4 * c + 2]]);
    const b = [V3.cross(a[1], a[2]), V3.cross(a[2], a[0]), V3.cross(a[0], a[1])];
    const det = V3.dot(a[0], b[0]) || 1;
    return new Float32Array(b.flat().map((v) => v / det));
  },
};

function fromBase64(text) {
  const bin = atob(text), out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
