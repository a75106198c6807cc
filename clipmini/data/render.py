"""Drawing a batch of scenes at once: signed distances on a coordinate grid, no per-pixel Python.

Each shape is a signed distance function (SDF) of local coordinates (u, v), in units of the object's
radius (negative inside). Coverage of a pixel is `clip(0.5 - sdf_in_pixels, 0, 1)`, which antialiases
the edge over one pixel. All objects of one shape in a batch are evaluated in one broadcast
`[N, R, R]` expression. Only elementwise +, -, *, /, sqrt, abs, min, max are used, so a sample's
pixels are bit-identical whatever batch it is drawn in.

Visual domains change the image statistics, never the content: `flat` (clean colors on near-white),
`photo` (lighting gradient, shading, drop shadow, sensor noise), `sketch` (colored outline and hatching
on paper), `painting` (brush texture, wobbly edges, color jitter), `lowcontrast` (colors pulled toward
a light gray background), `darkbg` (a dark background).
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .attributes import COLOR_RGB, DOMAINS, SHAPES, WRITTEN_WORDS
from .rng import SampleRandom, derive_key, stream
from .scenes import MAX_SLOTS, Scenes

_D = {name: i for i, name in enumerate(DOMAINS)}
_SQRT3_2 = np.float32(np.sqrt(3.0) / 2.0)
_INV_SQRT2 = np.float32(1.0 / np.sqrt(2.0))


# ---------------------------------------------------------------- shapes: u, v in radius units, v up
def _circle(u, v):
    return np.sqrt(u * u + v * v) - np.float32(0.92)


def _square(u, v):
    return np.maximum(np.abs(u), np.abs(v)) - np.float32(0.78)


def _triangle(u, v):
    # equilateral, pointing up; circumradius 1.1 around a centroid moved down by 0.15 so it fills the box
    v = v + np.float32(0.15)
    n = np.maximum(-v, np.maximum(_SQRT3_2 * u + 0.5 * v, -_SQRT3_2 * u + 0.5 * v))
    return n - np.float32(0.55)


_K1 = (np.float32(0.809016994375), np.float32(-0.587785252292))  # (cos 36deg, -sin 36deg)


def _star(u, v):
    # 5-pointed star (outer radius 1, inner 0.42): fold the plane into one wedge by reflections,
    # then take the distance to the one edge segment from the tip to the valley.
    x, y = np.abs(u), v
    for kx in (_K1[0], -_K1[0]):
        d = np.maximum(kx * x + _K1[1] * y, 0.0) * 2.0
        x, y = x - d * kx, y - d * _K1[1]
    x = np.abs(x)
    y = y - np.float32(1.0)
    rf = np.float32(0.42)  # inner / outer radius
    bax, bay = rf * -_K1[1], rf * _K1[0] - np.float32(1.0)  # tip -> valley direction
    h = np.clip((x * bax + y * bay) / (bax * bax + bay * bay), 0.0, 1.0)
    ex, ey = x - bax * h, y - bay * h
    sign = np.where(y * bax - x * bay >= 0, np.float32(1.0), np.float32(-1.0))
    return np.sqrt(ex * ex + ey * ey) * sign


def _cross(u, v):
    au, av = np.abs(u), np.abs(v)
    arm, half = np.float32(0.30), np.float32(0.92)
    return np.minimum(np.maximum(au - arm, av - half), np.maximum(au - half, av - arm))


def _heart(u, v):
    # two round lobes on top of a 45-degree square whose lower corner is the heart's tip
    lobe_l = np.sqrt((u + 0.42) ** 2 + (v - 0.28) ** 2) - np.float32(0.5)
    lobe_r = np.sqrt((u - 0.42) ** 2 + (v - 0.28) ** 2) - np.float32(0.5)
    point = (np.abs(u) + np.abs(v + np.float32(0.12)) - np.float32(0.86)) * _INV_SQRT2
    return np.minimum(np.minimum(lobe_l, lobe_r), point)


def _diamond(u, v):
    a, b = np.float32(0.68), np.float32(0.98)  # half width, half height: a tall rhombus
    scale = np.float32(1.0 / np.sqrt(1.0 / a**2 + 1.0 / b**2))
    return (np.abs(u) / a + np.abs(v) / b - np.float32(1.0)) * scale


def _arrow(u, v):
    # pointing right: a triangular head (tip at u = 0.95) on a shaft; the two overlap, so no seam
    av = np.abs(v)
    head = np.maximum(0.6 * (u - np.float32(0.95)) + 0.8 * av, -u - np.float32(0.05))
    shaft = np.maximum(av - np.float32(0.26), np.maximum(np.float32(-0.9) - u, u - np.float32(0.1)))
    return np.minimum(head, shaft)


def _ring(u, v):
    return np.abs(np.sqrt(u * u + v * v) - np.float32(0.66)) - np.float32(0.26)


def _crescent(u, v):
    disc = np.sqrt(u * u + v * v) - np.float32(0.92)
    bite = np.sqrt((u - 0.42) ** 2 + (v - 0.22) ** 2) - np.float32(0.72)
    return np.maximum(disc, -bite)


SHAPE_SDF = {
    "circle": _circle, "square": _square, "triangle": _triangle, "star": _star, "cross": _cross,
    "heart": _heart, "diamond": _diamond, "arrow": _arrow, "ring": _ring, "crescent": _crescent,
}
assert tuple(SHAPE_SDF) == SHAPES


# ---------------------------------------------------------------- assets built once per resolution
def _font_path() -> str:
    import matplotlib
    from pathlib import Path

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
    if not path.exists():  # pragma: no cover - matplotlib always ships DejaVu
        from matplotlib import font_manager

        path = Path(font_manager.findfont("DejaVu Sans:bold"))
    return str(path)


def _glyphs(R: int) -> tuple[np.ndarray, np.ndarray]:
    """[words, h, w] float32 coverage masks of WRITTEN_WORDS (h ~ 22% of the side, centred in w), and
    each word's inked width in pixels."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(_font_path(), 64)
    h = max(5, round(0.22 * R))
    max_w = round(0.86 * R)
    masks = []
    for word in WRITTEN_WORDS:
        left, top, right, bottom = font.getbbox(word)
        img = Image.new("L", (right - left + 8, bottom - top + 8), 0)
        ImageDraw.Draw(img).text((4 - left, 4 - top), word, font=font, fill=255)
        img = img.crop(img.getbbox())
        w = min(max_w, max(2, round(h * img.width / img.height)))
        small = img.resize((w, h), Image.Resampling.LANCZOS)
        masks.append(np.asarray(small, dtype=np.float32) / 255.0)
    out = np.zeros((len(masks), h, max_w), dtype=np.float32)
    widths = np.zeros(len(masks), dtype=np.int64)
    for i, m in enumerate(masks):
        x0 = (max_w - m.shape[1]) // 2
        out[i, :, x0 : x0 + m.shape[1]] = np.clip(m, 0.0, 1.0)
        widths[i] = m.shape[1]
    return out, widths


def _box_blur(x: np.ndarray, length: int, axis: int) -> np.ndarray:
    """Moving average with wrap-around (so tiles stay seamless)."""
    if length <= 1:
        return x
    acc = np.zeros_like(x)
    for s in range(length):
        acc += np.roll(x, s - length // 2, axis=axis)
    return acc / length


class RenderAssets:
    """Per-resolution constants: pixel grids, noise-texture banks, glyph masks, hatching."""

    TILES = 16  # texture tiles per bank; each image crops one at a random offset

    def __init__(self, image_size: int, seed: int):
        R = self.R = int(image_size)
        self.coords = ((np.arange(R, dtype=np.float32) + 0.5) / R)  # [R] pixel centres, fractions
        rng = np.random.default_rng(derive_key(seed, 0x7E47))
        grain = rng.standard_normal((self.TILES, 2 * R, 2 * R)).astype(np.float32)
        brush = _box_blur(rng.standard_normal((self.TILES, 2 * R, 2 * R)).astype(np.float32), max(3, R // 5), 2)
        brush = _box_blur(brush, max(1, R // 32 + 1), 1)
        brush /= brush.std()
        self.grain = sliding_window_view(grain, (R, R), axis=(1, 2))  # [T, R+1, R+1, R, R] view
        self.brush = sliding_window_view(brush, (R, R), axis=(1, 2))
        self.brush_t = sliding_window_view(np.ascontiguousarray(brush.transpose(0, 2, 1)), (R, R), axis=(1, 2))
        self.glyphs, self.glyph_widths = _glyphs(R)  # [words, h, w], [words]
        period = max(3.0, 4.0 * R / 32.0)
        yy, xx = np.meshgrid(np.arange(R), np.arange(R), indexing="ij")
        self.hatch = (((xx + yy) % period) < max(1.0, R / 32.0)).astype(np.float32)  # [R, R]


@functools.lru_cache(maxsize=8)
def render_assets(image_size: int, seed: int) -> RenderAssets:
    return RenderAssets(image_size, seed)


def _texture(rnd: SampleRandom, bank: np.ndarray, name: str, R: int) -> np.ndarray:
    u = rnd.rand_many([stream(name, 0), stream(name, 1), stream(name, 2)])  # [B, 3]
    t = (u[:, 0] * bank.shape[0]).astype(np.int64)
    oy = (u[:, 1] * (R + 1)).astype(np.int64)
    ox = (u[:, 2] * (R + 1)).astype(np.int64)
    return bank[t, oy, ox]  # [B, R, R]


_LIGHT_DIRS = np.array(
    [(1, 0), (0.7071, 0.7071), (0, 1), (-0.7071, 0.7071), (-1, 0), (-0.7071, -0.7071), (0, -1), (0.7071, -0.7071)],
    dtype=np.float32,
)
_PAPER = np.array([0.95, 0.93, 0.86], dtype=np.float32)
_STYLE_STREAMS = ("bg_j", "bg_t0", "bg_t1", "bg_t2", "light", "light_gain", "brush_flip", "obj_j0", "obj_j1", "obj_j2")


def render(scenes: Scenes, rnd: SampleRandom, assets: RenderAssets) -> np.ndarray:
    """Draw the scenes: float32 [B, 3, R, R] RGB in [0, 1]."""
    B, R = len(scenes), assets.R
    X = assets.coords[None, None, :]  # [1, 1, R]
    Y = assets.coords[None, :, None]  # [1, R, 1]
    dom = scenes.domain
    style = rnd.rand_many([stream(n) for n in _STYLE_STREAMS]).astype(np.float32)  # [B, 10]
    jitter, tint = style[:, 0:1] - 0.5, style[:, 1:4] - 0.5  # [B, 1], [B, 3]
    light = _LIGHT_DIRS[(style[:, 4] * len(_LIGHT_DIRS)).astype(np.int64)]  # [B, 2] (x right, y up)
    is_photo = dom == _D["photo"]
    is_paint = dom == _D["painting"]
    is_sketch = dom == _D["sketch"]

    # ---- background colour per image, then per-domain fields
    bg = 0.96 + 0.04 * jitter + 0.02 * tint  # [B, 3] flat: near-white
    bg = np.where(is_photo[:, None], 0.62 + 0.1 * jitter + 0.45 * tint, bg)  # a muted random colour
    bg = np.where(is_sketch[:, None], _PAPER + 0.02 * jitter, bg)  # paper
    bg = np.where(is_paint[:, None], 0.78 + 0.1 * jitter + 0.35 * tint, bg)  # pastel canvas
    bg = np.where((dom == _D["lowcontrast"])[:, None], 0.72 + 0.08 * jitter + 0.02 * tint, bg)  # light gray
    bg = np.where((dom == _D["darkbg"])[:, None], 0.09 + 0.05 * jitter + 0.08 * tint, bg)  # near black
    bg = bg.astype(np.float32)
    canvas = np.empty((B, 3, R, R), dtype=np.float32)
    canvas[:] = bg[:, :, None, None]
    brush = None
    if is_paint.any():
        sub = rnd.subset(is_paint)
        flip = style[is_paint, 6][:, None, None] < 0.5
        brush = np.where(flip, _texture(sub, assets.brush_t, "brush", R), _texture(sub, assets.brush, "brush", R))
        canvas[is_paint] *= 1.0 + 0.10 * brush[:, None]  # [Np, 3, R, R]
    if is_photo.any():
        gain = (0.25 + 0.25 * style[is_photo, 5])[:, None, None]
        lx, ly = light[is_photo, 0][:, None, None], light[is_photo, 1][:, None, None]
        field = 1.0 + gain * (lx * (X - 0.5) - ly * (Y - 0.5))  # [Np, R, R] lighting gradient
        canvas[is_photo] *= field[:, None]
    if is_sketch.any():
        canvas[is_sketch] += 0.02 * _texture(rnd.subset(is_sketch), assets.grain, "grain", R)[:, None]
    paint_row = np.cumsum(is_paint) - 1  # image -> row of `brush`

    # ---- objects, one slot at a time (objects in a scene do not overlap)
    obj_jit = style[:, 7:10] - 0.5  # [B, 3]
    shadow_px = max(1, round(R / 24))
    stroke = np.float32(max(0.6, R / 48))  # half width of a sketch line, pixels
    rgb = np.asarray(COLOR_RGB, dtype=np.float32)
    for k in range(MAX_SLOTS):
        b = np.flatnonzero(scenes.n_objects > k)
        if b.size == 0:
            break
        everyone = b.size == B
        r = scenes.radius[b, k].astype(np.float32)[:, None, None]  # [N, 1, 1]
        u = (X - scenes.cx[b, k].astype(np.float32)[:, None, None]) / r  # [N, 1, R]
        v = (scenes.cy[b, k].astype(np.float32)[:, None, None] - Y) / r  # [N, R, 1]
        sdf = np.empty((b.size, R, R), dtype=np.float32)
        shp = scenes.shape[b, k]
        for s, fn in enumerate(SHAPE_SDF.values()):
            sel = shp == s
            if sel.any():
                sdf[sel] = fn(u[sel], v[sel])
        sdf *= r * np.float32(R)  # [N, R, R] in pixels
        d = dom[b]
        paint, sk, ph = d == _D["painting"], d == _D["sketch"], d == _D["photo"]
        if paint.any():
            sdf[paint] += (0.3 * R / 32.0) * brush[paint_row[b[paint]]]  # slightly wobbly edges
        outline = np.clip(stroke + 0.5 - np.abs(sdf[sk]), 0.0, 1.0) if sk.any() else None  # [Nsk, R, R]
        cover = np.subtract(np.float32(0.5), sdf, out=sdf)
        np.clip(cover, 0.0, 1.0, out=cover)  # [N, R, R] coverage
        if outline is not None:  # a sketch draws the outline, and hatches the inside lightly
            cover[sk] = np.maximum(outline, 0.35 * cover[sk] * assets.hatch)

        col = rgb[scenes.color[b, k]]  # [N, 3]
        col = np.where(paint[:, None], np.clip(col + 0.14 * obj_jit[b], 0, 1), col)
        col = np.where(sk[:, None], 0.85 * col, col)
        low = d == _D["lowcontrast"]
        col = np.where(low[:, None], bg[b] + 0.4 * (col - bg[b]), col).astype(np.float32)  # 40% contrast
        target = canvas if everyone else canvas[b]  # [N, 3, R, R]
        a = cover[:, None]  # [N, 1, R, R]
        if ph.any():  # drop shadow: the coverage moved down-right darkens what lies beneath
            sh = np.zeros((int(ph.sum()), 1, R, R), dtype=np.float32)
            sh[:, :, shadow_px:, shadow_px:] = a[ph][:, :, :-shadow_px, :-shadow_px]
            target[ph] *= 1.0 - 0.35 * sh
        delta = col[:, :, None, None] - target  # [N, 3, R, R]
        delta *= a
        target += delta
        if ph.any():  # shading: the lit side brighter
            lx, ly = light[b[ph], 0][:, None, None], light[b[ph], 1][:, None, None]
            shade = np.clip(0.22 * (lx * u[ph] + ly * v[ph]), -0.4, 0.4)  # [Nph, R, R]
            target[ph] += (a[ph] * shade[:, None]) * col[ph][:, :, None, None]
        if paint.any():
            target[paint] += (a[paint] * 0.10 * brush[paint_row[b[paint]]][:, None]) * col[paint][:, :, None, None]
        if not everyone:
            canvas[b] = target

    # ---- written words
    has = np.flatnonzero(scenes.word >= 0)
    if has.size:
        g = assets.glyphs[scenes.word[has]]  # [Nw, h, w]
        h, w = g.shape[1:]
        y0 = np.round(scenes.word_y[has] * R - h / 2).astype(np.int64)
        # keep the inked part of the word inside the image
        half = assets.glyph_widths[scenes.word[has]] / 2.0
        centre = np.clip(scenes.word_x[has] * R, half + 1, R - half - 1)
        x0 = np.round(centre - w / 2).astype(np.int64)
        rows = y0[:, None, None] + np.arange(h)[None, :, None]
        cols = x0[:, None, None] + np.arange(w)[None, None, :]
        ok = (rows >= 0) & (rows < R) & (cols >= 0) & (cols < R)
        alpha = np.zeros((has.size, R, R), dtype=np.float32)
        which = np.broadcast_to(np.arange(has.size)[:, None, None], g.shape)
        alpha[which[ok], np.broadcast_to(rows, g.shape)[ok], np.broadcast_to(cols, g.shape)[ok]] = g[ok]
        ink = np.where(dom[has] == _D["darkbg"], 0.95, 0.06).astype(np.float32)[:, None, None, None]
        a = 0.95 * alpha[:, None]
        canvas[has] = canvas[has] * (1.0 - a) + ink * a

    # ---- sensor noise
    if is_photo.any():
        canvas[is_photo] += 0.045 * _texture(rnd.subset(is_photo), assets.grain, "grain", R)[:, None]
    np.minimum(np.maximum(canvas, 0.0, out=canvas), 1.0, out=canvas)
    return canvas
