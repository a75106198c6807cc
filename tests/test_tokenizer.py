"""clipmini's tokenizer against OpenAI's ids (open_clip 3.3.0 as oracle), its vocabulary search, and its trainer."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import random
import string
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch

import clipmini.tokenizer as tokmod
from clipmini.tokenizer import Tokenizer, clean_text, tokenize

open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")  # the oracle; a test dependency

SOT, EOT = 49406, 49407
LONGEST_TOKEN = 32  # bytes in OpenAI's longest token (checked in test_layout_of_openai_vocabulary)


def most_bpe_bytes(context_length: int) -> int:
    """The longest word BPE may see when truncating: what context_length - 1 of the longest tokens
    hold (one id more than fits tells a text too long), plus a margin of 4 such tokens."""
    return (context_length - 1 + 4) * LONGEST_TOKEN

# Checked against OpenAI's reference; written out here so that a wrong oracle cannot hide a bug.
GOLDEN = {
    "a photo of a cat": [SOT, 320, 1125, 539, 320, 2368, EOT],
    "A Photo of a TREE!": [SOT, 320, 1125, 539, 320, 2677, 256, EOT],
    "3.14": [SOT, 274, 269, 272, 275, EOT],
    "Hello &amp;amp; goodbye": [SOT, 3306, 261, 6968, EOT],
    "cafÃ©": [SOT, 15304, EOT],  # mojibake of "café": ftfy repairs it first
    "café": [SOT, 15304, EOT],
}

CORPUS = [
    # prompts
    "a photo of a cat.",
    "a bad photo of a goldfish.",
    "a photo of many great white sharks.",
    "a sculpture of a jack-o'-lantern.",
    "itap of the African bush elephant.",
    "a low resolution photo of the Komodo dragon.",
    # scripts
    "一只猫的照片",
    "猫の写真です。カタカナ ひらがな",
    "고양이 사진",
    "صورة قطة جميلة",
    "बिल्ली की तस्वीर",
    "фотография кошки, Москва",
    "φωτογραφία μιας γάτας",
    "תמונה של חתול",
    "รูปแมวน่ารัก",
    "İstanbul ǅungla Straße ΣΊΣΥΦΟΣ",
    # mojibake and HTML entities, double escaped
    "cafÃ© Ã¼ber naÃ¯ve",
    "â€œquotedâ€\x9d and donâ€™t",
    "Tom &amp;amp; Jerry &amp;lt;b&amp;gt;bold&amp;lt;/b&amp;gt;",
    "&quot;hi&quot; &#39;there&#39; &nbsp;x&nbsp; &#x1F600; &copy; 2024",
    "&amp;#8220;curly&amp;#8221; &lt;&gt;",
    # emoji: plain, ZWJ families, flags, skin tones, keycaps
    "I ❤️ my 🐱 and 🐶!!",
    "👩‍👩‍👧‍👦 family 👨🏽‍💻 coder",
    "flags 🇫🇷🇯🇵🇺🇸 🏴󠁧󠁢󠁳󠁣󠁴󠁿",
    "👍🏽 1️⃣ #️⃣",
    # digits and numbers of other kinds
    "2024-01-01 12:30:45 3.14159 1,000,000",
    "١٢٣ ४५६ ½ ² Ⅻ ①",
    # contractions
    "it's don't we're they've I'm we'll he'd IT'S WE'LL",
    "rock'n'roll ’s ‘quoted’ 'single'",
    # odd whitespace
    "a\tb\tc",
    "non\u00a0breaking\u00a0space",
    "line one\nline two\r\nline three\rfour",
    "   leading and trailing   ",
    "ideographic\u3000space em\u2003space thin\u2009space",
    "\u2028line separator\u2029paragraph",
    # control and invisible characters
    "\x00nul\x07bell\x08back",
    "\x1b[31mred\x1b[0m text",
    "zero\u200bwidth\u200cnon\u200djoiner",
    "\ufeffbom at start",
    "soft\u00adhyphen",
    # width, ligatures, combining marks
    "ＦＵＬＬＷＩＤＴＨ １２３",
    "ﬁnance ﬂow",
    "e\u0301 n\u0303 a\u0308",
    # punctuation runs and code-like text
    "!!! ??? ... --- ___ *** ///",
    "x = f(a, b) -> {'k': [1, 2]}; // comment",
    "https://example.com/a?b=c&d=e#frag",
    "a</w>b",
    # empty and blank
    "",
    " ",
    "\n\t ",
]

OVER_LONG = [
    "a photo of " * 40,
    "x" * 400,  # one 400-letter word: a long BPE
    "1" * 120,  # digits are single tokens
    "🐱" * 100,
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return tokmod.default_tokenizer()


@pytest.fixture(scope="module")
def ref():
    return open_clip_tokenizer._tokenizer


def test_corpus_has_no_special_token_literals():
    # open_clip renamed the special tokens; texts that spell them are tested separately below.
    for text in CORPUS + OVER_LONG:
        assert "<|" not in text and "_of_text>" not in text


# ---------------------------------------------------------------------------------------------
# Parity with OpenAI's ids
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", list(GOLDEN))
def test_golden_ids(text):
    ids = GOLDEN[text]
    out = tokenize(text)
    assert out.shape == (1, 77) and out.dtype == torch.int64
    assert out[0, : len(ids)].tolist() == ids
    assert out[0, len(ids) :].eq(0).all()


def test_layout_of_openai_vocabulary(tok):
    assert tok.vocab_size == 49408
    assert (tok.sot_token_id, tok.eot_token_id) == (SOT, EOT)
    assert tok.id_to_token(SOT) == "<|startoftext|>" and tok.id_to_token(EOT) == "<|endoftext|>"
    assert tok.id_to_token(0) == "!" and tok.id_to_token(256) == "!</w>"
    assert tok.id_to_token(64) == "a" and tok.id_to_token(320) == "a</w>"
    assert tok.id_to_token(188) == "\u0100" and tok.id_to_token(188 + 32) == "\u0120"  # byte 0, byte 32 (space)
    assert len(tok.merges) == 48894
    assert tok.id_to_token(512) == "".join(tok.merges[0])
    assert max(len(tok.id_to_token(i).removesuffix("</w>")) for i in range(SOT)) == LONGEST_TOKEN


@pytest.mark.parametrize("text", CORPUS + OVER_LONG)
def test_encode_matches_open_clip(tok, ref, text):
    assert tok.encode(text) == ref.encode(text)


def test_batch_matches_open_clip_tokenize(tok):
    texts = CORPUS + OVER_LONG + list(GOLDEN)
    ours = tok(texts, truncate=True)
    theirs = open_clip_tokenizer.tokenize(texts)
    assert ours.shape == (len(texts), 77) and ours.dtype == torch.int64
    assert torch.equal(ours, theirs)
    for context_length in (2, 5, 16, 100):
        assert torch.equal(
            tok(texts, context_length=context_length, truncate=True),
            open_clip_tokenizer.tokenize(texts, context_length=context_length),
        )


def test_imagenet_prompts_match_open_clip(tok):
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    prompts = [template(name) for name in IMAGENET_CLASSNAMES[::10] for template in OPENAI_IMAGENET_TEMPLATES]
    assert torch.equal(tok(prompts), open_clip_tokenizer.tokenize(prompts))


def test_over_long_text_raises_unless_truncated(tok):
    text = OVER_LONG[0]
    too_long = r"texts\[1\] is too long: it makes more than context_length=77 tokens .*a photo"
    with pytest.raises(ValueError, match=too_long):
        tok(["short", text])
    with pytest.raises(ValueError, match="truncate=True"):
        tokenize(text)
    out = tok(["short", text], truncate=True)
    assert out[1, 0] == SOT and out[1, -1] == EOT
    assert out[1, 1:-1].tolist() == tok.encode(text)[:75]
    # exactly full fits without truncation
    fits = tok.decode(tok.encode(text)[:75])
    assert len(tok.encode(fits)) == 75
    assert tok(fits)[0, -1] == EOT


def test_empty_inputs(tok):
    assert tok("")[0, :3].tolist() == [SOT, EOT, 0]
    assert tok.encode("") == [] and tok.encode(" \n\t") == []
    assert tok([]).shape == (0, 77)
    assert tok(("a", "b")).shape == (2, 77)  # a tuple is a list of texts


def test_special_token_literals_follow_openai(tok, ref):
    # OpenAI's tokenizer turns a literal "<|endoftext|>" into the special id; open_clip renamed its
    # specials to "<start_of_text>"/"<end_of_text>", so the two differ on exactly these strings.
    assert tok.encode("<|startoftext|>hi<|endoftext|>") == [SOT, 1883, EOT]
    assert tok.encode("<|EndOfText|>") == [EOT]  # cleaning lowercases first
    assert tok.encode("<end_of_text>") == tok.encode("< end _ of _ text >")
    assert ref.encode("<end_of_text>") == [EOT]


# ---------------------------------------------------------------------------------------------
# Decoding and round trips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", CORPUS)
def test_round_trip(tok, ref, text):
    ids = tok.encode(text)
    decoded = tok.decode(ids)
    pieces = tok.pre_tokenize(text)
    # every pre-token comes back followed by one space (its </w>); nothing else is lost
    assert decoded == "".join(piece + " " for piece in pieces)
    assert "".join(pieces) == clean_text(text).replace(" ", "")
    assert decoded == ref.decode(ids)  # OpenAI's decode agrees


def test_round_trip_of_plain_words_is_cleaned_text_plus_space(tok):
    for text in ["a photo of a cat", "  Many   WORDS\there ", "Ünïcödé wörds", "一只猫"]:
        assert tok.decode(tok.encode(text)) == clean_text(text) + " "


def test_clean_text_steps():
    assert clean_text("  Tom &amp;amp; JERRY\t\n ") == "tom & jerry"
    assert clean_text("cafÃ©") == "café"
    assert clean_text("a\u00a0\u3000b") == "a b"
    assert clean_text("") == ""
    with pytest.raises(TypeError, match="text must be a str; got NoneType"):
        clean_text(None)


def test_decode_accepts_tensors_and_shows_specials(tok):
    row = tok("a cat")[0]
    assert tok.decode(row[:4]) == "<|startoftext|>a cat <|endoftext|>"
    assert tok.decode(row[:4].numpy()) == tok.decode(row[:4].tolist())
    assert tok.decode([]) == ""


def test_decode_replaces_broken_utf8(tok):
    ids = tok.encode("猫")
    assert len(ids) > 1  # a CJK character is several byte tokens
    assert tok.decode(ids[:1]) == "\ufffd"  # a lone lead byte
    assert tok.decode(ids[1:]) == "\ufffd\ufffd "  # two lone continuation bytes, then the </w> space
    assert tok.decode(ids) == "猫 "


def test_chunk_cache_is_bounded_and_transparent(tok):
    small = Tokenizer(tok.merges, cache_size=8)
    texts = [f"word{i} photo{i % 3}" for i in range(50)]
    assert torch.equal(small(texts), tok(texts))
    assert len(small._cache) <= 8


def test_pickle_round_trip_drops_cache(tok):
    small = Tokenizer(tok.merges[:1000])
    small.encode("warm the cache up")
    clone = pickle.loads(pickle.dumps(small))
    assert clone.merges == small.merges and clone._cache == {}
    assert clone.encode("warm the cache up") == small.encode("warm the cache up")


# ---------------------------------------------------------------------------------------------
# Long texts: work bounded by the context, not the text
# ---------------------------------------------------------------------------------------------


def test_truncating_a_long_word_does_work_bounded_by_the_context(tok, ref, bpe_inputs):
    rng = random.Random(0)
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(64_000))
    outputs, work = {}, {}
    for n in (16_000, 64_000):
        fresh = Tokenizer(tok.merges)  # an empty cache: every word goes through BPE
        with bpe_inputs(fresh, most_bpe_bytes(77)) as sizes:
            outputs[n] = fresh(word[:n], truncate=True)
            with pytest.raises(ValueError, match="too long"):
                fresh(word[:n])
        work[n] = sizes
    assert work[16_000] == work[64_000]  # the same words handed to BPE: the same work at 4x the text
    assert torch.equal(outputs[16_000], outputs[64_000])
    # OpenAI's ids (open_clip, slow on long words, runs on 3,000 letters: more than 75 tokens hold)
    assert torch.equal(outputs[16_000], open_clip_tokenizer.tokenize([word[:3000]]))
    # a word cut to fit the context is not cached as the whole word
    small = Tokenizer(tok.merges)
    assert torch.equal(small(word[:600], context_length=10, truncate=True),
                       open_clip_tokenizer.tokenize([word[:600]], context_length=10))
    assert small.encode(word[:600]) == ref.encode(word[:600])


def test_truncating_a_long_text_stops_when_the_context_is_full(tok, bpe_inputs):
    rng = random.Random(1)
    words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9))) for _ in range(16_000)]
    outputs, work = {}, {}
    for n in (4_000, 16_000):
        fresh = Tokenizer(tok.merges)
        with bpe_inputs(fresh, most_bpe_bytes(77)) as sizes:
            outputs[n] = fresh(" ".join(words[:n]), truncate=True)
        work[n] = sizes
    assert work[4_000] == work[16_000] and len(work[16_000]) <= 76  # at most one word per id kept, plus one
    assert torch.equal(outputs[4_000], outputs[16_000])
    assert torch.equal(outputs[4_000], open_clip_tokenizer.tokenize([" ".join(words[:4_000])]))


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, index, kind",
    [
        (["ok", None], 1, "NoneType"),
        ([3], 0, "int"),
        (["a", "b", b"bytes"], 2, "bytes"),
    ],
)
def test_non_string_items_are_named(tok, bad, index, kind):
    with pytest.raises(TypeError, match=rf"texts\[{index}\] must be a str; got {kind}"):
        tok(bad)


@pytest.mark.parametrize("bad", [None, 5, b"bytes"])
def test_non_string_batches_are_rejected(tok, bad):
    with pytest.raises(TypeError, match="texts must be a str or a list of str"):
        tok(bad)
    with pytest.raises(TypeError, match="text must be a str"):
        tok.encode(bad)


@pytest.mark.parametrize("bad, kind", [({"a cat": 0, "a dog": 1}, "dict"), ({"a cat", "a dog"}, "set"),
                                       (frozenset({"a cat"}), "frozenset"), ({"a cat": 0}.keys(), "dict_keys")])
def test_mappings_and_sets_are_rejected_with_their_type(tok, bad, kind):
    with pytest.raises(TypeError, match=rf"texts must be a str or a list of str; got {kind} .*pass a list"):
        tok(bad)
    with pytest.raises(TypeError, match=rf"got {kind}"):
        tokenize(bad)


@pytest.mark.parametrize("context_length, error", [(1, ValueError), (0, ValueError), (-5, ValueError),
                                                     ("77", TypeError), (7.0, TypeError), (True, TypeError)])
def test_context_length_is_checked(tok, context_length, error):
    with pytest.raises(error, match="context_length must be"):
        tok("a cat", context_length=context_length)


def test_decode_rejects_bad_ids(tok):
    with pytest.raises(ValueError, match=r"ids\[1\] = 49408 is outside this vocabulary \(0..49407\)"):
        tok.decode([320, 49408])
    with pytest.raises(ValueError, match="outside"):
        tok.decode([-1])
    with pytest.raises(TypeError, match=r"ids\[0\] must be an int"):
        tok.decode(["a"])
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(tok(["a", "b"]))


# ---------------------------------------------------------------------------------------------
# Finding OpenAI's vocabulary
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_vocab_bytes() -> bytes:
    path = tokmod._open_clip_vocab_path()
    assert path is not None, "open_clip (a test dependency) should ship the vocabulary"
    return path.read_bytes()


@pytest.fixture
def places(tmp_path, monkeypatch, real_vocab_bytes):
    """Isolated search: no env var, cache under tmp, open_clip and download under the test's control."""
    monkeypatch.delenv("CLIPMINI_BPE_PATH", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    state = {"open_clip": None, "download": None, "downloads": 0}

    def fake_download(url, timeout=60.0):
        state["downloads"] += 1
        assert url == tokmod.OPENAI_VOCAB_URL
        if isinstance(state["download"], Exception):
            raise state["download"]
        if state["download"] is None:
            raise urllib.error.URLError("offline (test)")
        return state["download"]

    monkeypatch.setattr(tokmod, "_open_clip_vocab_path", lambda: state["open_clip"])
    monkeypatch.setattr(tokmod, "_download_bytes", fake_download)

    def make(name: str, data: bytes) -> Path:
        path = tmp_path / "files" / name / tokmod.OPENAI_VOCAB_FILENAME
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        return path

    state["make"] = make
    state["real"] = real_vocab_bytes
    state["fake"] = gzip.compress(b"#version: fake\na b\n")
    state["cache"] = tmp_path / "xdg" / "clipmini" / tokmod.OPENAI_VOCAB_FILENAME
    return state


def test_search_order_argument_then_env_then_open_clip_then_cache(places, monkeypatch):
    make = places["make"]
    arg, env, packaged, = make("arg", places["real"]), make("env", places["real"]), make("pkg", places["real"])
    places["cache"].parent.mkdir(parents=True)
    places["cache"].write_bytes(places["real"])
    monkeypatch.setenv("CLIPMINI_BPE_PATH", str(env))
    places["open_clip"] = packaged

    assert tokmod.find_openai_vocab(arg) == arg
    assert tokmod.find_openai_vocab() == env
    monkeypatch.delenv("CLIPMINI_BPE_PATH")
    assert tokmod.find_openai_vocab() == packaged
    places["open_clip"] = None
    assert tokmod.find_openai_vocab() == places["cache"]
    assert places["downloads"] == 0


def test_explicit_wrong_file_is_rejected_with_path_and_hash(places, monkeypatch):
    fake = places["make"]("fake", places["fake"])
    with pytest.raises(ValueError, match=rf"{fake}.*expected {tokmod.OPENAI_VOCAB_SHA256}"):
        tokmod.find_openai_vocab(fake)
    monkeypatch.setenv("CLIPMINI_BPE_PATH", str(fake))
    with pytest.raises(ValueError, match=r"CLIPMINI_BPE_PATH: .*expected 924691ac"):
        tokmod.find_openai_vocab()
    with pytest.raises(FileNotFoundError, match="not a file"):
        tokmod.find_openai_vocab(fake.parent / "missing.gz")


def test_wrong_open_clip_copy_is_skipped(places):
    places["open_clip"] = places["make"]("pkg", places["fake"])
    places["cache"].parent.mkdir(parents=True)
    places["cache"].write_bytes(places["real"])
    assert tokmod.find_openai_vocab() == places["cache"]


def test_download_lands_verified_in_cache(places):
    places["download"] = places["real"]
    path = tokmod.find_openai_vocab()
    assert path == places["cache"] and path.read_bytes() == places["real"]
    assert places["downloads"] == 1
    assert sorted(os.listdir(path.parent)) == [tokmod.OPENAI_VOCAB_FILENAME]  # no temp file left
    assert tokmod.find_openai_vocab() == path and places["downloads"] == 1  # second time: cached


def test_corrupt_cache_is_replaced_by_download(places):
    places["cache"].parent.mkdir(parents=True)
    places["cache"].write_bytes(places["fake"])
    places["download"] = places["real"]
    assert tokmod.find_openai_vocab().read_bytes() == places["real"]


def test_wrong_download_is_rejected_and_not_written(places):
    places["download"] = places["fake"]
    with pytest.raises(FileNotFoundError, match=r"sha256 .*expected 924691ac.*nothing was written"):
        tokmod.find_openai_vocab()
    assert not places["cache"].exists()
    assert not places["cache"].parent.exists() or os.listdir(places["cache"].parent) == []


def test_offline_without_open_clip_explains_the_fix(places):
    with pytest.raises(FileNotFoundError) as info:
        tokmod.find_openai_vocab()
    message = str(info.value)
    assert "open_clip package: not installed" in message
    assert f"no file at {places['cache']}" in message
    assert "offline (test)" in message
    assert "CLIPMINI_BPE_PATH" in message and "pip install open_clip_torch" in message
    with pytest.raises(FileNotFoundError, match="download: disabled"):
        tokmod.find_openai_vocab(download=False)
    assert places["downloads"] == 1


def test_download_that_cannot_be_saved_is_reported(places, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    places["download"] = places["real"]
    with pytest.raises(FileNotFoundError, match="download succeeded but could not be saved"):
        tokmod.find_openai_vocab()


def test_cache_dir_defaults_to_home(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert tokmod.user_cache_dir() == tmp_path / ".cache" / "clipmini"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert tokmod.user_cache_dir() == tmp_path / "x" / "clipmini"


def test_from_openai_with_explicit_path(places, tok):
    path = places["make"]("arg", places["real"])
    loaded = Tokenizer.from_openai(path)
    assert loaded.merges == tok.merges and loaded.name == "openai"
    assert loaded.encode("a photo of a cat") == tok.encode("a photo of a cat")


def test_open_clip_copy_is_found_without_importing_open_clip():
    code = (
        "import sys, clipmini.tokenizer as t; p = t._open_clip_vocab_path(); "
        "assert p is not None and p.name == t.OPENAI_VOCAB_FILENAME and p.parent.name == 'open_clip', p; "
        "assert 'open_clip' not in sys.modules; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------

TOY = ["low " * 5 + "lower " * 2 + "newest " * 6 + "widest " * 3]


def _captions(n: int, seed: int = 0) -> list[str]:
    """Short captions: ImageNet class names in the paper's prompt templates, with a colour and a count."""
    import random

    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    rng = random.Random(seed)
    colours = ["red", "green", "blue", "black", "white", "brown", "grey", "yellow"]
    return [
        rng.choice(OPENAI_IMAGENET_TEMPLATES)(f"{rng.randint(1, 9)} {rng.choice(colours)} {rng.choice(IMAGENET_CLASSNAMES)}")
        for _ in range(n)
    ]


def test_trainer_learns_the_expected_merges_on_a_toy_corpus():
    # pair counts: (e,s)=9 and (s,t</w>)=9 tie -> alphabetical first; then (es,t</w>)=9, (l,o)=7,
    # then (e,w)=6 wins the three-way tie with (n,e) and (w,est</w>).
    trained = Tokenizer.train(TOY, vocab_size=518)
    assert trained.merges == [("e", "s"), ("es", "t</w>"), ("l", "o"), ("e", "w")]
    assert trained.merge_counts == [9, 9, 7, 6]
    letters = {c: trained.token_to_id(c) for c in "nw"}
    assert trained.encode("newest") == [letters["n"], 515, 513]  # n ew est</w>
    assert trained.id_to_token(515) == "ew" and trained.id_to_token(513) == "est</w>"


def test_trainer_vocabulary_layout():
    texts = _captions(2000)
    trained = Tokenizer.train(texts, vocab_size=1024)
    openai = tokmod.default_tokenizer()
    assert trained.vocab_size == 1024 and len(trained.merges) == 510
    assert (trained.sot_token_id, trained.eot_token_id) == (1022, 1023)
    assert trained.id_to_token(1022) == "<|startoftext|>" and trained.id_to_token(1023) == "<|endoftext|>"
    assert [trained.id_to_token(i) for i in range(512)] == [openai.id_to_token(i) for i in range(512)]
    counts = trained.merge_counts
    assert len(counts) == 510 and all(a >= b for a, b in zip(counts, counts[1:])) and counts[-1] >= 2
    tokens = trained(texts[:64] + ["wow!!! ! !"])  # "!" has id 0, the same as padding
    lengths = torch.tensor([len(trained.encode(t)) + 2 for t in texts[:64] + ["wow!!! ! !"]])
    assert torch.equal(tokens.argmax(dim=-1), lengths - 1)  # argmax finds EOT
    assert int(tokens.max()) == 1023
    # the learned pieces compress: whole frequent words become single ids
    assert trained.encode("photo") == [trained.token_to_id("photo</w>")]


def test_trainer_round_trips_unseen_text():
    trained = Tokenizer.train(_captions(2000), vocab_size=700)
    for text in ["a quokka photobombing a wedding", "一只猫 in Zürich 🐱!", "it's 3.14 &amp; more", ""]:
        ids = trained.encode(text)
        assert all(0 <= i < 698 for i in ids)  # specials never appear for plain text
        assert trained.decode(ids) == "".join(p + " " for p in trained.pre_tokenize(text))


def test_trainer_is_deterministic_and_saves(tmp_path):
    texts = _captions(1500, seed=1)
    first = Tokenizer.train(texts, vocab_size=800)
    second = Tokenizer.train(list(texts), vocab_size=800)
    assert first.merges == second.merges and first.merge_counts == second.merge_counts
    path = first.save(tmp_path / "sub" / "bpe.json")
    assert path.stat().st_size < 20_000
    loaded = Tokenizer.load(path)
    assert loaded.merges == first.merges and loaded.merge_counts == first.merge_counts and loaded.vocab_size == 800
    sample = _captions(50, seed=2)
    assert torch.equal(loaded(sample), first(sample))
    assert sorted(os.listdir(path.parent)) == ["bpe.json"]  # atomic write leaves no temp file


def test_openai_vocabulary_saves_and_loads(tmp_path, tok):
    loaded = Tokenizer.load(tok.save(tmp_path / "openai.json"))
    assert loaded.merges == tok.merges and loaded.vocab_size == 49408
    assert loaded.encode(CORPUS[6] + CORPUS[18]) == tok.encode(CORPUS[6] + CORPUS[18])


def test_trainer_accepts_a_generator_and_trains_20k_captions():
    trained = Tokenizer.train((caption for caption in _captions(20_000)), vocab_size=1024)
    assert trained.vocab_size == 1024


def test_trainer_bad_inputs():
    with pytest.raises(ValueError, match="vocab_size must be >= 514"):
        Tokenizer.train(TOY, vocab_size=513)
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        Tokenizer.train(TOY, vocab_size=600.0)
    with pytest.raises(TypeError, match="not a single string"):
        Tokenizer.train("one long string", vocab_size=600)
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str; got NoneType"):
        Tokenizer.train(["ok", None], vocab_size=600)
    with pytest.raises(ValueError, match="support only .* merges with min_frequency=2"):
        Tokenizer.train(TOY, vocab_size=600)
    with pytest.raises(ValueError, match="min_frequency"):
        Tokenizer.train(TOY, vocab_size=520, min_frequency=0)
    assert Tokenizer.train(TOY, vocab_size=514).merges == []


def test_load_rejects_corrupt_and_foreign_files(tmp_path):
    good = Tokenizer.train(TOY, vocab_size=518).save(tmp_path / "good.json")
    payload = json.loads(good.read_text())

    def write(name, content):
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
        return path

    cases = {
        write("truncated.json", good.read_text()[:40]): "invalid JSON",
        write("foreign.json", {"model": "bert", "vocab": {}}): "expected \"format\": \"clipmini-bpe-tokenizer\"",
        write("list.json", [1, 2]): "found 'list'",
        write("version.json", {**payload, "version": 99}): "unsupported version 99",
        write("symbols.json", {**payload, "merges": ["e s", "zz q"]}): r"merge 1 \('zz q'\) is not two known symbols",
        write("size.json", {**payload, "vocab_size": 600}): "vocab_size 600 does not match 4 merges",
        write("counts.json", {**payload, "merge_counts": [1]}): "merge_counts",
    }
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    cases[binary] = "not UTF-8"
    for path, message in cases.items():
        with pytest.raises(ValueError, match=message) as info:
            Tokenizer.load(path)
        assert str(path) in str(info.value)


def test_train_allow_smaller_takes_every_supported_merge():
    texts = ["a red circle", "a blue square"] * 20
    with pytest.raises(ValueError, match="support only"):
        Tokenizer.train(texts, 1024)
    small = Tokenizer.train(texts, 1024, allow_smaller=True)
    assert 514 < small.vocab_size < 1024
    assert small.eot_token_id == small.vocab_size - 1
    assert small.decode(small.encode("a red square")) == "a red square "
