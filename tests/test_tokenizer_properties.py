"""Properties of clipmini's tokenizer on generated text (hypothesis, bounded so the file runs in seconds)."""

from __future__ import annotations

import html

import ftfy
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import clipmini.tokenizer as tokmod
from clipmini.tokenizer import clean_text

open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")  # the oracle; a test dependency

TOK = tokmod.default_tokenizer()
REF = open_clip_tokenizer._tokenizer
SPECIAL_LITERALS = ("<|startoftext|>", "<|endoftext|>", "<start_of_text>", "<end_of_text>")

BOUNDED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any unicode (hypothesis already leaves out lone surrogates); plus text built from the characters
# that make cleaning hard: entities, mojibake pieces, controls, odd spaces, combining marks, emoji.
any_text = st.text(max_size=60)
tricky_text = st.lists(
    st.sampled_from(
        ["a", "Z", "7", " ", "\t", "\n", "\r", "\x00", "\x1b", "\x85", "\xa0", "\u3000", "\u200b", "\u0301",
         "&", "amp;", "lt;", "#39;", "&nbsp;", "Ã", "©", "â€", "'s", "'", "’", "猫", "ß", "İ", "🐱", "\u200d",
         "👩", "🇫", "🇷", "١", "½", "<", "|", ">", "!", ".", "-", "_", "/", "w"]
    ),
    max_size=30,
).map("".join)
# ASCII, weighted towards the characters the fast path must refuse (controls, '&', CR).
ascii_text = st.lists(
    st.one_of(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E),
        st.characters(min_codepoint=0x00, max_codepoint=0x7F),
        st.sampled_from(["&", "&amp;", "&lt;", "\r", "\x0b", "\x0c", "\x1b[0m", "\x7f", "\t", "\n", "  "]),
    ),
    max_size=40,
).map("".join)


@BOUNDED
@given(texts=st.lists(st.one_of(any_text, tricky_text), min_size=1, max_size=4),
       context_length=st.integers(min_value=2, max_value=40))
def test_never_crashes_and_ids_are_in_range(texts, context_length):
    assume(not any(s in clean_text(t) for t in texts for s in SPECIAL_LITERALS))
    tokens = TOK(texts, context_length=context_length, truncate=True)  # [B, L]
    assert tokens.shape == (len(texts), context_length)
    assert int(tokens.min()) >= 0 and int(tokens.max()) < TOK.vocab_size
    for row, text in zip(tokens.tolist(), texts):
        body = TOK.encode(text)[: context_length - 2]
        expected = [TOK.sot_token_id, *body, TOK.eot_token_id]
        # SOT, the (truncated) ids, EOT, zeros; padding 0 is also the id of "!", so only EOT marks the end
        assert row == expected + [0] * (context_length - len(expected))
    # EOT is the largest id, so argmax finds it
    assert (tokens.argmax(dim=-1) == tokens.eq(TOK.eot_token_id).int().argmax(dim=-1)).all()


@BOUNDED
@given(text=st.one_of(any_text, tricky_text))
def test_round_trips_cleaned_text(text):
    assume(not any(s in clean_text(text) for s in SPECIAL_LITERALS))
    pieces = TOK.pre_tokenize(text)
    decoded = TOK.decode(TOK.encode(text))
    assert decoded == "".join(piece + " " for piece in pieces)  # each piece, then its </w> space
    assert "".join(pieces) == clean_text(text).replace(" ", "")  # the pieces cover the cleaned text


@BOUNDED
@given(text=st.one_of(any_text, tricky_text, ascii_text))
def test_same_ids_as_open_clip(text):
    assume(not any(s in clean_text(text) for s in SPECIAL_LITERALS))
    assert TOK.encode(text) == REF.encode(text)


# Every general category of Unicode (surrogates, private use and unassigned included), one at a time.
CATEGORIES = ("Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps", "Pe", "Pi",
              "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Cn")
category_text = st.sampled_from(CATEGORIES).flatmap(
    lambda category: st.text(st.characters(categories=[category]), min_size=1, max_size=40)
)
# Single words far longer than a context holds: letters of a few scripts, punctuation runs, emoji.
long_word = st.one_of(
    st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz"), min_size=200, max_size=1500),
    st.text(st.sampled_from("aeiouy"), min_size=200, max_size=1500),
    st.text(st.sampled_from("абвгдеж猫犬éßαβ"), min_size=100, max_size=800),
    st.text(st.sampled_from("!#$%&*+-./:;<=>?@^_~😂❤🐱"), min_size=100, max_size=800),
    st.tuples(category_text, st.integers(10, 300)).map(lambda t: t[0] * t[1]),
)
long_text = st.lists(st.one_of(any_text, category_text, st.sampled_from(["a", "photo", "of", "the", "cat"])),
                     min_size=10, max_size=150).map(" ".join)
LONGEST_TOKEN = 32  # bytes in OpenAI's longest token (test_tokenizer.py checks it)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(text=st.one_of(long_word, long_text, category_text, any_text), context_length=st.integers(2, 80))
def test_any_text_fits_its_context_as_open_clips_would_with_bounded_work(text, context_length, bpe_inputs):
    assume(not any(s in clean_text(text) for s in SPECIAL_LITERALS))
    with bpe_inputs(TOK, (context_length - 1 + 4) * LONGEST_TOKEN):  # words BPE sees: bounded by the context
        tokens = TOK([text], context_length=context_length, truncate=True)  # never raises for a str
    theirs = open_clip_tokenizer.tokenize([text], context_length=context_length)  # truncates
    assert tokens.shape == (1, context_length) and torch.equal(tokens, theirs)
    if len(REF.encode(text)) <= context_length - 2:  # it fits: no truncation needed
        assert torch.equal(TOK([text], context_length=context_length), theirs)
    else:
        with pytest.raises(ValueError, match="too long"):
            TOK([text], context_length=context_length)


@settings(max_examples=400, deadline=None)
@given(text=ascii_text)
def test_ascii_fast_path_equals_full_cleaning(text):
    assert clean_text(text) == tokmod._clean_text_full(text)
    if text.isascii() and tokmod._NEEDS_FULL_CLEAN.search(text) is None:
        # the claim the fast path rests on: ftfy and html.unescape change nothing here
        assert ftfy.fix_text(text) == text
        assert html.unescape(text) == text


def test_fast_path_is_taken_for_prompts_and_refused_otherwise():
    assert tokmod._NEEDS_FULL_CLEAN.search("a photo of a jack-o'-lantern.\tok\n") is None
    for text in ["Tom &amp; Jerry", "line\rbreak", "nul\x00", "esc\x1b[0m", "del\x7f", "tab\x0bvt"]:
        assert tokmod._NEEDS_FULL_CLEAN.search(text) is not None, repr(text)
