"""Zero-shot evaluation sets drawn from the caption world.

A `Task` is a fixed labelled image set with the class names and prompt templates a zero-shot classifier
needs. Task images come from their own key namespace (independent of the training data seed, so every
training run is scored on the same images) and may contain held-out color x shape pairs; `heldout`
flags those samples. Labels are balanced: each class appears n / C times (up to one), in random order.

Tasks: `shape` (10-way), `color` (10-way), `color_shape` (100-way, held-out pairs included), `count`
(4-way: one to four copies), `relation` (4-way: left of / right of / above / below), `typographic`
(10-way shape, with the name of a different shape written across the object) and
`typographic_color` (10-way color, a different color name written on it). `word_order_pairs` gives
caption pairs that differ only in word order, for the compositionality chapter.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, fields

import numpy as np
import torch

from .attributes import COLORS, COUNTS, DOMAINS, RELATIONS, SHAPES
from .captions import label_caption
from .rng import SampleRandom, derive_key
from .scenes import RELATION, SINGLE, Scenes

__all__ = [
    "Task", "WordOrderPairs", "TASKS", "TASK_TEMPLATES", "ArticleTemplate", "make_task", "word_order_pairs", "fix_articles",
]

_TASK_NAMESPACE = 0x7A5C  # task images do not depend on the world's data seed

_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")


def fix_articles(text: str) -> str:
    """'a orange circle' -> 'an orange circle' (for prompts built from the world's words)."""
    return _ARTICLE.sub(lambda m: m.group(1) + "n ", text)


class ArticleTemplate(str):
    """A prompt template (a plain str) whose `.format` also fixes "a" before a vowel: "an arrow".

    Any code that fills templates with `template.format(classname)` (as `clipmini.zeroshot` does)
    then gets grammatical prompts for every class name.
    """

    def format(self, *args, **kwargs) -> str:
        return fix_articles(str.format(self, *args, **kwargs))


def _templates(*texts: str) -> tuple[ArticleTemplate, ...]:
    return tuple(ArticleTemplate(t) for t in texts)


# Default prompts, in the words the world's captions use ("photo", "sketch", ... name a medium and are
# left out, so one prompt set serves every domain).
TASK_TEMPLATES: dict[str, tuple[str, ...]] = {
    "shape": _templates("a {}.", "a picture of a {}.", "an image of a {}.", "a {}, stock image.", "there is a {} here."),
    "color": _templates("something {}.", "a {} shape.", "a {} object.", "the color {}.", "a {} thing."),
    "color_shape": _templates("a {}.", "a picture of a {}.", "an image of a {}.", "a {}, stock image."),
    "count": _templates("{} shapes.", "{} objects.", "a picture of {} things."),
    "relation": _templates("{}"),
}
TASK_TEMPLATES["typographic"] = TASK_TEMPLATES["shape"]
TASK_TEMPLATES["typographic_color"] = TASK_TEMPLATES["color"]

TASKS: tuple[str, ...] = ("shape", "color", "color_shape", "count", "relation", "typographic", "typographic_color")


@dataclass
class Task:
    """A labelled zero-shot evaluation set."""

    name: str
    domain: str
    images: torch.Tensor  # [n, 3, R, R] CLIP-normalized
    labels: torch.Tensor  # [n] long, index into classnames (or into candidates[i])
    classnames: tuple[str, ...]  # one name per class ("circle", "red circle", "two", "left of")
    templates: tuple[str, ...]  # prompt templates with one "{}"
    heldout: torch.Tensor  # [n] bool: the sample shows a color x shape pair held out of training
    captions: list[str]  # the canonical caption of each image ("a red circle")
    scenes: Scenes  # everything about each image (numpy arrays)
    candidates: list[list[str]] | None = None  # count/relation: per-sample captions, one per class
    attack_labels: torch.Tensor | None = None  # typographic: class of the word written on the image

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def prompts(self) -> list[list[str]]:
        """prompts[c][t]: every template filled with every class name, articles fixed."""
        return [[fix_articles(t.format(c)) for t in self.templates] for c in self.classnames]

    def subset(self, mask) -> "Task":
        """The samples where `mask` ([n] bool or indices) selects, e.g. `task.subset(task.heldout)`."""
        idx = torch.as_tensor(mask)
        idx = idx.nonzero().flatten() if idx.dtype == torch.bool else idx.long()
        np_idx = idx.numpy()
        return Task(
            name=self.name,
            domain=self.domain,
            images=self.images[idx],
            labels=self.labels[idx],
            classnames=self.classnames,
            templates=self.templates,
            heldout=self.heldout[idx],
            captions=[self.captions[i] for i in np_idx],
            scenes=self.scenes.select(np_idx),
            candidates=None if self.candidates is None else [self.candidates[i] for i in np_idx],
            attack_labels=None if self.attack_labels is None else self.attack_labels[idx],
        )


@dataclass
class WordOrderPairs:
    """Images with two captions made of the same words: `captions[i]` describes image i, `swapped[i]` does not."""

    images: torch.Tensor  # [n, 3, R, R]
    captions: list[str]  # "a red circle left of a blue square"
    swapped: list[str]  # "a blue square left of a red circle"
    kind: str  # "relation" (objects swapped around the relation) or "attributes" (colors swapped)
    scenes: Scenes

    def __len__(self) -> int:
        return len(self.captions)


def _check(world, name: str, domain: str, n: int, seed: int) -> None:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {TASKS}")
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose from {DOMAINS}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int; got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")


def _key(name: str, domain: str, seed: int) -> int:
    return derive_key(_TASK_NAMESPACE, seed, zlib.crc32(name.encode()), DOMAINS.index(domain))


def _balanced_labels(key: int, n: int, num_classes: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([key % 2**63, 1]))
    return rng.permutation(np.arange(n) % num_classes)


def make_task(world, name: str, *, domain: str = "flat", n: int = 1000, seed: int = 0) -> Task:
    """Draw task `name` in visual `domain`: n images, balanced labels, default templates."""
    _check(world, name, domain, n, seed)
    key = _key(name, domain, seed)
    dom = DOMAINS.index(domain)
    rnd = SampleRandom(key, np.arange(n, dtype=np.uint64))
    candidates = None
    attack = None
    if name in ("shape", "color", "color_shape"):
        C = {"shape": len(SHAPES), "color": len(COLORS), "color_shape": len(COLORS) * len(SHAPES)}[name]
        labels = _balanced_labels(key, n, C)
        forced = {"shape": {"shape": labels}, "color": {"color": labels},
                  "color_shape": {"color": labels // len(SHAPES), "shape": labels % len(SHAPES)}}[name]
        scenes = world.sample_scenes(rnd, allow_heldout=True, kind=SINGLE, domain=dom, word=-1, **forced)
        classnames = {"shape": SHAPES, "color": COLORS,
                      "color_shape": tuple(f"{c} {s}" for c in COLORS for s in SHAPES)}[name]
    elif name in ("typographic", "typographic_color"):
        n_cls = len(SHAPES) if name == "typographic" else len(COLORS)
        labels = _balanced_labels(key, n, n_cls)
        wrong = (labels + 1 + np.random.default_rng(np.random.SeedSequence([key % 2**63, 2])).integers(0, n_cls - 1, n)) % n_cls
        if name == "typographic":  # the name of another shape written across the object
            forced = {"shape": labels, "word": len(COLORS) + wrong}
            classnames = SHAPES
        else:
            forced = {"color": labels, "word": wrong}
            classnames = COLORS
        scenes = world.sample_scenes(rnd, allow_heldout=True, kind=SINGLE, domain=dom, word_over_object=1.0, **forced)
        attack = torch.from_numpy(wrong.astype(np.int64))
    elif name == "count":
        labels = _balanced_labels(key, n, len(COUNTS))
        scenes = world.sample_scenes(rnd, count=labels + 1, domain=dom, word=-1)
        classnames = COUNTS
        candidates = [
            [label_caption(c, s, count=k + 1) for k in range(len(COUNTS))]
            for c, s in zip(scenes.color[:, 0].tolist(), scenes.shape[:, 0].tolist())
        ]
    else:  # relation
        labels = _balanced_labels(key, n, len(RELATIONS))
        scenes = world.sample_scenes(rnd, kind=RELATION, relation=labels, domain=dom, word=-1)
        classnames = RELATIONS
        candidates = [
            [label_caption(c0, s0, relation=r, color2=c1, shape2=s1) for r in range(len(RELATIONS))]
            for c0, s0, c1, s1 in zip(*(a.tolist() for a in (scenes.color[:, 0], scenes.shape[:, 0], scenes.color[:, 1], scenes.shape[:, 1])))
        ]
    images = world.draw(scenes, rnd)
    held = world.heldout[np.maximum(scenes.color, 0), np.maximum(scenes.shape, 0)] & (scenes.color >= 0)
    captions = [
        label_caption(int(scenes.color[i, 0]), int(scenes.shape[i, 0]), count=int(scenes.n_objects[i]) if scenes.relation[i] < 0 else 1,
                      relation=int(scenes.relation[i]), color2=int(scenes.color[i, 1]), shape2=int(scenes.shape[i, 1]))
        for i in range(n)
    ]
    return Task(
        name=name,
        domain=domain,
        images=images,
        labels=torch.from_numpy(np.asarray(labels, dtype=np.int64)),
        classnames=tuple(classnames),
        templates=TASK_TEMPLATES[name],
        heldout=torch.from_numpy(held.any(axis=1)),
        captions=captions,
        scenes=scenes,
        candidates=candidates,
        attack_labels=attack,
    )


def word_order_pairs(world, n: int, *, domain: str = "flat", seed: int = 0, kind: str = "relation") -> WordOrderPairs:
    """n two-object images with a true caption and a word-order-swapped false one.

    kind="relation": "a red circle left of a blue square" vs "a blue square left of a red circle".
    kind="attributes": "a red circle left of a blue square" vs "a blue circle left of a red square"
    (the colors trade places; needs two objects that differ in both color and shape).
    """
    if kind not in ("relation", "attributes"):
        raise ValueError(f"kind must be 'relation' or 'attributes'; got {kind!r}")
    _check(world, "relation", domain, n, seed)
    key = _key(f"word_order_{kind}", domain, seed)
    dom = DOMAINS.index(domain)
    chosen: list[Scenes] = []
    images: list[torch.Tensor] = []
    got, start = 0, 0
    while got < n:  # draw candidates until n of them qualify
        ids = np.arange(start, start + 2 * n, dtype=np.uint64)
        start += 2 * n
        rnd = SampleRandom(key, ids)
        scenes = world.sample_scenes(rnd, kind=RELATION, domain=dom, word=-1)
        ok = (scenes.color[:, 0] != scenes.color[:, 1]) & (scenes.shape[:, 0] != scenes.shape[:, 1])
        ok = np.flatnonzero(ok)[: n - got]
        sub = scenes.select(ok)
        chosen.append(sub)
        images.append(world.draw(sub, rnd.subset(np.isin(np.arange(len(ids)), ok))))
        got += ok.size
    scenes = Scenes(**{f.name: np.concatenate([getattr(s, f.name) for s in chosen]) for f in fields(Scenes)})
    captions, swapped = [], []
    for i in range(n):
        c0, s0, c1, s1, r = (int(x) for x in (scenes.color[i, 0], scenes.shape[i, 0], scenes.color[i, 1], scenes.shape[i, 1], scenes.relation[i]))
        captions.append(label_caption(c0, s0, relation=r, color2=c1, shape2=s1))
        if kind == "relation":
            swapped.append(label_caption(c1, s1, relation=r, color2=c0, shape2=s0))
        else:
            swapped.append(label_caption(c1, s0, relation=r, color2=c0, shape2=s1))
    return WordOrderPairs(images=torch.cat(images), captions=captions, swapped=swapped, kind=kind, scenes=scenes)
