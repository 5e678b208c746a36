"""Niantic ``.spz`` version 3: gzip of a 16-byte header and six quantised attribute streams.

The layout, little-endian throughout (format notes: docs/export.md):

- header: magic ``NGSP`` (0x5053474E), version 3, the number of Gaussians, the SH degree, the number
  of fractional bits of the positions, a flags byte, a reserved byte;
- positions: three signed 24-bit fixed-point numbers per Gaussian, ``round(x * 2^fractional_bits)``;
- alphas: ``round(sigmoid(logit) * 255)``, one byte each;
- colours: the SH DC term as ``round(dc * 0.15 * 255 + 127.5)``, three bytes each;
- scales: the log scale as ``round((log s + 10) * 16)``, three bytes each;
- rotations: the unit quaternion, "smallest three": its largest component is made positive and left
  out (2 bits: which one). The other three are stored as a sign bit and 9 bits of magnitude over
  1/sqrt(2), the largest of them in the 32-bit word's highest bits;
- SH: the coefficients above the DC term, in ``[N, K, 3]`` order, as ``round(c * 128 + 128)``.

SPZ's frame is RUB (x right, y up, z back), which is the world frame here, so nothing is rotated.
Written here in numpy, because the SPZ writers on PyPI compile kernels at import (gsply imports
numba: about half a second of every export). The tests read these files back with gsply's reader.
"""

from __future__ import annotations

import gzip
import struct

import numpy as np

MAGIC = 0x5053474E  # "NGSP"
VERSION = 3
FRACTIONAL_BITS = 12  # 1/4096 m steps; positions up to +-2048 m
COLOUR_SCALE = 0.15
_NINE_BITS = (1 << 9) - 1


def spz_bytes(d: dict, fractional_bits: int = FRACTIONAL_BITS) -> bytes:
    """``d`` as from ``check_splat_data`` (world frame, pre-activation), gzip-compressed SPZ v3 bytes."""
    n = len(d["means"])
    # float32 throughout: scaling by 2^fractional_bits is exact, and a byte's rounding is off by < 1e-4 of a step
    fixed = np.clip(np.round(d["means"] * np.float32(1 << fractional_bits)), -(1 << 23), (1 << 23) - 1)
    fixed = fixed.astype(np.int32).view(np.uint32) & 0xFFFFFF
    positions = np.stack([fixed, fixed >> 8, fixed >> 16], -1).astype(np.uint8)  # low byte first; [N, 3, 3]
    alphas = _byte(np.float32(255.0) / (1.0 + np.exp(-d["logit_opacities"])))
    colours = _byte(d["sh"][:, 0] * np.float32(COLOUR_SCALE * 255.0) + np.float32(127.5))
    scales = _byte((d["log_scales"] + np.float32(10.0)) * np.float32(16.0))
    rotations = smallest_three(d["quats"][:, [1, 2, 3, 0]])  # stored x, y, z, w
    sh = _byte(d["sh"][:, 1:] * np.float32(128.0) + np.float32(128.0))
    header = struct.pack("<IIIBBBB", MAGIC, VERSION, n, int(d["sh_degree"]), fractional_bits, 0, 0)
    body = b"".join(a.tobytes() for a in (positions, alphas, colours, scales, rotations, sh))
    return gzip.compress(header + body, compresslevel=6, mtime=0)  # mtime 0: the same scene gives the same bytes


def smallest_three(q_xyzw: np.ndarray) -> np.ndarray:
    """[N, 4] quaternions (x, y, z, w; any length > 0) -> [N, 4] bytes of SPZ v3's 32-bit rotation words."""
    q = q_xyzw.astype(np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    rows = np.arange(len(q))
    largest = np.abs(q).argmax(1)
    q = q * np.where(q[rows, largest] < 0, -1.0, 1.0)[:, None]  # q and -q are the same rotation
    word = np.zeros(len(q), np.uint64)
    for axis in range(4):  # x first, so it ends in the highest bits below the index
        magnitude = np.clip(np.round(np.abs(q[:, axis]) * np.sqrt(2.0) * _NINE_BITS), 0, _NINE_BITS).astype(np.uint64)
        field = (q[:, axis] < 0).astype(np.uint64) << np.uint64(9) | magnitude
        word = np.where(largest == axis, word, word << np.uint64(10) | field)
    word = (word | largest.astype(np.uint64) << np.uint64(30)).astype("<u4")
    return word.view(np.uint8).reshape(len(q), 4)


def _byte(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)
