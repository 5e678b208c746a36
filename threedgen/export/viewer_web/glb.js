"use strict";
// glTF 2.0 binary (GLB) reader: what a textured, optionally morph-animated mesh needs.
// Returns {draws, animation, images}; each draw is one triangle primitive placed by its node's world matrix.

const COMPONENT = { 5120: Int8Array, 5121: Uint8Array, 5122: Int16Array, 5123: Uint16Array, 5125: Uint32Array, 5126: Float32Array };
const NORMALIZED_MAX = { 5120: 127, 5121: 255, 5122: 32767, 5123: 65535 };
const WIDTH = { SCALAR: 1, VEC2: 2, VEC3: 3, VEC4: 4, MAT2: 4, MAT3: 9, MAT4: 16 };

function splitGlb(bytes) {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 20 || dv.getUint32(0, true) !== 0x46546c67) throw new Error("not a GLB file (no glTF magic)");
  if (dv.getUint32(4, true) !== 2) throw new Error(`GLB version ${dv.getUint32(4, true)}, not 2`);
  const parseJson = (body) => {
    try { return JSON.parse(new TextDecoder().decode(body)); } catch (e) { throw new Error(`its JSON chunk does not parse (${e.message})`); }
  };
  let json = null, bin = new Uint8Array(0);
  for (let off = 12; off + 8 <= bytes.length;) {
    const len = dv.getUint32(off, true), type = dv.getUint32(off + 4, true);
    if (off + 8 + len > bytes.length) throw new Error("truncated (a chunk runs past the end of the file)");
    const body = bytes.subarray(off + 8, off + 8 + len);
    if (type === 0x4e4f534a) json = parseJson(body);
    else if (type === 0x004e4942) bin = body;
    off += 8 + len;
  }
  if (!json) throw new Error("no JSON chunk");
  return { gltf: json, bin };
}

function readAccessor(gltf, bin, index) {
  const a = gltf.accessors && gltf.accessors[index], bv = a && gltf.bufferViews && gltf.bufferViews[a.bufferView];
  if (!a || !COMPONENT[a.componentType] || !WIDTH[a.type]) throw new Error(`accessor ${index} is missing or of an unknown type`);
  if (a.sparse) throw new Error(`accessor ${index} is sparse (not supported by this viewer)`);
  const Type = COMPONENT[a.componentType], n = WIDTH[a.type], size = Type.BYTES_PER_ELEMENT;
  const asFloat = a.componentType === 5126 || a.normalized;
  const out = new (asFloat ? Float32Array : Type)(a.count * n);
  if (a.bufferView === undefined) return out;  // all zeros
  if (!bv) throw new Error(`accessor ${index} refers to a missing buffer view`);
  if ((bv.buffer || 0) !== 0) throw new Error("refers to an external buffer");
  const stride = bv.byteStride || size * n, start = (bv.byteOffset || 0) + (a.byteOffset || 0);
  if (a.count && start + stride * (a.count - 1) + size * n > bin.length) throw new Error(`accessor ${index} runs past the binary chunk`);
  const dv = new DataView(bin.buffer, bin.byteOffset, bin.byteLength);
  const get = { 5120: (o) => dv.getInt8(o), 5121: (o) => dv.getUint8(o), 5122: (o) => dv.getInt16(o, true),
    5123: (o) => dv.getUint16(o, true), 5125: (o) => dv.getUint32(o, true), 5126: (o) => dv.getFloat32(o, true) }[a.componentType];
  const scale = a.normalized ? 1 / NORMALIZED_MAX[a.componentType] : 1;
  for (let i = 0; i < a.count; i++) {
    for (let k = 0; k < n; k++) {
      const v = get(start + i * stride + k * size) * scale;
      out[i * n + k] = a.normalized ? Math.max(v, -1) : v;
    }
  }
  return out;
}

function nodeMatrix(node) {
  if (node.matrix) return new Float32Array(node.matrix);
  return M4.fromTRS(node.translation || [0, 0, 0], node.rotation || [0, 0, 0, 1], node.scale || [1, 1, 1]);
}

function vertexNormals(pos, idx) {  // area-weighted, for primitives without NORMAL
  const nrm = new Float32Array(pos.length);
  for (let t = 0; t < idx.length; t += 3) {
    const [a, b, c] = [idx[t] * 3, idx[t + 1] * 3, idx[t + 2] * 3];
    const p = (i) => [pos[i], pos[i + 1], pos[i + 2]];
    const f = V3.cross(V3.sub(p(b), p(a)), V3.sub(p(c), p(a)));
    for (const i of [a, b, c]) for (let k = 0; k < 3; k++) nrm[i + k] += f[k];
  }
  for (let i = 0; i < nrm.length; i += 3) nrm.set(V3.norm([nrm[i], nrm[i + 1], nrm[i + 2]]), i);
  return nrm;
}

function readPrimitive(gltf, bin, prim) {
  const attr = prim.attributes || {};
  if (attr.POSITION === undefined) throw new Error("a triangle primitive has no POSITION");
  const positions = readAccessor(gltf, bin, attr.POSITION), count = positions.length / 3;
  const indices = prim.indices !== undefined ? Uint32Array.from(readAccessor(gltf, bin, prim.indices)) : Uint32Array.from({ length: count }, (_, i) => i);
  for (const i of indices) if (i >= count) throw new Error(`index ${i} is out of range (${count} vertices)`);
  const material = (gltf.materials || [])[prim.material] || {};
  const pbr = material.pbrMetallicRoughness || {};
  const texInfo = pbr.baseColorTexture;
  const tex = texInfo ? gltf.textures[texInfo.index] : null;
  const uvName = `TEXCOORD_${texInfo ? texInfo.texCoord || 0 : 0}`;
  return {
    positions, indices,
    normals: attr.NORMAL !== undefined ? readAccessor(gltf, bin, attr.NORMAL) : vertexNormals(positions, indices),
    uvs: attr[uvName] !== undefined ? readAccessor(gltf, bin, attr[uvName]) : new Float32Array(count * 2),
    targets: (prim.targets || []).map((t) => (t.POSITION !== undefined ? readAccessor(gltf, bin, t.POSITION) : new Float32Array(count * 3))),
    color: pbr.baseColorFactor || [1, 1, 1, 1],
    image: tex && tex.source !== undefined ? tex.source : -1,
    sampler: tex && tex.sampler !== undefined ? gltf.samplers[tex.sampler] : {},
  };
}

function readAnimation(gltf, bin) {  // the morph-weight channels of the animation "motion" (else the first one)
  const all = gltf.animations || [];
  const anim = all.find((a) => a.name === "motion") || all[0];
  if (!anim) return null;
  const channels = anim.channels.filter((c) => c.target.path === "weights" && c.target.node !== undefined).map((c) => {
    const s = anim.samplers[c.sampler];
    return { node: c.target.node, times: readAccessor(gltf, bin, s.input), values: readAccessor(gltf, bin, s.output),
      interpolation: s.interpolation || "LINEAR" };
  }).filter((c) => c.times.length > 0);
  const duration = Math.max(0, ...channels.map((c) => c.times[c.times.length - 1] || 0));
  return channels.length ? { name: anim.name || "", channels, duration } : null;
}

function sampleWeights(ch, t) {  // weights of one channel at time t (cubic splines: linear between the key values)
  const n = ch.times.length, cubic = ch.interpolation === "CUBICSPLINE";
  const k = ch.values.length / n / (cubic ? 3 : 1);
  const key = (i) => ch.values.subarray((cubic ? 3 * i + 1 : i) * k, (cubic ? 3 * i + 2 : i + 1) * k);
  if (t <= ch.times[0]) return key(0);
  if (t >= ch.times[n - 1]) return key(n - 1);
  let i = 0;
  while (ch.times[i + 1] <= t) i++;
  if (ch.interpolation === "STEP") return key(i);
  const u = (t - ch.times[i]) / (ch.times[i + 1] - ch.times[i]), a = key(i), b = key(i + 1);
  return a.map((v, j) => v + (b[j] - v) * u);
}

function loadGlb(bytes) {
  const { gltf, bin } = splitGlb(bytes);
  const draws = [], nodes = gltf.nodes || [];
  const visit = (i, parent, depth) => {
    if (!nodes[i] || depth > 64) throw new Error(`node ${i} is missing or the node tree has a cycle`);
    const node = nodes[i], matrix = M4.mul(parent, nodeMatrix(node));
    if (node.mesh !== undefined) {
      const mesh = gltf.meshes[node.mesh];
      for (const prim of mesh.primitives) {
        if ((prim.mode === undefined ? 4 : prim.mode) !== 4) continue;  // triangles only
        const d = readPrimitive(gltf, bin, prim);
        d.weights = new Float32Array(d.targets.length);
        d.weights.set((node.weights || mesh.weights || []).slice(0, d.targets.length));
        draws.push(Object.assign(d, { node: i, matrix }));
      }
    }
    for (const c of node.children || []) visit(c, matrix, depth + 1);
  };
  const scene = (gltf.scenes || [])[gltf.scene || 0];
  const roots = scene ? scene.nodes || [] : nodes.map((_, i) => i).filter((i) => !nodes.some((n) => (n.children || []).includes(i)));
  for (const r of roots) visit(r, M4.identity(), 0);
  if (!draws.length) throw new Error("no triangle mesh in its scene");
  const images = (gltf.images || []).map((im) => {
    if (im.bufferView === undefined) throw new Error("refers to an external image");
    const bv = gltf.bufferViews[im.bufferView];
    return new Blob([bin.subarray(bv.byteOffset || 0, (bv.byteOffset || 0) + bv.byteLength)], { type: im.mimeType || "image/png" });
  });
  return { draws, images, animation: readAnimation(gltf, bin) };
}
