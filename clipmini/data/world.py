"""The caption world: an endless, procedurally drawn stream of images with web-like alt-text.

`CaptionWorld(config).batch(index, batch_size, rank=r, world_size=w)` is a pure function: the batch a
rank sees at step `index` is always the same, the ranks of one step hold disjoint slices of one global
batch, and a resumed run sees exactly the data it would have seen. That is what makes exact resume and
DDP sharding trivial for a trainer. Pixels come out normalized with CLIP's mean and std, ready for the
model; `denormalize` turns them back for display.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .attributes import COLORS, DOMAINS, SHAPES
from .captions import CaptionInfo, write_captions
from .normalize import CLIP_MEAN, CLIP_STD, denormalize  # noqa: F401 - re-exported for display
from .render import render, render_assets
from .rng import SampleRandom, derive_key
from .scenes import MAX_SLOTS, Scenes, heldout_matrix, sample_scenes

__all__ = [
    "WorldConfig",
    "CaptionWorld",
    "BatchMeta",
    "CaptionWorldStream",
    "CaptionWorldDataset",
    "denormalize",
]

CAPTION_STYLES = ("alt", "label")
SUPPORTED_SIZES = (32, 64, 96, 224)  # tested resolutions; any size in [16, 512] works
_TRAIN, _EVAL, _TASK = 0, 1, 2  # key namespaces: training stream, eval datasets, zero-shot tasks


@dataclass
class WorldConfig:
    """Everything that defines a caption world. Two equal configs give identical data."""

    seed: int = 0  # data seed: which images and captions the stream holds
    image_size: int = 32  # pixels per side; 32 trains on a laptop CPU, 64/96/224 are supported too
    domains: tuple[str, ...] = DOMAINS  # visual domains of training images, drawn uniformly
    max_objects: int = 4  # most objects in one image; also the largest count ("four red stars"); 1 = lone objects only
    count_rate: float = 0.2  # share of scenes with 2..max_objects copies of one object
    relation_rate: float = 0.2  # share of scenes with two different objects in a spatial relation
    caption_style: str = "alt"  # "alt": web-like alt-text; "label": the canonical "a red circle"
    wording_entropy: float = 1.0  # alt only: 0 = canonical words and phrasing, 1 = all synonyms, templates, fillers
    partial_rate: float = 0.3  # alt only: share of captions that leave the color, the shape or the count out
    filler_rate: float = 0.4  # alt only: share of captions wrapped in content-free words ("hd", "free download")
    domain_rate: float = 0.25  # alt only: share of captions that name the medium ("a sketch of ...")
    noise_rate: float = 0.05  # share of captions that state a wrong color, shape, count or relation
    text_rate: float = 0.0  # share of images with a written color or shape name in them (typography chapter)
    holdout_per_color: int = 1  # shapes held out per color: 1 of 10 keeps 10% of the color x shape pairs unseen
    split_seed: int = 0  # which pairs are held out; independent of `seed`, so data seeds share one split
    heldout_pairs: tuple[tuple[str, str], ...] | None = None  # explicit (color, shape) pairs; overrides the two above

    def __post_init__(self) -> None:
        if isinstance(self.domains, (list, str)):
            self.domains = (self.domains,) if isinstance(self.domains, str) else tuple(self.domains)
        if isinstance(self.heldout_pairs, list):
            self.heldout_pairs = tuple(tuple(p) for p in self.heldout_pairs)
        self.validate()

    # ------------------------------------------------------------------ checks that name the field
    def validate(self) -> None:
        def integer(name, lo, hi):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"WorldConfig.{name} must be an int; got {type(v).__name__} {v!r}")
            if not lo <= v <= hi:
                raise ValueError(f"WorldConfig.{name} must be in [{lo}, {hi}]; got {v}")

        def rate(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"WorldConfig.{name} must be a number; got {type(v).__name__} {v!r}")
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"WorldConfig.{name} must be in [0, 1]; got {v}")

        integer("seed", 0, 2**63 - 1)
        integer("split_seed", 0, 2**63 - 1)
        integer("image_size", 16, 512)
        integer("max_objects", 1, MAX_SLOTS)
        integer("holdout_per_color", 0, 5)
        for name in ("count_rate", "relation_rate", "wording_entropy", "partial_rate", "filler_rate",
                     "domain_rate", "noise_rate", "text_rate"):
            rate(name)
        if self.count_rate + self.relation_rate > 1.0:
            raise ValueError(
                f"WorldConfig.count_rate + relation_rate must be <= 1; got {self.count_rate} + {self.relation_rate}"
            )
        if self.max_objects == 1 and (self.count_rate > 0 or self.relation_rate > 0):
            raise ValueError(
                "WorldConfig.max_objects=1 allows lone objects only: set count_rate=0 and relation_rate=0 "
                f"(got count_rate={self.count_rate}, relation_rate={self.relation_rate})"
            )
        if self.caption_style not in CAPTION_STYLES:
            raise ValueError(f"WorldConfig.caption_style must be one of {CAPTION_STYLES}; got {self.caption_style!r}")
        if not isinstance(self.domains, tuple) or not self.domains:
            raise ValueError(f"WorldConfig.domains must be a non-empty tuple of names from {DOMAINS}; got {self.domains!r}")
        unknown = [d for d in self.domains if d not in DOMAINS]
        if unknown:
            raise ValueError(f"WorldConfig.domains: unknown domain(s) {unknown}; choose from {DOMAINS}")
        if len(set(self.domains)) != len(self.domains):
            raise ValueError(f"WorldConfig.domains lists a domain twice: {self.domains}")
        if self.heldout_pairs is not None:
            if not isinstance(self.heldout_pairs, tuple):
                raise TypeError("WorldConfig.heldout_pairs must be a tuple of (color, shape) pairs or None")
            for pair in self.heldout_pairs:
                if not (isinstance(pair, tuple) and len(pair) == 2 and pair[0] in COLORS and pair[1] in SHAPES):
                    raise ValueError(
                        f"WorldConfig.heldout_pairs: {pair!r} is not a (color, shape) pair; colors are "
                        f"{COLORS}, shapes are {SHAPES}"
                    )
            held = self.heldout_matrix()
            if held.all(axis=1).any() or held.all(axis=0).any():
                raise ValueError("WorldConfig.heldout_pairs must leave every color and every shape at least one pair")
            if held.sum(axis=1).max() > 5 or held.sum(axis=0).max() > 5:
                raise ValueError("WorldConfig.heldout_pairs holds out more than 5 shapes of one color (or colors of one shape)")

    def heldout_matrix(self) -> np.ndarray:
        """[colors, shapes] bool: True for pairs that never appear in training images or captions."""
        if self.heldout_pairs is not None:
            held = np.zeros((len(COLORS), len(SHAPES)), dtype=bool)
            for c, s in self.heldout_pairs:
                held[COLORS.index(c), SHAPES.index(s)] = True
            return held
        return heldout_matrix(self.split_seed, self.holdout_per_color)

    # ------------------------------------------------------------------ dict round trip
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["domains"] = list(self.domains)
        d["heldout_pairs"] = None if self.heldout_pairs is None else [list(p) for p in self.heldout_pairs]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WorldConfig":
        if not isinstance(data, dict):
            raise TypeError(f"WorldConfig.from_dict expects a dict; got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown key(s) for WorldConfig: {unknown}; valid keys are {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "WorldConfig":
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"unknown key(s) for WorldConfig: {unknown}")
        return dataclasses.replace(self, **changes)


@dataclass
class BatchMeta:
    """What is in each image and what its caption says (numpy arrays, one row per sample)."""

    scenes: Scenes
    captions: CaptionInfo

    def describe(self, i: int) -> dict:
        out = self.scenes.describe(i)
        out["noisy"] = bool(self.captions.noisy[i])
        return out

    def __len__(self) -> int:
        return len(self.scenes)


class CaptionWorld:
    """Deterministic random access to (image, caption) pairs of one `WorldConfig`."""

    def __init__(self, config: WorldConfig | None = None, **overrides: Any):
        if config is None:
            config = WorldConfig(**overrides)
        elif overrides:
            config = config.replace(**overrides)
        if not isinstance(config, WorldConfig):
            raise TypeError(f"config must be a WorldConfig; got {type(config).__name__}")
        self.config = config
        self.heldout = config.heldout_matrix()  # [colors, shapes] bool
        self._domains = np.array([DOMAINS.index(d) for d in config.domains], dtype=np.int64)
        self._train_key = derive_key(config.seed, _TRAIN)
        mean = np.asarray(CLIP_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(CLIP_STD, dtype=np.float32).reshape(1, 3, 1, 1)
        self._mean, self._inv_std = mean, (1.0 / std).astype(np.float32)

    def __repr__(self) -> str:
        return f"CaptionWorld({self.config})"

    def __getstate__(self):  # DataLoader workers get a copy; render assets are rebuilt there from the cache
        return {"config": self.config}

    def __setstate__(self, state):
        self.__init__(state["config"])

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def heldout_pairs(self) -> tuple[tuple[str, str], ...]:
        """The held-out (color, shape) pairs, in color then shape order."""
        cs, ss = np.nonzero(self.heldout)
        return tuple((COLORS[c], SHAPES[s]) for c, s in zip(cs, ss))

    def is_heldout(self, color: str, shape: str) -> bool:
        return bool(self.heldout[COLORS.index(color), SHAPES.index(shape)])

    # ------------------------------------------------------------------ addressing
    @staticmethod
    def sample_ids(index: int, batch_size: int, *, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """Ids of the samples rank `rank` sees at step `index`: its slice of global batch `index`."""
        for name, v in (("index", index), ("batch_size", batch_size), ("rank", rank), ("world_size", world_size)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name} must be an int; got {type(v).__name__} {v!r}")
        if index < 0:
            raise ValueError(f"index must be >= 0; got {index}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size; got rank={rank}, world_size={world_size}")
        start = (int(index) * int(world_size) + int(rank)) * int(batch_size)
        return np.arange(start, start + batch_size, dtype=np.uint64)

    # ------------------------------------------------------------------ training data
    def batch(self, index: int, batch_size: int, *, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, list[str]]:
        """Images [B, 3, R, R] (CLIP-normalized float32) and B captions for step `index` on `rank`."""
        images, captions, _ = self.batch_with_meta(index, batch_size, rank=rank, world_size=world_size)
        return images, captions

    def batch_with_meta(
        self, index: int, batch_size: int, *, rank: int = 0, world_size: int = 1
    ) -> tuple[torch.Tensor, list[str], BatchMeta]:
        ids = self.sample_ids(index, batch_size, rank=rank, world_size=world_size)
        return self.samples_with_meta(ids)

    def samples(self, ids) -> tuple[torch.Tensor, list[str]]:
        """The training samples with these ids (any order, any subset of the stream)."""
        images, captions, _ = self.samples_with_meta(ids)
        return images, captions

    def samples_with_meta(self, ids, *, key: int | None = None, **forced: Any) -> tuple[torch.Tensor, list[str], BatchMeta]:
        rnd = SampleRandom(self._train_key if key is None else key, np.asarray(ids, dtype=np.uint64))
        scenes = self.sample_scenes(rnd, **forced)
        captions, info = write_captions(scenes, rnd, self.config, self.heldout)
        return self.draw(scenes, rnd), captions, BatchMeta(scenes, info)

    def captions(self, index: int, batch_size: int, *, rank: int = 0, world_size: int = 1) -> list[str]:
        """Only the captions of a batch (no pixels drawn): for tokenizers and text-only baselines."""
        return self.captions_with_meta(index, batch_size, rank=rank, world_size=world_size)[0]

    def captions_with_meta(
        self, index: int, batch_size: int, *, rank: int = 0, world_size: int = 1
    ) -> tuple[list[str], BatchMeta]:
        """The captions and scene metadata of a batch, without drawing it (same as `batch_with_meta`)."""
        ids = self.sample_ids(index, batch_size, rank=rank, world_size=world_size)
        rnd = SampleRandom(self._train_key, ids)
        scenes = self.sample_scenes(rnd)
        captions, info = write_captions(scenes, rnd, self.config, self.heldout)
        return captions, BatchMeta(scenes, info)

    def caption_corpus(self, n: int, *, start_index: int = 0) -> list[str]:
        """The captions of the first n training samples from step `start_index` on (batch size 1024)."""
        out: list[str] = []
        index = start_index
        while len(out) < n:
            out.extend(self.captions(index, 1024))
            index += 1
        return out[:n]

    # ------------------------------------------------------------------ building blocks
    def sample_scenes(self, rnd: SampleRandom, *, allow_heldout: bool = False, **forced: Any) -> Scenes:
        cfg = self.config
        p_single = 1.0 - cfg.count_rate - cfg.relation_rate
        return sample_scenes(
            rnd,
            kind_probs=(p_single, cfg.count_rate, cfg.relation_rate),
            domains=self._domains,
            max_count=cfg.max_objects,
            held=self.heldout,
            text_rate=cfg.text_rate,
            allow_heldout=allow_heldout,
            **forced,
        )

    def draw(self, scenes: Scenes, rnd: SampleRandom) -> torch.Tensor:
        """Render scenes and normalize: float32 [B, 3, R, R]."""
        pixels = render(scenes, rnd, render_assets(self.config.image_size, 0))  # [B, 3, R, R] in [0, 1]
        pixels -= self._mean
        pixels *= self._inv_std
        return torch.from_numpy(pixels)

    # ------------------------------------------------------------------ evaluation
    def task(self, name: str, *, domain: str = "flat", n: int = 1000, seed: int = 0):
        """A zero-shot task (see `clipmini.data.tasks.TASKS`): images, labels, class names, templates."""
        from .tasks import make_task

        return make_task(self, name, domain=domain, n=n, seed=seed)

    def word_order_pairs(self, n: int, *, domain: str = "flat", seed: int = 0, kind: str = "relation"):
        """Captions that differ only in word order, with the image the first one describes."""
        from .tasks import word_order_pairs

        return word_order_pairs(self, n, domain=domain, seed=seed, kind=kind)

    def stream(self, batch_size: int, *, start_index: int = 0, rank: int = 0, world_size: int = 1, **kw: Any) -> "CaptionWorldStream":
        return CaptionWorldStream(self, batch_size, start_index=start_index, rank=rank, world_size=world_size, **kw)

    def dataset(self, size: int, *, seed: int = 0) -> "CaptionWorldDataset":
        return CaptionWorldDataset(self, size, seed=seed)


class CaptionWorldStream(IterableDataset):
    """Batches `start_index, start_index + 1, ...` of one rank, as an IterableDataset.

    Use with `DataLoader(stream, batch_size=None, num_workers=k)`: worker w makes batches
    start_index + w, + w + k, ..., and the DataLoader returns them in order, so the sequence is the
    same for any number of workers. `collate(images, captions)` (e.g. tokenization) runs in the workers.
    """

    def __init__(
        self,
        world: CaptionWorld,
        batch_size: int,
        start_index: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_batches: int | None = None,
        collate: Callable[[torch.Tensor, list[str]], Any] | None = None,
    ):
        super().__init__()
        CaptionWorld.sample_ids(start_index, batch_size, rank=rank, world_size=world_size)  # validates
        if num_batches is not None and (not isinstance(num_batches, int) or num_batches < 0):
            raise ValueError(f"num_batches must be a non-negative int or None; got {num_batches!r}")
        self.world, self.batch_size, self.start_index = world, batch_size, start_index
        self.rank, self.world_size, self.num_batches, self.collate = rank, world_size, num_batches, collate

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an endless CaptionWorldStream has no length; pass num_batches")
        return self.num_batches

    def indices(self):
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        index = self.start_index + worker
        stop = None if self.num_batches is None else self.start_index + self.num_batches
        while stop is None or index < stop:
            yield index
            index += workers

    def __iter__(self):
        for index in self.indices():
            images, captions = self.world.batch(index, self.batch_size, rank=self.rank, world_size=self.world_size)
            yield (images, captions) if self.collate is None else self.collate(images, captions)


class CaptionWorldDataset(Dataset):
    """A fixed, map-style evaluation set of `size` pairs from the training distribution (disjoint ids).

    Items are (image [3, R, R], caption); `__getitems__` lets a DataLoader draw a whole batch at once.
    """

    def __init__(self, world: CaptionWorld, size: int, *, seed: int = 0):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int; got {size!r}")
        self.world, self.size, self.seed = world, size, seed
        self._key = derive_key(world.config.seed, _EVAL, seed)

    def __len__(self) -> int:
        return self.size

    def _ids(self, indices) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -self.size or idx.max() >= self.size):
            raise IndexError(f"index out of range for a dataset of {self.size}")
        return (idx % self.size).astype(np.uint64)

    def batch_with_meta(self, indices) -> tuple[torch.Tensor, list[str], BatchMeta]:
        return self.world.samples_with_meta(self._ids(indices), key=self._key)

    def __getitem__(self, i: int):
        images, captions, _ = self.batch_with_meta([i])
        return images[0], captions[0]

    def __getitems__(self, indices):
        images, captions, _ = self.batch_with_meta(indices)
        return list(zip(images, captions))
