"""Properties over generated inputs (hypothesis, bounded: the file runs in well under 30 s).

- The caption world, over random `WorldConfig`s, steps, batch sizes and ranks, never writes an empty
  caption and never draws a non-finite or out-of-range pixel; its zero-shot tasks neither.
- The real-data loaders survive random byte corruption of small files this test writes (flipped bytes,
  truncation): no exception escapes, every sample is either delivered or counted as skipped, and every
  sample whose bytes were not touched comes out exactly as it went in.

The tokenizer's properties (never crashes on arbitrary unicode, round-trips cleaned text, ids in range,
same ids as open_clip) are in tests/test_tokenizer_properties.py.
"""

from __future__ import annotations

import csv
import io
import math
import tarfile
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from clipmini.data import (
    CLIP_MEAN,
    CLIP_STD,
    DOMAINS,
    TASKS,
    CaptionWorld,
    CsvImageText,
    SkippedSamplesWarning,
    WebDatasetImageText,
    WorldConfig,
    clip_transform,
)

torch.set_num_threads(1)

# derandomize: CI runs the same examples every time (a failure is reproducible, never a coin toss)
BOUNDED = settings(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def bounded(max_examples: int) -> settings:
    return settings(BOUNDED, max_examples=max_examples)
LOW = ((0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)).view(1, 3, 1, 1)  # a black pixel, normalized
HIGH = ((1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)).view(1, 3, 1, 1)  # a white one


def _assert_valid_images(images: torch.Tensor, n: int, size: int) -> None:
    assert images.dtype == torch.float32 and images.shape == (n, 3, size, size)
    assert torch.isfinite(images).all()
    assert (images >= LOW - 1e-5).all() and (images <= HIGH + 1e-5).all()  # pixels inside [0, 1] before normalizing


def _assert_valid_text(texts) -> None:
    assert all(isinstance(t, str) and t.strip() for t in texts), [t for t in texts if not (isinstance(t, str) and t.strip())]


# ------------------------------------------------------------------------------------------------
# the caption world


@st.composite
def world_configs(draw) -> WorldConfig:
    rate = st.floats(0.0, 1.0, allow_nan=False)
    max_objects = draw(st.integers(1, 4))
    if max_objects == 1:  # lone objects only: no counts, no relations
        count_rate = relation_rate = 0.0
    else:
        count_rate = draw(rate)
        relation_rate = draw(st.floats(0.0, 1.0 - count_rate, allow_nan=False))
    return WorldConfig(
        seed=draw(st.integers(0, 2**63 - 1)),
        image_size=draw(st.sampled_from([16, 24, 32, 40])),  # any size in [16, 512] works; small ones are fast
        domains=tuple(draw(st.lists(st.sampled_from(DOMAINS), min_size=1, max_size=len(DOMAINS), unique=True))),
        max_objects=max_objects,
        count_rate=count_rate,
        relation_rate=relation_rate,
        caption_style=draw(st.sampled_from(["alt", "label"])),
        wording_entropy=draw(rate),
        partial_rate=draw(rate),
        filler_rate=draw(rate),
        domain_rate=draw(rate),
        noise_rate=draw(rate),
        text_rate=draw(rate),
        # Known limit, left for a later session: with 3+ shapes held out per color and relation and
        # written-word rates near 1, the scene sampler can exhaust its retries and raises a clear
        # RuntimeError ("could not sample scenes that avoid the held-out pairs") instead of drawing.
        holdout_per_color=draw(st.integers(0, 2)),
        split_seed=draw(st.integers(0, 2**32)),
    )


@bounded(40)
@given(
    config=world_configs(),
    index=st.integers(0, 2**40),
    batch_size=st.integers(1, 6),
    ranks=st.integers(1, 4).flatmap(lambda w: st.tuples(st.integers(0, w - 1), st.just(w))),
)
def test_the_world_never_writes_an_empty_caption_or_a_bad_pixel(config, index, batch_size, ranks):
    rank, world_size = ranks
    images, captions = CaptionWorld(config).batch(index, batch_size, rank=rank, world_size=world_size)
    _assert_valid_images(images, batch_size, config.image_size)
    assert len(captions) == batch_size
    _assert_valid_text(captions)


@bounded(25)
@given(config=world_configs(), name=st.sampled_from(TASKS), n=st.integers(1, 5), seed=st.integers(0, 2**31))
def test_the_worlds_tasks_are_valid(config, name, n, seed):
    task = CaptionWorld(config).task(name, n=n, seed=seed)
    _assert_valid_images(task.images, n, config.image_size)
    assert task.labels.shape == (n,) and int(task.labels.min()) >= 0
    _assert_valid_text(task.captions)
    _assert_valid_text(task.classnames)
    _assert_valid_text([prompt for group in task.prompts() for prompt in group])
    if task.candidates is not None:
        assert all(0 <= int(label) < len(row) for label, row in zip(task.labels, task.candidates))
        _assert_valid_text([c for row in task.candidates for c in row])
    else:
        assert int(task.labels.max()) < task.num_classes


# ------------------------------------------------------------------------------------------------
# loaders on corrupted files

N = 6  # samples per shard / rows per CSV
SIZE = 16  # transform output: [3, 16, 16]
TRANSFORM = clip_transform(SIZE)
FORMATS = [("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP")]


def _image_bytes(i: int) -> tuple[str, bytes]:
    ext, fmt = FORMATS[i % len(FORMATS)]
    image = Image.new("RGB", (20 + i, 18), (30 + 35 * i, 200 - 25 * i, 90))
    image.paste((250, 250, 250), (2 + i, 3, 9 + i, 12))  # some structure, so a damaged decode differs
    buf = io.BytesIO()
    image.save(buf, fmt)
    return ext, buf.getvalue()


IMAGES = [_image_bytes(i) for i in range(N)]
CAPTIONS = [f"sample {i}, a small test image" for i in range(N)]


def _shard_bytes(prefix: str, captions: list[str]) -> tuple[bytes, list[tuple[int, int]], list[tuple[int, int]]]:
    """A shard of N samples; (start, end) byte span of each sample, and each member header's span."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i, (ext, data) in enumerate(IMAGES):
            for name, payload in ((f"{prefix}{i:02d}.{ext}", data), (f"{prefix}{i:02d}.txt", captions[i].encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    blob = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        members = tar.getmembers()
    headers = [(m.offset, m.offset_data) for m in members]
    spans = []
    for i in range(N):
        image, caption = members[2 * i], members[2 * i + 1]
        spans.append((image.offset, caption.offset_data + math.ceil(caption.size / 512) * 512))
    return blob, spans, headers


SHARD, SPANS, HEADERS = _shard_bytes("a", CAPTIONS)
# The next shard, intact. Its keys differ from the first's, as a real dataset's do (webdataset ends a
# sample when the key changes; after a shard that broke off, a sample with the SAME key as the next
# shard's first one would be merged with it).
NEXT_CAPTIONS = [f"next shard, {c}" for c in CAPTIONS]
NEXT_SHARD = _shard_bytes("b", NEXT_CAPTIONS)[0]


def _reference(dataset) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedSamplesWarning)  # the intact files have nothing to skip
        return {caption: image for image, caption in dataset}


def _damage(data: bytes, flips: list[tuple[int, int]], cut: float | None) -> tuple[bytes, list[int], int]:
    """Flip bytes (position as a fraction of the size, xor mask), then maybe cut; the positions hit and the length."""
    blob = bytearray(data)
    hit = []
    for where, mask in flips:
        position = min(int(where * len(blob)), len(blob) - 1)
        blob[position] ^= mask
        hit.append(position)
    length = len(blob) if cut is None else int(cut * len(blob))
    return bytes(blob[:length]), hit, length


flips = st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(1, 255)), max_size=4)
cuts = st.one_of(st.none(), st.floats(0.0, 1.0, exclude_max=True))


def _read(dataset) -> list[tuple[torch.Tensor, str]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedSamplesWarning)
        return list(dataset)  # nothing may escape: a broken sample is skipped, never raised


@bounded(40)
@given(damage=flips, cut=cuts)
@example(damage=[], cut=0.0)  # an empty shard: every sample lost, one damaged shard counted
def test_webdataset_survives_a_damaged_shard(damage, cut):
    with tempfile.TemporaryDirectory() as folder:
        damaged, following = Path(folder) / "shard-0.tar", Path(folder) / "shard-1.tar"
        damaged.write_bytes(SHARD)
        following.write_bytes(NEXT_SHARD)
        reference = _reference(WebDatasetImageText([str(damaged), str(following)], transform=TRANSFORM))
        blob, hit, length = _damage(SHARD, damage, cut)
        damaged.write_bytes(blob)
        dataset = WebDatasetImageText([str(damaged), str(following)], transform=TRANSFORM)
        samples = _read(dataset)

    for image, caption in samples:
        assert image.shape == (3, SIZE, SIZE) and torch.isfinite(image).all() and caption.strip()
    got = {}
    for image, caption in samples:
        got.setdefault(caption, []).append(image)
    assert all(len(images) == 1 for images in got.values())  # no sample twice
    # the intact shard after it: every sample, exactly
    assert all(c in got and torch.equal(got[c][0], reference[c]) for c in NEXT_CAPTIONS)
    # the damaged one: a sample whose bytes were not touched and that lies before the first damaged
    # header (or the cut) is read exactly; tar is sequential, so what follows such damage may be lost...
    structural = min([length] + [p for p in hit if any(start <= p < end for start, end in HEADERS)])
    untouched = [i for i, (start, end) in enumerate(SPANS)
                 if end <= structural and not any(start <= p < end for p in hit)]
    for i in untouched:
        assert CAPTIONS[i] in got and torch.equal(got[CAPTIONS[i]][0], reference[CAPTIONS[i]]), i
    # ...but never silently: without a counted shard-level problem, each sample is delivered or counted
    counts = dataset.skips.counts
    shard_level = dataset.skips.shards + counts["other"]
    assert shard_level <= 1  # once per damaged shard
    if shard_level == 0:
        assert len(samples) + dataset.skips.total == 2 * N, counts
    if len(samples) < 2 * N:  # lost samples show up as skipped samples or as a damaged shard
        assert dataset.skips.total + dataset.skips.shards >= 1, "samples were lost without being counted"


@bounded(30)
@given(damage=st.lists(st.tuples(st.integers(0, N - 1), flips, cuts), max_size=3))
def test_csv_survives_damaged_image_files(damage):
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        with open(folder / "pairs.csv", "w", newline="") as handle:
            writer = csv.writer(handle)  # the captions hold commas: quoted
            writer.writerow(["filepath", "title"])
            for i, (ext, data) in enumerate(IMAGES):
                (folder / f"{i}.{ext}").write_bytes(data)
                writer.writerow([f"{i}.{ext}", CAPTIONS[i]])
        reference = _reference(CsvImageText(folder / "pairs.csv", transform=TRANSFORM))
        touched = set()
        for i, file_flips, cut in damage:
            path = folder / f"{i}.{IMAGES[i][0]}"
            blob, hit, length = _damage(path.read_bytes(), file_flips, cut)
            if hit or length < path.stat().st_size:
                touched.add(i)
            path.write_bytes(blob)
        dataset = CsvImageText(folder / "pairs.csv", transform=TRANSFORM)
        samples = _read(dataset)

    got = {caption: image for image, caption in samples}
    assert len(got) == len(samples)  # a row comes out at most once
    for i in range(N):
        if i not in touched:
            assert torch.equal(got[CAPTIONS[i]], reference[CAPTIONS[i]]), i
        elif CAPTIONS[i] in got:  # a damaged file that still decodes is a valid, if different, image
            assert got[CAPTIONS[i]].shape == (3, SIZE, SIZE) and torch.isfinite(got[CAPTIONS[i]]).all()
    counts = dataset.skips.counts
    assert len(samples) + counts["undecodable_image"] == N  # every row: delivered, or counted as undecodable
    assert dataset.skips.total == counts["undecodable_image"] <= len(touched)
