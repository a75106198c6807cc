"""Counter-based randomness: every random number is a pure function of (key, sample id, stream).

A generator that is *advanced* (numpy's `Generator`) ties sample i to the samples drawn before it. Here
each sample hashes its own 64-bit id instead, so sample 1,000,003 costs the same as sample 0, a batch
split across 4 ranks holds exactly the samples of the one big batch, and a resumed run sees the very
same data. The hash is SplitMix64's finalizer, vectorized with numpy's wrapping uint64 arithmetic.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


def mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer: a bijective, well-scrambling map of uint64 arrays."""
    z = (z ^ (z >> _S30)) * _MUL1
    z = (z ^ (z >> _S27)) * _MUL2
    return z ^ (z >> _S31)


_MASK64 = (1 << 64) - 1


@functools.lru_cache(maxsize=65536)
def _salt(key: int, stream: int) -> int:
    """mix64(stream * golden + key), in Python integers (cached: streams repeat every batch)."""
    z = (stream * 0x9E3779B97F4A7C15 + key) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def derive_key(*parts: int) -> int:
    """A 64-bit key from a few non-negative integers (e.g. a data seed and a namespace code)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)
    return int(state[0])


class SampleRandom:
    """Independent uniform streams for a vector of sample ids under one key.

    `rand(stream)` gives one float64 in [0, 1) per sample; the same (key, id, stream) always gives the
    same number, whatever other ids share the call.
    """

    def __init__(self, key: int, ids: np.ndarray):
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"sample ids must be a 1-D array; got shape {ids.shape}")
        if ids.size and (ids.min() < 0 if ids.dtype.kind == "i" else False):
            raise ValueError("sample ids must be non-negative")
        self.key = np.uint64(key)
        self.ids = ids.astype(np.uint64)
        self._base = mix64(self.ids ^ self.key)  # [B]

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def bits(self, stream: int) -> np.ndarray:
        return mix64(self._base ^ np.uint64(_salt(int(self.key), stream)))  # [B] uint64

    def rand(self, stream: int) -> np.ndarray:
        """Uniform float64 in [0, 1), one per sample."""
        return (self.bits(stream) >> _S11).astype(np.float64) * (1.0 / 9007199254740992.0)  # [B]

    def rand_many(self, streams) -> np.ndarray:
        """[B, len(streams)] uniforms, column j equal to `rand(streams[j])`, in one vectorized pass."""
        salts = np.array([_salt(int(self.key), s) for s in streams], dtype=np.uint64)
        bits = mix64(self._base[:, None] ^ salts[None, :])  # [B, S]
        return (bits >> _S11).astype(np.float64) * (1.0 / 9007199254740992.0)

    def integers(self, stream: int, high) -> np.ndarray:
        """Uniform integers in [0, high); `high` may be a scalar or one bound per sample."""
        high = np.asarray(high)
        return np.minimum((self.rand(stream) * high).astype(np.int64), high - 1)  # [B]

    def bernoulli(self, stream: int, p) -> np.ndarray:
        return self.rand(stream) < p  # [B] bool

    def choice(self, stream: int, probs: np.ndarray) -> np.ndarray:
        """Index drawn from a categorical distribution (same `probs` for every sample)."""
        cdf = np.cumsum(np.asarray(probs, dtype=np.float64))
        cdf = cdf / cdf[-1]
        return np.minimum(np.searchsorted(cdf, self.rand(stream), side="right"), len(cdf) - 1)

    def subset(self, mask: np.ndarray) -> "SampleRandom":
        """The same streams restricted to the samples where `mask` is true."""
        out = SampleRandom.__new__(SampleRandom)
        out.key, out.ids, out._base = self.key, self.ids[mask], self._base[mask]
        return out


@functools.lru_cache(maxsize=4096)
def _name_code(name: str) -> int:
    return zlib.crc32(name.encode("utf-8")) << 12


def stream(name: str, k: int = 0) -> int:
    """A stable stream number for a named random quantity (k: slot or retry index)."""
    return _name_code(name) + int(k)
