"""Alt-text for the caption world: the words people would write under these pictures.

Web captions are not labels. They use synonyms ("crimson disc"), leave attributes out ("a small
circle"), wrap the content in words that carry no visual signal ("free download", "#art"), name the
medium ("a sketch of ..."), change word order ("a blue square right of a red circle") and are sometimes
simply wrong. `write_captions` produces such captions for a batch of scenes, with every random choice
drawn vectorized from the samples' own counter-based streams and every phrase looked up in the tables
below, so a caption costs a few microseconds of Python.

Style `"label"` gives the canonical short description instead ("a red circle", "three red stars",
"a red circle left of a blue square"); `wording_entropy` slides "alt" between the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .attributes import COLORS, COUNTS, DOMAINS, PLURAL_SHAPES, POSITIONS, RELATIONS, SHAPES, SIZES, WRITTEN_WORDS
from .rng import SampleRandom, stream
from .scenes import COUNT, RELATION, SINGLE, Scenes, cooccurrence_violations, word_masks

# ------------------------------------------------------------------------------------------ words
COLOR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet", "cherry"),
    "orange": ("tangerine", "amber"),
    "yellow": ("golden", "lemon"),
    "green": ("emerald", "jade"),
    "cyan": ("turquoise", "aqua", "teal"),
    "blue": ("cobalt", "azure", "sapphire"),
    "purple": ("violet", "plum"),
    "pink": ("rose", "fuchsia", "bubblegum"),
    "brown": ("chocolate", "chestnut", "coffee"),
    "gray": ("grey", "silver", "slate"),
}

# (singular, plural) pairs
SHAPE_SYNONYMS: dict[str, tuple[tuple[str, str], ...]] = {
    "circle": (("disc", "discs"), ("dot", "dots"), ("orb", "orbs")),
    "square": (("box", "boxes"), ("block", "blocks"), ("tile", "tiles")),
    "triangle": (("wedge", "wedges"), ("triangular shape", "triangular shapes")),
    "star": (("pentagram", "pentagrams"), ("twinkle", "twinkles")),
    "cross": (("plus sign", "plus signs"), ("plus", "pluses")),
    "heart": (("love heart", "love hearts"), ("valentine", "valentines")),
    "diamond": (("rhombus", "rhombuses"), ("lozenge", "lozenges")),
    "arrow": (("pointer", "pointers"), ("dart", "darts")),
    "ring": (("donut", "donuts"), ("hoop", "hoops"), ("annulus", "annuli")),
    "crescent": (("moon", "moons"), ("crescent moon", "crescent moons"), ("sickle", "sickles")),
}

SIZE_SYNONYMS: dict[str, tuple[str, ...]] = {"small": ("tiny", "little"), "large": ("big", "huge")}

# what stands in for the shape noun when the caption leaves the shape out
GENERIC_NOUNS: tuple[tuple[str, str], ...] = (
    ("shape", "shapes"), ("object", "objects"), ("thing", "things"), ("figure", "figures"), ("symbol", "symbols"),
)

COUNT_WORDS: tuple[tuple[str, ...], ...] = (
    ("one", "a single", "1"),
    ("two", "2", "a pair of"),
    ("three", "3", "a trio of"),
    ("four", "4", "a group of four"),
)

POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "at the left edge", "on the left side", "left-aligned"),
    "right": ("on the right", "at the right edge", "on the right side", "right-aligned"),
    "top": ("at the top", "near the top", "top of the frame"),
    "bottom": ("at the bottom", "near the bottom", "bottom of the frame"),
    "center": ("in the center", "centered", "in the middle"),
}

RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left of": ("left of", "to the left of", "on the left of"),
    "right of": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over", "higher than"),
    "below": ("below", "under", "beneath", "lower than"),
}
INVERSE_RELATION = (1, 0, 3, 2)  # A left of B  <=>  B right of A

# the medium, when a caption names it ({} is the content)
DOMAIN_PHRASES: dict[str, tuple[str, ...]] = {
    "flat": ("{}, flat icon", "flat vector art of {}", "{} clipart", "minimal flat design: {}"),
    "photo": ("a photograph of {}", "snapshot of {}", "{}, real photograph", "camera shot of {}"),
    "sketch": ("a sketch of {}", "{}, pencil sketch", "my drawing: {}", "doodle of {}", "line drawing of {}"),
    "painting": ("a painting of {}", "watercolor of {}", "{}, oil painting", "acrylic painting of {}"),
    "lowcontrast": ("faded picture of {}", "{}, low contrast", "washed out image of {}", "foggy shot of {}"),
    "darkbg": ("{} on a dark background", "{} on black", "dark mode: {}", "{}, night theme"),
}

# words around the content that say nothing about the picture ({} is the content)
FILLER_PHRASES: tuple[str, ...] = (
    "image of {}", "picture of {}", "a photo of {}", "photo of {}", "pic of {}", "an image of {}",
    "{}, stock image", "{} stock photo", "{} - free download", "{} hd", "{} #art", "{} | royalty free",
    "{} png", "{} 4k", "{} (high quality)", "{}!!", "i made this: {}", "{} wallpaper", "{} #design #minimal",
    "new post: {}", "{} [download]", "view {}", "{}. by anonymous", "{} - jpg",
)

TEXT_SUFFIXES: tuple[str, ...] = (' with the word "{}" on it', ", text: {}", ' labeled "{}"', " that says {}")
TEXT_ONLY: tuple[str, ...] = ('the word "{}"', '"{}" written in bold letters', "a sign that says {}", "text reading {}", "typography: {}")

NOISE_FIELDS: tuple[str, ...] = ("color", "shape", "count", "relation")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _pick(options, u: float):
    return options[int(u * len(options))]


def _shape_word(s: int, u_syn: float, p_syn: float, plural: bool) -> str:
    if u_syn < p_syn:
        syns = SHAPE_SYNONYMS[SHAPES[s]]
        return syns[int(u_syn / p_syn * len(syns))][1 if plural else 0]
    return PLURAL_SHAPES[s] if plural else SHAPES[s]


def _color_word(c: int, u_syn: float, p_syn: float) -> str:
    if u_syn < p_syn:
        syns = COLOR_SYNONYMS[COLORS[c]]
        return syns[int(u_syn / p_syn * len(syns))]
    return COLORS[c]


# ------------------------------------------------------------------------------------- captions
@dataclass
class CaptionInfo:
    """What each caption says, next to what the scene holds (for metadata and tests)."""

    noisy: np.ndarray  # [B] bool: the caption states something false about the image
    noise_field: np.ndarray  # [B] index into NOISE_FIELDS, -1 when not noisy
    described_color: np.ndarray  # [B, 2] colors the caption attributes to object 0 / 1 (after noise)
    described_shape: np.ndarray  # [B, 2]
    described_count: np.ndarray  # [B] 1..4 (count scenes), else -1
    described_relation: np.ndarray  # [B] index into RELATIONS, else -1
    mentions_color: np.ndarray  # [B] bool
    mentions_shape: np.ndarray  # [B] bool
    mentions_domain: np.ndarray  # [B] bool
    text_only: np.ndarray  # [B] bool: the caption only reports the written word


def _draw_noise(scenes: Scenes, rnd: SampleRandom, noise_rate: float, held: np.ndarray):
    """Pick which captions lie and about what; replacement values avoid held-out co-occurrences."""
    B = len(scenes)
    kind = scenes.kind
    dcol = scenes.color[:, :2].copy()
    dshp = scenes.shape[:, :2].copy()
    dcount = np.where(kind == COUNT, scenes.n_objects, -1)
    drel = scenes.relation.copy()
    noisy = rnd.bernoulli(stream("noisy"), noise_rate) if noise_rate > 0 else np.zeros(B, dtype=bool)
    n_fields = np.select([kind == SINGLE, kind == COUNT], [2, 3], 3)  # single: color/shape; +count / +relation
    f = rnd.integers(stream("noise_field"), n_fields)
    field = np.where(kind == RELATION, np.where(f == 2, 3, f), f)
    field = np.where(noisy, field, -1)
    which = rnd.integers(stream("noise_obj"), 2) * (kind == RELATION)  # object whose attribute is wrong
    rows = np.arange(B)
    n_c, n_s = len(COLORS), len(SHAPES)
    pending = noisy.copy()
    for attempt in range(64):
        if not pending.any():
            break
        new_c = (scenes.color[rows, which] + 1 + rnd.integers(stream("noise_c", attempt), n_c - 1)) % n_c
        new_s = (scenes.shape[rows, which] + 1 + rnd.integers(stream("noise_s", attempt), n_s - 1)) % n_s
        tc, ts = dcol.copy(), dshp.copy()
        m = pending & (field == 0)
        tc[rows[m], which[m]] = new_c[m]
        m = pending & (field == 1)
        ts[rows[m], which[m]] = new_s[m]
        cm, sm = word_masks(np.concatenate([tc, scenes.color], 1), np.concatenate([ts, scenes.shape], 1), scenes.word)
        ok = pending & ~cooccurrence_violations(held, cm, sm)
        dcol[ok], dshp[ok] = tc[ok], ts[ok]
        pending &= ~ok
    # whatever could not be made wrong without touching a held-out pair stays truthful
    field = np.where(pending, -1, field)
    m = field == 2
    dcount[m] = (dcount[m] - 1 + 1 + rnd.integers(stream("noise_n"), 3)[m]) % 4 + 1
    m = field == 3
    drel[m] = (drel[m] + 1 + rnd.integers(stream("noise_r"), 3)[m]) % 4
    return field, dcol, dshp, dcount, drel


def write_captions(scenes: Scenes, rnd: SampleRandom, settings, held: np.ndarray) -> tuple[list[str], CaptionInfo]:
    """One caption per scene. `settings` has caption_style, wording_entropy, partial_rate, noise_rate,
    filler_rate and domain_rate (a `WorldConfig`). `held` is the [colors, shapes] held-out matrix."""
    B = len(scenes)
    label = settings.caption_style == "label"
    e = 0.0 if label else float(settings.wording_entropy)
    p_partial = 0.0 if label else float(settings.partial_rate)
    p_domain = 0.0 if label else float(settings.domain_rate)
    p_fill = float(settings.filler_rate) * e
    p_syn = 0.4 * e  # chance that a color, shape, size, count or relation word is a synonym

    field, dcol, dshp, dcount, drel = _draw_noise(scenes, rnd, float(settings.noise_rate), held)

    def u(name, k=0):
        return rnd.rand(stream(name, k))

    # content mode: 0 full, 1 color only, 2 shape only, 3 count omitted (count scenes)
    n_modes = np.where(scenes.kind == COUNT, 4, 3)
    mode_u = u("mode")
    mode = np.where(mode_u < 1 - p_partial, 0, 1 + ((mode_u - (1 - p_partial)) / max(p_partial, 1e-12) * (n_modes - 1)).astype(np.int64))
    mode = np.minimum(mode, n_modes - 1)
    mode = np.where(scenes.kind == RELATION, 0, mode)
    mode = np.where((field == 0) & (mode == 2), 0, mode)  # a wrong color must be said
    mode = np.where((field == 1) & (mode == 1), 0, mode)  # a wrong shape must be said
    mode = np.where((field == 2) & (mode == 3), 0, mode)  # a wrong count must be said
    say_rel = (u("say_rel") >= p_partial / 2) | (field == 3)
    has_word = scenes.word >= 0
    text_u = u("text")
    if label:  # labels describe the objects only
        text_only = say_text = np.zeros(B, dtype=bool)
    else:  # a quarter of the captions of an image with a word only report the word, half add it
        text_only = has_word & (text_u < 0.25)
        say_text = has_word & (text_u >= 0.25) & (text_u < 0.75)
    say_domain = (u("say_domain") < p_domain) & ~text_only
    field = np.where(text_only, -1, field)

    # choices, as Python lists for the loop
    L = lambda a: a.tolist()  # noqa: E731
    kind_l, mode_l, field_l = L(scenes.kind), L(mode), L(field)
    c0, c1 = L(dcol[:, 0]), L(dcol[:, 1])
    s0, s1 = L(dshp[:, 0]), L(dshp[:, 1])
    cnt, rel = L(dcount), L(drel)
    size_l, pos_l, dom_l, word_l = L(scenes.size), L(scenes.position), L(scenes.domain), L(scenes.word)
    say_rel_l, text_only_l, say_text_l, say_dom_l = L(say_rel), L(text_only), L(say_text), L(say_domain)
    U = {name: L(u(name)) for name in (
        "core", "syn_c0", "syn_c1", "syn_s0", "syn_s1", "syn_size", "say_size", "say_pos", "pos",
        "sep", "say_one", "count_word", "rel_word", "invert", "domain_form", "fill", "fill_form",
        "case", "dot", "text_form", "noun",
    )}
    p_size = 0.0 if label else 0.35
    p_pos = 0.0 if label else 0.35
    p_one = 0.0 if label else 0.1
    p_invert = 0.5 * e
    p_template = e  # chance of a template other than the canonical noun phrase

    captions: list[str] = []
    for i in range(B):
        kind = kind_l[i]
        if text_only_l[i]:
            cap = _pick(TEXT_ONLY, U["text_form"][i]).format(WRITTEN_WORDS[word_l[i]])
        elif kind == RELATION:
            wrapped = say_dom_l[i] or say_text_l[i] or U["fill"][i] < p_fill
            cap = _relation_caption(i, c0, s0, c1, s1, rel, say_rel_l, U, p_syn, p_invert, p_template, wrapped)
        else:
            # a caption that gets wrapped ("a sketch of ...", "image of ...", "... that says red") needs
            # a noun phrase inside, not a sentence
            wrapped = say_dom_l[i] or say_text_l[i] or U["fill"][i] < p_fill
            cap = _object_caption(
                i, kind, mode_l[i], c0[i], s0[i], cnt[i], size_l[i], pos_l[i], U, p_syn, p_size, p_pos,
                p_one, p_template, wrapped,
            )
        if say_text_l[i]:
            cap = cap + _pick(TEXT_SUFFIXES, U["text_form"][i]).format(WRITTEN_WORDS[word_l[i]])
        if say_dom_l[i]:
            cap = _pick(DOMAIN_PHRASES[DOMAINS[dom_l[i]]], U["domain_form"][i]).format(cap)
        if U["fill"][i] < p_fill:
            cap = _pick(FILLER_PHRASES, U["fill_form"][i]).format(cap)
            if U["fill"][i] < p_fill * 0.25:  # now and then a second one
                cap = _pick(FILLER_PHRASES, U["fill_form"][i] * 7.0 % 1.0).format(cap)
        if not label:
            cu = U["case"][i]
            if cu < 0.15 * e:
                cap = cap[:1].upper() + cap[1:]
            elif cu < 0.2 * e:
                cap = cap.title()
            if U["dot"][i] < 0.2 * e:
                cap = cap + "."
        captions.append(cap)

    info = CaptionInfo(
        noisy=field >= 0,
        noise_field=field,
        described_color=dcol,
        described_shape=dshp,
        described_count=dcount,
        described_relation=drel,
        mentions_color=(mode != 2) & ~text_only,
        mentions_shape=(mode != 1) & ~text_only,
        mentions_domain=say_domain,
        text_only=text_only,
    )
    return captions, info


def _object_caption(i, kind, mode, c, s, n, size, pos, U, p_syn, p_size, p_pos, p_one, p_template, wrapped) -> str:
    """Single objects and counts of one object; `wrapped` asks for a noun phrase, not a sentence."""
    plural = kind == COUNT and n != 1
    say_color, say_shape = mode != 2, mode != 1
    color = _color_word(c, U["syn_c0"][i], p_syn) if say_color else None
    if say_shape:
        noun = _shape_word(s, U["syn_s0"][i], p_syn, plural)
    else:
        noun = _pick(GENERIC_NOUNS, U["noun"][i])[1 if plural else 0]
    size_w = None
    if kind == SINGLE and U["say_size"][i] < p_size:
        base = SIZES[size]
        size_w = _pick(SIZE_SYNONYMS[base], U["syn_size"][i] / p_syn) if U["syn_size"][i] < p_syn else base
    adjs = " ".join(w for w in (size_w, color) if w)
    bare = f"{adjs} {noun}" if adjs else noun  # "small red circle"

    if kind == COUNT:
        if mode == 3:  # count left out
            det = _pick(("", "some ", "several "), U["count_word"][i])
            return f"{det}{bare}"
        cw = COUNT_WORDS[n - 1]
        count_w = _pick(cw, U["count_word"][i] / p_syn) if U["count_word"][i] < p_syn else cw[0]
        core_u = U["core"][i]
        if core_u < p_template and mode == 0:
            t = int(core_u / p_template * 4)
            if t == 0:
                return f"{bare} x{n}"
            if t == 1:
                return f"{count_w} {noun}, all {color}"
            if t == 2 and not wrapped:
                return f"there are {count_w} {bare} here"
        return f"{count_w} {bare}"

    # a single object
    if U["say_one"][i] < p_one:
        np_ = f"{_pick(('one', 'a single'), U['count_word'][i])} {bare}"
    else:
        np_ = f"{_article(bare)} {bare}"
    core_u = U["core"][i]
    if core_u < p_template:
        t = int(core_u / p_template * 10)
        a_shape = f"{_article(noun)} {noun}"
        if wrapped and t in (0, 4):
            t = 5  # a sentence cannot sit inside "a sketch of ..."
        if mode == 0 and t == 0:
            return f"there is {a_shape} here. it is {color}."
        if mode == 0 and t == 1:
            np_ = f"{a_shape} in {color}"
        elif mode == 0 and t == 2:
            np_ = f"{a_shape} colored {color}"
        elif mode == 0 and t == 3:
            return f"{noun} ({color})"
        elif mode == 0 and t == 4:
            return f"the {noun} is {color}"
        elif mode == 1 and t <= 1:
            return _pick((f"something {color}", f"{color}", f"the color {color}", f"all {color}"), core_u / p_template * 5 % 1.0)
        elif mode == 2 and t <= 1:
            options = (f"just {a_shape}", noun) if wrapped else (f"just {a_shape}", noun, f"there is {a_shape} here.")
            return _pick(options, core_u / p_template * 5 % 1.0)
        elif t <= 6:
            np_ = bare
    if U["say_pos"][i] < p_pos:
        sep = ", " if U["sep"][i] < 0.5 else " "
        np_ = f"{np_}{sep}{_pick(POSITION_PHRASES[POSITIONS[pos]], U['pos'][i])}"
    return np_


def _relation_caption(i, c0, s0, c1, s1, rel, say_rel, U, p_syn, p_invert, p_template, wrapped) -> str:
    a_bare = f"{_color_word(c0[i], U['syn_c0'][i], p_syn)} {_shape_word(s0[i], U['syn_s0'][i], p_syn, False)}"
    b_bare = f"{_color_word(c1[i], U['syn_c1'][i], p_syn)} {_shape_word(s1[i], U['syn_s1'][i], p_syn, False)}"
    a_np = f"{_article(a_bare)} {a_bare}"
    b_np = f"{_article(b_bare)} {b_bare}"
    r = rel[i]
    if U["invert"][i] < p_invert:  # same fact, the other object first
        a_np, b_np, r = b_np, a_np, INVERSE_RELATION[r]
    if not say_rel[i]:
        return f"{a_np} {_pick(('and', 'with', 'next to', 'and also'), U['rel_word'][i])} {b_np}"
    words = RELATION_PHRASES[RELATIONS[r]]
    phrase = _pick(words, U["rel_word"][i] / p_syn) if U["rel_word"][i] < p_syn else words[0]
    core_u = U["core"][i]
    if core_u < p_template * 0.3 and not wrapped:
        return f"{a_np} is {phrase} {b_np}"
    return f"{a_np} {phrase} {b_np}"


def label_caption(color: int, shape: int, count: int = 1, relation: int = -1, color2: int = -1, shape2: int = -1) -> str:
    """The canonical description: "a red circle", "three red stars", "a red circle left of a blue square"."""
    if relation >= 0:
        a, b = f"{COLORS[color]} {SHAPES[shape]}", f"{COLORS[color2]} {SHAPES[shape2]}"
        return f"{_article(a)} {a} {RELATIONS[relation]} {_article(b)} {b}"
    if count == 1:
        a = f"{COLORS[color]} {SHAPES[shape]}"
        return f"{_article(a)} {a}"
    return f"{COUNTS[count - 1]} {COLORS[color]} {PLURAL_SHAPES[shape]}"
