"""A minimal glTF 2.0 binary (GLB) writer: exactly what the validator checks, nothing implicit.

Written by hand rather than through a general library so that every rule the Khronos validator
enforces is visible here: 4-byte aligned buffer views, ``target`` on vertex/index views, POSITION
``min``/``max``, chunk padding (JSON with spaces, BIN with zeros), uint32 indices only when needed.
Spec: "glTF 2.0 Specification", Khronos, §4.4 (binary format), §5 (properties).
"""

from __future__ import annotations

import json
import struct

import numpy as np

FLOAT, UINT8, UINT16, UINT32 = 5126, 5121, 5123, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
POINTS, TRIANGLES = 0, 4
LINEAR, LINEAR_MIPMAP_LINEAR, CLAMP_TO_EDGE = 9729, 9987, 33071
_COMPONENT = {np.dtype(np.float32): FLOAT, np.dtype(np.uint8): UINT8, np.dtype(np.uint16): UINT16, np.dtype(np.uint32): UINT32}
_TYPE = {1: "SCALAR", 2: "VEC2", 3: "VEC3", 4: "VEC4"}


class GlbBuilder:
    """Accumulates buffer views and accessors in one BIN chunk; ``to_bytes()`` emits the GLB."""

    def __init__(self, generator: str = "threedgen"):
        self.gltf: dict = {"asset": {"version": "2.0", "generator": generator}, "buffers": [], "bufferViews": [], "accessors": []}
        self.bin = bytearray()

    def view(self, data: bytes, target: int | None = None) -> int:
        self.bin.extend(b"\0" * (-len(self.bin) % 4))
        bv = {"buffer": 0, "byteOffset": len(self.bin), "byteLength": len(data)}
        if target is not None:
            bv["target"] = target
        self.bin.extend(data)
        self.gltf["bufferViews"].append(bv)
        return len(self.gltf["bufferViews"]) - 1

    def accessor(self, array: np.ndarray, target: int | None = ARRAY_BUFFER, min_max: bool = False) -> int:
        """One tightly packed accessor over its own buffer view. ``array`` is [N] or [N, C]."""
        a = np.ascontiguousarray(array)
        if a.dtype not in _COMPONENT:
            raise TypeError(f"unsupported accessor dtype {a.dtype}")
        comps = 1 if a.ndim == 1 else a.shape[1]
        acc = {
            "bufferView": self.view(a.tobytes(), target),
            "componentType": _COMPONENT[a.dtype],
            "count": int(a.shape[0]),
            "type": _TYPE[comps],
        }
        if min_max:
            flat = a.reshape(len(a), comps)
            acc["min"] = [float(x) for x in flat.min(0)] if a.dtype == np.float32 else [int(x) for x in flat.min(0)]
            acc["max"] = [float(x) for x in flat.max(0)] if a.dtype == np.float32 else [int(x) for x in flat.max(0)]
        self.gltf["accessors"].append(acc)
        return len(self.gltf["accessors"]) - 1

    def indices(self, faces: np.ndarray, n_vertices: int) -> int:
        dtype = np.uint16 if n_vertices <= 65535 else np.uint32
        return self.accessor(faces.reshape(-1).astype(dtype), ELEMENT_ARRAY_BUFFER)

    def png_texture(self, png: bytes) -> int:
        """An sRGB PNG image + trilinear sampler + texture; returns the texture index."""
        image = {"bufferView": self.view(png), "mimeType": "image/png"}
        self.gltf.setdefault("images", []).append(image)
        self.gltf.setdefault("samplers", []).append(
            {"magFilter": LINEAR, "minFilter": LINEAR_MIPMAP_LINEAR, "wrapS": CLAMP_TO_EDGE, "wrapT": CLAMP_TO_EDGE}
        )
        tex = {"sampler": len(self.gltf["samplers"]) - 1, "source": len(self.gltf["images"]) - 1}
        self.gltf.setdefault("textures", []).append(tex)
        return len(self.gltf["textures"]) - 1

    def mesh_node(self, primitive: dict, name: str) -> None:
        self.gltf["meshes"] = [{"name": name, "primitives": [primitive]}]
        self.gltf["nodes"] = [{"name": name, "mesh": 0}]
        self.gltf["scenes"] = [{"nodes": [0]}]
        self.gltf["scene"] = 0

    def to_bytes(self) -> bytes:
        self.bin.extend(b"\0" * (-len(self.bin) % 4))
        self.gltf["buffers"] = [{"byteLength": len(self.bin)}]
        js = json.dumps(self.gltf, separators=(",", ":")).encode()
        js += b" " * (-len(js) % 4)
        total = 12 + 8 + len(js) + 8 + len(self.bin)
        return b"".join([
            struct.pack("<III", 0x46546C67, 2, total),
            struct.pack("<II", len(js), 0x4E4F534A), js,
            struct.pack("<II", len(self.bin), 0x004E4942), bytes(self.bin),
        ])


def textured_mesh_glb(positions, normals, uv, faces, png: bytes, metallic: float, roughness: float, name: str = "model",
                      morphs=None, times=None) -> bytes:
    """Indexed triangles with POSITION, NORMAL, TEXCOORD_0 and a PBR material with an sRGB base-colour texture.

    ``morphs`` (a list of ``[V,3]`` position offsets, one per frame after the first) and ``times``
    (seconds, one per frame) add vertex animation: one morph target per later frame and an animation
    whose weights sampler goes from all-zero (frame 0, the base mesh) to target k alone at frame k,
    interpolated linearly in between (glTF 2.0 §3.7.2.2 morph targets, §3.11 animations)."""
    b = GlbBuilder()
    prim = {
        "attributes": {
            "POSITION": b.accessor(positions.astype(np.float32), min_max=True),
            "NORMAL": b.accessor(normals.astype(np.float32)),
            "TEXCOORD_0": b.accessor(uv.astype(np.float32)),
        },
        "indices": b.indices(faces, len(positions)),
        "material": 0,
        "mode": TRIANGLES,
    }
    tex = b.png_texture(png)
    b.gltf["materials"] = [{
        "name": f"{name}_material",
        "pbrMetallicRoughness": {
            "baseColorTexture": {"index": tex, "texCoord": 0},
            "metallicFactor": float(metallic),
            "roughnessFactor": float(roughness),
        },
    }]
    if morphs:
        _add_morph_animation(b, prim, morphs, times)
    b.mesh_node(prim, name)
    if morphs:
        b.gltf["meshes"][0]["weights"] = [0.0] * len(morphs)
    return b.to_bytes()


def _add_morph_animation(b: GlbBuilder, prim: dict, morphs, times) -> None:
    if times is None or len(times) != len(morphs) + 1:
        raise ValueError(f"an animated mesh needs one time per frame: {len(morphs) + 1} frames, got {None if times is None else len(times)} times")
    prim["targets"] = [{"POSITION": b.accessor(np.asarray(d, np.float32), min_max=True)} for d in morphs]
    K = len(morphs)
    weights = np.zeros((K + 1, K), np.float32)
    weights[np.arange(1, K + 1), np.arange(K)] = 1.0  # frame 0: the base mesh; frame k: target k-1 alone
    t = b.accessor(np.asarray(times, np.float32), target=None, min_max=True)
    w = b.accessor(weights.reshape(-1), target=None)
    b.gltf["animations"] = [{"name": "motion", "samplers": [{"input": t, "output": w, "interpolation": "LINEAR"}],
                             "channels": [{"sampler": 0, "target": {"node": 0, "path": "weights"}}]}]
