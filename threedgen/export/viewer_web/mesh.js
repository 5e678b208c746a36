"use strict";
// Mesh renderer: textured triangles, lambert + ambient light from a lamp fixed to the camera,
// morph targets blended on the CPU (only the weights that are non-zero), the node's weights animation looped.

const MESH_VS = `#version 300 es
in vec3 aPos; in vec3 aNormal; in vec2 aUv;
uniform mat4 uModel, uView, uProj; uniform mat3 uNormalMat;
out vec3 vNormal; out vec2 vUv;
void main() {
  vNormal = mat3(uView) * (uNormalMat * aNormal);  // camera space (the view is a rotation + translation)
  vUv = aUv;
  gl_Position = uProj * uView * uModel * vec4(aPos, 1.0);
}`;

const MESH_FS = `#version 300 es
precision highp float;
in vec3 vNormal; in vec2 vUv;
uniform sampler2D uTex; uniform vec4 uColor;
out vec4 outColor;
void main() {
  vec3 base = pow(texture(uTex, vUv).rgb, vec3(2.2)) * uColor.rgb;  // sRGB texture -> linear, times the linear factor
  vec3 n = normalize(vNormal) * (gl_FrontFacing ? 1.0 : -1.0);
  float light = 0.3 + 0.7 * max(dot(n, normalize(vec3(0.3, 0.5, 1.0))), 0.0);
  outColor = vec4(pow(base * light, vec3(1.0 / 2.2)), 1.0);
}`;

function compileProgram(gl, vsSource, fsSource) {
  const prog = gl.createProgram();
  for (const [type, src] of [[gl.VERTEX_SHADER, vsSource], [gl.FRAGMENT_SHADER, fsSource]]) {
    const sh = gl.createShader(type);
    gl.shaderSource(sh, src);
    gl.compileShader(sh);
    if (!gl.getShaderParameter(sh, gl.COMPILE_STATUS)) throw new Error("shader: " + gl.getShaderInfoLog(sh));
    gl.attachShader(prog, sh);
  }
  gl.linkProgram(prog);
  if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error("program: " + gl.getProgramInfoLog(prog));
  const loc = {};
  for (let i = 0; i < gl.getProgramParameter(prog, gl.ACTIVE_UNIFORMS); i++) {
    const name = gl.getActiveUniform(prog, i).name;
    loc[name] = gl.getUniformLocation(prog, name);
  }
  return { prog, loc, attr: (name) => gl.getAttribLocation(prog, name) };
}

function arrayBuffer(gl, target, data, usage) {
  const buf = gl.createBuffer();
  gl.bindBuffer(target, buf);
  gl.bufferData(target, data, usage || gl.STATIC_DRAW);
  return buf;
}

async function imageTexture(gl, blob, sampler) {
  let pixels;
  if (blob) {
    try {
      pixels = await createImageBitmap(blob, { premultiplyAlpha: "none", colorSpaceConversion: "none" });
    } catch (e) {
      throw new Error("its texture image cannot be decoded");
    }
  }
  const tex = gl.createTexture();
  gl.bindTexture(gl.TEXTURE_2D, tex);
  if (pixels) gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, gl.RGBA, gl.UNSIGNED_BYTE, pixels);  // row 0 = v 0, as glTF's UVs want
  else gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, 1, 1, 0, gl.RGBA, gl.UNSIGNED_BYTE, new Uint8Array([255, 255, 255, 255]));
  gl.generateMipmap(gl.TEXTURE_2D);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, sampler.wrapS || gl.REPEAT);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, sampler.wrapT || gl.REPEAT);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, sampler.minFilter || gl.LINEAR_MIPMAP_LINEAR);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, sampler.magFilter || gl.LINEAR);
  return tex;
}

class MeshView {
  static async create(gl, model) {
    const view = new MeshView(gl, model), textures = new Map();
    for (const d of model.draws) {
      const key = `${d.image}/${JSON.stringify(d.sampler || {})}`;
      if (!textures.has(key)) textures.set(key, await imageTexture(gl, model.images[d.image], d.sampler || {}));
      d.texture = textures.get(key);
    }
    return view;
  }

  constructor(gl, model) {
    this.gl = gl;
    this.model = model;
    this.program = compileProgram(gl, MESH_VS, MESH_FS);
    const p = this.program;
    for (const d of model.draws) {
      d.vao = gl.createVertexArray();
      gl.bindVertexArray(d.vao);
      d.morphed = d.targets.length ? new Float32Array(d.positions) : null;
      d.posBuffer = arrayBuffer(gl, gl.ARRAY_BUFFER, d.positions, d.targets.length ? gl.DYNAMIC_DRAW : gl.STATIC_DRAW);
      for (const [name, buf, size] of [["aPos", d.posBuffer, 3], ["aNormal", arrayBuffer(gl, gl.ARRAY_BUFFER, d.normals), 3],
        ["aUv", arrayBuffer(gl, gl.ARRAY_BUFFER, d.uvs), 2]]) {
        gl.bindBuffer(gl.ARRAY_BUFFER, buf);
        gl.enableVertexAttribArray(p.attr(name));
        gl.vertexAttribPointer(p.attr(name), size, gl.FLOAT, false, 0, 0);
      }
      arrayBuffer(gl, gl.ELEMENT_ARRAY_BUFFER, d.indices);
      gl.bindVertexArray(null);
      d.normalMatrix = M4.normalMatrix(d.matrix);
      d.shownWeights = null;
    }
  }

  stats() {
    const draws = this.model.draws;
    return { vertices: draws.reduce((s, d) => s + d.positions.length / 3, 0), triangles: draws.reduce((s, d) => s + d.indices.length / 3, 0),
      morphTargets: Math.max(0, ...draws.map((d) => d.targets.length)) };
  }

  bounds() {  // world-space box of each primitive's local box over the base mesh and every morph target alone
    const lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
    for (const d of this.model.draws) {
      const a = [Infinity, Infinity, Infinity], b = [-Infinity, -Infinity, -Infinity];
      for (const off of [null, ...d.targets]) {
        for (let i = 0; i < d.positions.length; i++) {
          const v = d.positions[i] + (off ? off[i] : 0), k = i % 3;
          if (v < a[k]) a[k] = v;
          if (v > b[k]) b[k] = v;
        }
      }
      for (let c = 0; c < 8; c++) {
        const p = M4.point(d.matrix, [c & 1 ? b[0] : a[0], c & 2 ? b[1] : a[1], c & 4 ? b[2] : a[2]]);
        p.forEach((v, k) => { lo[k] = Math.min(lo[k], v); hi[k] = Math.max(hi[k], v); });
      }
    }
    return { lo, hi };
  }

  get animated() { return !!(this.model.animation && this.model.animation.duration > 0); }

  setTime(seconds) {  // loop the animation: each channel sets the morph weights of its node's primitives
    const anim = this.model.animation;
    if (!anim) return;
    const t = anim.duration > 0 ? seconds % anim.duration : 0;
    for (const ch of anim.channels) {
      const w = sampleWeights(ch, t);
      for (const d of this.model.draws) if (d.node === ch.node) d.weights.set(w.subarray(0, d.weights.length));
    }
  }

  morph(d) {
    if (!d.morphed || (d.shownWeights && d.weights.every((w, k) => w === d.shownWeights[k]))) return;
    d.morphed.set(d.positions);
    d.weights.forEach((w, k) => {
      if (w === 0) return;
      const off = d.targets[k];
      for (let i = 0; i < off.length; i++) d.morphed[i] += w * off[i];
    });
    const gl = this.gl;
    gl.bindBuffer(gl.ARRAY_BUFFER, d.posBuffer);
    gl.bufferSubData(gl.ARRAY_BUFFER, 0, d.morphed);
    d.shownWeights = Float32Array.from(d.weights);
  }

  draw(view, proj) {
    const gl = this.gl, { prog, loc } = this.program;
    gl.useProgram(prog);
    gl.enable(gl.DEPTH_TEST);
    gl.disable(gl.BLEND);
    gl.uniformMatrix4fv(loc.uView, false, view);
    gl.uniformMatrix4fv(loc.uProj, false, proj);
    gl.uniform1i(loc.uTex, 0);
    gl.activeTexture(gl.TEXTURE0);
    for (const d of this.model.draws) {
      this.morph(d);
      gl.uniformMatrix4fv(loc.uModel, false, d.matrix);
      gl.uniformMatrix3fv(loc.uNormalMat, false, d.normalMatrix);
      gl.uniform4fv(loc.uColor, d.color);
      gl.bindTexture(gl.TEXTURE_2D, d.texture);
      gl.bindVertexArray(d.vao);
      gl.drawElements(gl.TRIANGLES, d.indices.length, gl.UNSIGNED_INT, 0);
    }
    gl.bindVertexArray(null);
  }
}
