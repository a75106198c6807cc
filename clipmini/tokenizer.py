"""CLIP's tokenizer: byte-level BPE with OpenAI's vocabulary (or one you train), same ids, faster.

The pipeline, in the order the chapter tells it:

1. clean: ``ftfy.fix_text``, HTML-unescape twice, strip, collapse whitespace, lowercase;
2. pre-tokenize: a regex cuts the text into special tokens, contractions, letter runs, single digits
   and punctuation runs;
3. map every UTF-8 byte of a pre-token to a printable character (so any text has a spelling);
4. mark the end of the word (``</w>`` on the last character) and apply the merges in rank order;
5. look the pieces up: ids 0-255 are the byte characters, 256-511 the same with ``</w>``, then one
   id per merge, then ``<|startoftext|>`` and ``<|endoftext|>`` (so EOT is the largest id).

What makes it faster than the reference: cleaning skips ``ftfy`` for plain printable ASCII (where it
provably changes nothing), every space-free chunk of cleaned text is encoded once and cached, and the
output tensor is filled in one vectorized step. And its work is bounded by the context: encoding stops
once the context is full, and a word too long for it is split by BPE (quadratic in the word's length)
only in a window that reaches past what the context keeps. Every text that fits gets OpenAI's ids; a
truncated one gets OpenAI's first ids too unless cutting a long word at the window's end would
change its pieces more than 128 bytes back (12 bytes at most, in our trials with OpenAI's merges).
"""

from __future__ import annotations

import gzip
import hashlib
import heapq
import http.client
import importlib.util
import itertools
import json
import os
import re
import sys
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import regex
import torch

from clipmini.fileio import atomic_write_bytes, atomic_write_text

__all__ = [
    "Tokenizer",
    "tokenize",
    "default_tokenizer",
    "clean_text",
    "find_openai_vocab",
    "user_cache_dir",
    "OPENAI_VOCAB_SHA256",
    "OPENAI_VOCAB_URL",
]

SOT_TEXT = "<|startoftext|>"
EOT_TEXT = "<|endoftext|>"
END_OF_WORD = "</w>"
DEFAULT_CONTEXT_LENGTH = 77  # every released CLIP model reads 77 positions

OPENAI_VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
OPENAI_VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
OPENAI_VOCAB_URL = "https://raw.githubusercontent.com/openai/CLIP/main/clip/" + OPENAI_VOCAB_FILENAME
OPENAI_NUM_MERGES = 49408 - 512 - 2  # 48,894: the file holds more lines; CLIP uses only these
VOCAB_ENV_VAR = "CLIPMINI_BPE_PATH"

FILE_FORMAT = "clipmini-bpe-tokenizer"  # the "format" field of files written by Tokenizer.save
FILE_VERSION = 1

# Pre-tokenizer, matched left to right in this order: the two special tokens, English contractions,
# a run of letters, ONE digit, a run of anything that is neither space, letter nor digit.
PRE_TOKEN_PATTERN = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)

# ftfy.fix_text and html.unescape leave a string alone when it is printable ASCII with tabs or
# newlines and no '&' (no entity, escape sequence, control character, CR or mojibake possible).
# tests/test_tokenizer_properties.py checks this claim against ftfy itself.
_NEEDS_FULL_CLEAN = re.compile(r"[^\t\n\x20-\x25\x27-\x7e]")


# ---------------------------------------------------------------------------------------------
# Bytes <-> printable characters
# ---------------------------------------------------------------------------------------------


def _byte_alphabet() -> list[tuple[int, str]]:
    """(byte, character) in vocabulary order: printable Latin-1 bytes stand for themselves, the
    other 68 bytes (controls, space, NBSP, soft hyphen) borrow U+0100..U+0143, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    borrowed = [b for b in range(256) if b not in set(printable)]
    return [(b, chr(b)) for b in printable] + [(b, chr(256 + k)) for k, b in enumerate(borrowed)]


BYTE_ALPHABET = _byte_alphabet()  # 256 (byte, char) pairs; position = token id
BYTE_TO_CHAR = {b: c for b, c in BYTE_ALPHABET}
CHAR_TO_BYTE = {c: b for b, c in BYTE_ALPHABET}
_BYTE_TO_CHAR_LIST = [BYTE_TO_CHAR[b] for b in range(256)]


def _to_byte_chars(piece: str) -> str:
    """Spell a pre-token with one alphabet character per UTF-8 byte."""
    table = _BYTE_TO_CHAR_LIST
    return "".join([table[b] for b in piece.encode("utf-8")])


# ---------------------------------------------------------------------------------------------
# Cleaning
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _fixers() -> tuple[Callable[[str], str], Callable[[str], str]]:
    """ftfy and html, imported on first need (ftfy alone costs ~0.1 s to import)."""
    import html

    import ftfy

    return ftfy.fix_text, html.unescape


def _clean_text_full(text: str) -> str:
    """The reference cleaning, step by step."""
    fix_text, unescape = _fixers()
    text = unescape(unescape(fix_text(text))).strip()
    return " ".join(text.split()).lower()


def _clean(text: str) -> str:
    if text.isascii() and _NEEDS_FULL_CLEAN.search(text) is None:
        return " ".join(text.split()).lower()  # the fast path: ftfy and unescape are no-ops here
    return _clean_text_full(text)


def clean_text(text: str) -> str:
    """Clean like OpenAI: ftfy, HTML-unescape twice, strip, one space per whitespace run, lowercase."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str; got {type(text).__name__} {_shorten(repr(text))}")
    return _clean(text)


# ---------------------------------------------------------------------------------------------
# Finding OpenAI's vocabulary file
# ---------------------------------------------------------------------------------------------


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/clipmini``, else ``~/.cache/clipmini``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clipmini"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _open_clip_vocab_path() -> Path | None:
    """The copy inside an installed open_clip package, found without importing open_clip."""
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(folder) / OPENAI_VOCAB_FILENAME
        if candidate.is_file():
            return candidate
    return None


def _download_bytes(url: str, timeout: float = 60.0) -> bytes:
    """Fetch ``url`` (tests replace this function; nothing else downloads)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _wrong_hash_message(path: Path, actual: str) -> str:
    return (
        f"{path} is not OpenAI's BPE vocabulary: its sha256 is {actual}, expected {OPENAI_VOCAB_SHA256} "
        f"({OPENAI_VOCAB_FILENAME}, 1,356,917 bytes)"
    )


def find_openai_vocab(path: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Locate (or fetch) ``bpe_simple_vocab_16e6.txt.gz`` and check its sha256.

    Looks, in order: ``path``; ``$CLIPMINI_BPE_PATH``; the copy inside an installed ``open_clip``;
    the user cache (see :func:`user_cache_dir`); a download from OpenAI's GitHub into that cache.
    A path given explicitly (argument or environment) must be the right file, else ``ValueError``.
    """
    for label, given in (("path argument", path), (VOCAB_ENV_VAR, os.environ.get(VOCAB_ENV_VAR) or None)):
        if given is None:
            continue
        given = Path(given).expanduser()
        if not given.is_file():
            raise FileNotFoundError(f"{label} points to {given}, which is not a file")
        actual = _sha256(given)
        if actual != OPENAI_VOCAB_SHA256:
            raise ValueError(f"{label}: " + _wrong_hash_message(given, actual))
        return given

    tried: list[str] = []
    packaged = _open_clip_vocab_path()
    if packaged is None:
        tried.append("open_clip package: not installed (or it has no vocabulary file)")
    else:
        actual = _sha256(packaged)
        if actual == OPENAI_VOCAB_SHA256:
            return packaged
        tried.append("open_clip package: " + _wrong_hash_message(packaged, actual))

    cached = user_cache_dir() / OPENAI_VOCAB_FILENAME
    if cached.is_file():
        actual = _sha256(cached)
        if actual == OPENAI_VOCAB_SHA256:
            return cached
        tried.append("user cache: " + _wrong_hash_message(cached, actual) + " (will re-download)")
    else:
        tried.append(f"user cache: no file at {cached}")

    if download:
        try:
            data = _download_bytes(OPENAI_VOCAB_URL)
        except (OSError, ValueError, http.client.HTTPException) as error:  # offline, HTTP errors, timeouts
            tried.append(f"download from {OPENAI_VOCAB_URL}: failed ({error})")
        else:
            actual = hashlib.sha256(data).hexdigest()
            if actual == OPENAI_VOCAB_SHA256:
                try:
                    atomic_write_bytes(cached, data)  # verified before it ever lands in the cache
                    return cached
                except OSError as error:
                    tried.append(f"download succeeded but could not be saved to {cached}: {error}")
            else:
                tried.append(
                    f"download from {OPENAI_VOCAB_URL}: got {len(data):,} bytes with sha256 {actual}, "
                    f"expected {OPENAI_VOCAB_SHA256}; nothing was written"
                )
    else:
        tried.append("download: disabled (download=False)")

    raise FileNotFoundError(
        f"could not find OpenAI's BPE vocabulary ({OPENAI_VOCAB_FILENAME}). Looked at:\n  - "
        + "\n  - ".join(tried)
        + f"\nFix: set {VOCAB_ENV_VAR}=/path/to/{OPENAI_VOCAB_FILENAME}, or `pip install open_clip_torch` "
        f"(it ships the file), or put the file in {cached.parent}."
    )


def _read_openai_merges(path: Path) -> list[tuple[str, str]]:
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n", OPENAI_NUM_MERGES + 1)
    body = lines[1 : 1 + OPENAI_NUM_MERGES]  # line 0 is a version header; later lines are unused
    symbols = "\n".join(body).split()  # one split for all lines: "a b" lines -> a, b, a, b, ...
    if len(body) != OPENAI_NUM_MERGES or len(symbols) != 2 * OPENAI_NUM_MERGES:
        raise ValueError(f"{path} does not hold {OPENAI_NUM_MERGES} merge lines of two symbols each")
    return list(zip(symbols[0::2], symbols[1::2]))


# ---------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------


def _check_context_length(context_length: Any) -> int:
    if isinstance(context_length, bool) or not isinstance(context_length, (int, np.integer)):
        raise TypeError(f"context_length must be an int >= 2; got {type(context_length).__name__} {context_length!r}")
    if context_length < 2:
        raise ValueError(f"context_length must be >= 2 (room for <|startoftext|> and <|endoftext|>); got {context_length}")
    return int(context_length)


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _as_text_list(texts: Any) -> list[str]:
    """A str or a list/tuple (or other iterable) of str -> list of str; anything else is a TypeError."""
    if isinstance(texts, str):
        return [texts]
    if texts is None or isinstance(texts, (bytes, bytearray, memoryview)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a str or a list of str; got {type(texts).__name__} {_shorten(repr(texts))}")
    if isinstance(texts, (Mapping, AbstractSet)):  # keys only, or no order: rows would not match the texts
        raise TypeError(
            f"texts must be a str or a list of str; got {type(texts).__name__} {_shorten(repr(texts))} "
            "(a mapping gives only its keys and a set has no order; pass a list)"
        )
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(
                f"texts[{index}] must be a str; got {type(text).__name__} {_shorten(repr(text))}"
                + (" (decode bytes first, e.g. .decode('utf-8'))" if isinstance(text, (bytes, bytearray)) else "")
            )
    return texts


class Tokenizer:
    """Byte-level BPE that reproduces OpenAI CLIP's token ids; also trainable on your own texts.

    ``Tokenizer.from_openai()`` gives OpenAI's 49,408-id vocabulary; ``Tokenizer.train(texts, n)``
    learns an ``n``-id one with the same layout. ``tokenizer(texts)`` -> ``LongTensor[B, 77]``.
    """

    def __init__(
        self,
        merges: Sequence[tuple[str, str]],
        *,
        name: str = "custom",
        merge_counts: Sequence[int] | None = None,
        cache_size: int = 100_000,  # cached chunks; OpenAI's cache is unbounded, the 80k ImageNet prompts use ~2k
    ):
        self.merges: list[tuple[str, str]] = [(a, b) for a, b in merges]  # in rank order; read-only
        self.merge_counts: list[int] | None = None if merge_counts is None else [int(c) for c in merge_counts]
        self.name = name
        self.cache_size = int(cache_size)

        byte_chars = [c for _, c in BYTE_ALPHABET]
        # id -> token string. Two merges may spell the same string ("ab"+"c", "a"+"bc"); the lookup
        # below then keeps the LAST id, as OpenAI's dict(zip(vocab, ids)) would.
        self._vocab: list[str] = byte_chars + [c + END_OF_WORD for c in byte_chars]
        self._vocab += [a + b for a, b in self.merges] + [SOT_TEXT, EOT_TEXT]
        self._encoder: dict[str, int] = {token: i for i, token in enumerate(self._vocab)}
        self._ranks: dict[tuple[str, str], int] = {pair: rank for rank, pair in enumerate(self.merges)}
        self.sot_token_id = len(self._vocab) - 2
        self.eot_token_id = len(self._vocab) - 1
        self._specials = {SOT_TEXT: self.sot_token_id, EOT_TEXT: self.eot_token_id}
        self._cache: dict[str, tuple[int, ...]] = {}  # space-free chunk of cleaned text -> ids
        self._id_bytes: list[bytes] | None = None  # built on first decode
        # Bytes in the longest token (OpenAI: 32): a word of more bytes than n such tokens hold
        # makes more than n ids, and overflows a context with room for n.
        self._longest_token = max(len(t.removesuffix(END_OF_WORD)) for t in self._vocab[: self.sot_token_id])
        # Bytes that BPE sees beyond the kept pieces of an overflowing word (see `_bpe_first`).
        self._window_margin = 4 * self._longest_token

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_openai(cls, path: str | os.PathLike | None = None, *, download: bool = True) -> "Tokenizer":
        """OpenAI's vocabulary; see :func:`find_openai_vocab` for where the file is looked for."""
        return cls(_read_openai_merges(find_openai_vocab(path, download=download)), name="openai")

    @property
    def vocab_size(self) -> int:
        """Number of ids (OpenAI: 49,408); the largest id is ``eot_token_id``."""
        return len(self._vocab)

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary string of one id (byte characters, maybe ending in ``</w>``)."""
        return self._vocab[self._check_id(token_id, 0)]

    def token_to_id(self, token: str) -> int:
        if token not in self._encoder:
            raise KeyError(f"{token!r} is not in this vocabulary of {self.vocab_size} ids")
        return self._encoder[token]

    # -- encoding ----------------------------------------------------------------------------

    def pre_tokenize(self, text: str) -> list[str]:
        """The cleaned text cut into the pieces that BPE then splits (no spaces in any piece)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str; got {type(text).__name__} {_shorten(repr(text))}")
        return PRE_TOKEN_PATTERN.findall(_clean(text))

    def _bpe(self, word: str) -> list[str]:
        """Split one byte-spelled pre-token into vocabulary pieces by applying merges in rank order."""
        symbols = list(word[:-1]) + [word[-1] + END_OF_WORD]
        ranks = self._ranks
        while len(symbols) > 1:
            best_rank, best = None, None
            for pair in zip(symbols, symbols[1:]):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best = rank, pair
            if best is None:
                break
            first, second = best
            merged, out, i, n = first + second, [], 0, len(symbols)
            while i < n:  # merge every occurrence, left to right, without overlaps
                if i + 1 < n and symbols[i] == first and symbols[i + 1] == second:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            symbols = out
        return symbols

    def _bpe_first(self, piece: str, n: int) -> tuple[list[str], bool]:
        """BPE of a pre-token when only its first `n` pieces can be kept. A word that may fit in `n`
        pieces is split whole, exactly: `(pieces, True)`. A longer one cannot fit; BPE splits only a
        window of it, doubled until it reaches `_window_margin` bytes past the first `n` pieces:
        `(those n pieces, False)`."""
        room = n * self._longest_token  # bytes that n pieces hold at the most
        word = _to_byte_chars(piece[: room + self._window_margin])  # >= 1 byte per character
        if len(word) <= n or len(word) <= room and self._fewest_pieces(word) <= n:
            return self._bpe(word), True  # it may fit: the whole word, exactly as OpenAI's BPE splits it
        word = word[: room + self._window_margin]
        window = min(len(word), 4 * n + self._window_margin)
        while True:
            pieces = self._bpe(word[:window])
            kept = sum(len(p.removesuffix(END_OF_WORD)) for p in pieces[:n])  # bytes of the first n
            if kept + self._window_margin <= window or window == len(word):
                return pieces[:n], False
            window = min(len(word), 2 * window)

    def _fewest_pieces(self, word: str) -> int:
        """The fewest vocabulary pieces that spell `word` (the last with `</w>`): BPE makes no fewer."""
        longest, vocab, n = self._longest_token, self._encoder, len(word)
        fewest = [0] + [n] * n  # fewest[j]: pieces that spell word[:j]; every byte is a piece
        for j in range(1, n + 1):
            for i in range(max(0, j - longest), j):
                if fewest[i] + 1 < fewest[j] and (word[i:j] if j < n else word[i:] + END_OF_WORD) in vocab:
                    fewest[j] = fewest[i] + 1
        return fewest[n]

    def _encode_chunk(self, chunk: str, need: int) -> tuple[int, ...]:
        """Ids of one space-free chunk of cleaned text, cached. Once it has `need` ids it may stop, and
        return (uncached) a prefix of the chunk's ids that holds them."""
        ids: list[int] = []
        words = PRE_TOKEN_PATTERN.findall(chunk)
        for k, word in enumerate(words):
            special = self._specials.get(word)
            if special is not None:
                ids.append(special)
            else:
                pieces, whole = self._bpe_first(word, need - len(ids))
                ids.extend(self._encoder[s] for s in pieces)
                if not whole:
                    return tuple(ids)  # the context is full inside this word
            if len(ids) >= need and k + 1 < len(words):
                return tuple(ids)  # the context is full before the chunk's end
        result = tuple(ids)
        cache = self._cache
        if len(cache) >= self.cache_size:  # evict the older half (dicts keep insertion order)
            try:
                for key in list(itertools.islice(cache, max(1, len(cache) // 2))):
                    cache.pop(key, None)
            except RuntimeError:  # another thread resized the dict meanwhile
                cache.clear()
        cache[chunk] = result
        return result

    def _encode_cleaned(self, cleaned: str, limit: int | None = None) -> list[int]:
        """The ids of cleaned text; with `limit`, its first `limit` ids, for work that grows with
        `limit`, not with the text."""
        stop = sys.maxsize if limit is None else limit
        # Pre-tokens never contain a space, so each space-free chunk encodes independently.
        cache, ids = self._cache, []
        for chunk in cleaned.split(" "):
            try:
                ids += cache[chunk]
            except KeyError:
                ids += self._encode_chunk(chunk, stop - len(ids))
            if len(ids) >= stop:
                return ids[:stop]
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without ``<|startoftext|>``/``<|endoftext|>``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str; got {type(text).__name__} {_shorten(repr(text))}")
        return self._encode_cleaned(_clean(text))

    def __call__(
        self, texts: str | Sequence[str], context_length: int = DEFAULT_CONTEXT_LENGTH, truncate: bool = False
    ) -> torch.Tensor:
        """``[B, context_length]`` int64 ids: SOT, text, EOT, zero padding.

        A text longer than ``context_length`` raises ``ValueError`` unless ``truncate=True``, which
        keeps the first ``context_length`` ids and makes the last one EOT (OpenAI's semantics). The
        work grows with ``context_length``, not with the text (see the module's docstring).
        """
        texts = _as_text_list(texts)
        context_length = _check_context_length(context_length)
        if not isinstance(truncate, (bool, np.bool_)):  # a string such as "false" would be truthy
            raise TypeError(f"truncate must be True or False; got {type(truncate).__name__} {truncate!r}")
        sot, eot, keep = self.sot_token_id, self.eot_token_id, context_length - 2
        encode_cleaned = self._encode_cleaned
        flat: list[int] = []
        lengths: list[int] = []
        for index, text in enumerate(texts):
            ids = encode_cleaned(_clean(text), keep + 1)  # one more than fits tells a text too long
            if len(ids) > keep:
                if not truncate:
                    raise ValueError(
                        f"texts[{index}] is too long: it makes more than context_length={context_length} "
                        f"tokens (with <|startoftext|> and <|endoftext|>): {_shorten(text)!r}; "
                        "pass truncate=True to keep the first tokens"
                    )
                ids = ids[:keep]
            flat.append(sot)
            flat.extend(ids)
            flat.append(eot)
            lengths.append(len(ids) + 2)
        tokens = np.zeros((len(texts), context_length), dtype=np.int64)  # [B, L]
        if texts:
            filled = np.arange(context_length) < np.asarray(lengths)[:, None]  # [B, L] bool
            tokens[filled] = np.asarray(flat, dtype=np.int64)  # boolean assignment fills row by row
        return torch.from_numpy(tokens)

    # -- decoding ----------------------------------------------------------------------------

    def _check_id(self, token_id: Any, position: int) -> int:
        if isinstance(token_id, bool) or not isinstance(token_id, (int, np.integer)):
            raise TypeError(f"ids[{position}] must be an int; got {type(token_id).__name__} {token_id!r}")
        if not 0 <= token_id < len(self._vocab):
            raise ValueError(f"ids[{position}] = {token_id} is outside this vocabulary (0..{len(self._vocab) - 1})")
        return int(token_id)

    def decode(self, ids: Iterable[int] | torch.Tensor | np.ndarray) -> str:
        """Text of ``ids``: bytes restored (invalid UTF-8 replaced), each ``</w>`` becomes a space."""
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            if ids.ndim != 1:
                raise ValueError(f"decode takes one sequence of ids (1-D); got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        if self._id_bytes is None:
            self._id_bytes = [self._token_bytes(token) for token in self._vocab]
        id_bytes, n = self._id_bytes, len(self._id_bytes)
        pieces = []
        for position, token_id in enumerate(ids):
            if type(token_id) is not int or not 0 <= token_id < n:
                token_id = self._check_id(token_id, position)
            pieces.append(id_bytes[token_id])
        return b"".join(pieces).decode("utf-8", errors="replace")

    @staticmethod
    def _token_bytes(token: str) -> bytes:
        if token in (SOT_TEXT, EOT_TEXT):
            return token.encode("ascii")
        if token.endswith(END_OF_WORD):
            return bytes(CHAR_TO_BYTE[c] for c in token[: -len(END_OF_WORD)]) + b" "
        return bytes(CHAR_TO_BYTE[c] for c in token)

    # -- training ----------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        *,
        min_frequency: int = 2,  # a pair seen once is memorising one word, not learning a piece
        cache_size: int = 100_000,
        allow_smaller: bool = False,  # True: stop early when the texts support fewer merges
    ) -> "Tokenizer":
        """Learn ``vocab_size - 514`` merges on ``texts`` (cleaned and pre-tokenized like OpenAI's).

        Each step merges the most frequent adjacent pair (ties: the alphabetically first), counted
        over a word-frequency table and updated incrementally. ``.merges`` and ``.merge_counts``
        keep the history in order. A small corpus may support fewer merges than asked: that raises,
        unless ``allow_smaller`` takes every merge it supports (``.vocab_size`` is then smaller; a model
        with a larger vocabulary simply never sees its extra ids).
        """
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
            raise TypeError(f"vocab_size must be an int; got {type(vocab_size).__name__} {vocab_size!r}")
        if vocab_size < 514:
            raise ValueError(
                f"vocab_size must be >= 514 (256 bytes + 256 bytes with </w> + 2 special tokens); got {vocab_size}"
            )
        if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
            raise ValueError(f"min_frequency must be an int >= 1; got {min_frequency!r}")
        if isinstance(texts, (str, bytes)):
            raise TypeError("texts must be an iterable of str (a list of captions), not a single string")

        piece_counts: Counter[str] = Counter()
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{index}] must be a str; got {type(text).__name__} {_shorten(repr(text))}")
            piece_counts.update(PRE_TOKEN_PATTERN.findall(_clean(text)))
        word_counts = Counter(
            {_to_byte_chars(piece): count for piece, count in piece_counts.items() if piece not in (SOT_TEXT, EOT_TEXT)}
        )

        merges, counts = _learn_merges(word_counts, vocab_size - 514, min_frequency, allow_smaller=allow_smaller)
        return cls(merges, name="trained", merge_counts=counts, cache_size=cache_size)

    # -- files ------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the merges (and counts, if trained) as small JSON, atomically."""
        payload = {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "name": self.name,
            "vocab_size": self.vocab_size,
            "special_tokens": [SOT_TEXT, EOT_TEXT],
            "merges": [f"{a} {b}" for a, b in self.merges],
            "merge_counts": self.merge_counts,
        }
        path = Path(path)
        atomic_write_text(path, json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Read a file written by :meth:`save`; anything else raises ``ValueError`` naming the problem."""
        path = Path(path)
        what = f"{path} is not a clipmini tokenizer file"
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as error:
            raise ValueError(f"{what}: not UTF-8 text ({error})") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{what}: invalid JSON ({error})") from None
        if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise ValueError(f"{what}: expected \"format\": \"{FILE_FORMAT}\", found {found!r}")
        if payload.get("version") != FILE_VERSION:
            raise ValueError(f"{what}: unsupported version {payload.get('version')!r} (this code reads {FILE_VERSION})")
        raw = payload.get("merges")
        if not isinstance(raw, list):
            raise ValueError(f"{what}: \"merges\" must be a list of \"a b\" strings")
        known = {c for _, c in BYTE_ALPHABET} | {c + END_OF_WORD for _, c in BYTE_ALPHABET}
        merges: list[tuple[str, str]] = []
        for rank, line in enumerate(raw):
            parts = line.split(" ") if isinstance(line, str) else None
            if parts is None or len(parts) != 2 or parts[0] not in known or parts[1] not in known:
                raise ValueError(f"{what}: merge {rank} ({line!r}) is not two known symbols separated by a space")
            merges.append((parts[0], parts[1]))
            known.add(parts[0] + parts[1])
        if payload.get("vocab_size") != 514 + len(merges):
            raise ValueError(
                f"{what}: vocab_size {payload.get('vocab_size')!r} does not match {len(merges)} merges "
                f"(expected {514 + len(merges)})"
            )
        counts = payload.get("merge_counts")
        if counts is not None and (
            not isinstance(counts, list) or len(counts) != len(merges) or not all(isinstance(c, int) for c in counts)
        ):
            raise ValueError(f"{what}: \"merge_counts\" must be null or one int per merge")
        return cls(merges, name=str(payload.get("name", "custom")), merge_counts=counts)

    # -- odds and ends -----------------------------------------------------------------------

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()  # DataLoader workers pickle us: leave the caches behind
        state["_cache"], state["_id_bytes"] = {}, None
        return state

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size}, merges={len(self.merges)})"


def _learn_merges(
    word_counts: Counter[str], num_merges: int, min_frequency: int, *, allow_smaller: bool = False
) -> tuple[list[tuple[str, str]], list[int]]:
    """BPE on a word-frequency table. Pair counts and the words holding each pair are updated
    incrementally; a max-heap with lazy deletion finds the next pair."""
    words = [list(w[:-1]) + [w[-1] + END_OF_WORD] for w in word_counts]  # symbols per distinct word
    freqs = list(word_counts.values())
    pair_counts: dict[tuple[str, str], int] = Counter()
    holders: dict[tuple[str, str], set[int]] = {}
    for index, (symbols, freq) in enumerate(zip(words, freqs)):
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += freq
            holders.setdefault(pair, set()).add(index)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[str, str]] = []
    counts: list[int] = []
    while len(merges) < num_merges:
        # Every live pair has a heap entry >= its count; stale entries are refreshed on the way.
        while heap:
            negative, pair = heapq.heappop(heap)
            current = pair_counts.get(pair, 0)
            if current == -negative:
                break
            if current > 0:
                heapq.heappush(heap, (-current, pair))
        else:
            current = 0
        if current < min_frequency:
            if allow_smaller:
                break
            raise ValueError(
                f"the texts support only {len(merges)} merges with min_frequency={min_frequency} "
                f"(vocab_size {514 + len(merges)}), not the {num_merges} needed for vocab_size {514 + num_merges}; "
                "give more text, a smaller vocab_size or a lower min_frequency"
            )
        merges.append(pair)
        counts.append(current)
        first, second = pair
        merged = first + second
        changed: set[tuple[str, str]] = set()
        for index in holders.pop(pair, ()):
            symbols, freq = words[index], freqs[index]
            n = len(symbols)
            out, i = [], 0
            while i < n:
                if i + 1 < n and symbols[i] == first and symbols[i + 1] == second:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            if len(out) == n:
                continue  # a stale holder: the pair left this word in an earlier merge
            for old in zip(symbols, symbols[1:]):
                pair_counts[old] -= freq
                changed.add(old)
            for new in zip(out, out[1:]):
                pair_counts[new] += freq
                changed.add(new)
                holders.setdefault(new, set()).add(index)
            words[index] = out
        pair_counts.pop(pair, None)
        for other in changed:
            count = pair_counts.get(other, 0)
            if count > 0:
                heapq.heappush(heap, (-count, other))
            elif other in pair_counts:
                del pair_counts[other]
    return merges, counts


@lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    """OpenAI's tokenizer, built once per process on first use."""
    return Tokenizer.from_openai()


def tokenize(
    texts: str | Sequence[str], context_length: int = DEFAULT_CONTEXT_LENGTH, truncate: bool = False
) -> torch.Tensor:
    """``[B, context_length]`` token ids with OpenAI's vocabulary (see :meth:`Tokenizer.__call__`)."""
    return default_tokenizer()(texts, context_length=context_length, truncate=truncate)
