"""Real image-text pairs for GPU-scale runs: CSV/TSV files and WebDataset tar shards.

Both loaders are IterableDatasets that split their samples by rank (DDP) and by DataLoader worker, apply
`clip_transform` (or any transform) to the image, and yield `(image, caption)` with the caption a raw
string: tokenize in the collate function, e.g. `collate=lambda b: (torch.stack([x for x, _ in b]),
tokenizer([t for _, t in b]))`.

A web-scale dataset always has broken samples. A missing file, an image that does not decode, an empty
caption or a truncated shard is skipped and counted in a `SkipCounter` (shared by all workers), and
reported with a warning at the end of the epoch: it never crashes a run. A damaged shard is counted as a
shard, not as the unknown number of samples it lost.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
import tarfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from .normalize import CLIP_MEAN, CLIP_STD

__all__ = ["clip_transform", "SkipCounter", "SkippedSamplesWarning", "CsvImageText", "WebDatasetImageText"]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSIONS = ("txt", "text", "caption")


# --------------------------------------------------------------------------------- transforms
def _to_rgb(image):
    return image.convert("RGB") if image.mode != "RGB" else image


def clip_transform(
    image_size: int = 224,
    train: bool = False,
    *,
    scale: tuple[float, float] = (0.9, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = False,
) -> Callable:
    """CLIP's preprocessing: PIL image -> float tensor [3, R, R], normalized with CLIP's mean and std.

    Evaluation (`train=False`): bicubic resize of the short side to R, center crop R x R, RGB.
    Training (`train=True`): a random crop covering `scale` of the area with aspect in `ratio`, resized
    bicubically to R x R; the paper uses only this random square crop. `hflip` adds horizontal flips
    (off by default: a flip turns "left of" into "right of" in the captions).
    """
    from torchvision import transforms as T

    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int; got {image_size!r}")
    if not (0 < scale[0] <= scale[1] <= 1):
        raise ValueError(f"scale must satisfy 0 < min <= max <= 1; got {scale}")
    if not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"ratio must satisfy 0 < min <= max; got {ratio}")
    bicubic = T.InterpolationMode.BICUBIC
    if train:
        steps = [T.RandomResizedCrop(image_size, scale=scale, ratio=ratio, interpolation=bicubic)]
        if hflip:
            steps.append(T.RandomHorizontalFlip())
    else:
        steps = [T.Resize(image_size, interpolation=bicubic), T.CenterCrop(image_size)]
    steps += [_to_rgb, T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)]
    return T.Compose(steps)


# --------------------------------------------------------------------------------- skipping
class SkippedSamplesWarning(UserWarning):
    """Some samples of an epoch were broken and left out."""


class SkipCounter:
    """Counts of skipped samples (and damaged shards) by reason, shared by all DataLoader workers of one dataset.

    The counts live in shared memory created by the main process, so `report()` there sees what every
    worker skipped. Each process also keeps its first few examples (key and error) for the message, and
    what it skipped since its last `take()`: a collate function can hand that to the main process with
    each batch, so a trainer knows which batch came after which skips.
    """

    REASONS = (
        "missing_file", "undecodable_image", "bad_caption", "missing_image", "truncated_shard", "other",
        "missing_shard", "broken_shard",
    )
    SHARD_REASONS = ("truncated_shard", "missing_shard", "broken_shard")  # once per shard: its lost samples are unknown
    MAX_EXAMPLES = 5

    def __init__(self, name: str = "data", *, warn_each_epoch: bool = True):
        self.name = name
        self.warn_each_epoch = warn_each_epoch  # False: the owner (e.g. the trainer) reports instead
        self._counts = multiprocessing.Array("q", len(self.REASONS) + 1)  # last slot: samples delivered
        self.examples: list[tuple[str, str, str]] = []  # (reason, key, error), this process only
        self._since_take: tuple[dict[str, int], list] = ({}, [])  # this process only

    def skip(self, reason: str, key: str = "", error: BaseException | str | None = None) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; choose from {self.REASONS}")
        with self._counts.get_lock():
            self._counts[self.REASONS.index(reason)] += 1
        if isinstance(error, BaseException):
            error = f"{type(error).__name__}: {error}"
        example = (reason, str(key), "" if error is None else str(error))
        if len(self.examples) < self.MAX_EXAMPLES:
            self.examples.append(example)
        counts, examples = self._since_take
        counts[reason] = counts.get(reason, 0) + 1
        if len(examples) < self.MAX_EXAMPLES:
            examples.append(example)

    def ok(self) -> None:
        with self._counts.get_lock():
            self._counts[len(self.REASONS)] += 1

    def take(self) -> dict:
        """What this process skipped since its last `take()`: `{"counts": {reason: n}, "examples": [...]}`."""
        counts, examples = self._since_take
        self._since_take = ({}, [])
        return {"counts": counts, "examples": examples}

    @property
    def counts(self) -> dict[str, int]:
        """Skipped samples (and damaged shards) per reason, reasons with zero included."""
        with self._counts.get_lock():
            return {r: int(self._counts[i]) for i, r in enumerate(self.REASONS)}

    @property
    def total(self) -> int:
        """Skipped samples (damaged shards are counted apart, in `shards`)."""
        return sum(n for r, n in self.counts.items() if r not in self.SHARD_REASONS)

    @property
    def shards(self) -> int:
        """Damaged shards: each lost the samples after its damage, however many there were."""
        return sum(n for r, n in self.counts.items() if r in self.SHARD_REASONS)

    @property
    def delivered(self) -> int:
        with self._counts.get_lock():
            return int(self._counts[len(self.REASONS)])

    def reset(self) -> None:
        with self._counts.get_lock():
            for i in range(len(self.REASONS) + 1):
                self._counts[i] = 0
        self.examples.clear()
        self._since_take = ({}, [])

    def report(self, examples: Sequence[tuple[str, str, str]] | None = None) -> str:
        """One line: how many samples were skipped (and shards damaged), why, and a few examples."""
        def why(part: dict[str, int]) -> str:
            return ", ".join(f"{n} {r.replace('_', ' ')}" for r, n in part.items())

        counts = {r: n for r, n in self.counts.items() if n}
        samples = {r: n for r, n in counts.items() if r not in self.SHARD_REASONS}
        shards = {r: n for r, n in counts.items() if r in self.SHARD_REASONS}
        if not counts:
            return f"{self.name}: no samples skipped ({self.delivered} delivered)"
        parts = []
        if samples:
            parts.append(f"skipped {sum(samples.values())} of {self.delivered + sum(samples.values())} samples ({why(samples)})")
        if shards:
            n = sum(shards.values())
            parts.append(f"{n} damaged shard{'s' * (n > 1)} ({why(shards)}), whose samples from the damage on are lost")
            if not samples:
                parts.append(f"{self.delivered} samples delivered")
        msg = f"{self.name}: " + "; ".join(parts)
        examples = self.examples if examples is None else examples
        if examples:
            msg += "; e.g. " + "; ".join(f"{k or '?'} [{r}] {e}".strip() for r, k, e in list(examples)[:3])
        return msg

    def warn(self, prefix: str = "", examples: Sequence[tuple[str, str, str]] | None = None) -> None:
        """Emit `prefix` + the report as a `SkippedSamplesWarning` if anything was skipped."""
        if self.total or self.shards:
            warnings.warn(prefix + self.report(examples), SkippedSamplesWarning, stacklevel=2)

    def epoch_done(self) -> None:
        """A dataset's iteration ended: warn, unless this is a DataLoader worker or the owner reports."""
        if self.warn_each_epoch and get_worker_info() is None:
            self.warn()


def _valid_caption(raw: Any) -> str | None:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not isinstance(raw, str):
        return None
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes read with surrogateescape
        return None
    text = raw.strip()
    return text or None


def _decode_image(data_or_path):
    from PIL import Image

    source = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    with Image.open(source) as im:
        im.load()  # decode now, so a broken file fails here and not inside the transform
        return _to_rgb(im) if im.mode != "RGB" else im.copy()


def _shard(items: Sequence, rank: int, world_size: int) -> list:
    """Items of this rank, then of this DataLoader worker."""
    items = list(items)[rank::world_size]
    info = get_worker_info()
    if info is not None:
        items = items[info.id :: info.num_workers]
    return items


def _check_rank(rank: int, world_size: int) -> None:
    if not (isinstance(rank, int) and isinstance(world_size, int) and world_size >= 1 and 0 <= rank < world_size):
        raise ValueError(f"need 0 <= rank < world_size; got rank={rank!r}, world_size={world_size!r}")


# --------------------------------------------------------------------------------- CSV / TSV
class CsvImageText(IterableDataset):
    """Image paths and captions in a CSV or TSV file (open_clip's `--csv-img-key` format).

    Paths are relative to the folder of the file unless absolute (or to `root` if given). The separator
    defaults to a tab for `.tsv` files and to a comma otherwise; a UTF-8 byte-order mark is allowed.
    Rows are split by rank and by worker; `shuffle=True` reshuffles them each epoch (`set_epoch`) with
    the same seed on every rank. A row with more or fewer fields than the header is skipped and
    counted (by line number), like any broken sample.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        transform: Callable | None = None,
        image_key: str = "filepath",
        caption_key: str = "title",
        sep: str | None = None,
        root: str | os.PathLike | None = None,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        skips: SkipCounter | None = None,
    ):
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"caption file not found: {path}")
        _check_rank(rank, world_size)
        if sep is None:
            sep = "\t" if path.suffix.lower() == ".tsv" else ","
        self.rows = self._read_rows(path, sep, image_key, caption_key)
        self.path, self.root = path, Path(root) if root is not None else path.parent
        self.transform, self.rank, self.world_size = transform, rank, world_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.skips = skips if skips is not None else SkipCounter(path.name)

    @staticmethod
    def _read_rows(path: Path, sep: str, image_key: str, caption_key: str) -> list[tuple[int, Any, Any, str | None]]:
        """Each row's (line number, image path, caption, what is wrong with it or None).

        A UTF-8 byte-order mark is dropped. A row that is not UTF-8 keeps its bytes as surrogates, and
        a row with more or fewer fields than the header (an unquoted separator cuts a caption) is kept
        with its problem: both are skipped and counted, by line, when iterated.
        """
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
            reader, end = csv.reader(handle, delimiter=sep), 0  # end: the last line of the last row read
            try:
                header = next(reader, [])
                for key, what in ((image_key, "image_key"), (caption_key, "caption_key")):
                    if key not in header:
                        raise ValueError(
                            f"{path.name}: no column {key!r} for {what}; the columns are {header} (separator {sep!r})"
                        )
                image_at, caption_at = header.index(image_key), header.index(caption_key)
                rows, end = [], reader.line_num
                for fields in reader:
                    line, end = end + 1, reader.line_num  # a quoted field may span lines: where it starts
                    if not fields:
                        continue  # a blank line
                    problem = None
                    if len(fields) != len(header):
                        problem = f"{len(fields)} field{'s' * (len(fields) > 1)} where the header has {len(header)}"
                        if len(fields) > len(header):
                            problem += f" (an unquoted {sep!r} inside a field cuts it)"
                    image = fields[image_at] if image_at < len(fields) else None
                    caption = fields[caption_at] if caption_at < len(fields) else None
                    rows.append((line, image, caption, problem))
            except csv.Error as err:  # a field over csv's size limit, say after an unclosed quote
                raise ValueError(
                    f"{path.name}, line {end + 1}: not a readable {sep!r}-separated file from this row on "
                    f"({err}; an unclosed quote?)"
                ) from err
        return rows

    def __len__(self) -> int:
        """Rows in the file (all ranks, broken ones included)."""
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        order = np.arange(len(self.rows))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        for i in _shard(order.tolist(), self.rank, self.world_size):
            line, rel, raw_caption, problem = self.rows[i]
            if problem is not None:
                self.skips.skip("bad_caption", f"line {line}", problem)
                continue
            caption = _valid_caption(raw_caption)
            if caption is None:
                self.skips.skip("bad_caption", f"line {line}", f"caption {raw_caption!r}")
                continue
            if not rel:
                self.skips.skip("missing_file", f"line {line}", "empty path")
                continue
            file = Path(rel) if os.path.isabs(rel) else self.root / rel
            if not file.is_file():
                self.skips.skip("missing_file", str(rel), "no such file")
                continue
            try:
                image = _decode_image(file)
                image = self.transform(image) if self.transform is not None else image
            except Exception as exc:  # noqa: BLE001 - any undecodable file is skipped, never fatal
                self.skips.skip("undecodable_image", str(rel), exc)
                continue
            self.skips.ok()
            yield image, caption
        self.skips.epoch_done()


# --------------------------------------------------------------------------------- WebDataset
class _RankSplitter:
    """webdataset node splitter for an explicit (rank, world_size): every world_size-th shard."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    def __call__(self, src):
        for i, item in enumerate(src):
            if i % self.world_size == self.rank:
                yield item


class _ShardErrors:
    """webdataset exception handler: count the error once per shard, then carry on with the next shard."""

    def __init__(self, skips: SkipCounter, urls: Sequence[str]):
        self.skips, self.urls, self.seen = skips, list(urls), set()

    def __call__(self, exn: BaseException) -> bool:
        text = " ".join(str(a) for a in getattr(exn, "args", ()))
        shard = next((u for u in self.urls if u in text), "?")
        truncated = isinstance(exn, (tarfile.TarError, EOFError)) or "unexpected end" in text.lower()
        reason = "truncated_shard" if truncated else "missing_shard" if isinstance(exn, FileNotFoundError) else "broken_shard"
        if (reason, shard) not in self.seen:  # a broken tar raises once per member read and once per stream
            self.seen.add((reason, shard))
            self.skips.skip(reason, shard, exn)
        return True


class _StrictTarInfo(tarfile.TarInfo):
    """tarfile ends an archive quietly at a corrupt, cut or missing header; this raises instead."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:
            raise  # a block of zeros: tar's own end-of-archive marker
        except tarfile.HeaderError as err:
            raise tarfile.ReadError(f"bad tar header at byte {tar.offset} ({err}): the rest of the shard is lost") from None


def _tar_damage(url: str) -> str | None:
    """Why a local tar shard cannot be read to its end-of-archive marker, or None if it can (or is remote)."""
    path = Path(url[len("file:"):] if url.startswith("file:") else url)
    if not path.is_file():
        return None  # pipe:, http: ... shards are only checked as they stream
    try:
        with tarfile.open(path, "r:*", tarinfo=_StrictTarInfo) as tar:
            for _ in tar:  # headers only: the data are skipped by seeking
                pass
    except (tarfile.TarError, EOFError, OSError) as err:  # EOFError: a cut compressed shard
        return f"{type(err).__name__}: {err}"
    return None


class _CheckedWorkerSplit:
    """webdataset worker splitter that first walks each of this worker's shards' tar headers.

    Reading a tar, webdataset (via tarfile) stops without an error at a corrupt header or at a cut that
    falls between two members; the walk notices, so the samples lost there are counted, not silently dropped.
    """

    def __init__(self, errors: _ShardErrors):
        self.errors = errors

    def __call__(self, src):
        import webdataset as wds

        for item in wds.split_by_worker(src):
            url = str(item["url"] if isinstance(item, dict) else item)
            problem = _tar_damage(url)
            if problem is not None and ("truncated_shard", url) not in self.errors.seen:
                self.errors.seen.add(("truncated_shard", url))
                self.errors.skips.skip("truncated_shard", url, problem)
            yield item  # the samples before the damage are still read


class WebDatasetImageText(IterableDataset):
    """Samples from WebDataset tar shards: `<key>.jpg|png|webp` + `<key>.txt` per sample.

    `urls` is a list of shard paths/URLs or a brace pattern ("shards/{000..009}.tar"). Shards are split
    by rank, then by DataLoader worker; `shuffle_shards` reorders the shards each epoch (deterministic
    from `seed` and `set_epoch`). Use at least as many shards as ranks x workers.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        transform: Callable | None = None,
        rank: int = 0,
        world_size: int = 1,
        shuffle_shards: bool = False,
        seed: int = 0,
        skips: SkipCounter | None = None,
    ):
        super().__init__()
        import webdataset as wds

        _check_rank(rank, world_size)
        if isinstance(urls, (str, os.PathLike)):
            self.urls = list(wds.shardlists.expand_urls(str(urls)))
        else:
            self.urls = [str(u) for u in urls]
        if not self.urls:
            raise ValueError("urls names no shard")
        self.transform, self.rank, self.world_size = transform, rank, world_size
        self.shuffle_shards, self.seed, self.epoch = shuffle_shards, seed, 0
        self.skips = skips if skips is not None else SkipCounter("webdataset")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _pipeline(self):
        import webdataset as wds

        urls = list(self.urls)
        if self.shuffle_shards:
            urls = [urls[i] for i in np.random.default_rng([self.seed, self.epoch]).permutation(len(urls))]
        errors = _ShardErrors(self.skips, urls)
        return wds.WebDataset(
            urls,
            handler=errors,
            shardshuffle=False,
            nodesplitter=_RankSplitter(self.rank, self.world_size),
            workersplitter=_CheckedWorkerSplit(errors),
            empty_check=False,
        )

    def __iter__(self):
        for sample in self._pipeline():
            key = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
            image_ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
            caption_ext = next((e for e in CAPTION_EXTENSIONS if e in sample), None)
            if image_ext is None:
                self.skips.skip("missing_image", key, f"no image among {sorted(k for k in sample if not k.startswith('__'))}")
                continue
            caption = _valid_caption(sample[caption_ext]) if caption_ext is not None else None
            if caption is None:
                self.skips.skip("bad_caption", key, "missing, empty or not UTF-8 text")
                continue
            try:
                image = _decode_image(sample[image_ext])
                image = self.transform(image) if self.transform is not None else image
            except Exception as exc:  # noqa: BLE001 - any undecodable image is skipped, never fatal
                self.skips.skip("undecodable_image", key, exc)
                continue
            self.skips.ok()
            yield image, caption
        self.skips.epoch_done()
