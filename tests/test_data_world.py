"""The caption world: determinism, sharding, held-out pairs, caption grammar, rendering, tasks, configs."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from clipmini.data import (
    CLIP_MEAN,
    CLIP_STD,
    COLOR_RGB,
    COLOR_SYNONYMS,
    COLORS,
    COUNTS,
    DOMAINS,
    RELATIONS,
    SHAPE_SYNONYMS,
    SHAPES,
    TASKS,
    CaptionWorld,
    CaptionWorldDataset,
    CaptionWorldStream,
    WorldConfig,
    denormalize,
    show_grid,
)
from clipmini.data.attributes import PLURAL_SHAPES
from clipmini.data.captions import DOMAIN_PHRASES, FILLER_PHRASES
from clipmini.data.scenes import COUNT, RELATION, SINGLE



# ------------------------------------------------------------------ a caption parser for the tests
def _word_table() -> tuple[re.Pattern, dict[str, tuple[str, int]]]:
    """Every color / shape word the grammar can use -> (kind, index); longest phrases match first."""
    table: dict[str, tuple[str, int]] = {}
    for c, name in enumerate(COLORS):
        for w in (name, *COLOR_SYNONYMS[name]):
            table[w] = ("color", c)
    for s, name in enumerate(SHAPES):
        table[name] = table[PLURAL_SHAPES[s]] = ("shape", s)
        for sing, plur in SHAPE_SYNONYMS[name]:
            table[sing] = table[plur] = ("shape", s)
    words = sorted(table, key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b")
    return pattern, table


PATTERN, TABLE = _word_table()


def mentioned(caption: str) -> tuple[set[int], set[int]]:
    colors, shapes = set(), set()
    for m in PATTERN.finditer(caption.lower()):
        kind, i = TABLE[m.group(1)]
        (colors if kind == "color" else shapes).add(i)
    return colors, shapes


def corpus(world: CaptionWorld, n: int, batch: int = 1000):
    caps, metas = [], []
    for i in range(n // batch):
        c, m = world.captions_with_meta(i, batch)
        caps += c
        metas.append(m)
    return caps, metas


# ------------------------------------------------------------------ determinism and sharding
def test_same_seed_same_batch_and_different_seed_differs():
    a = CaptionWorld(WorldConfig(seed=3, text_rate=0.2))
    b = CaptionWorld(WorldConfig(seed=3, text_rate=0.2))
    c = CaptionWorld(WorldConfig(seed=4, text_rate=0.2))
    xa, ca = a.batch(7, 32)
    xb, cb = b.batch(7, 32)
    xc, cc = c.batch(7, 32)
    assert torch.equal(xa, xb) and ca == cb
    assert not torch.equal(xa, xc) and ca != cc
    assert a.batch(8, 32)[1] != ca  # another step is another batch


def test_ranks_hold_disjoint_slices_of_one_global_batch():
    world = CaptionWorld(text_rate=0.3)
    full_x, full_c = world.batch(5, 64)
    parts = [world.batch(5, 16, rank=r, world_size=4) for r in range(4)]
    assert torch.equal(torch.cat([p[0] for p in parts]), full_x)  # bit-identical, whatever the split
    assert sum((p[1] for p in parts), []) == full_c
    ids = [set(world.sample_ids(step, 16, rank=r, world_size=4).tolist()) for step in range(3) for r in range(4)]
    assert sum(len(s) for s in ids) == len(set().union(*ids)) == 3 * 64
    assert parts[0][1] != parts[1][1]
    # random access: any subset, any order
    ids5 = world.sample_ids(5, 64)
    x, c = world.samples(ids5[::-1].copy())
    assert torch.equal(x, full_x.flip(0)) and c == full_c[::-1]


def test_stream_with_workers_keeps_order_and_never_duplicates():
    world = CaptionWorld()
    stream = CaptionWorldStream(world, 4, start_index=3, num_batches=6)
    loader = DataLoader(stream, batch_size=None, num_workers=2)
    got = list(loader)
    assert len(got) == 6
    for k, (x, c) in enumerate(got):  # batch 3, 4, ..., 8 in order: resume from index 3 is exact
        ex, ec = world.batch(3 + k, 4)
        assert torch.equal(x, ex) and list(c) == ec
    captions = [cap for _, c in got for cap in c]
    assert len(set(captions)) > 0.8 * len(captions)
    # in-process iteration gives the same sequence
    assert [c for _, c in stream] == [list(c) for _, c in got]


def test_map_style_eval_set():
    world = CaptionWorld()
    ds = CaptionWorldDataset(world, 50, seed=1)
    assert len(ds) == 50
    x, c = ds[7]
    assert x.shape == (3, 32, 32) and isinstance(c, str)
    items = ds.__getitems__([7, 8])
    assert torch.equal(items[0][0], x) and items[0][1] == c
    assert torch.equal(CaptionWorldDataset(world, 50, seed=1)[7][0], x)
    assert not torch.equal(CaptionWorldDataset(world, 50, seed=2)[7][0], x)
    train_x, _ = world.batch(0, 50)
    assert not any(torch.equal(train_x[i], x) for i in range(50))
    with pytest.raises(IndexError):
        ds[50]
    batch = next(iter(DataLoader(ds, batch_size=10)))
    assert batch[0].shape == (10, 3, 32, 32) and len(batch[1]) == 10


# ------------------------------------------------------------------ held-out pairs
def test_heldout_pairs_never_appear_in_training_images_or_captions():
    # lots of noise and written words: the two ways a held-out pair could sneak in
    world = CaptionWorld(WorldConfig(noise_rate=0.3, text_rate=0.3, split_seed=5))
    held = world.heldout
    assert held.sum() == 10 and (held.sum(axis=0) == 1).all() and (held.sum(axis=1) == 1).all()
    caps, metas = corpus(world, 20_000)
    for m in metas:
        sc = m.scenes
        present = sc.color >= 0
        assert not held[sc.color[present], sc.shape[present]].any()  # no held-out object drawn
        dc, ds = m.captions.described_color, m.captions.described_shape
        ok = dc >= 0
        assert not held[dc[ok], ds[ok]].any()  # noise never describes one either
    violations = []
    for cap in caps:  # and no caption puts the words of a held-out pair side by side
        colors, shapes = mentioned(cap)
        violations += [(cap, c, s) for c in colors for s in shapes if held[c, s]]
    assert violations == []
    # the parser does see held-out pairs where they exist (so the check above can fail)
    task = world.task("color_shape", n=300)
    found = sum(any(held[c, s] for c in mentioned(cap)[0] for s in mentioned(cap)[1]) for cap in task.captions)
    assert found == int(task.heldout.sum()) > 0


def test_split_is_independent_of_data_seed():
    a = CaptionWorld(WorldConfig(seed=1, split_seed=9))
    b = CaptionWorld(WorldConfig(seed=2, split_seed=9))
    c = CaptionWorld(WorldConfig(seed=1, split_seed=10))
    assert a.heldout_pairs == b.heldout_pairs != c.heldout_pairs
    explicit = CaptionWorld(heldout_pairs=(("red", "star"), ("blue", "circle")))
    assert explicit.heldout_pairs == (("red", "star"), ("blue", "circle"))
    assert explicit.is_heldout("red", "star") and not explicit.is_heldout("red", "circle")
    assert CaptionWorld(holdout_per_color=2).heldout.sum() == 20


# ------------------------------------------------------------------ caption grammar
def test_caption_grammar_covers_every_word():
    caps, _ = corpus(CaptionWorld(WorldConfig(seed=1, text_rate=0.1)), 20_000)
    text = "\n".join(caps).lower()
    words = set(re.findall(r"[a-z]+", text))
    for w in SHAPES + COLORS + COUNTS[1:]:
        assert w in words, w
    for name in COLORS:
        assert any(s in words for s in COLOR_SYNONYMS[name]), name
    for name in SHAPES:
        assert any(re.search(rf"\b{re.escape(s)}\b", text) for s, _ in SHAPE_SYNONYMS[name]), name
    for rel in RELATIONS:
        assert re.search(rf"\b{rel}\b", text), rel
    for dom, phrases in DOMAIN_PHRASES.items():  # every medium is named somewhere
        assert any(p.replace("{}", "").strip(" ,:") in text for p in phrases), dom
    assert sum(any(f.replace("{}", "").strip(" ,") in c for f in FILLER_PHRASES) for c in caps) > 0.2 * len(caps)
    assert len(set(caps)) > 0.5 * len(caps)  # alt-text is varied, not a label
    # partial descriptions: some captions name no color, some no shape
    parsed = [mentioned(c) for c in caps]
    assert 0.05 < np.mean([not c for c, _ in parsed]) < 0.4
    assert 0.05 < np.mean([not s for _, s in parsed]) < 0.4


def test_label_style_is_the_canonical_description():
    world = CaptionWorld(WorldConfig(caption_style="label", noise_rate=0.0))
    caps, metas = corpus(world, 2000)
    c = "|".join(COLORS)
    s = "|".join(SHAPES)
    sp = "|".join(PLURAL_SHAPES)
    single = re.compile(rf"an? ({c}) ({s})")
    count = re.compile(rf"(two|three|four) ({c}) ({sp})")
    relation = re.compile(rf"an? ({c}) ({s}) ({'|'.join(RELATIONS)}) an? ({c}) ({s})")
    sc = metas[0].scenes
    for i, cap in enumerate(caps[:1000]):
        kind = sc.kind[i]
        pattern = {SINGLE: single, COUNT: count, RELATION: relation}[kind]
        m = pattern.fullmatch(cap)
        assert m, cap
        if kind == SINGLE:
            assert (m.group(1), m.group(2)) == (COLORS[sc.color[i, 0]], SHAPES[sc.shape[i, 0]])
        elif kind == COUNT:
            assert COUNTS.index(m.group(1)) + 1 == sc.n_objects[i]
        else:
            assert m.group(3) == RELATIONS[sc.relation[i]]


def test_noise_rate_matches_config_and_noisy_captions_contradict_the_image():
    world = CaptionWorld(WorldConfig(noise_rate=0.2, seed=2))
    caps, metas = corpus(world, 20_000)
    noisy = np.concatenate([m.captions.noisy for m in metas])
    assert abs(noisy.mean() - 0.2) < 0.015
    # on lone objects, read the caption: a noisy one names a wrong color or shape, a clean one never does
    contradicted, flagged = [], []
    for m, start in zip(metas, range(0, len(caps), 1000)):
        sc = m.scenes
        for i in np.flatnonzero(sc.kind == SINGLE):
            colors, shapes = mentioned(caps[start + i])
            contradicted.append(bool(colors - {sc.color[i, 0]} or shapes - {sc.shape[i, 0]}))
            flagged.append(bool(m.captions.noisy[i]))
    assert contradicted == flagged
    assert abs(np.mean(contradicted) - 0.2) < 0.02
    clean = CaptionWorld(WorldConfig(noise_rate=0.0))
    assert not np.concatenate([m.captions.noisy for m in corpus(clean, 2000)[1]]).any()


def test_wording_entropy_zero_gives_canonical_words():
    world = CaptionWorld(WorldConfig(wording_entropy=0.0, partial_rate=0.0, domain_rate=0.0, noise_rate=0.0))
    caps, _ = corpus(world, 2000)
    synonyms = {w for v in COLOR_SYNONYMS.values() for w in v}
    words = set(re.findall(r"[a-z]+", " ".join(caps)))
    assert not words & synonyms
    assert not any("download" in c or "#" in c for c in caps)


# ------------------------------------------------------------------ pixels and geometry
@pytest.mark.parametrize("size", [32, 64, 96])
def test_images_are_finite_normalized_and_shaped(size):
    world = CaptionWorld(WorldConfig(image_size=size, text_rate=0.3))
    x, c = world.batch(0, 24 if size < 96 else 8)
    assert x.dtype == torch.float32 and x.shape == (len(c), 3, size, size)
    assert torch.isfinite(x).all()
    lo = (0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    hi = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert (x >= lo.view(1, 3, 1, 1) - 1e-5).all() and (x <= hi.view(1, 3, 1, 1) + 1e-5).all()
    assert x.std() > 0.2  # not blank
    rgb = denormalize(x)
    assert rgb.min() >= 0 and rgb.max() <= 1


def test_flat_objects_have_their_color_and_shapes_differ_at_32px():
    world = CaptionWorld()
    task = world.task("color_shape", n=200, domain="flat")
    rgb = denormalize(task.images)
    sc = task.scenes
    for i in range(len(task)):
        if SHAPES[sc.shape[i, 0]] in ("ring", "crescent") or sc.size[i] != 1:  # hollow centre; thin when small
            continue
        px = np.clip(np.round(sc.cx[i, 0] * 32 - 0.5).astype(int), 0, 31), np.clip(np.round(sc.cy[i, 0] * 32 - 0.5).astype(int), 0, 31)
        centre = rgb[i, :, px[1], px[0]].numpy()
        assert np.abs(centre - np.array(COLOR_RGB[sc.color[i, 0]])).max() < 0.03, (i, centre)
    # the same red object in every shape, small and large: masks differ by several pixels pairwise
    from clipmini.data.rng import SampleRandom

    for radius, min_diff in ((0.14, 6), (0.26, 20)):
        rnd = SampleRandom(1, np.arange(10))
        scenes = world.sample_scenes(rnd, allow_heldout=True, kind=SINGLE, domain=0, color=0, shape=np.arange(10), word=-1)
        scenes.cx[:, 0] = scenes.cy[:, 0] = 0.5
        scenes.radius[:, 0] = radius
        mask = (denormalize(world.draw(scenes, rnd))[:, 1] < 0.5).numpy()  # red: low green
        diff = np.array([[(mask[i] ^ mask[j]).sum() for j in range(10)] for i in range(10)])
        np.fill_diagonal(diff, 10**6)
        assert diff.min() >= min_diff


def test_scene_geometry_matches_the_words():
    world = CaptionWorld()
    _, meta = world.captions_with_meta(0, 2000)
    sc = meta.scenes
    rel = np.flatnonzero(sc.kind == RELATION)
    r = sc.relation[rel]
    dx, dy = sc.cx[rel, 0] - sc.cx[rel, 1], sc.cy[rel, 0] - sc.cy[rel, 1]
    assert ((r == 0) == (dx < -0.3)).all() and ((r == 1) == (dx > 0.3)).all()
    assert ((r == 2) == (dy < -0.3)).all() and ((r == 3) == (dy > 0.3)).all()
    cnt = np.flatnonzero(sc.kind == COUNT)
    for i in cnt:  # copies never overlap
        n = sc.n_objects[i]
        for a in range(n):
            for b in range(a + 1, n):
                dist = np.hypot(sc.cx[i, a] - sc.cx[i, b], sc.cy[i, a] - sc.cy[i, b])
                assert dist > sc.radius[i, a] + sc.radius[i, b]
    single = np.flatnonzero(sc.kind == SINGLE)
    pos = sc.position[single]
    assert (sc.cx[single[pos == 0], 0] < 0.45).all() and (sc.cy[single[pos == 3], 0] > 0.55).all()
    inside = (sc.cx - sc.radius > 0) & (sc.cx + sc.radius < 1) & (sc.cy - sc.radius > 0) & (sc.cy + sc.radius < 1)
    assert inside[sc.color >= 0].all()


# ------------------------------------------------------------------ tasks
@pytest.mark.parametrize("name", TASKS)
def test_tasks_shapes_labels_and_prompts(name):
    world = CaptionWorld()
    task = world.task(name, n=120, domain="sketch")
    C = task.num_classes
    assert task.images.shape == (120, 3, 32, 32) and task.labels.shape == (120,)
    assert task.labels.min() >= 0 and task.labels.max() < C
    counts = torch.bincount(task.labels, minlength=C)
    assert counts.max() - counts.min() <= 1  # balanced
    prompts = task.prompts()
    assert len(prompts) == C and all(len(p) == len(task.templates) for p in prompts)
    assert not any(re.search(r"\ba [aeiou]", p) for row in prompts for p in row)
    assert all(isinstance(t, str) and not re.search(r"\ba [aeiou]", t.format("arrow")) for t in task.templates)
    sc = task.scenes
    assert (sc.domain == DOMAINS.index("sketch")).all()
    if name == "shape":
        assert (sc.shape[:, 0] == task.labels.numpy()).all()
    if name == "color_shape":
        lab = task.labels.numpy()
        assert torch.equal(task.heldout, torch.from_numpy(world.heldout[lab // 10, lab % 10]))
        assert task.classnames[lab[0]] == f"{COLORS[sc.color[0, 0]]} {SHAPES[sc.shape[0, 0]]}"
    if name in ("count", "relation"):
        assert all(len(c) == C for c in task.candidates)
        assert all(c[y] == cap for c, y, cap in zip(task.candidates, task.labels.tolist(), task.captions))
        assert len({tuple(c) for c in task.candidates[:10]}) > 1
    if name == "count":
        assert (sc.n_objects == task.labels.numpy() + 1).all()
    if name.startswith("typographic"):
        assert (task.attack_labels != task.labels).all()
        words = sc.word - (len(COLORS) if name == "typographic" else 0)
        assert (words == task.attack_labels.numpy()).all()
    sub = task.subset(task.labels == 0)
    assert len(sub) == int((task.labels == 0).sum()) and (sub.labels == 0).all()


def test_tasks_do_not_depend_on_the_data_seed_but_on_their_own():
    a = CaptionWorld(WorldConfig(seed=1)).task("shape", n=20, domain="photo")
    b = CaptionWorld(WorldConfig(seed=2)).task("shape", n=20, domain="photo")
    c = CaptionWorld(WorldConfig(seed=1)).task("shape", n=20, domain="photo", seed=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    d = CaptionWorld().task("shape", n=20, domain="flat")
    assert not torch.equal(a.images, d.images)


@pytest.mark.parametrize("kind", ["relation", "attributes"])
def test_word_order_pairs_differ_only_in_order(kind):
    pairs = CaptionWorld().word_order_pairs(50, kind=kind)
    assert pairs.images.shape == (50, 3, 32, 32) and len(pairs) == 50
    for a, b in zip(pairs.captions, pairs.swapped):
        assert a != b and sorted(a.split()) == sorted(b.split())
    sc = pairs.scenes
    assert (sc.kind == RELATION).all()
    first = pairs.captions[0]
    assert COLORS[sc.color[0, 0]] in first.split()[:2] and SHAPES[sc.shape[0, 0]] in first.split()[:3]


# ------------------------------------------------------------------ configs and errors
@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"image_size": 8}, ValueError, "image_size"),
        ({"image_size": "32"}, TypeError, "image_size"),
        ({"domains": ("flat", "cartoon")}, ValueError, "cartoon"),
        ({"domains": ()}, ValueError, "domains"),
        ({"caption_style": "fancy"}, ValueError, "caption_style"),
        ({"noise_rate": 1.5}, ValueError, "noise_rate"),
        ({"max_objects": 1}, ValueError, "count_rate"),
        ({"count_rate": 0.7, "relation_rate": 0.7}, ValueError, "relation_rate"),
        ({"heldout_pairs": (("red", "blob"),)}, ValueError, "blob"),
        ({"holdout_per_color": 9}, ValueError, "holdout_per_color"),
    ],
)
def test_bad_configs_raise_clear_errors(kwargs, error, words):
    with pytest.raises(error, match=words):
        WorldConfig(**kwargs)


def test_config_dict_round_trip_and_unknown_keys():
    cfg = WorldConfig(seed=3, domains=("flat", "sketch"), heldout_pairs=(("red", "star"),))
    again = WorldConfig.from_dict(cfg.to_dict())
    assert again == cfg
    with pytest.raises(ValueError, match="sead"):
        WorldConfig.from_dict({"sead": 1})
    assert WorldConfig(max_objects=1, count_rate=0, relation_rate=0).max_objects == 1


def test_bad_calls_raise_clear_errors():
    world = CaptionWorld()
    with pytest.raises(ValueError, match="index"):
        world.batch(-1, 4)
    with pytest.raises(ValueError, match="rank"):
        world.batch(0, 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="unknown task"):
        world.task("colour")
    with pytest.raises(ValueError, match="domain"):
        world.task("shape", domain="cartoon")
    with pytest.raises(ValueError, match="kind"):
        world.word_order_pairs(3, kind="colors")


def test_show_grid_has_a_fixed_size():
    import matplotlib

    world = CaptionWorld()
    x, c = world.batch(0, 10)
    fig = show_grid(x, c, ncols=5)
    assert isinstance(fig, matplotlib.figure.Figure)
    assert tuple(fig.get_size_inches()) == tuple(show_grid(x * 0, c, ncols=5).get_size_inches())
    assert sum(1 for ax in fig.axes if ax.images) == 10
    with pytest.raises(ValueError, match="captions"):
        show_grid(x, c[:3])
