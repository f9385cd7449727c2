"""Procedurally drawn, aligned 112x112 synthetic faces: a training set that needs no download.

An identity is a fixed set of traits (face shape, eye/brow/nose/mouth geometry, skin, hair and iris colour, hair
style, beard, moustache, glasses, earrings, moles, birthmarks and freckles). Each image of it adds nuisance: 3D
pose jitter (yaw, pitch, roll, scale, shift), expression (smile, open mouth, eye openness, brow raise, gaze),
background surfaces and clutter, sometimes an occluder (hand, mask, sunglasses, bar, hat), then a camera: blur,
greyscale, a strong directional light gradient and sometimes a local light or shadow, exposure and grey-world white
balance metered on the frame and missed by a random error, sensor noise and a random tone curve (gamma, contrast).
The camera stage is what hides an identity's overall tone from raw pixels: raw-pixel and untrained-CNN
verification are near chance, while a small CNN trained for minutes on CPU passes 90%
(``benchmarks/bench_synth_learnability.py``, figures in ``benchmarks/RESULTS.md``).

Everything is a pure function of ``(seed, identity, sample)``, so datasets are reproducible and workers need no
shared state. Training identities are ``0..N-1``; held-out verification identities start at
``VERIFY_IDENTITY_OFFSET`` (2**30), so they never overlap a training set. Rendering is PIL polygon drawing plus a
few vectorised numpy passes over channel-first planes (over 1,000 images/s per core).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from facezoo.errors import ConfigError

__all__ = ["SyntheticFaces", "render_face", "render_face_chw", "synthetic_pairs", "VERIFY_IDENTITY_OFFSET"]

VERIFY_IDENTITY_OFFSET = 1 << 30
# Per-image nuisance (scaled by ``difficulty``). Strong enough that raw pixels and untrained CNNs are near chance on
# held-out pairs (an identity's skin and hair tone would otherwise survive in the image statistics), mild enough
# that a small CNN learns identity from shape, geometry and texture (benchmarks/bench_synth_learnability.py).
_CAST = 0.18  # log-std of the per-channel white-balance error (after grey-world metering)
_EXPOSURE = 0.35  # log-std of the exposure error (after metering)
_GAMMA = 0.3  # log-std of the tone curve's gamma
_CONTRAST = 0.25  # log-std of the tone curve's contrast
_LIGHT = 0.9  # strongest directional light gradient across the frame (1 + k * position, k in [0.4, 1] x this)
_LIGHT_MIN = 0.4  # weakest gradient, as a fraction of _LIGHT
_SHIFT = 2.5  # std of the alignment error (pixels)
_SCALE = 0.05  # std of the scale error
_SPOT = 0.15  # probability of a local light / shadow blob
_GRAY = 0.15  # probability of a greyscale photo
_HAT = 0.03  # probability of a hat or hood
_SPLIT = 0.5  # probability of a second large background surface
_CLUTTER = 8  # most background clutter shapes
_CLUTTER_SIZE = 52  # their largest extra size (pixels)
SIZE = 112
_CENTER = np.array([56.0, 63.0])
_CIRCLE = np.stack(
    [np.cos(np.linspace(0, 2 * np.pi, 28, endpoint=False)), np.sin(np.linspace(0, 2 * np.pi, 28, endpoint=False))], 1
)
_SKIN = np.array(
    [[255, 226, 200], [236, 196, 164], [206, 150, 110], [160, 104, 70], [105, 66, 44], [70, 45, 32]], float
)
_HAIR = np.array(
    [
        [18, 14, 12],
        [52, 36, 24],
        [96, 64, 38],
        [150, 110, 60],
        [205, 175, 120],
        [150, 70, 35],
        [160, 160, 160],
        [235, 235, 230],
    ],
    float,
)
# skin and hair tones span 70% of the natural range above (around its mean): with the camera nuisance this keeps
# them identity traits without letting them dominate raw pixels
_TONE_SPREAD = 0.7
_SKIN = _SKIN.mean(0) + _TONE_SPREAD * (_SKIN - _SKIN.mean(0))
_HAIR = _HAIR.mean(0) + _TONE_SPREAD * (_HAIR - _HAIR.mean(0))
_IRIS = np.array([[70, 45, 25], [110, 75, 40], [70, 110, 160], [90, 125, 80], [35, 28, 22], [120, 120, 130]], float)


def _palette(table: np.ndarray, t: float) -> np.ndarray:
    x = t * (len(table) - 1)
    i = min(int(x), len(table) - 2)
    f = x - i
    return table[i] * (1 - f) + table[i + 1] * f


@functools.lru_cache(maxsize=65536)
def _identity(seed: int, identity: int) -> dict[str, Any]:
    """The fixed traits of one identity."""
    rng = np.random.default_rng([seed, 1, identity])
    u = rng.random(64)
    n = rng.standard_normal(32)
    hair_idx = rng.choice(len(_HAIR), p=[0.3, 0.22, 0.16, 0.08, 0.08, 0.05, 0.07, 0.04])
    t = {
        "fw": 37 + 6 * u[0],  # face half width
        "fh": 47 + 6 * u[1],  # face half height
        "jaw": 0.55 + 0.4 * u[2],  # chin taper (1 = round)
        "chin": 0.8 + 0.4 * u[3],  # chin pointiness exponent
        "skin": np.clip(_palette(_SKIN, u[4]) + n[0:3] * 7, 0, 255),
        "hair": np.clip(_HAIR[hair_idx] + n[3:6] * 10, 0, 255),
        "iris": np.clip(_palette(_IRIS, u[5]) + n[6:9] * 10, 0, 255),
        "eye_dx": 17.6 + 4.5 * (u[6] - 0.5) * 2,  # half the inter-ocular distance
        "eye_y": -11.5 + 3.0 * n[9],
        "eye_rx": 5.0 + 3.6 * u[7],
        "eye_ry": 2.2 + 2.4 * u[8],
        "eye_tilt": 0.3 * n[10],
        "brow_dy": 5.5 + 4.0 * u[9],
        "brow_thick": 1.4 + 3.6 * u[10],
        "brow_arch": 5.0 * u[11] - 1.0,
        "brow_len": 9 + 8 * u[12],
        "brow_tilt": 0.25 * n[11],
        "nose_y": 8.5 + 3.0 * n[12],
        "nose_w": 3.5 + 6.0 * u[13],
        "nose_len": 12 + 9 * u[14],
        "mouth_y": 29 + 3.0 * n[13],
        "mouth_w": 9.5 + 8.5 * u[15],
        "lip_up": 1.2 + 3.0 * u[16],
        "lip_lo": 1.6 + 3.6 * u[17],
        "lip": np.clip(np.array([175, 85, 85]) * (0.6 + 0.5 * u[18]) + n[14:17] * 10, 0, 255),
        "hairline": -36 + 12 * u[19],  # y of the hairline centre
        "hair_curve": 4 + 14 * u[20],
        "part": (u[21] - 0.5) * 30,  # side part x
        "bangs": u[22] < 0.3,
        "long": u[23] < 0.4,
        "bald": u[24] < 0.08,
        "beard": u[25] < 0.22,
        "beard_alpha": 90 + int(110 * u[26]),
        "glasses": u[27] < 0.15,
        "glasses_color": np.clip(np.array([30, 30, 30]) + 120 * u[28] * np.array([1, 0.6, 0.3]), 0, 255),
        "blush": int(60 * u[29]),
        "moles": [(n[17 + 2 * k] * 18, n[18 + 2 * k] * 18, 1.2 + 2.0 * u[30 + k]) for k in range(int(u[33] * 5))],
        "freckles": rng.normal(0, 1, (int(u[34] ** 2 * 28), 2)) * np.array([14.0, 6.0]) + np.array([0.0, 2.0]),
        "ear": 7 + 4 * u[35],
        "depth": 28 + 10 * u[36],
        "nose_depth": 10 + 8 * u[37],
        "moustache": u[38] < 0.25,
        "mark": (n[27] * 16, n[28] * 14 + 4, 2.5 + 3 * u[40], 2 + 2.5 * u[41], 3 * u[42]) if u[39] < 0.35 else None,
        "mark_color": np.array([0.55, 0.55, 0.55]) if u[43] < 0.5 else np.array([0.95, 0.6, 0.6]),
        "earrings": u[44] < 0.2,
    }
    _derive_shapes(t)
    return t


def _derive_shapes(t: dict[str, Any]) -> None:
    """Precompute an identity's fixed polygons and colours (they only move with the pose)."""
    fw, fh = t["fw"], t["fh"]
    skin, hair = t["skin"], t["hair"]
    outline = _CIRCLE * np.array([fw, fh])
    low = outline[:, 1] > 0
    outline[low, 0] *= 1 - (1 - t["jaw"]) * (outline[low, 1] / fh) ** t["chin"]
    t["outline"] = outline
    t["neck"] = np.array([[-fw * 0.55, fh * 0.5], [fw * 0.55, fh * 0.5], [fw * 0.7, fh + 40], [-fw * 0.7, fh + 40]])
    jaw = outline[low & (np.abs(outline[:, 0]) < fw * 0.9)]
    jaw = jaw[np.argsort(-jaw[:, 0])]  # right to left along the chin
    top = t["mouth_y"] - 9
    t["beard_poly"] = np.concatenate(
        [[[jaw[0, 0], top - 8]], jaw, [[jaw[-1, 0], top - 8]], [[-fw * 0.3, top], [fw * 0.3, top]]]
    )
    bx = np.linspace(0, 1, 7)
    t["brow_x"], t["brow_y"] = {}, {}
    for side in (-1, 1):
        xs = side * (t["eye_dx"] - t["brow_len"] * 0.45 + t["brow_len"] * bx)
        ys = (
            t["eye_y"]
            - t["brow_dy"]
            - t["brow_arch"] * np.sin(np.pi * bx)
            + side * t["brow_tilt"] * (xs - side * t["eye_dx"])
        )
        t["brow_x"][side] = np.concatenate([xs, xs[::-1]])
        t["brow_y"][side] = np.concatenate([ys, ys[::-1]])
    t["brow_th"] = t["brow_thick"] * (1.1 - 0.5 * bx) / 2
    ny, nw = t["nose_y"], t["nose_w"]
    t["bridge"] = np.array([[-1.5, ny - t["nose_len"]], [1.0, ny - t["nose_len"]], [nw * 0.6, ny], [-nw * 0.3, ny]])
    hx = np.linspace(-fw - 4, fw + 4, 13)
    hy = t["hairline"] + t["hair_curve"] * (hx / fw) ** 2 - 4 * np.exp(-(((hx - t["part"]) / 6) ** 2))
    if t["bangs"]:
        hy = np.minimum(hy + 10, t["eye_y"] - t["brow_dy"] - 5)
    dome = _CIRCLE[15:28][::-1] * np.array([fw + 7, fh * 0.75]) + np.array([0, t["hairline"] - 2])
    t["cap"] = np.concatenate([np.stack([hx, hy], 1), dome[np.argsort(-dome[:, 0])]])
    t["locks"] = [
        np.array([[sd * (fw - 5), -10], [sd * (fw + 6), -12], [sd * (fw + 4), fh * 0.6], [sd * (fw - 3), fh * 0.45]])
        for sd in (-1, 1)
    ]
    t["glasses_bridge"] = np.array(
        [[-t["eye_dx"] + t["eye_rx"] + 4, t["eye_y"]], [t["eye_dx"] - t["eye_rx"] - 4, t["eye_y"]]]
    )
    t["ears"] = {sd: _ellipse(sd * fw * 0.98, -2, 0.45 * t["ear"], t["ear"]) for sd in (-1, 1)}
    t["blushes"] = {sd: _ellipse(sd * fw * 0.55, 12, 7, 5) for sd in (-1, 1)}
    t["mole_polys"] = [_ellipse(mx, my, mr, mr) for mx, my, mr in t["moles"]]
    t["tip"] = _ellipse(0, ny, nw * 0.75, 3.2)
    mw, my = t["mouth_w"], t["mouth_y"]
    t["moustache_poly"] = np.array(
        [
            [-mw * 0.95, my - 1.5],
            [-mw * 0.5, my - 6],
            [0, my - 5],
            [mw * 0.5, my - 6],
            [mw * 0.95, my - 1.5],
            [0, my - 2.5],
        ]
    )
    t["mark_poly"] = _ellipse(*t["mark"]) if t["mark"] is not None else None
    t["earring_polys"] = {sd: _ellipse(sd * fw * 0.98, t["ear"] + 1, 1.8, 1.8) for sd in (-1, 1)}
    t["nostrils"] = {sd: _ellipse(sd * nw * 0.5, ny + 2.2, 1.6, 1.0) for sd in (-1, 1)}
    t["rims"] = {sd: _ellipse(sd * t["eye_dx"], t["eye_y"] + 1, t["eye_rx"] + 4, t["eye_ry"] + 4.5) for sd in (-1, 1)}
    t["mask"] = np.array([[-fw * 0.95, ny - 2], [fw * 0.95, ny - 2], [fw * 0.6, fh * 0.95], [-fw * 0.6, fh * 0.95]])
    t["colors"] = {
        "skin": _color(skin),
        "neck": _color(skin * 0.82),
        "ear": _color(skin * 0.92),
        "hair": _color(hair),
        "beard": _color(hair * 0.8, t["beard_alpha"]),
        "mole": _color(skin * 0.45),
        "freckle": _color(skin * 0.7),
        "socket": _color(skin * 0.85),
        "iris": _color(t["iris"]),
        "dark": _color(np.minimum(hair, skin) * 0.5),
        "brow": _color(np.minimum(hair * 0.75, skin * 0.5)),
        "bridge": _color(skin * 0.88),
        "tip": _color(skin * 0.95),
        "nostril": _color(skin * 0.4),
        "lip": _color(t["lip"]),
        "lip_line": _color(t["lip"] * 0.55),
        "lock": _color(hair * 0.92),
        "moustache": _color(hair * 0.7, 210),
        "mark": _color(skin * t["mark_color"]),
        "glasses": _color(t["glasses_color"]),
    }


class _Scene:
    """A display list of 3D polygons in face coordinates: projected with one pose in one matrix product, then
    drawn in order (per-shape numpy calls are what would make rendering slow)."""

    def __init__(
        self, traits: dict[str, Any], yaw: float, pitch: float, roll: float, scale: float, shift: np.ndarray
    ) -> None:
        cy, sy = math.cos(yaw), math.sin(yaw)
        cp, sp = math.cos(pitch), math.sin(pitch)
        cr, sr = math.cos(roll), math.sin(roll)
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
        rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
        self.rot = (rz @ rx @ ry)[:2] * scale
        self.offset = _CENTER + shift
        self.t = traits
        self.xy: list[np.ndarray] = []
        self.z: list[Any] = []  # None: on the face surface (+ extra); float: constant depth
        self.ops: list[tuple] = []

    def add(
        self, op: str, xy: np.ndarray, fill: Any, z: Optional[float] = None, extra: float = 0.0, width: int = 1
    ) -> None:
        self.xy.append(xy)
        self.z.append((z, extra))
        self.ops.append((op, len(xy), fill, width))

    def render(self, draw: ImageDraw.ImageDraw, blend: ImageDraw.ImageDraw) -> None:
        t = self.t
        xy = np.concatenate(self.xy)
        zs = np.empty(len(xy))
        surface = t["depth"] * np.sqrt(np.clip(1 - (xy[:, 0] / t["fw"]) ** 2 - (xy[:, 1] / t["fh"]) ** 2, 0, 1))
        i = 0
        for (z, extra), pts in zip(self.z, self.xy):
            j = i + len(pts)
            zs[i:j] = (surface[i:j] + extra) if z is None else z
            i = j
        proj = (xy @ self.rot[:, :2].T + zs[:, None] * self.rot[:, 2] + self.offset).ravel().tolist()
        i = 0
        for op, n, fill, width in self.ops:
            pts = proj[2 * i : 2 * (i + n)]
            i += n
            if op == "poly":
                (blend if len(fill) == 4 else draw).polygon(pts, fill=fill)
            elif op == "outline":
                draw.polygon(pts, outline=fill, width=width)
            elif op == "line":
                draw.line(pts, fill=fill, width=width)
            else:
                draw.point(pts, fill=fill)


def _ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return _CIRCLE @ np.array([[rx * c, rx * s], [-ry * s, ry * c]]) + (cx, cy)


def _color(c: Any, alpha: Optional[int] = None) -> tuple[int, ...]:
    out = tuple(0 if v < 0 else 255 if v > 255 else int(v) for v in c)
    return out if alpha is None else out + (int(alpha),)


_NOISE_BANK: dict[int, np.ndarray] = {}


def _noise_bank() -> np.ndarray:
    if 0 not in _NOISE_BANK:
        _NOISE_BANK[0] = np.random.default_rng(12345).standard_normal(1 << 20).astype(np.float32)
    return _NOISE_BANK[0]


_YY, _XX = np.meshgrid(
    np.linspace(-1, 1, SIZE, dtype=np.float32), np.linspace(-1, 1, SIZE, dtype=np.float32), indexing="ij"
)


def _blur(a: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur of a (C, H, W) float array (edges kept)."""
    b = a.copy()
    b[:, :, 1:-1] = 0.5 * a[:, :, 1:-1] + 0.25 * (a[:, :, :-2] + a[:, :, 2:])
    c = b.copy()
    c[:, 1:-1] = 0.5 * b[:, 1:-1] + 0.25 * (b[:, :-2] + b[:, 2:])
    return c


def render_face(seed: int, identity: int, sample: int, difficulty: float = 1.0) -> np.ndarray:
    """Render one aligned face: uint8 RGB array (112, 112, 3). ``difficulty`` scales every nuisance (0 = none).

    The array is a channel-last view of a channel-first buffer (``render_face_chw``); ``np.ascontiguousarray`` it
    when a library needs contiguous HWC memory."""
    return render_face_chw(seed, identity, sample, difficulty).transpose(1, 2, 0)


def render_face_chw(seed: int, identity: int, sample: int, difficulty: float = 1.0) -> np.ndarray:
    """Render one aligned face as a contiguous uint8 RGB array (3, 112, 112) (what the datasets use)."""
    t = _identity(seed, identity)
    c = t["colors"]
    rng = np.random.default_rng([seed, 2, identity, sample])
    u = rng.random(96).tolist()
    n = rng.standard_normal(24).tolist()
    d = difficulty

    # ---- background and clutter (not posed)
    img = Image.new("RGB", (SIZE, SIZE), (int(256 * u[40]), int(256 * u[41]), int(256 * u[42])))
    draw = ImageDraw.Draw(img)
    bq = rng.random((_CLUTTER + 1, 6)).tolist()
    if u[43] < _SPLIT * d:  # a second large surface (wall, door, window) behind the person
        q = bq[_CLUTTER]
        side = int(q[0] * 4)
        cut = 20 + 72 * q[1]
        box = [(0, 0, cut, SIZE), (cut, 0, SIZE, SIZE), (0, 0, SIZE, cut), (0, cut, SIZE, SIZE)][side]
        draw.rectangle(box, fill=(int(256 * q[2]), int(256 * q[3]), int(256 * q[4])))
    for k in range(int(2 + (_CLUTTER - 2) * u[0] * min(d, 1.0))):
        q = bq[k]
        x0, y0, w, h = -20 + 132 * q[0], -20 + 132 * q[1], 8 + _CLUTTER_SIZE * q[2], 8 + _CLUTTER_SIZE * q[3]
        col = (int(256 * q[4]), int(256 * q[5]), int(256 * q[4] * q[5]))
        if k % 3 == 0:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=col)
        elif k % 3 == 1:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=col)
        else:
            draw.line([x0, y0, x0 + w, y0 + h], fill=col, width=int(2 + q[2] * 5))

    scene = _Scene(
        t,
        yaw=0.30 * d * n[0],
        pitch=0.15 * d * n[1],
        roll=0.12 * d * n[2],
        scale=1 + _SCALE * d * n[3],
        shift=np.array([_SHIFT * d * n[4], _SHIFT * d * n[5]]),
    )
    fw, fh = t["fw"], t["fh"]
    smile = min(max(0.6 * d * n[6] + 0.15, -0.6), 1.2)
    mouth_open = max(0.0, d * (u[1] - 0.7) * 12)
    eye_open = min(max(1 - 0.35 * d * abs(n[7]), 0.25), 1.1)
    brow_raise = 1.5 * d * n[8]
    gx, gy = 1.4 * d * n[9], 0.6 * d * n[10]
    add = scene.add

    # ---- hair behind the head, neck, ears
    if t["long"] and not t["bald"]:
        add("poly", _ellipse(0, 8, fw + 12, fh + 22), c["hair"], z=-20.0)
    add("poly", t["neck"], c["neck"], z=-10.0)
    for side in (-1, 1):
        add("poly", t["ears"][side], c["ear"], z=-4.0)
        if t["earrings"]:
            add("poly", t["earring_polys"][side], (230, 200, 90), z=-3.0)

    # ---- face, beard, blush, moles, freckles
    add("poly", t["outline"], c["skin"], z=0.0)
    if t["beard"]:
        add("poly", t["beard_poly"], c["beard"])
    if t["blush"]:
        for side in (-1, 1):
            add("poly", t["blushes"][side], (200, 60, 60, t["blush"]))
    for mole in t["mole_polys"]:
        add("poly", mole, c["mole"])
    if t["mark_poly"] is not None:
        add("poly", t["mark_poly"], c["mark"])
    if len(t["freckles"]):
        add("point", t["freckles"], c["freckle"])

    # ---- eyes and brows
    for side in (-1, 1):
        ex, ey = side * t["eye_dx"], t["eye_y"]
        ry = t["eye_ry"] * eye_open
        tilt = -side * t["eye_tilt"]
        add("poly", _ellipse(ex, ey - 1.5, t["eye_rx"] + 1.5, ry + 2.5, tilt), c["socket"])
        add("poly", _ellipse(ex, ey, t["eye_rx"], ry, tilt), (235, 232, 225))
        ir = t["eye_ry"] * 0.95
        add("poly", _ellipse(ex + gx, ey + gy, ir, min(ir, ry)), c["iris"])
        add("poly", _ellipse(ex + gx, ey + gy, ir * 0.45, min(ir, ry) * 0.45), (12, 10, 10))
        lid = _ellipse(ex, ey, t["eye_rx"], ry, tilt)[_LID]
        add("line", lid, c["dark"], width=2)
        ys = t["brow_y"][side] - brow_raise
        brow_y = np.concatenate([ys[:7] - t["brow_th"], ys[7:] + t["brow_th"][::-1]])
        add("poly", np.stack([t["brow_x"][side], brow_y], 1), c["brow"])

    # ---- nose: bridge shadow, tip, nostrils (stick out of the face)
    nd = t["nose_depth"]
    add("poly", t["bridge"], c["bridge"], extra=0.6 * nd)
    add("poly", t["tip"], c["tip"], extra=nd)
    for side in (-1, 1):
        add("poly", t["nostrils"][side], c["nostril"], extra=0.6 * nd)

    # ---- mouth with expression
    mw, my = t["mouth_w"] * (1 + 0.12 * smile), t["mouth_y"]
    xs = _MOUTH_X * mw
    line = my - 3.0 * smile * (1 - _MOUTH_F)
    upper = np.stack([xs, line - t["lip_up"] * _MOUTH_SQ - 0.4], 1)
    lower = np.stack([xs, line + (t["lip_lo"] + mouth_open) * _MOUTH_SQ], 1)[::-1]
    add("poly", np.concatenate([upper, lower]), c["lip"])
    if mouth_open > 0.8:
        inner = np.concatenate([np.stack([xs, line + 0.3], 1), np.stack([xs, line + mouth_open * _MOUTH_F], 1)[::-1]])
        add("poly", inner, (45, 15, 20))
    add("line", np.stack([xs, line], 1), c["lip_line"])
    if t["moustache"]:
        add("poly", t["moustache_poly"], c["moustache"])

    # ---- hair on top, glasses
    if not t["bald"]:
        add("poly", t["cap"], c["hair"], z=6.0)
        if t["long"]:
            for lock in t["locks"]:
                add("poly", lock, c["lock"], z=4.0)
    if t["glasses"]:
        for side in (-1, 1):
            add("outline", t["rims"][side], c["glasses"], extra=6.0, width=2)
        add("line", t["glasses_bridge"], c["glasses"], extra=6.0, width=2)

    # ---- occluders (posed with the face, so they sit on it)
    if u[2] < 0.25 * d:
        kind = int(u[3] * 4)
        col = (int(256 * u[20]), int(256 * u[21]), int(256 * u[22]))
        if kind == 0:  # hand / object blob
            blob = _ellipse(60 * (u[4] - 0.5), 40 * (u[5] - 0.3), 12 + 12 * u[6], 10 + 12 * u[7], u[8] * 3)
            add("poly", blob, col, z=40.0)
        elif kind == 1:  # face mask
            add("poly", t["mask"], col, z=30.0)
        elif kind == 2:  # sunglasses
            for side in (-1, 1):
                add("poly", t["rims"][side], (15, 15, 20), z=34.0)
    if u[23] < _HAT * d:  # hat or hood over the hair
        yb = t["hairline"] + (t["eye_y"] - t["brow_dy"] - 4 - t["hairline"]) * u[24]
        col = (int(256 * u[25]), int(256 * u[26]), int(256 * u[27]))
        crown = _CIRCLE[14:] * np.array([fw + 6 + 6 * u[28], fh * (0.5 + 0.4 * u[29])]) + np.array([0, yb])
        add("poly", np.concatenate([crown, [[fw + 6, yb + 2], [-fw - 6, yb + 2]]]), col, z=12.0)
        if u[30] < 0.5:  # brim / band
            add(
                "poly",
                _ellipse(0, yb + 1, fw + 9 + 8 * u[31], 2.5 + 3 * u[32]),
                (int(col[0] * 0.7), int(col[1] * 0.7), int(col[2] * 0.7)),
                z=14.0,
            )
    scene.render(draw, ImageDraw.Draw(img, "RGBA"))
    if u[2] < 0.25 * d and int(u[3] * 4) == 3:  # bar across the image
        y0 = 20 + 70 * u[9]
        draw.rectangle([0, y0, SIZE, y0 + 6 + 10 * u[10]], fill=(int(256 * u[20]), int(256 * u[21]), int(256 * u[22])))

    # ---- camera (channel-first float: per-channel work runs over whole planes): blur, greyscale, lighting,
    # exposure and white balance with error, noise, tone curve
    cu = rng.random(8).tolist()
    cn = rng.standard_normal(8).tolist()
    arr = np.asarray(img).transpose(2, 0, 1).astype(np.float32)
    if u[11] < 0.5 * d:
        b = _blur(arr)
        w = min(1.0, 0.3 + u[12] * d)
        arr = _blur(b) if u[12] > 0.6 else arr * (1 - w) + b * w
    grey = u[18] < _GRAY * d
    if grey:  # some photos are greyscale
        arr[:] = arr.mean(0)
    ang = 2 * math.pi * u[13]
    k = _LIGHT * d * (_LIGHT_MIN + (1 - _LIGHT_MIN) * u[15])
    light = (k * math.cos(ang)) * _XX + (k * math.sin(ang)) * _YY
    light += 1.0
    np.maximum(light, 0.12, out=light)
    if cu[0] < _SPOT * d:  # a second, local light (or shadow) blob
        cx, cy, r = 2 * cu[1] - 1, 2 * cu[2] - 1, 0.25 + 0.5 * cu[3]
        light *= 1 + (2 * cu[4] - 1) * np.maximum(0, 1 - ((_XX - cx) ** 2 + (_YY - cy) ** 2) / (r * r))
    # the camera meters the frame (exposure and grey-world white balance), then misses its targets: this takes
    # the identity's overall tone out of the image statistics, as a real camera does
    mean = (arr[_METER] * light[_METER[1:]]).mean((1, 2)) + 1.0
    if grey:
        mean[:] = mean.mean()
    target = 118.0 * math.exp(_EXPOSURE * n[11]) * np.exp(_CAST * np.array([n[12], n[13], cn[0]]))
    wb = np.exp(min(d, 1.0) * np.log(target / mean)).astype(np.float32)
    field = light[None] * wb[:, None, None]
    arr *= field
    bank = _noise_bank()
    off = int(u[16] * (len(bank) - SIZE * SIZE * 3))
    arr += bank[off : off + SIZE * SIZE * 3].reshape(3, SIZE, SIZE) * np.float32(2 + 8 * u[17] * d)
    np.clip(arr, 0, 255, out=arr)
    out = arr.astype(np.uint8)
    if d > 0:  # tone curve: gamma and contrast
        gamma = math.exp(_GAMMA * d * cn[1])
        contrast = math.exp(_CONTRAST * d * cn[2])
        lut = np.clip(127.5 + contrast * (255 * _RAMP**gamma - 127.5), 0, 255).astype(np.uint8)
        out = np.take(lut, out)
    return out


_LID = np.r_[14:28, 0]  # the upper half of _CIRCLE (y <= 0), left to right
_MOUTH_X = np.linspace(-1, 1, 11)
_RAMP = np.arange(256) / 255.0
_METER = (slice(None), slice(2, SIZE, 4), slice(2, SIZE, 4))  # (C, H, W) pixels the exposure meter reads
_MOUTH_F = 1 - _MOUTH_X**2
_MOUTH_SQ = np.sqrt(_MOUTH_F)


class SyntheticFaces(Dataset):
    """``num_identities * images_per_identity`` synthetic aligned faces; item ``i`` is ``(image, label)`` with label
    ``i // images_per_identity``. The image is a uint8 RGB tensor (3, 112, 112), or ``transform`` of it.

    ``identity_offset`` shifts the identities drawn (labels stay 0..N-1); :func:`synthetic_pairs` uses identities
    from ``VERIFY_IDENTITY_OFFSET`` on, disjoint from any training set. ``num_classes`` (default
    ``num_identities``) may be larger, as for every training source.
    """

    def __init__(
        self,
        num_identities: int = 1000,
        images_per_identity: int = 20,
        seed: int = 0,
        transform: Optional[Callable[[torch.Tensor], Any]] = None,
        difficulty: float = 1.0,
        identity_offset: int = 0,
        num_classes: Optional[int] = None,
    ) -> None:
        if num_identities < 1 or images_per_identity < 1:
            raise ConfigError("num_identities and images_per_identity must be >= 1")
        if identity_offset + num_identities > VERIFY_IDENTITY_OFFSET and identity_offset < VERIFY_IDENTITY_OFFSET:
            raise ValueError("training identities must stay below VERIFY_IDENTITY_OFFSET (2**30)")
        self.num_identities = int(num_identities)
        self.images_per_identity = int(images_per_identity)
        self.seed = int(seed)
        self.transform = transform
        self.difficulty = float(difficulty)
        self.identity_offset = int(identity_offset)
        self.num_classes = self.num_identities if num_classes is None else int(num_classes)
        if self.num_classes < self.num_identities:
            raise ConfigError(f"SyntheticFaces: num_classes={num_classes} is below num_identities={num_identities}")

    def __len__(self) -> int:
        return self.num_identities * self.images_per_identity

    def __getitem__(self, index: int) -> tuple[Any, int]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for SyntheticFaces of length {n}")
        index %= n
        label, sample = divmod(index, self.images_per_identity)
        image = torch.from_numpy(render_face_chw(self.seed, self.identity_offset + label, sample, self.difficulty))
        return (self.transform(image) if self.transform is not None else image), label


def synthetic_pairs(
    num_pairs: int = 1000,
    seed: int = 0,
    num_identities: Optional[int] = None,
    difficulty: float = 1.0,
    identity_offset: int = VERIFY_IDENTITY_OFFSET,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out verification pairs from identities disjoint from training: ``(images (2P,3,112,112) uint8,
    issame (P,) bool)``; even pairs are positives, odd ones negatives (same layout as an insightface ``.bin``)."""
    if num_pairs < 1:
        raise ValueError("num_pairs must be >= 1")
    ids = num_identities or max(2, num_pairs // 2)
    rng = np.random.default_rng([seed, 3, num_pairs, ids])
    images = np.empty((2 * num_pairs, 3, SIZE, SIZE), dtype=np.uint8)
    issame = torch.zeros(num_pairs, dtype=torch.bool)
    counter = np.zeros(ids, dtype=np.int64)
    for p in range(num_pairs):
        same = p % 2 == 0
        a = int(rng.integers(ids))
        b = a if same else int((a + 1 + rng.integers(ids - 1)) % ids)
        for j, ident in enumerate((a, b)):
            image_id = 1_000_000 + int(counter[ident])
            images[2 * p + j] = render_face_chw(seed, identity_offset + ident, image_id, difficulty)
            counter[ident] += 1
        issame[p] = same
    return torch.from_numpy(images), issame
