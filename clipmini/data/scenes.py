"""What is in a picture of the caption world: objects, their attributes and where they sit.

A batch of scenes is a struct of numpy arrays (`Scenes`), sampled all at once from counter-based
random streams (`rng.SampleRandom`), so sample i depends only on (key, i). Three kinds of scene:
`single` (one object with a size and a position), `count` (two to four copies of one object) and
`relation` (two different objects, the first left of / right of / above / below the second).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from .attributes import COLORS, DOMAINS, KINDS, POSITIONS, RELATIONS, SHAPES, WRITTEN_WORDS
from .rng import SampleRandom, stream

MAX_SLOTS = 4  # objects per scene at most (the largest count)
SINGLE, COUNT, RELATION = 0, 1, 2
_MAX_RETRIES = 64  # rejection sampling rounds before giving up (each round fails with p <= ~0.3)

# geometry, in fractions of the image side
_SMALL_R = (0.14, 0.18)  # radius of a "small" lone object
_LARGE_R = (0.26, 0.32)  # radius of a "large" lone object
_GROUP_R = (0.14, 0.18)  # radius of the objects in count and relation scenes
_MARGIN = 0.03  # empty border kept between an object and the image edge


@dataclass
class Scenes:
    """A batch of B scenes; object arrays have MAX_SLOTS columns, unused slots hold -1 / nan."""

    ids: np.ndarray  # [B] uint64 sample ids
    kind: np.ndarray  # [B] index into KINDS
    domain: np.ndarray  # [B] index into DOMAINS
    n_objects: np.ndarray  # [B] objects drawn (1..4)
    color: np.ndarray  # [B, K] index into COLORS, -1 for an empty slot
    shape: np.ndarray  # [B, K] index into SHAPES, -1 for an empty slot
    size: np.ndarray  # [B] index into SIZES for single scenes, else -1
    position: np.ndarray  # [B] index into POSITIONS for single scenes, else -1
    relation: np.ndarray  # [B] index into RELATIONS (object 0 relative to object 1), else -1
    cx: np.ndarray  # [B, K] object centre x, fraction of the side (0 = left)
    cy: np.ndarray  # [B, K] object centre y, fraction of the side (0 = top)
    radius: np.ndarray  # [B, K] object radius, fraction of the side
    word: np.ndarray  # [B] index into WRITTEN_WORDS drawn into the image, or -1
    word_x: np.ndarray  # [B] centre of the written word, fractions
    word_y: np.ndarray  # [B]

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    @property
    def count(self) -> np.ndarray:
        """[B] number of objects of the (single) kind shown: 1..4 for single/count scenes, -1 for relations."""
        return np.where(self.kind == RELATION, -1, self.n_objects)

    def select(self, mask: np.ndarray) -> "Scenes":
        return Scenes(**{f.name: getattr(self, f.name)[mask] for f in fields(self)})

    def describe(self, i: int) -> dict:
        """One scene as a plain dict of words (for reading and for tests)."""
        n = int(self.n_objects[i])
        objects = [
            {
                "color": COLORS[self.color[i, k]],
                "shape": SHAPES[self.shape[i, k]],
                "cx": round(float(self.cx[i, k]), 3),
                "cy": round(float(self.cy[i, k]), 3),
                "radius": round(float(self.radius[i, k]), 3),
            }
            for k in range(n)
        ]
        return {
            "id": int(self.ids[i]),
            "kind": KINDS[self.kind[i]],
            "domain": DOMAINS[self.domain[i]],
            "objects": objects,
            "size": ("small", "large")[self.size[i]] if self.size[i] >= 0 else None,
            "position": POSITIONS[self.position[i]] if self.position[i] >= 0 else None,
            "relation": RELATIONS[self.relation[i]] if self.relation[i] >= 0 else None,
            "word": WRITTEN_WORDS[self.word[i]] if self.word[i] >= 0 else None,
        }


def heldout_matrix(split_seed: int, per_color: int) -> np.ndarray:
    """[colors, shapes] bool: the color x shape pairs kept out of training.

    A "generalized diagonal": a random permutation sigma of the shapes and `per_color` distinct offsets
    j hold out (c, sigma[(c + j) % 10]). Every color then loses exactly `per_color` shapes and every
    shape loses `per_color` colors, so each word is still seen in training, only never in that pairing.
    """
    n_c, n_s = len(COLORS), len(SHAPES)
    rng = np.random.default_rng(np.random.SeedSequence([int(split_seed), 0x5EED]))
    sigma = rng.permutation(n_s)
    offsets = rng.choice(n_s, size=per_color, replace=False)
    held = np.zeros((n_c, n_s), dtype=bool)
    for j in offsets:
        held[np.arange(n_c), sigma[(np.arange(n_c) + j) % n_s]] = True
    return held


def cooccurrence_violations(
    held: np.ndarray, color_mask: np.ndarray, shape_mask: np.ndarray
) -> np.ndarray:
    """[B] bool: true where some held-out pair has its color in `color_mask` and its shape in `shape_mask`.

    color_mask [B, 10] and shape_mask [B, 10] mark every color / shape word that can appear in the
    caption or the image of a sample; a training sample must never pair them in a held-out way.
    """
    linked = color_mask.astype(np.float32) @ held.astype(np.float32)  # [B, shapes]
    return (linked * shape_mask).sum(axis=1) > 0


def word_masks(colors: np.ndarray, shapes: np.ndarray, word: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[B, 10] masks of the colors and shapes of the objects ([B, K], -1 = none) plus the written word."""
    B = colors.shape[0]
    cm = np.zeros((B, len(COLORS)), dtype=bool)
    sm = np.zeros((B, len(SHAPES)), dtype=bool)
    rows = np.repeat(np.arange(B), colors.shape[1])
    c, s = colors.reshape(-1), shapes.reshape(-1)
    cm[rows[c >= 0], c[c >= 0]] = True
    sm[rows[s >= 0], s[s >= 0]] = True
    has = word >= 0
    is_color = has & (word < len(COLORS))
    is_shape = has & (word >= len(COLORS))
    cm[np.flatnonzero(is_color), word[is_color]] = True
    sm[np.flatnonzero(is_shape), word[is_shape] - len(COLORS)] = True
    return cm, sm


def _as_array(value, B: int, name: str, n_values: int | None = None) -> np.ndarray | None:
    """Broadcast an optional override (scalar or [B]) to an int64 array, range-checked."""
    if value is None:
        return None
    arr = np.broadcast_to(np.asarray(value, dtype=np.int64), (B,)).copy()
    if n_values is not None and arr.size and (arr.min() < 0 or arr.max() >= n_values):
        raise ValueError(f"{name} indices must lie in [0, {n_values}); got min {arr.min()}, max {arr.max()}")
    return arr


def _uniform(rnd: SampleRandom, name: str, lo: float, hi: float, k: int = 0) -> np.ndarray:
    return lo + (hi - lo) * rnd.rand(stream(name, k))


def sample_scenes(
    rnd: SampleRandom,
    *,
    kind_probs: tuple[float, float, float],
    domains: np.ndarray,
    max_count: int,
    held: np.ndarray,
    text_rate: float,
    allow_heldout: bool = False,
    kind=None,
    domain=None,
    color=None,
    shape=None,
    size=None,
    count=None,
    relation=None,
    word=None,
    word_over_object: float = 0.5,
) -> Scenes:
    """Sample B = len(rnd) scenes. Any keyword among kind..word forces that attribute (scalar or [B]).

    `count` is a number of objects (1..4); forcing it makes a count-layout scene (also for 1).
    `word=-1` forces no written word. Held-out color x shape pairs never co-occur in a sample (objects
    and written word together) unless `allow_heldout` (evaluation sets).
    """
    B = len(rnd)
    K = MAX_SLOTS
    n_c, n_s = len(COLORS), len(SHAPES)
    no_held = np.zeros_like(held) if allow_heldout else held

    kind_a = _as_array(kind, B, "kind", len(KINDS))
    count_a = _as_array(count, B, "count", MAX_SLOTS + 1)
    if count_a is not None:
        if count_a.min() < 1:
            raise ValueError("count must be between 1 and 4")
        kind_a = np.full(B, COUNT)
    if kind_a is None:
        kind_a = rnd.choice(stream("kind"), np.asarray(kind_probs))
    domain_a = _as_array(domain, B, "domain", len(DOMAINS))
    if domain_a is None:
        domains = np.asarray(domains, dtype=np.int64)
        domain_a = domains[rnd.integers(stream("domain"), len(domains))]
    color_f = _as_array(color, B, "color", n_c)
    shape_f = _as_array(shape, B, "shape", n_s)
    relation_a = _as_array(relation, B, "relation", len(RELATIONS))
    word_f = _as_array(word, B, "word", None)

    is_single, is_count, is_rel = kind_a == SINGLE, kind_a == COUNT, kind_a == RELATION

    # ---- number of objects
    n_obj = np.ones(B, dtype=np.int64)
    if count_a is not None:
        n_obj = count_a.copy()
    else:
        n_obj[is_count] = 2 + rnd.integers(stream("count"), max(max_count - 1, 1))[is_count]
    n_obj[is_rel] = 2

    # ---- object identities, with rejection of held-out pairs (objects + written word)
    c0 = color_f if color_f is not None else rnd.integers(stream("c0"), n_c)
    s0 = shape_f if shape_f is not None else rnd.integers(stream("s0"), n_s)
    c1 = rnd.integers(stream("c1"), n_c)
    s1 = rnd.integers(stream("s1"), n_s)
    if word_f is not None:
        w = word_f.copy()
    else:
        has_word = rnd.bernoulli(stream("has_word"), text_rate)
        w = np.where(has_word, rnd.integers(stream("word"), len(WRITTEN_WORDS)), -1)
    for attempt in range(_MAX_RETRIES + 1):
        colors = np.stack([c0, np.where(is_rel, c1, -1)], axis=1)
        shapes = np.stack([s0, np.where(is_rel, s1, -1)], axis=1)
        bad = no_held[c0, s0].copy()
        bad |= is_rel & ((c1 == c0) & (s1 == s0))  # two identical objects cannot be told apart in words
        bad |= is_rel & no_held[c1, s1]
        if not allow_heldout:
            cm, sm = word_masks(colors, shapes, w)
            bad |= cooccurrence_violations(held, cm, sm)
        if not bad.any():
            break
        if attempt == _MAX_RETRIES:
            raise RuntimeError(
                "could not sample scenes that avoid the held-out pairs; the forced attributes "
                f"(color={color}, shape={shape}, word={word}) may be incompatible with the split"
            )
        k = attempt + 1
        if color_f is None:
            c0 = np.where(bad, rnd.integers(stream("c0", k), n_c), c0)
        if shape_f is None:
            s0 = np.where(bad, rnd.integers(stream("s0", k), n_s), s0)
        c1 = np.where(bad, rnd.integers(stream("c1", k), n_c), c1)
        s1 = np.where(bad, rnd.integers(stream("s1", k), n_s), s1)
        if word_f is None:
            w = np.where(bad & (w >= 0), rnd.integers(stream("word", k), len(WRITTEN_WORDS)), w)

    color_k = np.full((B, K), -1, dtype=np.int64)
    shape_k = np.full((B, K), -1, dtype=np.int64)
    slot = np.arange(K)[None, :]
    filled = slot < n_obj[:, None]  # [B, K]
    color_k[filled] = np.broadcast_to(c0[:, None], (B, K))[filled]
    shape_k[filled] = np.broadcast_to(s0[:, None], (B, K))[filled]
    color_k[is_rel, 1], shape_k[is_rel, 1] = c1[is_rel], s1[is_rel]

    # ---- geometry
    cx = np.full((B, K), np.nan)
    cy = np.full((B, K), np.nan)
    rad = np.full((B, K), np.nan)

    # single: size and one of five positions
    size_a = _as_array(size, B, "size", 2)
    if size_a is None:
        size_a = rnd.integers(stream("size"), 2)
    r_single = np.where(
        size_a == 0, _uniform(rnd, "r_small", *_SMALL_R), _uniform(rnd, "r_large", *_LARGE_R)
    )
    pos = rnd.integers(stream("position"), len(POSITIONS))
    edge = r_single + _MARGIN + _uniform(rnd, "edge_jitter", 0.0, 0.05)  # distance to the near edge
    spread = 0.5 - r_single - _MARGIN  # how far a centre may move along the free axis
    along = 0.5 + 0.4 * spread * (2 * rnd.rand(stream("along")) - 1)
    sx = np.select([pos == 0, pos == 1], [edge, 1 - edge], along)
    sy = np.select([pos == 2, pos == 3], [edge, 1 - edge], along)
    centre = pos == 4
    sx = np.where(centre, 0.5 + _uniform(rnd, "cjx", -0.04, 0.04), sx)
    sy = np.where(centre, 0.5 + _uniform(rnd, "cjy", -0.04, 0.04), sy)
    cx[is_single, 0], cy[is_single, 0], rad[is_single, 0] = sx[is_single], sy[is_single], r_single[is_single]

    # count: one object per quadrant, quadrants in random order
    r_group = _uniform(rnd, "r_group", *_GROUP_R)
    order = np.argsort(np.stack([rnd.rand(stream("quadrant", k)) for k in range(4)], axis=1), axis=1)
    qx = np.where(order % 2 == 0, 0.27, 0.73) + np.stack([_uniform(rnd, "qjx", -0.04, 0.04, k) for k in range(4)], 1)
    qy = np.where(order // 2 == 0, 0.27, 0.73) + np.stack([_uniform(rnd, "qjy", -0.04, 0.04, k) for k in range(4)], 1)
    cmask = is_count[:, None] & filled
    cx[cmask], cy[cmask] = qx[cmask], qy[cmask]
    rad[cmask] = np.broadcast_to(r_group[:, None], (B, K))[cmask]

    # relation: object 0 on one side, object 1 on the opposite side; the cross axis jitters a little
    rel = relation_a if relation_a is not None else rnd.integers(stream("relation"), len(RELATIONS))
    near = _uniform(rnd, "rel_near", 0.22, 0.30)
    far = _uniform(rnd, "rel_far", 0.70, 0.78)
    cross0 = 0.5 + _uniform(rnd, "rel_c0", -0.12, 0.12)
    cross1 = 0.5 + _uniform(rnd, "rel_c1", -0.12, 0.12)
    first_low = (rel == 0) | (rel == 2)  # object 0 at the small coordinate: left of / above
    a0, a1 = np.where(first_low, near, far), np.where(first_low, far, near)
    horizontal = rel <= 1
    r0x, r0y = np.where(horizontal, a0, cross0), np.where(horizontal, cross0, a0)
    r1x, r1y = np.where(horizontal, a1, cross1), np.where(horizontal, cross1, a1)
    cx[is_rel, 0], cy[is_rel, 0] = r0x[is_rel], r0y[is_rel]
    cx[is_rel, 1], cy[is_rel, 1] = r1x[is_rel], r1y[is_rel]
    rad[is_rel, 0] = _uniform(rnd, "r_rel", *_GROUP_R, 0)[is_rel]
    rad[is_rel, 1] = _uniform(rnd, "r_rel", *_GROUP_R, 1)[is_rel]

    # written word: across the object (single scenes, sometimes) or in a band at the top or bottom
    over = is_single & rnd.bernoulli(stream("word_over"), word_over_object)
    band_y = np.where(rnd.bernoulli(stream("word_band"), 0.5), 0.13, 0.87)
    wy = np.where(over, cy[:, 0], band_y)
    wx = np.where(over, cx[:, 0], 0.5 + _uniform(rnd, "word_jx", -0.04, 0.04))
    wx = np.where(w >= 0, wx, np.nan)
    wy = np.where(w >= 0, wy, np.nan)

    return Scenes(
        ids=rnd.ids.copy(),
        kind=kind_a,
        domain=domain_a,
        n_objects=n_obj,
        color=color_k,
        shape=shape_k,
        size=np.where(is_single, size_a, -1),
        position=np.where(is_single, pos, -1),
        relation=np.where(is_rel, rel, -1),
        cx=cx,
        cy=cy,
        radius=rad,
        word=w,
        word_x=wx,
        word_y=wy,
    )
