"""The vocabulary of the caption world: shapes, colors, sizes, positions, counts, relations, domains.

Every attribute is stored as a small integer in a scene; these tuples turn the integers into the
canonical English word. Captions use many more words (synonyms, see `captions.py`); tasks and
label-style captions use exactly these.
"""

from __future__ import annotations

# Ten shapes whose silhouettes differ at a radius of 5 pixels (a 32-pixel image). A hexagon or a
# pentagon does not: at that size it is a circle, so the arrow takes its place.
SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross",
    "heart", "diamond", "arrow", "ring", "crescent",
)

COLORS: tuple[str, ...] = (
    "red", "orange", "yellow", "green", "cyan",
    "blue", "purple", "pink", "brown", "gray",
)

# sRGB in [0, 1]. Chosen so that every pair differs by a lot in at least one channel, and none is close
# to a background (near-white paper, mid-gray, or near-black); gray stands in for black and white.
COLOR_RGB: tuple[tuple[float, float, float], ...] = (
    (0.86, 0.10, 0.10),  # red
    (0.98, 0.55, 0.00),  # orange
    (0.95, 0.86, 0.08),  # yellow
    (0.10, 0.62, 0.18),  # green
    (0.00, 0.80, 0.85),  # cyan
    (0.12, 0.25, 0.88),  # blue
    (0.55, 0.15, 0.72),  # purple
    (1.00, 0.50, 0.75),  # pink
    (0.50, 0.30, 0.10),  # brown
    (0.50, 0.50, 0.50),  # gray
)

SIZES: tuple[str, ...] = ("small", "large")

# where a lone object sits
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")

# how many copies of one object a "count" scene holds (index i means COUNTS[i] objects)
COUNTS: tuple[str, ...] = ("one", "two", "three", "four")

# spatial relation of the first object to the second one
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

# visual domains: they change image statistics, never content
DOMAINS: tuple[str, ...] = ("flat", "photo", "sketch", "painting", "lowcontrast", "darkbg")

# scene kinds
KINDS: tuple[str, ...] = ("single", "count", "relation")

PLURAL_SHAPES: tuple[str, ...] = (
    "circles", "squares", "triangles", "stars", "crosses",
    "hearts", "diamonds", "arrows", "rings", "crescents",
)

# the words a written label in an image can show (typographic attacks): every color and shape name
WRITTEN_WORDS: tuple[str, ...] = COLORS + SHAPES
